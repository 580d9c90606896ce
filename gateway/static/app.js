// Shop web client: hash routes over the REST API. No framework, no build step.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const view = () => $("#view");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const money = (m) => {
  if (!m || !m.currency) return "";
  const digits = m.currency === "JPY" ? 0 : 2;
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: m.currency }).format(m.amount_minor / 10 ** digits);
  } catch (_) {
    return (m.amount_minor / 10 ** digits).toFixed(digits) + " " + m.currency;
  }
};

// The shop's own picture of an item (drawn by the gateway; never an outside host).
const imgSrc = (it) => (it.image_url && it.image_url.startsWith("/")) ? it.image_url : "/img/items/" + encodeURIComponent(it.id || it.item_id) + ".svg";
const img = (it, cls) => `<img class="${cls}" src="${esc(imgSrc(it))}" alt="" loading="lazy" width="400" height="300">`;

// ---- session and cart -----------------------------------------------------------------
const session = {
  get token() { return localStorage.getItem("shop.token"); },
  get user() { try { return JSON.parse(localStorage.getItem("shop.user")); } catch (_) { return null; } },
  set(token, user) { localStorage.setItem("shop.token", token); localStorage.setItem("shop.user", JSON.stringify(user)); },
  clear() { localStorage.removeItem("shop.token"); localStorage.removeItem("shop.user"); },
};
const cart = {
  load() { try { return JSON.parse(localStorage.getItem("shop.cart")) || {}; } catch (_) { return {}; } },
  save(c) { localStorage.setItem("shop.cart", JSON.stringify(c)); renderNav(); },
  add(id, qty) { const c = cart.load(); c[id] = Math.min(1000, (c[id] || 0) + qty); cart.save(c); },
  set(id, qty) { const c = cart.load(); if (qty > 0) c[id] = Math.min(1000, qty); else delete c[id]; cart.save(c); },
  clear() { cart.save({}); },
  lines() { return Object.entries(cart.load()).map(([item_id, quantity]) => ({ item_id, quantity })); },
};

// ---- API ---------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `request failed (${status})`);
    this.status = status; this.code = e.code || "error"; this.field = e.field || null;
    // A checkout that is still being settled names its order (GET /api/orders/{id}).
    this.orderId = e.order_id || null;
  }
}
async function api(method, path, body, headers = {}, opts = {}) {
  const h = { Accept: "application/json", ...headers };
  if (body !== undefined) h["Content-Type"] = "application/json";
  if (session.token) h.Authorization = "Bearer " + session.token;
  let resp;
  try {
    resp = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { error: { code: "network", message: "The shop cannot be reached. Check your connection and try again." } });
  }
  if (resp.status === 204) return null;
  let data = null;
  try { data = await resp.json(); } catch (_) { /* empty body */ }
  if (!resp.ok) {
    if (resp.status === 401 && session.token) { session.clear(); renderNav(); }
    throw new ApiError(resp.status, data);
  }
  return opts.withHeaders ? { data, headers: resp.headers } : data;
}

// ---- flash messages ----------------------------------------------------------------------
function flash(msg, kind = "error") {
  const f = $("#flash");
  f.textContent = msg; f.className = kind; f.hidden = !msg;
}
function explain(err) {
  if (err.status === 503) return "Service unavailable: " + err.message;
  if (err.status === 504) return "The shop is slow right now: " + err.message;
  return err.message;
}

function renderNav() {
  const u = session.user;
  document.body.classList.toggle("authed", !!(session.token && u));
  $("#nav-user").textContent = u ? u.display_name : "";
  $("#cart-count").textContent = Object.values(cart.load()).reduce((a, b) => a + b, 0);
  labNav();
}

// The lab link: for an admin, and only when the shop has fault injection on (the API
// answers 404 without SHOP_FAULT_ADMIN=on, 403 to customers).
let labProbe = { token: null, ok: false };
function labNav() {
  const u = session.user, link = $("#nav-lab");
  if (!link) return;
  if (!session.token || !u || u.role !== "admin") { link.hidden = true; return; }
  if (labProbe.token === session.token) { link.hidden = !labProbe.ok; return; }
  labProbe = { token: session.token, ok: false };
  api("GET", "/api/admin/faults").then(() => { labProbe.ok = true; link.hidden = false; }, () => { link.hidden = true; });
}

