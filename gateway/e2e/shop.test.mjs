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
let teapotId;
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
  page = browser.pages()[0] || (await browser.newPage());
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
  await page.fill("#email", `shopper-${RUN}@shop.test`);
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
