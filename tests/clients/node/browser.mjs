// What the console's browser tests share: the system's Chromium, headless,
// and a watch on a page that collects every console error, page error,
// request leaving loopback and unexpected 4xx/5xx answer as a problem.

import puppeteer from "puppeteer-core";

/** Chromium from BYOK_TEST_CHROMIUM (default: chromium on PATH). */
export function launch() {
  return puppeteer.launch({
    executablePath: process.env.BYOK_TEST_CHROMIUM || "chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
      "--disable-extensions", "--disable-background-networking", "--disable-component-update",
      "--disable-sync"],
  });
}

/** Adds to `problems` whatever goes wrong on `page`; `expected(url)` names
 * the answers the console asks for knowing they may be 4xx. */
export function watch(page, problems, expected) {
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const url = msg.location()?.url || "";
    if (msg.text().startsWith("Failed to load resource") && expected(url)) return;
    problems.push(`console error: ${msg.text()} (${url})`);
  });
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("request", (req) => {
    const url = new URL(req.url());
    if (!["127.0.0.1", "localhost", "[::1]"].includes(url.hostname) && url.protocol !== "data:") {
      problems.push(`request left loopback: ${req.url()}`);
    }
  });
  page.on("response", (res) => {
    if (res.status() >= 400 && !expected(res.url())) problems.push(`${res.status()} from ${res.url()}`);
  });
}

/** Exits 1 listing `problems`, or prints `ok`. */
export function finish(problems, ok) {
  if (problems.length) {
    console.error(`console: problems:\n  ${problems.join("\n  ")}`);
    process.exit(1);
  }
  console.log(ok);
}