// ---- views -------------------------------------------------------------------------------
async function catalog(params, nav = navigation) {
  const q = params.get("q") || "";
  const token = params.get("page") || "";
  const sort = params.get("sort") || "name_asc";
  const category = params.get("category") || "";
  $("#search-input").value = q;
  const qs = new URLSearchParams({ page_size: "12", sort });
  if (q) qs.set("q", q);
  if (category) qs.set("category", category);
  if (token) qs.set("page_token", token);
  const page = await api("GET", "/api/items?" + qs);
  if (nav !== navigation) return;
  const items = page.items.map((it) => `
    <div class="card item" data-id="${esc(it.id)}">
      <a href="#/item/${esc(it.id)}">${img(it, "thumb")}</a>
      <h3><a href="#/item/${esc(it.id)}">${esc(it.name)}</a></h3>
      <div class="muted"><a href="#/?${new URLSearchParams({ category: it.category })}">${esc(it.category)}</a> · ${esc(it.sku)}</div>
      <p class="price">${money(it.price)}</p>
      <p class="muted">${it.stock > 0 ? it.stock + " in stock" : "Out of stock"}</p>
      <button class="add" data-id="${esc(it.id)}" ${it.stock > 0 ? "" : "disabled"}>Add to cart</button>
    </div>`).join("");
  const next = page.next_page_token
    ? `<a class="button" id="next-page" href="#/?${new URLSearchParams({ q, sort, category, page: page.next_page_token })}">Next page</a>` : "";
  const prev = token ? `<button class="secondary" id="prev-page">Previous</button>` : "";
  view().innerHTML = `
    <div class="row"><h2>${q ? "Results for “" + esc(q) + "”" : category ? "Category: " + esc(category) : "Catalog"}</h2>
      ${category ? '<a href="#/" class="muted">all categories</a>' : ""}
      <label class="muted">Sort <select id="sort">
        ${["name_asc", "price_asc", "price_desc", "newest"].map((s) => `<option value="${s}" ${s === sort ? "selected" : ""}>${s.replace("_", " ")}</option>`).join("")}
      </select></label></div>
    ${items ? `<div class="grid">${items}</div>` : "<p>No items found.</p>"}
    <div class="pager">${prev}${next}</div>`;
  if ($("#prev-page")) $("#prev-page").onclick = () => history.back();
  $("#sort").onchange = (e) => { location.hash = "#/?" + new URLSearchParams({ q, category, sort: e.target.value }); };
  view().querySelectorAll("button.add").forEach((b) => b.onclick = () => { cart.add(b.dataset.id, 1); flash("Added to cart.", "ok"); });
}

async function itemPage(id, nav = navigation) {
  const it = await api("GET", "/api/items/" + encodeURIComponent(id));
  if (nav !== navigation) return;
  view().innerHTML = `
    <div class="card">
      <h2>${esc(it.name)}</h2>
      <div class="muted">${esc(it.category)} · SKU ${esc(it.sku)}</div>
      <p>${img(it, "picture")}</p>
      <p>${esc(it.description)}</p>
      <p class="price">${money(it.price)}</p>
      <p class="muted">${it.stock > 0 ? it.stock + " in stock" : "Out of stock"}</p>
      <div class="row"><input id="qty" class="w5" type="number" min="1" max="1000" value="1">
      <button id="add-to-cart" ${it.stock > 0 ? "" : "disabled"}>Add to cart</button></div>
    </div>`;
  $("#add-to-cart").onclick = () => { cart.add(it.id, Math.max(1, parseInt($("#qty").value, 10) || 1)); flash("Added to cart.", "ok"); };
}

function authForm(kind) {
  const reg = kind === "register";
  view().innerHTML = `
    <h2>${reg ? "Create an account" : "Log in"}</h2>
    <form class="stack" id="auth-form">
      ${reg ? '<label>Name <input name="display_name" id="display_name" required maxlength="64"></label>' : ""}
      <label>Email <input name="email" id="email" type="email" required></label>
      <label>Password <input name="password" id="password" type="password" required minlength="${reg ? 8 : 1}"></label>
      <button type="submit" id="auth-submit">${reg ? "Register" : "Log in"}</button>
    </form>`;
  $("#auth-form").onsubmit = async (e) => {
    e.preventDefault();
    const f = Object.fromEntries(new FormData(e.target));
    $("#auth-submit").disabled = true;
    try {
      if (reg) await api("POST", "/api/auth/register", f);
      const login = await api("POST", "/api/auth/login", { email: f.email, password: f.password });
      session.set(login.access_token, login.user);
      renderNav();
      flash(reg ? "Welcome, " + login.user.display_name + "!" : "Logged in.", "ok");
      location.hash = sessionStorage.getItem("shop.after_login") || "#/";
      sessionStorage.removeItem("shop.after_login");
    } catch (err) {
      flash(explain(err));
      $("#auth-submit").disabled = false;
    }
  };
}

