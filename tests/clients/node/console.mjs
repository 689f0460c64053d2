// Drives byok-local's console in a real headless Chromium (the system's,
// through puppeteer-core: no browser download), as a new user would: the
// local session, add a key and test it, consent and the live preview, the
// model list, a streamed playground answer, usage and audit. Saves a
// screenshot of each screen. Fails on any console error, any request that
// leaves loopback, or any step that does not show what it should.
//
// node console.mjs BASE_URL SCREENSHOT_DIR ADMIN_TOKEN
// (BYOK_TEST_CHROMIUM names the browser; default: chromium on PATH)

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { finish, launch, watch } from "./browser.mjs";

const [base, shots, adminToken] = process.argv.slice(2);
if (!base || !shots || !adminToken) {
  console.error("usage: node console.mjs BASE_URL SCREENSHOT_DIR ADMIN_TOKEN");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const OPENAI_KEY = "sk-proj-ConsoleBrowserTest000000000000000000000001";
const STEP_TIMEOUT = 20_000;

const problems = [];
const browser = await launch();

let page;

async function step(name, fn) {
  process.stdout.write(`console: ${name} … `);
  try {
    await fn();
  } catch (err) {
    // What the page showed when the step failed.
    const seen = await page.evaluate(() => ({
      status: document.querySelector("#status")?.textContent,
      addError: document.querySelector("#add-error")?.textContent,
      dialogOpen: document.querySelector("#add-dialog")?.open,
      openai: document.querySelector("article[aria-labelledby=card-openai]")?.innerText,
    })).catch(() => ({}));
    await page.screenshot({ path: join(shots, "failed.png"), fullPage: true }).catch(() => {});
    console.log(`FAILED\n${JSON.stringify(seen, null, 2)}`);
    throw err;
  }
  console.log("ok");
}

try {
  page = await browser.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  await page.setViewport({ width: 1200, height: 900 });
  // 4xx answers the console asks for on purpose: the preview of a refused
  // model, and the admin check of a non-admin.
  watch(page, problems, (url) => url.includes("/api/resolve") || url.includes("/api/admin/"));
  const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  const text = (sel) => page.$eval(sel, (n) => n.textContent);

  await step("a local session opens the keys screen", async () => {
    await page.goto(`${base}/`, { waitUntil: "networkidle0" });
    await page.waitForSelector("#nav:not([hidden])");
    await page.waitForSelector("#card-openai");
    const who = await text("#who");
    if (!who.includes("dev")) throw new Error(`signed in as? ${who}`);
    const badge = await text("[data-status=openai]");
    if (badge !== "not configured") throw new Error(`openai badge before: ${badge}`);
  });

  await step("add an OpenAI key; it is saved, masked and tested", async () => {
    const card = await page.$("article[aria-labelledby=card-openai]");
    const add = await card.$("button");
    await add.click();
    await page.waitForSelector("#add-dialog[open]");
    // The client-side format check first.
    await page.type("#add-key", "not-a-key");
    await page.click("#add-submit");
    const err = await text("#add-error");
    if (!err.includes("sk-")) throw new Error(`no format hint: ${err}`);
    await page.$eval("#add-key", (n) => (n.value = ""));
    await page.type("#add-key", OPENAI_KEY);
    await page.type("#add-label", "browser");
    await page.click("#add-submit");
    await page.waitForFunction(() => !document.querySelector("#add-dialog").open);
    await page.waitForFunction(() => document.querySelector("[data-status=openai]")?.textContent === "connected");
    const masked = await page.$eval("article[aria-labelledby=card-openai] code", (n) => n.textContent);
    if (masked.includes("ConsoleBrowserTest")) throw new Error(`key not masked: ${masked}`);
    const html = await page.content();
    if (html.includes(OPENAI_KEY)) throw new Error("the key is still in the page");
    const test = await page.$$("article[aria-labelledby=card-openai] li button");
    await test[0].click();
    await page.waitForFunction(() =>
      /valid · \d+ tests left/.test(document.querySelector("article[aria-labelledby=card-openai] .result")?.textContent || ""));
    await shot("1-keys");
  });

  await step("replace the primary key: same key id, new masked key", async () => {
    const before = await page.$eval("article[aria-labelledby=card-openai] code", (n) => n.textContent);
    const [replace] = await page.$$("xpath/.//article[@aria-labelledby='card-openai']//button[text()='Replace']");
    await replace.click();
    await page.waitForSelector("#add-dialog[open]");
    await page.type("#add-key", OPENAI_KEY.replace(/1$/, "2"));
    await page.click("#add-submit");
    await page.waitForFunction(() => !document.querySelector("#add-dialog").open);
    await page.waitForFunction(
      (b) => document.querySelector("article[aria-labelledby=card-openai] code")?.textContent !== b, {}, before);
    const after = await page.$eval("article[aria-labelledby=card-openai] code", (n) => n.textContent);
    if (!after.endsWith("0002")) throw new Error(`replaced key shows ${after}`);
    const count = await page.$$eval("article[aria-labelledby=card-openai] li", (l) => l.length);
    if (count !== 1) throw new Error(`${count} keys after a replacement`);
  });

  await step("consent: the preview changes with the switch", async () => {
    await page.click("[data-screen=consent]");
    await page.$eval("#preview-model", (n) => (n.value = "anthropic/claude-3-5-haiku-latest"));
    await page.click("#preview-form button");
    await page.waitForFunction(() => document.querySelector("[data-preview-path]")?.dataset.previewPath === "team-provider");
    await page.click("#consent-toggle");
    await page.waitForFunction(() => document.querySelector("[data-preview-path]")?.dataset.previewPath === "consent_required");
    await shot("2-who-pays");
    await page.click("#consent-toggle");
    await page.waitForFunction(() => document.querySelector("[data-preview-path]")?.dataset.previewPath === "team-provider");
  });

  await step("models: the catalog with filters", async () => {
    await page.click("[data-screen=models]");
    await page.waitForSelector("#model-table tbody tr");
    const all = await page.$$eval("#model-table tbody tr", (r) => r.length);
    await page.select("#model-context", "1000000");
    const big = await page.$$eval("#model-table tbody tr", (r) => r.length);
    if (!(big < all)) throw new Error(`the context filter kept ${big} of ${all}`);
    await page.select("#model-context", "0");
    await page.type("#model-search", "gpt-4o-mini");
    await page.click("#model-accessible");
    const rows = await page.$$eval("#model-table tbody tr", (r) => r.map((x) => x.textContent));
    if (!rows.some((r) => r.includes("gpt-4o-mini"))) throw new Error(`no reachable gpt-4o-mini: ${rows}`);
    await shot("3-models");
  });

  await step("playground: a streamed answer with who paid", async () => {
    await page.click("[data-screen=playground]");
    await page.$eval("#chat-model", (n) => (n.value = "openai/gpt-4o-mini"));
    await page.$eval("#chat-input", (n) => (n.value = "hello from the browser"));
    await page.click("#chat-send");
    await page.waitForFunction(() => document.querySelector("[data-fact='Time to first token']"));
    const answer = await text("#chat-output");
    if (!answer.includes("hello from the browser")) throw new Error(`answer: ${answer}`);
    const path = await text("[data-fact=Path]");
    if (path !== "user-provider") throw new Error(`path: ${path}`);
    await shot("4-playground");
  });

  await step("usage: the answer is counted", async () => {
    await page.click("[data-screen=usage]");
    await page.waitForSelector("#usage-chart svg rect");
    await page.waitForFunction(() => document.querySelector("#usage-models tbody")?.textContent.includes("gpt-4o-mini"));
    await shot("5-usage");
  });

  await step("audit: the key's events are listed", async () => {
    await page.click("[data-screen=audit]");
    await page.waitForFunction(() => document.querySelector("#audit-table tbody")?.textContent.includes("openai"));
    await shot("6-audit");
  });

  await step("phone width: the keys screen still fits", async () => {
    await page.setViewport({ width: 390, height: 844 });
    await page.click("[data-screen=keys]");
    await page.waitForSelector("#card-openai");
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 2) throw new Error(`the page is ${overflow}px wider than the phone`);
    await shot("7-keys-phone");
  });

  await step("keyboard: the screens are reachable by Tab", async () => {
    // From a short screen, Tab goes round the whole page and back to the top.
    await page.click("[data-screen=audit]");
    await page.waitForSelector("#audit-table tbody tr");
    const reached = new Set();
    for (let i = 0; i < 60; i++) {
      await page.keyboard.press("Tab");
      reached.add(await page.evaluate(() => document.activeElement?.dataset?.screen || ""));
    }
    for (const s of ["keys", "consent", "models", "playground", "usage", "audit"]) {
      if (!reached.has(s)) throw new Error(`Tab never reached ${s}`);
    }
  });

  await step("sign out, paste an admin token: budgets and usage by user", async () => {
    await page.setViewport({ width: 1200, height: 900 });
    await page.click("#sign-out");
    await page.waitForSelector("#signin:not([hidden])");
    await page.type("#token-input", adminToken);
    await page.click("#signin-form button");
    await page.waitForSelector("[data-screen=admin]:not([hidden])");
    const who = await text("#who");
    if (!who.includes("console-admin")) throw new Error(`signed in as? ${who}`);
    await page.click("[data-screen=admin]");
    await page.waitForSelector("#budgets meter");
    await page.waitForFunction(() => document.querySelector("#admin-usage tbody")?.textContent.includes("dev"));
    await shot("8-admin");
  });
} finally {
  await browser.close();
}

finish(problems, "console: all screens ok");
