// The gateway's console: plain ES module, no build step, no requests to
// anything but the gateway it is served by (or the API base it is given
// with `?api=` when deployed on a static host). Every screen is a thin view
// over the documented JSON routes; nothing here holds a provider key after
// the form that sends it.

// The API this console talks to: `?api=` (kept for the page's session, so
// it survives a sign-in's round trip), else the page's own origin.
const API_KEY = "byok.console.api";
const apiParam = new URLSearchParams(location.search).get("api");
if (apiParam) sessionStorage.setItem(API_KEY, apiParam);
const api = new URL(sessionStorage.getItem(API_KEY) || location.origin);
const PKCE_KEY = "byok.console.pkce";
const TOKEN_KEY = "byok.console.token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let providers = [];
let catalog = [];

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
};

function say(text, kind = "") {
  const status = $("#status");
  status.textContent = text;
  status.className = `status ${kind}`;
}

/** Calls the gateway; throws an Error carrying the stable error code. */
async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(new URL(path, api), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const json = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const err = new Error(json?.error?.message || `${method} ${path}: ${response.status}`);
    err.code = json?.error?.code || String(response.status);
    err.status = response.status;
    err.headers = response.headers;
    throw err;
  }
  return { json, headers: response.headers, status: response.status };
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "never";
}

// ---------------------------------------------------------------- session

/** How this console may sign in: `{oidc, localSession}` from the gateway,
 * else `console-config.json` beside the page (a static host), else none. */
async function loadConfig() {
  for (const url of [new URL("/console/config", api), new URL("console-config.json", location.href)]) {
    try {
      const r = await fetch(url);
      if (r.ok) return await r.json();
    } catch {
      // Try the next place.
    }
  }
  return {};
}

const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

/** Authorization code with PKCE: off to the issuer, which sends the
 * browser back here with `?code=&state=`. */
async function startOidc(oidc) {
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  sessionStorage.setItem(PKCE_KEY, JSON.stringify({ verifier, state }));
  const target = new URL(oidc.authorizationEndpoint);
  for (const [k, v] of Object.entries({
    response_type: "code", client_id: oidc.clientId, redirect_uri: location.origin + location.pathname,
    scope: oidc.scope, state, code_challenge: challenge, code_challenge_method: "S256",
  })) target.searchParams.set(k, v);
  location.assign(target);
}

/** Back from the issuer: trades the code (with the verifier) for a token. */
async function finishOidc(oidc, params) {
  const saved = JSON.parse(sessionStorage.getItem(PKCE_KEY) || "{}");
  sessionStorage.removeItem(PKCE_KEY);
  history.replaceState(null, "", location.pathname + location.hash);
  if (!saved.state || saved.state !== params.get("state")) {
    say("That sign-in did not start here; try again.", "error");
    return;
  }
  const r = await fetch(oidc.tokenEndpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code", code: params.get("code"), client_id: oidc.clientId,
      redirect_uri: location.origin + location.pathname, code_verifier: saved.verifier,
    }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok || !(body.id_token || body.access_token)) {
    say(`The identity provider refused the sign-in (${body.error || r.status}).`, "error");
    return;
  }
  token = body.id_token || body.access_token;
  sessionStorage.setItem(TOKEN_KEY, token);
}

let config = {};

async function startSession() {
  config = await loadConfig();
  const params = new URLSearchParams(location.search);
  if (config.oidc && params.has("code")) await finishOidc(config.oidc, params);
  if (!token && config.localSession) {
    try {
      const r = await fetch(new URL("/console/session", api), { method: "POST" });
      if (r.ok) {
        token = (await r.json()).token;
        sessionStorage.setItem(TOKEN_KEY, token);
      }
    } catch {
      // No local session on offer: the sign-in form asks for a token.
    }
  }
  if (!token) return showSignIn();
  try {
    const { json } = await call("GET", "/api/providers");
    providers = json.providers;
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    token = "";
    say(`That token was not accepted (${err.code}).`, "error");
    return showSignIn();
  }
  const claims = decodeClaims(token);
  $("#who").textContent = claims.sub ? `Signed in as ${claims.sub}` : "Signed in";
  $("#nav").hidden = false;
  call("GET", "/api/admin/budgets")
    .then(() => ($("[data-screen=admin]").hidden = false))
    .catch(() => {});
  show(location.hash.slice(1) || "keys");
}

