// The console's sign-in through an OIDC issuer (authorization code with
// PKCE) in a real headless Chromium: no local session is offered, the page
// shows the issuer's button, the issuer sends the browser back with a code,
// the page trades it (with its verifier) for an ID token and the keys
// screen loads as that user. Fails on any console error.
//
// node console_oidc.mjs BASE_URL SCREENSHOT_DIR EXPECTED_USER

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import puppeteer from "puppeteer-core";

const [base, shots, user] = process.argv.slice(2);
if (!base || !shots || !user) {
  console.error("usage: node console_oidc.mjs BASE_URL SCREENSHOT_DIR EXPECTED_USER");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const problems = [];
const browser = await puppeteer.launch({
  executablePath: process.env.BYOK_TEST_CHROMIUM || "chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--disable-extensions",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20_000);
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const url = msg.location()?.url || "";
    // The console asks whether the user is an admin; a 403 says no.
    if (msg.text().startsWith("Failed to load resource") && url.includes("/api/admin/")) return;
    problems.push(`console error: ${msg.text()} (${url})`);
  });
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  await page.goto(`${base}/`, { waitUntil: "networkidle0" });
  await page.waitForSelector("#oidc-row:not([hidden])");
  await page.screenshot({ path: join(shots, "9-sign-in.png"), fullPage: true });
  await Promise.all([page.waitForNavigation(), page.click("#oidc-signin")]);
  await page.waitForSelector("#nav:not([hidden])");
  await page.waitForSelector("#card-openai");
  const who = await page.$eval("#who", (n) => n.textContent);
  if (!who.includes(user)) throw new Error(`signed in as? ${who}`);
  if (page.url().includes("code=")) throw new Error(`the code stayed in the address: ${page.url()}`);
} finally {
  await browser.close();
}
if (problems.length) {
  console.error(`console: problems:\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
console.log("console: signed in through the issuer");