async function cartPage(nav = navigation) {
  const lines = cart.lines();
  if (!lines.length) { view().innerHTML = '<h2>Cart</h2><p>Your cart is empty. <a href="#/">Browse the catalog</a>.</p>'; return; }
  let priced;
  try {
    priced = await api("POST", "/api/cart/price", { lines });
    if (nav !== navigation) return;
  } catch (err) {
    if (err.status === 404 && err.field) {
      const i = parseInt((err.field.match(/\[(\d+)\]/) || [])[1], 10);
      if (!isNaN(i)) { cart.set(lines[i].item_id, 0); flash("An item in your cart no longer exists and was removed."); return cartPage(); }
    }
    throw err;
  }
  view().innerHTML = `
    <h2>Cart</h2>
    <table id="cart-table"><tr><th>Item</th><th>Price</th><th>Qty</th><th>Total</th><th></th></tr>
    ${priced.lines.map((l) => `<tr>
      <td class="row"><a href="#/item/${esc(l.item_id)}">${img(l, "mini")}</a><a href="#/item/${esc(l.item_id)}">${esc(l.name)}</a></td><td>${money(l.unit_price)}</td>
      <td><input type="number" min="0" max="1000" value="${l.quantity}" data-id="${esc(l.item_id)}" class="qty w4"></td>
      <td>${money(l.line_total)}</td><td><button class="secondary remove" data-id="${esc(l.item_id)}">Remove</button></td></tr>`).join("")}
    <tr><th colspan="3">Total</th><th id="cart-total">${money(priced.total)}</th><th></th></tr></table>
    <p><a class="button" href="#/checkout" id="go-checkout">Checkout</a></p>`;
  view().querySelectorAll("input.qty").forEach((i) => i.onchange = () => { cart.set(i.dataset.id, parseInt(i.value, 10) || 0); cartPage().catch(showError); });
  view().querySelectorAll("button.remove").forEach((b) => b.onclick = () => { cart.set(b.dataset.id, 0); cartPage().catch(showError); });
}

// The checkout strategies (docs/architecture.md): the same order, placed by different
// chains of synchronous (or asynchronous) calls.
const STRATEGIES = [
  { id: "orchestrated", name: "Orchestrated", line: "The gateway calls each service in turn: user, stock, payment, commit, order; the answer waits for all of them." },
  { id: "parallel", name: "Parallel", line: "As orchestrated, but the user lookup and the pricing run at the same time." },
  { id: "chained", name: "Chained", line: "The gateway calls user-service, which calls payment-service, which calls item-service: each hop waits on the next." },
  { id: "async", name: "Asynchronous", line: "Accepted at once (order pending); stock and payment follow through events; the order page follows it." },
];

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function checkoutPage(nav = navigation) {
  if (!session.token) { sessionStorage.setItem("shop.after_login", "#/checkout"); location.hash = "#/login"; return; }
  const lines = cart.lines();
  if (!lines.length) { location.hash = "#/cart"; return; }
  const priced = await api("POST", "/api/cart/price", { lines });
  if (nav !== navigation) return;
  const year = new Date().getFullYear() + 3;
  view().innerHTML = `
    <h2>Checkout</h2>
    <p>Total: <strong id="checkout-total">${money(priced.total)}</strong> for ${priced.lines.length} item(s).</p>
    <form class="stack" id="pay-form">
      <label>Card number <input id="card-number" name="number" autocomplete="cc-number" value="4242 4242 4242 4242" required></label>
      <div class="row">
        <label>Month <input id="exp-month" name="exp_month" type="number" min="1" max="12" value="12" class="w5"></label>
        <label>Year <input id="exp-year" name="exp_year" type="number" value="${year}" class="w6"></label>
        <label>CVC <input id="cvc" name="cvc" value="123" class="w5"></label>
      </div>
      <fieldset class="stack" id="strategy-choice">
        <legend>How the shop places it (each is a different chain of calls behind the same button)</legend>
        ${STRATEGIES.map((st, i) => `<label class="strategy"><input type="radio" name="strategy" value="${st.id}" id="strategy-${st.id}" ${i === 0 ? "checked" : ""}>
          <strong>${esc(st.name)}</strong> <span class="muted">${esc(st.line)}</span></label>`).join("")}
      </fieldset>
      <button type="submit" id="pay">Pay ${money(priced.total)}</button>
    </form>
    <p class="muted">Test cards (click to use):</p>
    <ul class="testcards muted">
      <li data-card="4242 4242 4242 4242"><code>4242 4242 4242 4242</code> succeeds</li>
      <li data-card="4000 0000 0000 0002"><code>4000 0000 0000 0002</code> is declined</li>
      <li data-card="4000 0000 0000 9995"><code>4000 0000 0000 9995</code> has insufficient funds</li>
    </ul>`;
  view().querySelectorAll(".testcards li").forEach((li) => li.onclick = () => { $("#card-number").value = li.dataset.card; });
  $("#pay-form").onsubmit = async (e) => {
    e.preventDefault();
    const f = Object.fromEntries(new FormData(e.target));
    // Reuse the key only after an attempt whose outcome we never heard: the server then
    // returns that attempt's result instead of charging again.
    const key = sessionStorage.getItem("shop.pending_key") || newKey();
    sessionStorage.setItem("shop.pending_key", key);
    $("#pay").disabled = true;
    flash("");
    try {
      const strategy = STRATEGIES.some((st) => st.id === f.strategy) ? f.strategy : "orchestrated";
      const startedAt = Date.now();
      const t0 = performance.now();
      const res = await api("POST", "/api/checkout?strategy=" + strategy, {
        lines, card: { number: f.number, exp_month: parseInt(f.exp_month, 10) || 0, exp_year: parseInt(f.exp_year, 10) || 0, cvc: f.cvc },
      }, { "Idempotency-Key": key }, { withHeaders: true });
      const out = res.data;
      timings.save(out.order.id, {
        strategy, startedAt, clientMs: performance.now() - t0,
        header: res.headers.get("server-timing") || "", status: out.order.status,
      });
      sessionStorage.removeItem("shop.pending_key");
      cart.clear();
      flash(out.order.status !== "pending" ? "Thank you! Order placed."
        : strategy === "async" ? "Order accepted. It is being reserved and paid; this page follows it."
        : "Payment taken. Your order is being completed; this page updates when it is.", "ok");
      location.hash = "#/order/" + out.order.id;
    } catch (err) {
      if (err.status !== 0 && err.status !== 504) sessionStorage.removeItem("shop.pending_key");
      if (err.code === "out_of_stock") {
        // Name the item instead of its id.
        let msg = err.message;
        priced.lines.forEach((l) => { msg = msg.split("item " + l.item_id).join("“" + l.name + "”"); });
        err.message = "Out of stock: " + msg;
      }
      flash(explain(err));
      if (err.orderId) {
        // The outcome is being settled in the background: show where it stands.
        cart.clear();
        location.hash = "#/order/" + err.orderId;
        return;
      }
      $("#pay").disabled = false;
    }
  };
}