function decodeClaims(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

function showSignIn() {
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "signin";
  $("#nav").hidden = true;
  $("#oidc-row").hidden = !config.oidc;
  (config.oidc ? $("#oidc-signin") : $("#token-input")).focus();
}

$("#oidc-signin").addEventListener("click", () => startOidc(config.oidc));

$("#signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token-input").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  startSession();
});

$("#sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  token = "";
  $("#who").textContent = "";
  say("Signed out. Reload to get a new local session.");
  showSignIn();
});

// ---------------------------------------------------------------- screens

const screens = { keys: loadKeys, consent: loadConsent, models: loadModels, playground: loadPlayground,
  usage: loadUsage, audit: () => loadAudit(true), admin: loadAdmin };

function show(name) {
  if (!screens[name]) name = "keys";
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== name;
  for (const b of document.querySelectorAll("#nav [data-screen]")) {
    if (b.dataset.screen === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  history.replaceState(null, "", `#${name}`);
  say("");
  screens[name]().catch((err) => say(`${err.message} (${err.code})`, "error"));
}

for (const b of document.querySelectorAll("#nav [data-screen]")) {
  b.addEventListener("click", () => show(b.dataset.screen));
}

// ---------------------------------------------------------------- keys

const STRUCTURED = new Set(["vertex", "bedrock"]);

async function loadKeys() {
  const { json } = await call("GET", "/api/keys");
  const byService = new Map();
  for (const k of json.keys) {
    if (!byService.has(k.service)) byService.set(k.service, []);
    byService.get(k.service).push(k);
  }
  const cards = $("#cards");
  cards.replaceChildren(...providers.map((p) => card(p, byService.get(p.service) || [])));
}

function status(keys) {
  if (!keys.length) return ["not configured", "none"];
  const now = Date.now();
  if (keys.every((k) => !k.enabled)) return ["disabled", "none"];
  if (keys.some((k) => k.cooldownUntil && Date.parse(k.cooldownUntil) > now)) return ["cooling down", "warn"];
  if (keys.some((k) => k.enabled && k.lastValidation === "valid")) return ["connected", "ok"];
  if (keys.some((k) => k.lastValidation === "invalid")) return ["error", "bad"];
  if (keys.some((k) => k.lastValidation === "unverified")) return ["could not check", "warn"];
  if (keys.some((k) => k.lastValidation === "unreachable")) return ["provider unreachable", "warn"];
  return ["not tested", "warn"];
}

function card(provider, keys) {
  const [label, kind] = status(keys);
  // Keys come in priority order: the first is the primary one.
  const list = el("ul", { class: "keys" }, keys.map((k, i) => keyRow(provider, k, i === 0)));
  return el("article", { class: "card", "aria-labelledby": `card-${provider.service}` },
    el("header", {},
      el("span", { class: "icon", "aria-hidden": "true" }, provider.name.slice(0, 1)),
      el("h3", { id: `card-${provider.service}` }, provider.name),
      el("span", { class: `badge ${kind}`, "data-status": provider.service }, label)),
    el("p", { class: "hint" }, provider.keyFormatHint, " ",
      el("a", { href: provider.docsUrl, target: "_blank", rel: "noopener noreferrer" }, "How to get your key")),
    keys.length ? list : "",
    keys.length < provider.maxKeys
      ? el("button", { type: "button", onclick: () => openAdd(provider, keys.length ? "another" : "first") },
          keys.length ? "Add another key" : "Add key")
      : el("p", { class: "hint" }, `At most ${provider.maxKeys} keys.`));
}

/** The last Test outcome per key id, shown until the page reloads. */
const testResults = new Map();

async function testKey(service, keyId) {
  try {
    const r = await call("POST", "/api/keys/validate", { service, keyId });
    const left = r.headers.get("x-ratelimit-remaining-requests");
    testResults.set(keyId, (r.json.valid ? "valid" : "invalid") + (left !== null ? ` · ${left} tests left` : ""));
  } catch (err) {
    const retry = err.headers?.get("retry-after");
    testResults.set(keyId, err.code + (retry ? ` · try again in ${retry} s` : ""));
  }
}

function keyRow(provider, k, primary) {
  const service = provider.service;
  const path = `/api/keys/${service}/${k.id}`;
  const result = el("span", { class: "result", "aria-live": "polite" }, testResults.get(k.id) || "");
  const act = (fn) => async () => {
    try {
      await fn();
    } catch (err) {
      say(`${err.message} (${err.code})`, "error");
    }
  };
  return el("li", { class: k.enabled ? "" : "off" },
    el("code", {}, k.maskedKey),
    el("span", { class: "small" }, ` ${k.label || ""} · priority ${k.priority} · last used ${when(k.lastUsedAt)}`),
    k.pending ? el("span", { class: "badge warn" }, "rotation staged") : "",
    el("div", { class: "row" },
      el("button", { type: "button", onclick: act(async () => {
        result.textContent = "testing…";
        await testKey(service, k.id);
        await loadKeys();
      }) }, "Test"),
      el("button", { type: "button", onclick: act(async () => {
        await call("PATCH", path, { enabled: !k.enabled });
        say(`${provider.name} key ${k.enabled ? "disabled" : "enabled"}.`);
        loadKeys();
      }) }, k.enabled ? "Disable" : "Enable"),
      primary ? el("button", { type: "button", onclick: () => openAdd(provider, "replace") }, "Replace") : "",
      el("button", { type: "button", onclick: act(async () => {
        const next = prompt(`New ${provider.name} key to rotate to (staged, then swapped in):`);
        if (!next) return;
        await call("PUT", `${path}/pending`, { apiKey: next.trim() });
        say("Rotation staged.");
        loadKeys();
      }) }, "Stage rotation"),
      el("button", { type: "button", class: "danger", onclick: act(async () => {
        if (!confirm(`Delete the ${provider.name} key ${k.maskedKey}? This cannot be undone.`)) return;
        await call("DELETE", path);
        say(`${provider.name} key deleted.`);
        loadKeys();
      }) }, "Delete"),
      result));
}

/** The add dialog for `provider`: its `first` key, `another` one, or a
 * `replace`ment of its primary key (a new version, same id). */
function openAdd(provider, mode) {
  const dialog = $("#add-dialog");
  const title = { first: "Add a", another: "Add another", replace: "Replace the primary" }[mode];
  $("#add-h").textContent = `${title} ${provider.name} key`;
  $("#add-help").textContent = provider.keyFormatHint;
  $("#add-service").value = provider.service;
  $("#add-service").dataset.mode = mode;
  const structured = STRUCTURED.has(provider.service);
  $("#add-key-row").hidden = structured;
  $("#add-cred-row").hidden = !structured;
  $("#add-base-row").hidden = !provider.acceptsBaseUrl;
  for (const id of ["#add-key", "#add-cred", "#add-label", "#add-base"]) $(id).value = "";
  $("#add-error").textContent = "";
  dialog.showModal();
  (structured ? $("#add-cred") : $("#add-key")).focus();
}

$("#add-cancel").addEventListener("click", () => $("#add-dialog").close());

$("#add-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const service = $("#add-service").value;
  const provider = providers.find((p) => p.service === service);
  const body = { service, label: $("#add-label").value.trim() || undefined };
  if (STRUCTURED.has(service)) {
    try {
      body.credentials = JSON.parse($("#add-cred").value);
    } catch {
      $("#add-error").textContent = "The credentials are not valid JSON.";
      return;
    }
  } else {
    const key = $("#add-key").value.trim();
    if (provider.keyPrefix && !key.startsWith(provider.keyPrefix)) {
      $("#add-error").textContent = `${provider.name} keys start with ${provider.keyPrefix}.`;
      return;
    }
    if (key.length < 8) {
      $("#add-error").textContent = "That key is too short.";
      return;
    }
    body.apiKey = key;
  }
  if (!$("#add-base-row").hidden && $("#add-base").value.trim()) body.baseUrl = $("#add-base").value.trim();
  const another = $("#add-service").dataset.mode === "another";
  $("#add-submit").disabled = true;
  try {
    let saved;
    if (another) {
      delete body.service;
      saved = await call("POST", `/api/keys/${service}`, body);
    } else {
      saved = await call("POST", "/api/keys", body);
    }
    $("#add-dialog").close();
    say(`${provider.name} key saved; testing it…`);
    await testKey(service, saved.json.id);
    say(`${provider.name} key saved: ${testResults.get(saved.json.id)}.`);
    loadKeys();
  } catch (err) {
    $("#add-error").textContent = `${err.message} (${err.code})`;
  } finally {
    $("#add-submit").disabled = false;
  }
});

// ---------------------------------------------------------------- consent

async function loadConsent() {
  const { json } = await call("GET", "/api/user-settings");
  $("#consent-toggle").checked = json.allowGatewayFallback;
  sentence(json.allowGatewayFallback);
  await preview();
}

function sentence(allowed) {
  $("#consent-sentence").textContent = allowed
    ? "When you have no key of your own for a model, the team's key serves it and the team pays."
    : "Only your own keys are used. A model you have no key for is refused (consent_required) rather than paid by the team.";
}

$("#consent-toggle").addEventListener("change", async (e) => {
  try {
    const { json } = await call("POST", "/api/user-settings", { allowGatewayFallback: e.target.checked });
    sentence(json.allowGatewayFallback);
    say("Saved.");
    await preview();
  } catch (err) {
    e.target.checked = !e.target.checked;
    say(`${err.message} (${err.code})`, "error");
  }
});

async function preview() {
  const model = $("#preview-model").value.trim();
  const out = $("#preview");
  try {
    const { json } = await call("GET", `/api/resolve?model=${encodeURIComponent(model)}`);
    const paidBy = json.path.startsWith("team") ? "the team" : "you";
    out.replaceChildren(el("dl", { class: "meta" },
      el("dt", {}, "Path"), el("dd", { "data-preview-path": json.path }, json.path),
      el("dt", {}, "Provider"), el("dd", {}, json.provider),
      el("dt", {}, "Upstream model"), el("dd", {}, json.upstreamModel),
      el("dt", {}, "Paid by"), el("dd", {}, paidBy),
      json.keys?.length ? [el("dt", {}, "Keys, in order"), el("dd", {}, json.keys.map((k) => k.id || k.keyId).join(", "))] : []));
  } catch (err) {
    out.replaceChildren(el("p", { class: "error", "data-preview-path": err.code }, `${err.code}: ${err.message}`));
  }
}

$("#preview-form").addEventListener("submit", (e) => {
  e.preventDefault();
  preview();
});

// ---------------------------------------------------------------- models

async function fetchCatalog() {
  if (!catalog.length) catalog = (await call("GET", "/v1/models")).json.data;
  return catalog;
}

async function loadModels() {
  const models = await fetchCatalog();
  const select = $("#model-provider");
  if (select.options.length === 1) {
    for (const p of [...new Set(models.map((m) => m.owned_by))].sort()) select.append(el("option", { value: p }, p));
  }
  renderModels();
}

function price(p, key) {
  const v = p?.[key];
  return v === undefined || v === null ? "–" : `$${Number(v).toFixed(2)}`;
}

function renderModels() {
  const q = $("#model-search").value.trim().toLowerCase();
  const provider = $("#model-provider").value;
  const onlyReachable = $("#model-accessible").checked;
  const minContext = Number($("#model-context").value);
  const maxPrice = $("#model-price").value === "" ? Infinity : Number($("#model-price").value);
  const rows = catalog
    .filter((m) => (!q || m.id.toLowerCase().includes(q) || (m.name || "").toLowerCase().includes(q))
      && (!provider || m.owned_by === provider) && (!onlyReachable || m.accessible)
      && (m.context_window || 0) >= minContext
      && (maxPrice === Infinity || (m.pricing?.input ?? Infinity) <= maxPrice))
    .slice(0, 300)
    .map((m) => el("tr", {},
      el("td", {}, el("code", {}, m.id)),
      el("td", {}, m.owned_by),
      el("td", {}, m.context_window ? m.context_window.toLocaleString() : "–"),
      el("td", {}, `${price(m.pricing, "input")} / ${price(m.pricing, "output")}`),
      el("td", {}, m.accessible ? (m.via || "") : "not reachable")));
  $("#model-table tbody").replaceChildren(...rows);
}

for (const id of ["#model-search", "#model-provider", "#model-accessible", "#model-context", "#model-price"]) {
  $(id).addEventListener("input", renderModels);
}

// ---------------------------------------------------------------- playground

async function loadPlayground() {
  const models = await fetchCatalog().catch(() => []);
  $("#chat-models").replaceChildren(...models.filter((m) => m.accessible).map((m) => el("option", { value: m.id })));
}

$("#chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = $("#chat-output");
  const meta = $("#chat-meta");
  out.textContent = "";
  meta.replaceChildren();
  $("#chat-send").disabled = true;
  const started = performance.now();
  try {
    const response = await fetch(new URL("/v1/chat/completions", api), {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        model: $("#chat-model").value.trim(),
        stream: true,
        stream_options: { include_usage: true },
        messages: [{ role: "user", content: $("#chat-input").value }],
      }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw Object.assign(new Error(body?.error?.message || response.statusText), { code: body?.error?.code || response.status });
    }
    const h = response.headers;
    const facts = [["Path", h.get("x-byok-path")], ["Provider", h.get("x-byok-provider")],
      ["Paid by", h.get("x-byok-paid-by")], ["Key", h.get("x-byok-key-id") || "–"]];
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let first = null;
    let usage = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.usage) usage = chunk.usage;
          const piece = chunk.choices?.[0]?.delta?.content;
          if (piece) {
            if (first === null) first = performance.now() - started;
            out.textContent += piece;
          }
        }
      }
    }
    facts.push(["Time to first token", first === null ? "–" : `${first.toFixed(0)} ms`]);
    if (usage) facts.push(["Tokens", `${usage.prompt_tokens} in, ${usage.completion_tokens} out`]);
    meta.replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v ?? "–")]));
    say("Done.");
  } catch (err) {
    say(`${err.message} (${err.code})`, "error");
  } finally {
    $("#chat-send").disabled = false;
  }
});

