// End-to-end: the web shop in headless Chromium against a running shop (SHOP_URL).
// register -> search -> add to cart -> checkout -> the order in the history; then a
// declined card. Screenshots go to SCREENSHOT_DIR (default target/e2e-screenshots).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.SHOP_URL;
const ADMIN_EMAIL = process.env.E2E_ADMIN_EMAIL;
const SHOTS = process.env.SCREENSHOT_DIR || path.resolve("../../target/e2e-screenshots");
const PASSWORD = "e2e password 123";
const RUN = Math.random().toString(36).slice(2, 8);
const ITEM = `Teapot ${RUN}`;
let teapotId, teacupId;
// Requests the browser made to any other origin (there must be none: no outside images).
const foreign = [];
const cspViolations = [];
// Stock as GetItem reports it (list pages may show stock up to their cache TTL late).
const stockOf = async () => (await api("GET", "/api/items/" + teapotId)).body.stock;

let browser, page, userDir, adminToken;
let shot = 0;

async function screenshot(name) {
  shot += 1;
  const file = path.join(SHOTS, `${String(shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
}

async function api(method, p, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(BASE + p, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

before(async () => {
  assert.ok(BASE, "SHOP_URL must point at a running shop");
  assert.ok(ADMIN_EMAIL, "E2E_ADMIN_EMAIL must be an account the operator made admin (user-service admin grant)");
  fs.mkdirSync(SHOTS, { recursive: true });
  // Catalog setup through the REST API as the admin run.sh registered and granted.
  let r = await api("POST", "/api/auth/register", { email: ADMIN_EMAIL, password: PASSWORD, display_name: "Admin" });
  assert.ok(r.status === 201 || r.status === 409, JSON.stringify(r.body));
  r = await api("POST", "/api/auth/login", { email: ADMIN_EMAIL, password: PASSWORD });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  const admin = r.body.access_token;
  adminToken = admin;
  for (const [name, price, stock] of [[ITEM, 1999, 5], [`Teacup ${RUN}`, 650, 20]]) {
    r = await api("POST", "/api/items", {
      sku: `E2E-${RUN}-${name.split(" ")[0]}`.toUpperCase(), name, description: "Made for the end-to-end test.",
      category: "kitchen", price: { amount_minor: price, currency: "USD" }, stock,
    }, admin);
    assert.equal(r.status, 201, JSON.stringify(r.body));
    if (name === ITEM) teapotId = r.body.id;
    else teacupId = r.body.id;
  }
  userDir = fs.mkdtempSync(path.join(os.tmpdir(), "shop-e2e-chromium-"));
  // A fresh profile (--user-data-dir) per run: playwright passes it for a persistent context.
  browser = await chromium.launchPersistentContext(userDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1200, height: 900 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  browser.on("request", (req) => {
    const u = req.url();
    if (!u.startsWith(BASE + "/") && !u.startsWith("data:") && !u.startsWith("blob:")) foreign.push(u);
  });
  page = browser.pages()[0] || (await browser.newPage());
  // The page runs under the shop's Content-Security-Policy: anything it refuses is a bug.
  page.on("console", (m) => { if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text()); });
  page.setDefaultTimeout(15000);
});

after(async () => {
  if (browser) await browser.close();
  if (userDir) fs.rmSync(userDir, { recursive: true, force: true });
});

test("register, search, add to cart, checkout, see the order", async () => {
  await page.goto(BASE + "/");
  await page.waitForSelector(".grid, main p");
  await screenshot("catalog");

  await page.click("#nav-register");
  await page.fill("#display_name", "E2E Shopper");
  await page.fill("#email", SHOPPER_EMAIL);
  await page.fill("#password", PASSWORD);
  await page.click("#auth-submit");
  await page.waitForSelector("#nav-user:has-text('E2E Shopper')");
  await screenshot("registered");

  await page.fill("#search-input", ITEM);
  await page.click("#search-button");
  const card = page.locator(".item", { hasText: ITEM });
  await card.waitFor();
  await screenshot("search");
  await card.locator("button.add").click();
  await page.waitForSelector("#flash.ok");
  assert.equal(await page.textContent("#cart-count"), "1");

  await page.click("#nav-cart");
  await page.waitForSelector("#cart-table");
  assert.match(await page.textContent("#cart-total"), /19\.99/);
  await screenshot("cart");

  await page.click("#go-checkout");
  await page.waitForSelector("#pay-form");
  assert.match(await page.textContent("main"), /4242 4242 4242 4242/);
  await screenshot("checkout");
  await page.click("#pay");
  await page.waitForSelector("#order-status");
  assert.equal(await page.textContent("#order-status"), "placed");
  assert.match(await page.textContent("#flash"), /Order placed/);
  await screenshot("order-placed");

  await page.click("#nav-orders");
  await page.waitForSelector("#orders-table");
  assert.match(await page.textContent("#orders-table"), new RegExp(ITEM));
  await screenshot("order-history");
});

test("a declined card is explained and nothing is bought", async () => {
  await page.fill("#search-input", ITEM);
  await page.click("#search-button");
  const card = page.locator(".item", { hasText: ITEM });
  await card.waitFor();
  const before = await stockOf();
  await card.locator("button.add").click();
  await page.click("#nav-cart");
  await page.waitForSelector("#cart-table");
  await page.click("#go-checkout");
  await page.waitForSelector("#pay-form");
  await page.click(".testcards li[data-card='4000 0000 0000 0002']");
  await page.click("#pay");
  await page.waitForSelector("#flash.error");
  assert.match(await page.textContent("#flash"), /declined/i);
  await screenshot("declined");
  // Still in the cart, stock unchanged.
  assert.equal(await page.textContent("#cart-count"), "1");
  await page.fill("#search-input", ITEM);
  await page.click("#search-button");
  await card.waitFor();
  assert.equal(await stockOf(), before);
  const orders = await page.evaluate(async () => {
    const r = await fetch("/api/orders", { headers: { Authorization: "Bearer " + localStorage.getItem("shop.token") } });
    return (await r.json()).orders.length;
  });
  assert.equal(orders, 1);
});

test("out of stock and an unavailable service are explained", async () => {
  // The cart still holds the teapot from the declined attempt: ask for more than there is.
  await page.click("#nav-cart");
  await page.waitForSelector("#cart-table");
  await page.locator("input.qty").first().fill("50");
  await page.locator("input.qty").first().press("Tab");
  await page.waitForFunction(() => document.querySelector("#cart-count")?.textContent === "50");
  await page.waitForSelector("#cart-table");
  await page.click("#go-checkout");
  await page.waitForSelector("#pay-form");
  await page.click("#pay");
  await page.waitForSelector("#flash.error");
  assert.match(await page.textContent("#flash"), /Out of stock/);
  assert.match(await page.textContent("#flash"), new RegExp(ITEM));
  await screenshot("out-of-stock");

  // The gateway's own fault injection makes checkout unavailable.
  let r = await api("PUT", "/api/admin/faults", [{ method: "POST /api/checkout", error_rate: 1.0 }], adminToken);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  try {
    await page.locator("input.qty").count();
    await page.click("#nav-cart");
    await page.waitForSelector("#cart-table");
    await page.locator("input.qty").first().fill("1");
    await page.locator("input.qty").first().press("Tab");
    await page.waitForFunction(() => document.querySelector("#cart-count")?.textContent === "1");
    await page.click("#go-checkout");
    await page.waitForSelector("#pay-form");
    await page.click("#pay");
    await page.waitForSelector("#flash.error");
    assert.match(await page.textContent("#flash"), /Service unavailable/);
    await screenshot("unavailable");
  } finally {
    r = await api("PUT", "/api/admin/faults", [], adminToken);
    assert.equal(r.status, 200);
  }
});

test("a slow page the user has left does not draw over the page they went to", async () => {
  // The catalog's data takes a second (the gateway's own fault rule); the user moves on
  // before it comes.
  let r = await api("PUT", "/api/admin/faults", [{ method: "GET /api/items", latency: { kind: "fixed", ms: 1000 } }], adminToken);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  try {
    const slow = page.waitForResponse((res) => res.url().includes("/api/items?"));
    await page.evaluate(() => { location.hash = "#/?q=teapot"; });
    await page.evaluate(() => { location.hash = "#/nowhere"; });
    await page.waitForSelector("#view:has-text('Page not found')");
    // The catalog's answer arrives while the user is elsewhere: it must not be drawn.
    await slow;
    const drawn = await page.waitForSelector("#view .grid", { timeout: 3000 }).then(() => true, () => false);
    assert.equal(drawn, false, "the catalog drew over the page the user went to");
  } finally {
    r = await api("PUT", "/api/admin/faults", [], adminToken);
    assert.equal(r.status, 200);
  }
});

test("an asynchronous checkout is accepted at once and the order page follows it to paid", async () => {
  // The cart still holds one teapot from the attempt above.
  await page.click("#nav-cart");
  await page.waitForSelector("#cart-table");
  await page.click("#go-checkout");
  await page.waitForSelector("#pay-form");
  await page.check("#strategy-async");
  await page.click("#pay");
  await page.waitForSelector("#order-status");
  assert.match(await page.textContent("#flash"), /Order accepted/);
  await screenshot("async-accepted");
  // The page refreshes itself while the order is pending; the events complete it.
  await page.waitForFunction(() => document.querySelector("#order-status")?.textContent === "placed", null, { timeout: 30000 });
  assert.match(await page.textContent("#order-explained"), /Placed and paid/);
  await screenshot("async-placed");
});

// ---- the lesson in the browser: pictures, the pending order, strategies, waterfall, lab ----

const origin = () => new URL(BASE).origin;

async function imagesLoaded(sel) {
  await page.waitForFunction((s) => {
    const imgs = [...document.querySelectorAll(s)];
    return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
  }, sel);
  return page.$$eval(sel, (els) => els.map((e) => e.currentSrc || e.src));
}

test("every picture is the shop's own and cached", async () => {
  await page.goto(BASE + "/#/?" + new URLSearchParams({ q: `Teacup ${RUN}` }));
  await page.waitForSelector(".grid img.thumb");
  for (const src of await imagesLoaded(".grid img.thumb")) {
    assert.equal(new URL(src).origin, origin(), src);
    assert.match(new URL(src).pathname, /^\/img\/items\/[0-9a-f]{24}\.svg$/);
  }
  await screenshot("pictures-catalog");
  await page.goto(BASE + "/#/item/" + teacupId);
  const [pic] = await imagesLoaded("img.picture");
  assert.equal(new URL(pic).origin, origin());
  await page.click("#add-to-cart");
  await page.click("#nav-cart");
  await page.waitForSelector("#cart-table");
  for (const src of await imagesLoaded("#cart-table img.mini")) assert.equal(new URL(src).origin, origin(), src);
  await screenshot("pictures-cart");
  // Cacheable: an immutable URL (with the item's version) and an ETag that revalidates.
  let r = await fetch(pic);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type"), /image\/svg\+xml/);
  assert.match(r.headers.get("cache-control") || "", /immutable/);
  const etag = r.headers.get("etag");
  assert.ok(etag, "an ETag");
  r = await fetch(BASE + new URL(pic).pathname, { headers: { "If-None-Match": etag } });
  assert.equal(r.status, 304);
  // The catalog's items name no outside host either.
  const items = (await api("GET", "/api/items?page_size=50")).body.items;
  for (const it of items) assert.ok(!/^https?:/i.test(it.image_url), it.image_url);
  assert.deepEqual(foreign, [], "requests to other origins");
  // Leave the cart empty for the next test.
  await page.evaluate(() => localStorage.setItem("shop.cart", "{}"));
});

// Checks the waterfall on the page: the calls the gateway made, laid end to end (side by
// side where they ran concurrently), plus its own time, fit within the total.
async function readWaterfall() {
  await page.waitForSelector("#waterfall");
  return page.evaluate(() => ({
    total: parseFloat(document.querySelector("#wf-total").dataset.ms),
    calls: parseInt(document.querySelector("#wf-calls").textContent, 10),
    strategy: document.querySelector("#wf-strategy").textContent,
    rows: [...document.querySelectorAll("#waterfall .wf-row[data-kind]")].map((r) => ({
      kind: r.dataset.kind, label: r.dataset.label, start: parseFloat(r.dataset.start),
      ms: parseFloat(r.dataset.ms), depth: parseInt(r.dataset.depth, 10),
    })),
  }));
}

function assertAddsUp(wf) {
  assert.ok(wf.total > 0, "a total");
  assert.ok(wf.calls >= 1, "at least one call");
  const top = wf.rows.filter((r) => (r.kind === "call" || r.kind === "self") && r.depth === 0);
  assert.ok(top.some((r) => r.kind === "call"), "a call row");
  assert.ok(top.some((r) => r.kind === "self"), "the gateway's own time");
  const end = Math.max(...top.map((r) => r.start + r.ms));
  // Each value is rounded to a microsecond in the header: a little slack.
  assert.ok(end <= wf.total * 1.01 + 0.1, `segments end at ${end} ms, after the total ${wf.total} ms`);
  assert.ok(end >= wf.total * 0.5, `segments cover ${end} of ${wf.total} ms`);
  // An inner call (chained) lies within the call that made it.
  for (const r of wf.rows.filter((x) => x.depth > 0)) {
    const parent = wf.rows.filter((p) => p.depth === r.depth - 1 && p.kind === "call" && p.start <= r.start).pop();
    assert.ok(parent && r.start + r.ms <= parent.start + parent.ms + 0.1, `${r.label} inside its caller`);
  }
  assert.ok(wf.rows.some((r) => r.kind === "store" && r.ms >= 0), "the stores");
}

const SHOPPER_EMAIL = `shopper-${RUN}@shop.test`;

async function logInAs(email) {
  if (await page.isVisible("#nav-logout")) {
    await page.click("#nav-logout");
    await page.waitForSelector("#nav-login:visible");
  }
  await page.click("#nav-login");
  await page.waitForSelector("#auth-form");
  await page.fill("#email", email);
  await page.fill("#password", PASSWORD);
  await page.click("#auth-submit");
  await page.waitForSelector("#nav-logout:visible");
}

async function buy(strategy) {
  await page.goto(BASE + "/#/item/" + teacupId);
  await page.waitForSelector("#add-to-cart");
  await page.click("#add-to-cart");
  await page.click("#nav-cart");
  await page.waitForSelector("#cart-table");
  await page.click("#go-checkout");
  await page.waitForSelector("#pay-form");
  await page.check("#strategy-" + strategy);
  await page.click("#pay");
  await page.waitForSelector("#order-status");
  return page.evaluate(() => location.hash.split("/").pop());
}

for (const [strategy, name] of [["orchestrated", "Orchestrated"], ["parallel", "Parallel"], ["chained", "Chained"], ["async", "Asynchronous"]]) {
  test(`a ${strategy} checkout shows how it ran: a waterfall within its total`, async () => {
    const orderId = await buy(strategy);
    let wf = await readWaterfall();
    assert.equal(wf.strategy, name);
    assertAddsUp(wf);
    if (strategy === "chained") {
      assert.equal(wf.rows.filter((r) => r.kind === "call" && r.depth === 0).length, 1, "the gateway calls user-service only");
      assert.ok(wf.rows.some((r) => r.label === "item.ReserveStock" && r.depth === 2), "item-service called by payment-service");
    }
    if (strategy === "parallel") {
      const v = wf.rows.find((r) => r.label === "user.ValidateToken"), p = wf.rows.find((r) => r.label === "item.BatchGetItems");
      assert.ok(v && p && v.start === p.start, "the user check and the pricing side by side");
    }
    if (strategy === "async") {
      await page.waitForFunction(() => document.querySelector("#order-status")?.textContent === "placed", null, { timeout: 30000 });
      await page.waitForFunction(() => /ms/.test(document.querySelector("#async-completed")?.textContent || ""));
      assert.match(await page.textContent("#async-times"), /Time to the answer.*ms.*Time to the completed order: \d/s);
    }
    await screenshot(`waterfall-${strategy}`);
    // This browser's record: the order page shows it again later.
    await page.click("#nav-orders");
    await page.waitForSelector("#orders-table");
    await page.goto(BASE + "/#/order/" + orderId);
    wf = await readWaterfall();
    assert.equal(wf.strategy, name);
  });
}

test("a pending asynchronous order shows its items and that nothing is charged yet", async () => {
  // Hold the checkout before item-service reserves the stock (docs/fault-injection.md).
  const hold = [{ method: "event:item-service:checkout.requested:before-handling:hang", error_rate: 1 }];
  let r = await api("PUT", "/api/admin/faults", hold, adminToken);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  try {
    await buy("async");
    assert.equal(await page.textContent("#order-status"), "pending");
    await page.waitForSelector(".order-line");
    assert.match(await page.textContent(".order-line"), new RegExp(`Teacup ${RUN}`));
    assert.match(await page.textContent(".order-line"), /6\.50/);
    assert.match(await page.textContent("#order-payment"), /Not charged yet/);
    assert.doesNotMatch(await page.textContent("main"), /unavailable/i);
    await screenshot("async-pending");
  } finally {
    r = await api("PUT", "/api/admin/faults", [], adminToken);
    assert.equal(r.status, 200);
  }
  await page.waitForFunction(() => document.querySelector("#order-status")?.textContent === "placed", null, { timeout: 30000 });
  assert.match(await page.textContent("#order-payment"), /Paid with/);
});

test("the lab adds 200 ms to item-service's ReserveStock and the next waterfall shows it", async () => {
  // Customers never see the lab.
  const customer = await page.evaluate(() => localStorage.getItem("shop.token"));
  assert.equal((await api("GET", "/api/admin/faults", undefined, customer)).status, 403);
  assert.equal(await page.isHidden("#nav-lab"), true);
  await page.goto(BASE + "/#/lab");
  await page.waitForSelector("#lab-forbidden");
  // The admin logs in and sets the rule.
  await logInAs(ADMIN_EMAIL);
  await page.waitForSelector("#nav-lab:visible");
  await page.click("#nav-lab");
  await page.waitForSelector("#lab-form");
  await page.selectOption("#lab-service", "item-service");
  await page.selectOption("#lab-method", "ReserveStock");
  await page.check("#lab-kind-latency");
  await page.fill("#lab-ms", "200");
  await page.click("#lab-add");
  await page.waitForSelector(".lab-rule");
  assert.match(await page.textContent("#lab-rules"), /\/shop\.item\.v1\.ItemService\/ReserveStock.*\+200 ms/s);
  await screenshot("lab");
  try {
    // The shopper buys (an admin's own charge is refused: an admin does not pay as one).
    await logInAs(SHOPPER_EMAIL);
    assert.equal(await page.isHidden("#nav-lab"), true);
    await buy("orchestrated");
    const wf = await readWaterfall();
    assertAddsUp(wf);
    const hop = wf.rows.find((r) => r.label === "item.ReserveStock");
    assert.ok(hop && hop.ms >= 200, `ReserveStock took ${hop && hop.ms} ms`);
    // The delay is that hop's: it is the slowest call (no fixed bound on the others).
    for (const r of wf.rows.filter((x) => x.kind === "call" && x.label !== "item.ReserveStock" && x.depth >= hop.depth)) {
      assert.ok(r.ms <= hop.ms, `${r.label} took ${r.ms} ms, more than ReserveStock's ${hop.ms} ms`);
    }
    await screenshot("lab-waterfall");
    // The admin clears the rules in the lab.
    await logInAs(ADMIN_EMAIL);
    // Straight to the lab: the page still loading after the login must not draw over it.
    await page.goto(BASE + "/#/lab");
    await page.waitForSelector("#lab-form");
    await page.click("#lab-clear");
    await page.waitForSelector("#lab-none");
  } finally {
    await api("PUT", "/api/admin/faults", [], adminToken);
  }
  assert.deepEqual((await api("GET", "/api/admin/faults", undefined, adminToken)).body, []);
  assert.deepEqual(foreign, [], "requests to other origins");
  assert.deepEqual(cspViolations, [], "content security policy violations");
});
