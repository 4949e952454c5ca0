// The intentrec playground: a shop page on the web API (serving/web.py). Clicking an item sends a `view` event
// (the cart button an `add_to_cart`) to the collector through the API, then asks for the shopper's list, banner
// and intent signals by identity (the device), with the chosen context. An exit-intent offer shows when the
// on-site trigger rule fires. A bearer token, when the API needs one, is read from the page's #token=<token>.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const $ = (id) => document.getElementById(id);
const random = () => Math.random().toString(36).slice(2, 10);
const state = { device: "dev-" + random(), session: "web-" + random(), cart: {}, category: null, updates: 0, busy: Promise.resolve() };

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const reply = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  const data = await reply.json();
  if (!reply.ok) throw new Error(`${path}: ${reply.status} ${data.error || JSON.stringify(data)}`);
  return data;
}

function context() {
  const daypart = $("daypart");
  return { device_type: $("device").value, hour: Number(daypart.value), label: `${$("device").value} · ${daypart.options[daypart.selectedIndex].text}` };
}

function log(text) {
  const li = document.createElement("li");
  li.textContent = text;
  $("log").prepend(li);
}

function itemLine(item) {
  const li = document.createElement("li");
  li.dataset.item = item.item_id;
  li.dataset.category = item.category || "";
  li.innerHTML = `<span class="id"></span> <span class="cat"></span>`;
  li.querySelector(".id").textContent = item.item_id;
  li.querySelector(".cat").textContent = item.category ? `${item.category}${item.price != null ? " · " + item.price : ""}` : "";
  return li;
}

async function showCategory(name) {
  state.category = name;
  for (const button of $("categories").children) button.classList.toggle("active", button.dataset.category === name);
  const data = await api(`/v1/catalogue?category=${encodeURIComponent(name)}&limit=12`);
  const grid = $("items");
  grid.replaceChildren();
  for (const item of data.items) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.item = item.item_id;
    card.dataset.category = item.category;
    card.innerHTML = `<div class="id"></div><div class="cat"></div><button type="button" class="add">add to cart</button>`;
    card.querySelector(".id").textContent = item.item_id;
    card.querySelector(".cat").textContent = `${item.category}${item.price != null ? " · " + item.price : ""}`;
    card.addEventListener("click", (e) => { if (!e.target.classList.contains("add")) act("view", item); });
    card.querySelector(".add").addEventListener("click", () => act("add_to_cart", item));
    grid.append(card);
  }
}

function act(kind, item) {
  // Actions run one after another, so the lists always answer the events sent before them.
  state.busy = state.busy.then(() => send(kind, item)).catch((error) => { $("status").textContent = error.message; });
  return state.busy;
}

async function send(kind, item) {
  const ctx = context();
  const event = {
    event_id: `${state.session}-${Date.now()}-${random()}`, event_type: kind, item_id: item.item_id,
    session_id: state.session, device_id: state.device, channel: "web", device_type: ctx.device_type,
  };
  if (kind === "add_to_cart") { event.quantity = 1; state.cart[item.item_id] = (state.cart[item.item_id] || 0) + 1; }
  await api("/v1/events", { events: [event] });
  log(`${kind} ${item.item_id} (${item.category})`);
  await refresh();
}

async function refresh() {
  const ctx = context();
  $("context").textContent = ctx.label;
  const request = { identity: "device:" + state.device, device_type: ctx.device_type, hour: ctx.hour, k: 8 };
  const [recs, banners] = await Promise.all([
    api("/v1/recommend", { ...request, exclude_in_cart: true, offers: true }),
    api("/v1/banners", { ...request, k: 1 }),
  ]);
  $("recs").replaceChildren(...(recs.items || recs.item_ids.map((id) => ({ item_id: id }))).map(itemLine));
  const banner = (banners.info.banners || [])[0];
  $("banner").dataset.banner = banner ? banner.id : "";
  $("banner").textContent = banner ? banner.title : "";
  const intent = recs.info.intent || {};
  for (const row of document.querySelectorAll(".signal")) {
    const p = intent[row.dataset.signal];
    row.querySelector("meter").value = p ?? 0;
    row.querySelector("b").textContent = p == null ? "-" : p.toFixed(2);
    row.dataset.p = p ?? "";
  }
  $("next-category").replaceChildren(...(intent.next_category || []).map((c) => {
    const li = document.createElement("li");
    li.dataset.category = c.category;
    li.innerHTML = `<span></span> <span class="p"></span>`;
    li.firstChild.textContent = c.category;
    li.lastChild.textContent = c.p.toFixed(2);
    return li;
  }));
  $("cart").replaceChildren(...Object.entries(state.cart).map(([id, q]) => {
    const li = document.createElement("li");
    li.textContent = `${id} x${q}`;
    return li;
  }));
  for (const offer of recs.offers || []) {
    $("offer-items").replaceChildren(...offer.item_ids.map((id) => itemLine((recs.items || []).find((i) => i.item_id === id) || { item_id: id })));
    $("exit-offer").dataset.rule = offer.rule;
    $("exit-offer").hidden = false;
    log(`exit offer (${offer.rule}) at exit ${(intent.exit ?? 0).toFixed(2)}`);
  }
  $("status").textContent = `list ${recs.recommendation_id} · model ${recs.model_version}`;
  state.updates += 1;
  document.body.dataset.updates = String(state.updates);
  document.body.dataset.context = ctx.label;
}

function newSession() {
  state.session = "web-" + random();
  $("session").textContent = "session " + state.session;
}

async function start() {
  newSession();
  const data = await api("/v1/catalogue?limit=1");
  for (const name of data.categories) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = name;
    button.dataset.category = name;
    button.addEventListener("click", () => showCategory(name));
    $("categories").append(button);
  }
  await showCategory(data.categories[0]);
  $("context").textContent = context().label;
  for (const id of ["device", "daypart"]) {
    $(id).addEventListener("change", () => {
      log(`context: ${context().label}`);
      state.busy = state.busy.then(refresh).catch((error) => { $("status").textContent = error.message; });
    });
  }
  $("new-session").addEventListener("click", newSession);
  $("close-offer").addEventListener("click", () => { $("exit-offer").hidden = true; });
  document.body.dataset.ready = "true";
}

start().catch((error) => { $("status").textContent = error.message; });