// ---- how a checkout ran: the Server-Timing header as a waterfall -------------------------
// The gateway answers every request with `Server-Timing`: call.<svc>.<Method> (a call as
// its caller saw it), handler.<svc>.<Method> (inside the server), store.<store> with n
// round trips, gateway.self and total (docs/observability.md). The header holds sums, not
// start times: the waterfall lays the gateway's calls end to end in the order the strategy
// makes them (the parallel strategy's user check and pricing side by side), and draws the
// chained flow's inner calls inside the handler that made them.
const timings = {
  key: (id) => "shop.timing." + id,
  load(id) { try { return JSON.parse(localStorage.getItem(timings.key(id))); } catch (_) { return null; } },
  save(id, rec) {
    try {
      localStorage.setItem(timings.key(id), JSON.stringify(rec));
      // Keep this browser's last 50 records.
      const keys = Object.keys(localStorage).filter((k) => k.startsWith("shop.timing."));
      if (keys.length > 50) {
        keys.map((k) => [k, (timings.load(k.slice(12)) || {}).startedAt || 0]).sort((a, b) => a[1] - b[1])
          .slice(0, keys.length - 50).forEach(([k]) => localStorage.removeItem(k));
      }
    } catch (_) { /* storage full or off: the record is a nicety */ }
  },
};

function parseServerTiming(header) {
  const out = [];
  for (const item of String(header || "").split(",")) {
    const [name, ...params] = item.trim().split(";");
    if (!name || !/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(name.trim())) continue;
    let ms = null, n = 1;
    for (const p of params) {
      const [k, v] = p.split("=").map((x) => (x || "").trim().replace(/^"|"$/g, ""));
      if (k === "dur" && isFinite(parseFloat(v)) && parseFloat(v) >= 0) ms = parseFloat(v);
      if (k === "n") n = parseInt(v, 10) || 1;
    }
    if (ms !== null) out.push({ name: name.trim(), ms, n });
  }
  return out;
}

// The order in which the strategies make their calls (unknown ones follow, by name).
const CALL_ORDER = ["user.ValidateToken", "item.BatchGetItems", "user.GetUser", "user.BeginCheckout", "user.RequestCheckout",
  "user.ChainedCheckout", "payment.ChainedCharge", "item.ReserveStock", "payment.Charge", "item.CommitReservation",
  "item.ReleaseReservation", "payment.Refund", "user.AdvanceCheckout"];
const PARALLEL_PAIR = ["user.ValidateToken", "item.BatchGetItems"];
const STRATEGY_NAMES = { orchestrated: "Orchestrated", parallel: "Parallel", chained: "Chained", async: "Asynchronous" };

