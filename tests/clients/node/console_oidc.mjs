// The console's sign-in through an OIDC issuer (authorization code with
// PKCE) in a real headless Chromium: no local session is offered, the page
// shows the issuer's button, the issuer sends the browser back with a code,
// the page trades it (with its verifier) for an ID token and the keys
// screen loads as that user. Fails on any console error.
//
// node console_oidc.mjs BASE_URL SCREENSHOT_DIR EXPECTED_USER

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { finish, launch, watch } from "./browser.mjs";

const [base, shots, user] = process.argv.slice(2);
if (!base || !shots || !user) {
  console.error("usage: node console_oidc.mjs BASE_URL SCREENSHOT_DIR EXPECTED_USER");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const problems = [];
const browser = await launch();
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20_000);
  // The console asks whether the user is an admin; a 403 says no.
  watch(page, problems, (url) => url.includes("/api/admin/"));
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
finish(problems, "console: signed in through the issuer");