// ---------------------------------------------------------------- usage

let usageDays = [];

async function loadUsage() {
  const [days, models] = await Promise.all([
    call("GET", "/api/usage?groupBy=day"),
    call("GET", "/api/usage?groupBy=model"),
  ]);
  usageDays = days.json.usage;
  renderChart(days.json.from, days.json.to);
  $("#usage-models tbody").replaceChildren(...models.json.usage.map((r) => el("tr", {},
    el("td", {}, el("code", {}, r.model)),
    el("td", {}, r.requests),
    el("td", {}, r.promptTokens + r.completionTokens),
    el("td", {}, r.costUsd === null ? "–" : r.costUsd.toFixed(4)))));
}

function measure(row) {
  const m = $("#usage-measure").value;
  if (m === "tokens") return row.promptTokens + row.completionTokens;
  if (m === "cost") return row.costUsd || 0;
  return row.requests;
}

function renderChart(from, to) {
  const days = [];
  for (let d = new Date(`${from}T00:00:00Z`); d <= new Date(`${to}T00:00:00Z`); d.setUTCDate(d.getUTCDate() + 1)) {
    days.push(d.toISOString().slice(0, 10));
  }
  const totals = days.map((day) => {
    const rows = usageDays.filter((r) => r.day === day);
    const sum = (payer) => rows.filter((r) => (r.paidBy || "user") === payer).reduce((a, r) => a + measure(r), 0);
    return { day, own: sum("user"), team: sum("team") };
  });
  const max = Math.max(1, ...totals.map((t) => t.own + t.team));
  const w = 600, h = 160, bar = w / days.length;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h + 20}`);
  svg.setAttribute("role", "img");
  const total = totals.reduce((a, t) => a + t.own + t.team, 0);
  svg.setAttribute("aria-label", `${$("#usage-measure").value} per day from ${from} to ${to}: ${total} in all`);
  totals.forEach((t, i) => {
    let y = h;
    for (const [cls, v] of [["own", t.own], ["team", t.team]]) {
      if (!v) continue;
      const height = (v / max) * h;
      y -= height;
      const rect = document.createElementNS(ns, "rect");
      Object.entries({ x: i * bar + 1, y, width: Math.max(1, bar - 2), height, class: cls }).forEach(([k, val]) => rect.setAttribute(k, val));
      const title = document.createElementNS(ns, "title");
      title.textContent = `${t.day}: ${v} (${cls === "own" ? "own keys" : "team keys"})`;
      rect.append(title);
      svg.append(rect);
    }
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", 0);
  label.setAttribute("y", h + 16);
  label.textContent = `${from} … ${to} · peak ${Number(max.toFixed(4))}`;
  svg.append(label);
  $("#usage-chart").replaceChildren(svg);
}

$("#usage-measure").addEventListener("change", () => loadUsage().catch((err) => say(err.message, "error")));

// ---------------------------------------------------------------- audit

let auditCursor = null;

async function loadAudit(fresh) {
  if (fresh) {
    auditCursor = null;
    $("#audit-table tbody").replaceChildren();
  }
  const q = new URLSearchParams({ limit: "25" });
  if (auditCursor) q.set("cursor", auditCursor);
  const { json } = await call("GET", `/api/audit?${q}`);
  $("#audit-table tbody").append(...json.events.map((e) => el("tr", {},
    el("td", {}, when(e.at)), el("td", {}, e.action), el("td", {}, e.service || "–"),
    el("td", {}, e.keyId || "–"), el("td", {}, e.result || "–"))));
  auditCursor = json.nextCursor || null;
  $("#audit-more").hidden = !auditCursor;
}

$("#audit-more").addEventListener("click", () => loadAudit(false).catch((err) => say(err.message, "error")));

// ---------------------------------------------------------------- admin

async function loadAdmin() {
  const [budgets, usage] = await Promise.all([
    call("GET", "/api/admin/budgets"),
    call("GET", "/api/admin/usage?groupBy=user"),
  ]);
  const list = budgets.json.budgets.map((b) => {
    const used = b.used + b.reserved;
    const pct = b.limit ? Math.min(100, (used / b.limit) * 100) : 0;
    return el("div", { class: "budget" },
      el("p", {}, `${b.scope} ${b.id}: ${b.used} used, ${b.reserved} reserved, ${b.remaining} left of ${b.limit} ${b.type} (${b.period}${b.pauseAtLimit ? ", pauses at the limit" : ""})`),
      el("meter", { min: 0, max: 100, value: pct.toFixed(1), "aria-label": `${b.scope} ${b.id} used` }));
  });
  $("#budgets").replaceChildren(...(list.length ? list : [el("p", { class: "hint" }, "No budgets yet (PUT /api/admin/budgets/{scope}/{id}).")]));
  $("#admin-usage tbody").replaceChildren(...usage.json.usage.map((r) => el("tr", {},
    el("td", {}, r.user), el("td", {}, r.requests), el("td", {}, r.promptTokens + r.completionTokens),
    el("td", {}, r.teamCostUsd.toFixed(4)))));
}

startSession();