// Rows of the waterfall: {kind, label, start, ms, net, handler, n, depth} in ms.
function waterfall(metrics, strategy) {
  const by = Object.fromEntries(metrics.map((m) => [m.name, m]));
  const total = by.total ? by.total.ms : 0;
  const calls = metrics.filter((m) => m.name.startsWith("call.")).map((m) => {
    const hop = m.name.slice(5);
    const h = by["handler." + hop];
    return { hop, ms: m.ms, n: m.n, handler: h ? Math.min(h.ms, m.ms) : null };
  });
  const rank = (c) => { const i = CALL_ORDER.indexOf(c.hop); return i < 0 ? CALL_ORDER.length : i; };
  calls.sort((a, b) => rank(a) - rank(b) || a.hop.localeCompare(b.hop));
  // Who made each call: the gateway, or (chained) the handler of the hop before.
  const parentOf = (c) => {
    if (c.hop === "payment.ChainedCharge" && by["call.user.ChainedCheckout"]) return "user.ChainedCheckout";
    if (c.hop.startsWith("item.") && by["call.payment.ChainedCharge"]) return "payment.ChainedCharge";
    return null;
  };
  const rows = [];
  const place = (parent, start, depth) => {
    let t = start;
    const kids = calls.filter((c) => parentOf(c) === parent);
    const done = new Set();
    for (const k of kids) {
      if (done.has(k)) continue;
      // The parallel strategy checks the user and prices the cart at the same time.
      const group = strategy === "parallel" && parent === null && PARALLEL_PAIR.includes(k.hop)
        ? kids.filter((c) => PARALLEL_PAIR.includes(c.hop)) : [k];
      let width = 0;
      for (const c of group) {
        done.add(c);
        const net = c.handler === null ? null : c.ms - c.handler;
        rows.push({ kind: "call", label: c.hop, start: t, ms: c.ms, net, handler: c.handler, n: c.n, depth });
        // Inner calls sit inside this call's handler, after half its network time.
        place(c.hop, t + (net === null ? 0 : net / 2), depth + 1);
        width = Math.max(width, c.ms);
      }
      t += width;
    }
    return t;
  };
  const end = place(null, 0, 0);
  const self = by["gateway.self"];
  if (self) rows.push({ kind: "self", label: "gateway (its own time)", start: end, ms: self.ms, n: self.n, depth: 0 });
  const stores = metrics.filter((m) => m.name.startsWith("store."))
    .map((m) => ({ kind: "store", label: m.name.slice(6), start: 0, ms: m.ms, n: m.n, depth: 0 }));
  const callCount = calls.reduce((a, c) => a + c.n, 0);
  return { rows, stores, total, callCount };
}

const fmtMs = (ms) => (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1)) + " ms";

function renderHowItRan(el, rec, settling) {
  if (!el) return;
  if (!rec) { el.innerHTML = ""; return; }
  const w = waterfall(parseServerTiming(rec.header), rec.strategy);
  const scale = Math.max(w.total, ...w.rows.map((r) => r.start + r.ms), 0.001);
  const pct = (x) => Math.max(0, Math.min(100, (x / scale) * 100));
  const row = (r) => {
    const detail = r.kind === "call" && r.handler !== null
      ? `${fmtMs(r.ms)}: network ${fmtMs(r.net)}, handler ${fmtMs(r.handler)}`
      : r.kind === "store" ? `${fmtMs(r.ms)} in ${r.n} round trip${r.n === 1 ? "" : "s"}` : fmtMs(r.ms);
    return `<div class="wf-row wf-${r.kind} wf-depth-${Math.min(r.depth, 3)}" data-kind="${r.kind}" data-label="${esc(r.label)}"
        data-start="${r.start.toFixed(3)}" data-ms="${r.ms.toFixed(3)}" data-depth="${r.depth}">
      <div class="wf-label">${esc(r.label)}${r.n > 1 && r.kind === "call" ? " ×" + r.n : ""}</div>
      <div class="wf-track"><div class="wf-bar"${r.kind === "call" && r.handler !== null ? ` data-net="${r.net.toFixed(3)}"` : ""}>${
        r.kind === "call" && r.handler !== null ? '<span class="wf-net"></span><span class="wf-handler"></span>' : ""}</div></div>
      <div class="wf-ms">${esc(detail)}</div></div>`;
  };
  const asyncLine = rec.strategy === "async"
    ? `<p id="async-times">Time to the answer (order accepted): <strong>${fmtMs(w.total)}</strong> at the gateway, ${fmtMs(rec.clientMs || 0)} in this browser.
       Time to the completed order: <strong id="async-completed">${rec.completedMs !== undefined ? fmtMs(rec.completedMs) + (rec.finalStatus && rec.finalStatus !== "placed" ? " (" + esc(rec.finalStatus) + ")" : "")
         : settling ? "still being completed…" : "not followed in this browser"}</strong>.</p>` : "";
  el.innerHTML = `<h3>How this checkout ran</h3>
    <p class="muted">This browser's record of the checkout's answer (its <code>Server-Timing</code> header, the services' own measurements).</p>
    <p>Strategy: <strong id="wf-strategy">${esc(STRATEGY_NAMES[rec.strategy] || rec.strategy)}</strong> · <span id="wf-calls">${w.callCount}</span> call${w.callCount === 1 ? "" : "s"} ·
      total <strong id="wf-total" data-ms="${w.total.toFixed(3)}">${fmtMs(w.total)}</strong></p>
    ${asyncLine}
    <div class="waterfall" id="waterfall">
      ${w.rows.map(row).join("")}
      <div class="wf-row wf-total"><div class="wf-label">total</div><div class="wf-track"><div class="wf-bar"></div></div><div class="wf-ms">${fmtMs(w.total)}</div></div>
      ${w.stores.length ? '<div class="wf-heading">Stores (summed over every service, with round trips)</div>' + w.stores.map(row).join("") : ""}
    </div>
    <p class="muted wf-legend"><span class="wf-key wf-net"></span> network (call as the caller saw it minus the handler)
      <span class="wf-key wf-handler"></span> handler <span class="wf-key wf-selfkey"></span> gateway's own time <span class="wf-key wf-storekey"></span> store</p>`;
  // Geometry from JS (no inline style attributes: CSP-friendly).
  const rowsEls = el.querySelectorAll(".wf-row");
  rowsEls.forEach((re) => {
    const bar = re.querySelector(".wf-bar");
    if (re.classList.contains("wf-total")) { bar.style.left = "0%"; bar.style.width = pct(w.total) + "%"; return; }
    const start = parseFloat(re.dataset.start), ms = parseFloat(re.dataset.ms);
    bar.style.left = pct(start) + "%";
    bar.style.width = Math.max(0.4, pct(ms)) + "%";
    if (bar.dataset.net !== undefined && ms > 0) {
      const net = parseFloat(bar.dataset.net);
      bar.querySelector(".wf-net").style.width = (net / ms) * 100 + "%";
      bar.querySelector(".wf-handler").style.width = (1 - net / ms) * 100 + "%";
    }
  });
}

// ---- the lab: fault injection for admins -------------------------------------------------
// Sets rules through PUT /api/admin/faults (docs/fault-injection.md): a gRPC method path
// for a service's method, a route key for the gateway's own, "card-gateway:" and a route
// key for the card processor's; the gateway passes each to the process it names.
const LAB_METHODS = {
  "item-service": ["/shop.item.v1.ItemService/", ["ReserveStock", "CommitReservation", "ReleaseReservation", "BatchGetItems", "GetItem", "ListItems"]],
  "payment-service": ["/shop.payment.v1.PaymentService/", ["Charge", "ChainedCharge", "Refund", "GetPayment"]],
  "user-service": ["/shop.user.v1.UserService/", ["ValidateToken", "BeginCheckout", "AdvanceCheckout", "ChainedCheckout", "RequestCheckout", "GetOrder", "ListOrders"]],
  "gateway": ["", ["POST /api/checkout", "GET /api/items", "GET /api/orders/{id}", "POST /api/cart/price"]],
  "card-gateway": ["card-gateway:", ["POST /v1/charges", "POST /v1/refunds", "POST /v1/tokens"]],
};
// A hang: the longest delay a rule allows; the caller's deadline gives up first.
const HANG_MS = 60000;

function describeRule(r) {
  const parts = [];
  const l = r.latency;
  if (l) {
    if (l.kind === "fixed") parts.push(l.ms >= HANG_MS ? "hang (60 s)" : `+${l.ms} ms`);
    else if (l.kind === "uniform") parts.push(`+${l.min_ms}–${l.max_ms} ms`);
    else if (l.kind === "tail") parts.push(`${(l.probability * 100).toFixed(1)}% +${l.delay_ms} ms`);
    else parts.push(JSON.stringify(l));
  }
  if (r.error_rate > 0) parts.push(`${Math.round(r.error_rate * 100)}% errors`);
  return parts.join(", ") || "no effect";
}

async function labPage(nav = navigation) {
  if (!session.token) { sessionStorage.setItem("shop.after_login", "#/lab"); location.hash = "#/login"; return; }
  let rules;
  try {
    rules = await api("GET", "/api/admin/faults");
  } catch (err) {
    if (nav !== navigation) return;
    view().innerHTML = err.status === 404
      ? '<h2>Lab</h2><p id="lab-off">Fault injection is off in this shop. Start it with <code>SHOP_FAULT_ADMIN=on</code> (see the README) to use the lab.</p>'
      : err.status === 403 ? '<h2>Lab</h2><p id="lab-forbidden">The lab is for admins.</p>' : "";
    if (err.status !== 404 && err.status !== 403) throw err;
    return;
  }
  if (nav !== navigation) return;
  const services = Object.keys(LAB_METHODS);
  view().innerHTML = `<h2>Lab: make a hop slow or flaky</h2>
    <p class="muted">Rules apply to every request right away, for everyone using this shop. Add one, then
      <a href="#/">buy something</a> and look at the waterfall under “How this checkout ran”.</p>
    <form class="stack card" id="lab-form">
      <div class="row">
        <label>Service <select id="lab-service">${services.map((sv) => `<option>${esc(sv)}</option>`).join("")}</select></label>
        <label>Method <select id="lab-method"></select></label>
      </div>
      <div class="row">
        <label><input type="radio" name="kind" value="latency" id="lab-kind-latency" checked> Latency</label>
        <input id="lab-ms" type="number" min="1" max="60000" value="200" class="w6" aria-label="milliseconds"> ms
        <label><input type="radio" name="kind" value="error" id="lab-kind-error"> Error rate</label>
        <input id="lab-rate" type="number" min="1" max="100" value="50" class="w5" aria-label="percent"> %
        <label><input type="radio" name="kind" value="hang" id="lab-kind-hang"> Hang (60 s: the caller's deadline gives up first)</label>
      </div>
      <div class="row"><button type="submit" id="lab-add">Add rule</button>
        <button type="button" class="secondary" id="lab-clear">Clear all rules</button></div>
    </form>
    <h3>Active rules</h3>
    <div id="lab-rules"></div>`;
  const methodSel = $("#lab-method");
  const fillMethods = () => {
    const [, names] = LAB_METHODS[$("#lab-service").value];
    methodSel.innerHTML = names.map((m) => `<option value="${esc(m)}">${esc(m)}</option>`).join("");
  };
  $("#lab-service").onchange = fillMethods;
  fillMethods();
  const show = (rs) => {
    rules = rs;
    $("#lab-rules").innerHTML = rs.length
      ? `<table id="lab-rules-table"><tr><th>Method</th><th>Effect</th><th></th></tr>${rs.map((r, i) => `<tr class="lab-rule">
          <td><code>${esc(r.method)}</code></td><td>${esc(describeRule(r))}</td>
          <td><button class="secondary lab-remove" data-i="${i}">Remove</button></td></tr>`).join("")}</table>`
      : '<p id="lab-none" class="muted">No rules: every hop runs as normal.</p>';
    $("#lab-rules").querySelectorAll(".lab-remove").forEach((b) => b.onclick = () => put(rules.filter((_, i) => i !== parseInt(b.dataset.i, 10))));
  };
  const put = async (rs) => {
    try { show(await api("PUT", "/api/admin/faults", rs)); flash("Rules updated.", "ok"); } catch (err) { flash(explain(err)); }
  };
  $("#lab-form").onsubmit = (e) => {
    e.preventDefault();
    const sv = $("#lab-service").value;
    const method = LAB_METHODS[sv][0] + methodSel.value;
    const kind = (view().querySelector("input[name=kind]:checked") || {}).value;
    const rule = { method, latency: null, error_rate: 0 };
    if (kind === "latency") rule.latency = { kind: "fixed", ms: Math.max(1, Math.min(HANG_MS, parseInt($("#lab-ms").value, 10) || 0)) };
    if (kind === "error") rule.error_rate = Math.max(0, Math.min(100, parseFloat($("#lab-rate").value) || 0)) / 100;
    if (kind === "hang") rule.latency = { kind: "fixed", ms: HANG_MS };
    // One rule per method: the first match wins, so the new one replaces an old one.
    put([rule, ...rules.filter((r) => r.method !== method)]);
  };
  $("#lab-clear").onclick = () => put([]);
  show(rules);
}

// What each state of a checkout means for the customer.
const ORDER_STATES = {
  placed: "Placed and paid.",
  refunded: "Refunded.",
  pending: "Being completed: the shop is confirming your payment and stock. This page updates by itself.",
  cancelling: "Cancelled: any payment is being refunded and the stock released. This page updates by itself.",
  cancelled: "Cancelled: nothing was kept (no charge, or the charge was refunded).",
};

async function ordersPage(params, nav = navigation) {
  if (!session.token) { sessionStorage.setItem("shop.after_login", "#/orders"); location.hash = "#/login"; return; }
  const qs = new URLSearchParams({ page_size: "20" });
  if (params.get("page")) qs.set("page_token", params.get("page"));
  const page = await api("GET", "/api/orders?" + qs);
  if (nav !== navigation) return;
  view().innerHTML = `<h2>Your orders</h2>
    ${page.orders.length ? `<table id="orders-table"><tr><th>Order</th><th>Date</th><th>Items</th><th>Total</th><th>Status</th></tr>
    ${page.orders.map((o) => `<tr class="order-row"><td><a href="#/order/${esc(o.id)}">${esc(o.id.slice(0, 8))}</a></td>
      <td>${esc(new Date(o.created_at).toLocaleString())}</td><td>${o.lines.map((l) => esc(l.name) + " × " + l.quantity).join(", ")}</td>
      <td>${money(o.total)}</td><td>${esc(o.status)}</td></tr>`).join("")}</table>` : "<p>No orders yet.</p>"}
    ${page.next_page_token ? `<p><a class="button" href="#/orders?${new URLSearchParams({ page: page.next_page_token })}">Older orders</a></p>` : ""}`;
}

// What the customer has been charged, from the order's state and its payment: never
// "unavailable" for a charge that has not happened yet.
function paymentLine(o, p) {
  const card = p && p.card_brand ? `${p.card_brand} •••• ${p.card_last4}` : "your card";
  if (p) {
    switch (p.status) {
      case "succeeded": return `Paid with ${card}.`;
      case "pending": return `Charging ${card}…`;
      case "refunded": return `Charged to ${card}, then refunded.`;
      case "declined": return `Not charged: ${card} was declined${p.decline_code ? " (" + p.decline_code.replaceAll("_", " ") + ")" : ""}.`;
      case "failed": return `Not charged: the charge to ${card} failed.`;
      default: return `Payment: ${p.status}.`;
    }
  }
  if (o.status === "pending") return o.priced ? "Charging your card…" : "Not charged yet: the stock is reserved first, then your card is charged.";
  if (o.status === "cancelled") return "Not charged.";
  if (o.status === "cancelling") return "Any charge is being refunded.";
  return "Payment details are unavailable right now.";
}

async function orderPage(id, nav = navigation) {
  const d = await api("GET", "/api/orders/" + encodeURIComponent(id));
  if (nav !== navigation) return;
  const o = d.order, p = d.payment;
  // An order not priced yet holds items and quantities; the gateway names them with the
  // catalog's current prices, which the order fixes when its stock is reserved.
  const catalogTotal = d.lines_from_catalog && o.lines.length && o.lines.every((l) => l.line_total && l.line_total.currency === o.lines[0].line_total.currency)
    ? { amount_minor: o.lines.reduce((a, l) => a + l.line_total.amount_minor, 0), currency: o.lines[0].line_total.currency } : null;
  const settling = o.status === "pending" || o.status === "cancelling";
  // An accepted checkout moves on without us: accepted -> stock reserved (priced) -> paid.
  const step = o.status !== "pending" ? "" : o.priced ? "Stock reserved; taking the payment." : "Accepted; reserving the stock.";
  view().innerHTML = `<h2>Order <span id="order-id">${esc(o.id.slice(0, 8))}</span></h2>
    <p>Status: <strong id="order-status">${esc(o.status)}</strong> · ${esc(new Date(o.created_at).toLocaleString())}</p>
    <p id="order-explained" class="muted">${esc(ORDER_STATES[o.status] || "")}${o.failure ? ` (${esc(o.failure.replaceAll("_", " "))})` : ""}</p>
    ${step ? `<p id="order-step">${esc(step)}</p>` : ""}
    <table><tr><th>Item</th><th>Price</th><th>Qty</th><th>Total</th></tr>
    ${o.lines.map((l) => `<tr class="order-line"><td>${esc(l.name || "item " + l.item_id)}</td><td>${money(l.unit_price)}</td><td>${l.quantity}</td><td>${money(l.line_total)}</td></tr>`).join("")}
    <tr><th colspan="3">Total</th><th id="order-total">${o.priced ? money(o.total) : catalogTotal ? money(catalogTotal) : "—"}</th></tr></table>
    ${d.lines_from_catalog ? '<p class="muted" id="order-prices-note">Prices are the catalog’s now; the order fixes them when its stock is reserved.</p>' : ""}
    <p class="muted" id="order-payment">${esc(paymentLine(o, p))}</p>
    <p><a href="#/orders">All orders</a></p>
    <section id="how-it-ran"></section>`;
  const rec = timings.load(o.id);
  if (rec && !settling && rec.completedMs === undefined && rec.status === "pending") {
    // Followed to its end in this browser: the time from the click to the completed order.
    rec.completedMs = Date.now() - rec.startedAt;
    rec.finalStatus = o.status;
    timings.save(o.id, rec);
  }
  renderHowItRan($("#how-it-ran"), rec, settling);
  if (settling) {
    setTimeout(() => { if (location.hash === "#/order/" + id) orderPage(id).catch(() => {}); }, o.status === "pending" ? 1000 : 2000);
  }
}

function showError(err) {
  flash(explain(err));
  if (!view().innerHTML.trim() || view().textContent.trim() === "Loading…") view().innerHTML = "<p>Something went wrong.</p>";
}

// Each navigation's number. A page draws after awaiting its data; by then the user may have
// gone elsewhere, so it draws only while its navigation is still the latest (a slow page
// the user left must not finish last and draw over the current one).
let navigation = 0;

async function route() {
  const nav = ++navigation;
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  renderNav();
  try {
    switch (parts[0] || "") {
      case "": return await catalog(params);
      case "item": return await itemPage(parts[1]);
      case "login": return authForm("login");
      case "register": return authForm("register");
      case "logout": session.clear(); renderNav(); flash("Logged out.", "ok"); location.hash = "#/"; return;
      case "cart": return await cartPage();
      case "checkout": return await checkoutPage();
      case "orders": return await ordersPage(params);
      case "order": return await orderPage(parts[1]);
      case "lab": return await labPage();
      default: view().innerHTML = "<p>Page not found.</p>";
    }
  } catch (err) {
    if (nav === navigation) showError(err);
  }
}

$("#search-form").onsubmit = (e) => {
  e.preventDefault();
  const q = $("#search-input").value.trim();
  location.hash = "#/?" + new URLSearchParams(q ? { q } : {});
};
window.addEventListener("hashchange", () => { if (!location.hash.startsWith("#/checkout")) flashClearSoon(); route(); });
function flashClearSoon() { const f = $("#flash"); if (f.className === "ok") setTimeout(() => { if (f.className === "ok") f.hidden = true; }, 3000); }
route();
