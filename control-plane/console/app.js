// Sentinel console: a small single-page app over the control plane's REST
// API (/v1, the OpenAPI document at /v1/openapi.json). No build step, no
// dependencies: every element is built with `h()` and text is set as text,
// never parsed as HTML. Live data comes from GET /v1/events (Server-Sent
// Events, read with fetch so the token travels in a header).

const TOKEN_KEY = "sentinel.token";
const THEME_KEY = "sentinel.theme";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  me: null,        // {name, role}
  fleet: null,     // last `fleet` event: {status, nodes}
  health: null,    // last `health` event
  events: null,    // AbortController of the event stream
  listeners: new Set(),
};

// === small helpers ===

function h(tag, attrs = {}, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const time = (ms) => (ms ? new Date(ms).toLocaleString() : "—");
const ago = (ms) => {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
};
const canWrite = () => state.me && (state.me.role === "write" || state.me.role === "admin");

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const r = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${state.token}`, ...(options.body ? { "Content-Type": "application/json" } : {}) },
  });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { message: text }; }
  if (!r.ok) {
    if (r.status === 401) logout("The control plane refused the token: " + (body && body.message));
    throw new ApiError(r.status, body);
  }
  return body;
}

// === login, theme ===

function applyTheme() {
  const t = localStorage.getItem(THEME_KEY);
  if (t) document.documentElement.dataset.theme = t;
  else delete document.documentElement.dataset.theme;
}

function toggleTheme() {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  localStorage.setItem(THEME_KEY, dark ? "light" : "dark");
  applyTheme();
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.me = null;
  if (state.events) state.events.abort();
  state.events = null;
  showLogin(message);
}

function showLogin(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  setLive(null);
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true });
  const form = h("form", { class: "panel login", id: "login" },
    h("h1", {}, "Sign in"),
    h("label", { for: "token" }, "API token"),
    input,
    message ? h("p", { class: "error", role: "alert", id: "login-error" }, message) : null,
    h("button", { class: "primary", type: "submit" }, "Sign in"),
    h("p", { class: "muted" }, "A token from `sentinelctl token create NAME --role read|write|admin`. It is kept in this tab's session storage only."));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    state.token = input.value.trim();
    try {
      state.me = await api("/v1/whoami");
    } catch (err) {
      showLogin(err.status === 401 ? "The control plane refused this token." : err.message);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, state.token);
    start();
  });
  show(form);
  input.focus();
}

async function start() {
  if (!state.me) {
    try {
      state.me = await api("/v1/whoami");
    } catch (err) {
      if (err.status !== 401) showLogin(err.message);
      return;
    }
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = `${state.me.name} (${state.me.role})`;
  document.getElementById("who").dataset.role = state.me.role;
  connectEvents();
  route();
}

// === live events ===

function setLive(mode) {
  const el = document.getElementById("live");
  el.className = "live" + (mode ? " " + mode : "");
  el.textContent = mode === "on" ? "live" : mode === "lost" ? "connection lost — reconnecting…" : "";
  el.dataset.state = mode || "";
}

async function connectEvents() {
  if (state.events) state.events.abort();
  const ctl = new AbortController();
  state.events = ctl;
  let delay = 500;
  while (!ctl.signal.aborted) {
    try {
      const r = await fetch("/v1/events", { headers: { Authorization: `Bearer ${state.token}` }, signal: ctl.signal });
      if (r.status === 401) { logout("The token is no longer accepted."); return; }
      if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
      setLive("on");
      delay = 500;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          dispatch(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
        }
      }
    } catch (err) {
      if (ctl.signal.aborted) return;
    }
    setLive("lost");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

function dispatch(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return;
  const text = data.join("\n");
  if (event === "fleet") state.fleet = JSON.parse(text);
  else if (event === "health") state.health = JSON.parse(text);
  for (const l of state.listeners) l(event, text);
}

// Re-render the current page on the events it cares about.
function onEvents(names, render) {
  const l = (event) => { if (names.includes(event)) render(); };
  state.listeners.add(l);
  return () => state.listeners.delete(l);
}

// === pages ===

const main = () => document.getElementById("main");
// Replaces the page (absent parts — null, undefined, false — are skipped;
// replaceChildren itself would print them as text).
const show = (...parts) => main().replaceChildren(...parts.flat().filter((p) => p !== null && p !== undefined && p !== false));
let leave = () => {};

const pages = { fleet, versions, version, diff, rollouts, rollout, convergence, health, audit };

function route() {
  if (!state.token) return showLogin();
  leave();
  leave = () => {};
  const [name, ...args] = (location.hash.replace(/^#\/?/, "") || "fleet").split("/");
  const page = pages[name] || fleet;
  for (const a of document.querySelectorAll("nav a")) {
    const parent = { version: "versions", diff: "versions", rollout: "rollouts" }[name];
    const current = a.dataset.page === name || a.dataset.page === parent;
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  Promise.resolve(page(...args.map(decodeURIComponent))).catch((err) => {
    show(h("p", { class: "error", role: "alert" }, err.message));
  });
}

/// A node's state as the legend names it.
function nodeState(n, active) {
  if (!n.connected) return ["off", `disconnected — serving its last good config${n.acked_version ? " v" + n.acked_version : ""}`];
  if (n.last_nack && n.last_nack.version === active) return ["nack", `NACKed v${n.last_nack.version}: ${n.last_nack.resource}: ${n.last_nack.error}`];
  if (active && n.acked_version === active) return ["on", `on active v${active}`];
  return ["behind", `behind: holds ${n.acked_version ? "v" + n.acked_version : "nothing"}`];
}

function fleet() {
  const render = () => {
    const f = state.fleet;
    if (!f) {
      show(h("h1", {}, "Fleet"), h("p", { class: "muted" }, "Waiting for the control plane…"));
      return;
    }
    const active = f.status.active ? f.status.active.number : null;
    const byRegion = new Map();
    for (const n of f.nodes.filter((n) => !n.expired)) {
      if (!byRegion.has(n.region)) byRegion.set(n.region, new Map());
      const zones = byRegion.get(n.region);
      if (!zones.has(n.zone)) zones.set(n.zone, []);
      zones.get(n.zone).push(n);
    }
    const regions = [...byRegion.keys()].sort().map((region) => {
      const zones = byRegion.get(region);
      const all = [...zones.values()].flat();
      const counts = { on: 0, behind: 0, nack: 0, off: 0 };
      for (const n of all) counts[nodeState(n, active)[0]]++;
      return h("section", { class: "panel region", "data-region": region, "aria-label": `region ${region}` },
        h("h2", {}, region || "(no region)"),
        h("p", { class: "counts", "data-counts": region },
          `${all.length} nodes · ${counts.on} on active · ${counts.behind} behind · ${counts.nack} NACKed · ${counts.off} disconnected`),
        [...zones.keys()].sort().map((zone) => h("div", { class: "zone" },
          h("h3", {}, `zone ${zone || "—"}`),
          h("ul", { class: "nodes" }, zones.get(zone).sort((a, b) => a.id.localeCompare(b.id)).map((n) => {
            const [cls, text] = nodeState(n, active);
            return h("li", { class: `node state-${cls}`, "data-node": n.id, "data-state": cls, title: text },
              h("span", {}, n.id), h("span", { class: "sr-only" }, ` — ${text}`));
          })))));
    });
    show(
      h("h1", {}, "Fleet"),
      h("p", { id: "active-version" }, active ? `Active version v${active}` : "No version applied yet",
        f.status.active ? h("span", { class: "muted" }, ` — ${f.status.active.message || "no message"}, by ${f.status.active.author}, ${time(f.status.active.created_at_unix_ms)}`) : null),
      h("ul", { class: "legend", "aria-label": "legend" },
        h("li", { class: "node state-on" }, "on active"), h("li", { class: "node state-behind" }, "behind"),
        h("li", { class: "node state-nack" }, "NACKed"), h("li", { class: "node state-off" }, "disconnected (last good config)")),
      f.status.nacks.length ? h("section", { class: "panel", id: "nacks" }, h("h2", {}, "NACKs of the active version"),
        h("ul", {}, f.status.nacks.map((k) => h("li", { "data-nack": k.node }, `${k.node} (${k.region}): ${k.nack.resource}: ${k.nack.error}`)))) : null,
      regions.length ? h("div", { class: "regions" }, regions) : h("p", { class: "muted" }, "No proxy has connected yet."));
  };
  render();
  leave = onEvents(["fleet"], render);
}

async function versions() {
  const list = await api("/v1/configs?limit=100");
  const rows = list.versions.map((v) => h("tr", { "data-version": v.number },
    h("td", {}, h("a", { href: `#/version/${v.number}` }, `v${v.number}`), v.number === list.active ? h("span", { class: "badge" }, " active") : null),
    h("td", {}, v.author), h("td", {}, v.message || h("span", { class: "muted" }, "—")), h("td", {}, time(v.created_at_unix_ms)),
    h("td", {}, v.number > 1 ? h("a", { href: `#/diff/${v.number - 1}/${v.number}` }, "diff with previous") : null)));
  const numbers = list.versions.map((v) => v.number);
  const pick = (id, label, value) => h("label", {}, label + " ",
    h("select", { id }, numbers.map((n) => h("option", { value: n, selected: n === value }, `v${n}`))));
  const compare = h("form", { class: "row", id: "compare" },
    pick("from", "From", numbers[1] ?? numbers[0]), pick("to", "to", numbers[0]),
    h("button", { type: "submit" }, "Compare"));
  compare.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/diff/${compare.querySelector("#from").value}/${compare.querySelector("#to").value}`;
  });
  show(h("h1", {}, "Versions"), numbers.length > 1 ? compare : null,
    h("div", { class: "scroll" }, h("table", { id: "versions" },
      h("thead", {}, h("tr", {}, ["Version", "Author", "Message", "Created", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows))));
}

async function version(n) {
  const [v, list] = await Promise.all([api(`/v1/configs/${encodeURIComponent(n)}`), api("/v1/configs/active").catch(() => null)]);
  const active = list && list.version ? list.version.number : null;
  const isActive = active === v.version.number;
  show(
    h("h1", {}, `Version v${v.version.number}`, isActive ? h("span", { class: "badge" }, " active") : null),
    h("p", { class: "muted" }, `${v.version.message || "no message"} — by ${v.version.author}, ${time(v.version.created_at_unix_ms)} — ${v.resources.length} resources — ${v.version.file_name}`),
    h("div", { class: "row" },
      v.version.number > 1 ? h("a", { href: `#/diff/${v.version.number - 1}/${v.version.number}` }, "Diff with previous") : null,
      canWrite() && !isActive ? h("button", { class: "danger", id: "rollback", type: "button", onclick: () => rollback(v.version.number) }, `Roll back to v${v.version.number}`) : null),
    h("pre", { class: "code", id: "source", "aria-label": "KDL source" }, highlight(v.source)));
}

function rollback(to) {
  const message = h("input", { id: "rollback-message", type: "text", value: `rollback from the console` });
  const dialog = h("dialog", { id: "confirm", "aria-labelledby": "confirm-title" },
    h("form", { method: "dialog" },
      h("h2", { id: "confirm-title" }, `Roll the whole fleet back to v${to}?`),
      h("p", {}, "Every proxy in every region moves to this version as soon as it is activated."),
      h("label", { for: "rollback-message" }, "Message "), message,
      h("div", { class: "row" },
        h("button", { value: "cancel", type: "submit" }, "Cancel"),
        h("button", { value: "confirm", class: "danger", id: "confirm-rollback", type: "submit" }, "Roll back"))));
  dialog.addEventListener("close", async () => {
    dialog.remove();
    if (dialog.returnValue !== "confirm") return;
    try {
      await api("/v1/rollback", { method: "POST", body: JSON.stringify({ to, message: message.value }) });
      location.hash = "#/fleet";
    } catch (err) {
      main().prepend(h("p", { class: "error", role: "alert" }, `Rollback failed: ${err.message}`));
    }
  });
  document.body.append(dialog);
  dialog.showModal();
}

// KDL highlighting: comments, strings, numbers, node names, properties.
function highlight(src) {
  const out = [];
  const re = /(\/\/[^\n]*|\/\*[\s\S]*?\*\/)|("(?:[^"\\]|\\.)*"|#"[\s\S]*?"#)|(\b-?\d[\d_.eE+-]*\b|#true|#false|#null|\btrue\b|\bfalse\b)|([A-Za-z_][\w-]*)(=)|(^|[{;\n]\s*)([A-Za-z_][\w.-]*)/gm;
  let last = 0;
  for (const m of src.matchAll(re)) {
    if (m.index > last) out.push(src.slice(last, m.index));
    if (m[1]) out.push(h("span", { class: "k-comment" }, m[1]));
    else if (m[2]) out.push(h("span", { class: "k-string" }, m[2]));
    else if (m[3]) out.push(h("span", { class: "k-number" }, m[3]));
    else if (m[4]) out.push(h("span", { class: "k-prop" }, m[4]), m[5]);
    else { out.push(m[6]); out.push(h("span", { class: "k-node" }, m[7])); }
    last = m.index + m[0].length;
  }
  out.push(src.slice(last));
  return out;
}

async function diff(from, to) {
  const d = await api(`/v1/diff?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
  const list = (title, items, id) => h("div", { class: "panel", id },
    h("h2", {}, `${title} (${items.length})`),
    items.length ? h("ul", {}, items.map((r) => h("li", {}, `${r.type} `, h("strong", {}, r.name)))) : h("p", { class: "muted" }, "none"));
  // The unified diff, side by side: removed lines left, added right.
  const cells = [];
  let del = [], add = [];
  const flush = () => {
    for (let i = 0; i < Math.max(del.length, add.length); i++) {
      cells.push(h("div", { class: i < del.length ? "del" : "" }, del[i] ?? ""));
      cells.push(h("div", { class: i < add.length ? "add" : "" }, add[i] ?? ""));
    }
    del = []; add = [];
  };
  for (const line of d.text.split("\n")) {
    if (line.startsWith("---") || line.startsWith("+++")) continue;
    if (line.startsWith("@@")) { flush(); cells.push(h("div", { class: "gap" }, line), h("div", { class: "gap" }, line)); }
    else if (line.startsWith("-")) del.push(line.slice(1));
    else if (line.startsWith("+")) add.push(line.slice(1));
    else { flush(); cells.push(h("div", {}, line.slice(1)), h("div", {}, line.slice(1))); }
  }
  flush();
  show(
    h("h1", {}, `Diff v${d.from ?? "∅"} → v${d.to}`),
    h("div", { class: "regions" }, list("Added", d.added, "added"), list("Changed", d.changed, "changed"), list("Removed", d.removed, "removed")),
    h("h2", {}, "Source"),
    h("div", { class: "diff", id: "text-diff", role: "table", "aria-label": `v${d.from} left, v${d.to} right` },
      h("div", { class: "gap" }, `v${d.from ?? "∅"}`), h("div", { class: "gap" }, `v${d.to}`), cells));
}

async function rollouts() {
  const render = async () => {
    const list = await api("/v1/rollouts?limit=50");
    show(h("h1", {}, "Rollouts"),
      list.rollouts.length ? h("div", { class: "scroll" }, h("table", { id: "rollouts" },
        h("thead", {}, h("tr", {}, ["Rollout", "State", "Version", "Stage", "By", "Reason", "Updated"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, list.rollouts.map((r) => h("tr", { "data-rollout": r.id, "data-state": r.state },
          h("td", {}, h("a", { href: `#/rollout/${r.id}` }, `#${r.id}`)),
          h("td", {}, h("span", { class: `node ${stateClass(r.state)}` }, r.state)),
          h("td", {}, `v${r.from_version ?? "∅"} → v${r.to_version}`),
          h("td", {}, `${r.stage + 1} of ${r.stages}`),
          h("td", {}, r.actor), h("td", {}, r.reason || "—"), h("td", {}, time(r.updated_at_unix_ms)))))))
        : h("p", { class: "muted" }, "No staged rollout yet: `sentinelctl apply FILE --stages \"canary:1,*\"` starts one."));
  };
  await render();
  leave = onEvents(["fleet", "rollout"], () => render().catch(() => {}));
}

function stateClass(state) {
  return { running: "state-behind", rolling: "state-behind", baking: "state-behind", paused: "state-off", pending: "state-off",
    completed: "state-on", passed: "state-on", acked: "state-on", failed: "state-nack", nacked: "state-nack",
    aborted: "state-off", returned: "state-off", waiting: "state-behind" }[state] || "state-off";
}

async function rollout(id) {
  const render = async () => {
    const d = await api(`/v1/rollouts/${encodeURIComponent(id)}`);
    const r = d.rollout;
    const act = (verb) => h("button", { type: "button", id: verb, class: verb === "abort" ? "danger" : "", onclick: async () => {
      try { await api(`/v1/rollouts/${r.id}/${verb}`, { method: "POST", body: "{}" }); await render(); }
      catch (err) { main().prepend(h("p", { class: "error", role: "alert" }, `${verb} failed: ${err.message}`)); }
    } }, verb[0].toUpperCase() + verb.slice(1));
    const live = r.state === "running" || r.state === "paused";
    const actions = canWrite() && live ? h("div", { class: "row", id: "rollout-actions" },
      r.state === "running" ? act("pause") : act("resume"), act("promote"), act("abort")) : null;
    const lastGate = new Map();
    for (const e of d.events) if (e.kind === "gate") lastGate.set(e.stage, e);
    show(
      h("h1", {}, `Rollout #${r.id}: v${r.from_version ?? "∅"} → v${r.to_version}`),
      h("p", { id: "rollout-state" }, h("span", { class: `node ${stateClass(r.state)}` }, r.state),
        ` stage ${r.stage + 1} of ${r.stages} — by ${r.actor}${r.message ? ", " + r.message : ""}`),
      r.reason ? h("p", { class: r.state === "failed" ? "error" : "muted", id: "rollout-reason" },
        r.failed_gate ? `Gate ${r.failed_gate}${r.failed_node ? " on " + r.failed_node : ""}: ` : "", r.reason) : null,
      actions,
      h("h2", {}, "Stages"),
      h("div", { class: "scroll" }, h("table", { id: "stages" },
        h("thead", {}, h("tr", {}, ["#", "Selects", "State", "ACKed", "Bake", "Last gate check"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, d.stages.map((s) => h("tr", { "data-stage": s.index, "data-state": s.state },
          h("td", {}, s.index + 1), h("td", {}, s.select),
          h("td", {}, h("span", { class: `node ${stateClass(s.state)}` }, s.state)),
          h("td", {}, `${s.acked}/${s.nodes}`), h("td", {}, `${s.bake_ms} ms`),
          h("td", {}, lastGate.has(s.index) ? lastGate.get(s.index).detail : "—")))))),
      h("h2", {}, "Gates"),
      gatesTable(d),
      h("h2", {}, "Nodes"),
      h("div", { class: "scroll" }, h("table", { id: "rollout-nodes" },
        h("thead", {}, h("tr", {}, ["Node", "Region", "Stage", "State", "Holds"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, d.nodes.map((n) => h("tr", { "data-node": n.node, "data-state": n.state },
          h("td", {}, n.node), h("td", {}, n.region), h("td", {}, n.stage + 1),
          h("td", {}, h("span", { class: `node ${stateClass(n.state)}` }, n.state)),
          h("td", {}, n.acked_version ? `v${n.acked_version}` : "—")))))),
      h("h2", {}, "Events"),
      h("ol", { id: "rollout-events" }, d.events.map((e) => h("li", {}, `${time(e.at_unix_ms)} — ${e.kind}${e.stage != null ? " (stage " + (e.stage + 1) + ")" : ""}: ${e.detail}`))));
  };
  await render();
  leave = onEvents(["fleet", "rollout"], () => render().catch(() => {}));
}

// The gates with what they see now (while the rollout is open): the
// stage's nodes on the new version, the rest of the fleet, and the stage's
// own baseline before it (docs/operations.md, "Safe rollouts").
function gatesTable(d) {
  const live = d.live;
  if (!live) return h("p", { class: "muted", id: "gates" }, "The gates judge only while the rollout is open; the events below say what they decided.");
  const g = live.gates;
  const pct = (x) => `${(x * 100).toFixed(1)}%`;
  const rate = (t) => (t.requests ? t.errors_5xx / t.requests : 0);
  const share = (t) => (t.targets ? t.unhealthy / t.targets : 0);
  const enough = (t) => t.requests >= g.min_requests;
  const ref = (f) => [live.rest, live.baseline].filter(enough).map(f).reduce((a, b) => Math.max(a, b), -1);
  const r5 = ref(rate), rp = ref((t) => t.p99_ms);
  const health = [live.rest, live.baseline].filter((t) => t.targets).map(share).reduce((a, b) => Math.max(a, b), 0);
  const row = (name, stage, reference, limit) => h("tr", { "data-gate": name }, h("td", {}, name), h("td", {}, stage), h("td", {}, reference), h("td", {}, limit));
  const fmt = (t) => `${pct(rate(t))} of ${t.requests}`;
  return h("div", { class: "scroll" }, h("table", { id: "gates" },
    h("thead", {}, h("tr", {}, ["Gate", "Stage now", "Reference (rest of fleet / baseline)", "Fails above"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {},
      row("ack", `${d.stages[d.rollout.stage]?.acked ?? 0}/${d.stages[d.rollout.stage]?.nodes ?? 0} ACKed`, "—", `any NACK; not all ACKed within ${g.progress_deadline_ms} ms`),
      row("error-rate", enough(live.stage) ? fmt(live.stage) : `waiting: ${live.stage.requests}/${g.min_requests} requests`,
        `${fmt(live.rest)} / ${fmt(live.baseline)}`, pct(Math.max(r5, 0) + g.max_5xx_increase)),
      row("latency", enough(live.stage) ? `p99 ${live.stage.p99_ms} ms` : "waiting",
        `p99 ${live.rest.p99_ms} ms / ${live.baseline.p99_ms} ms`,
        rp >= 0 ? `${Math.max(rp * g.max_p99_ratio, g.p99_floor_ms).toFixed(0)} ms` : `— (no reference yet; floor ${g.p99_floor_ms} ms)`),
      row("upstream-health", `${live.stage.unhealthy}/${live.stage.targets} unhealthy`,
        `${live.rest.unhealthy}/${live.rest.targets} / ${live.baseline.unhealthy}/${live.baseline.targets}`, pct(health + g.max_unhealthy_increase)))));
}

async function convergence(id) {
  const list = await api("/v1/activations?limit=50");
  if (!list.activations.length) {
    show(h("h1", {}, "Convergence"), h("p", { class: "muted" }, "Nothing applied yet."));
    return;
  }
  const chosen = id ? Number(id) : list.activations[0].id;
  const picker = h("select", { id: "activation", "aria-label": "activation" }, list.activations.map((a) =>
    h("option", { value: a.id, selected: a.id === chosen }, `#${a.id} ${a.kind} → v${a.to_version} (${time(a.at_unix_ms)})`)));
  picker.addEventListener("change", () => { location.hash = `#/convergence/${picker.value}`; });
  const render = async () => {
    const c = await api(`/v1/activations/${chosen}/convergence`);
    const t0 = c.activation.at_unix_ms;
    const regions = [...new Set(c.nodes.map((n) => n.region))].sort();
    const reached = c.nodes.filter((n) => n.acked_at_unix_ms !== null && n.acked_at_unix_ms !== undefined);
    const span = Math.max(1, ...reached.map((n) => n.acked_at_unix_ms - t0));
    const W = 640, H = 260, L = 44, B = 30;
    const x = (ms) => L + (ms / span) * (W - L - 10);
    const colours = ["#0a58ca", "#1a7f37", "#9a6700", "#cf222e", "#8250df", "#bf3989"];
    const lines = regions.map((r, i) => {
      const total = c.nodes.filter((n) => n.region === r).length;
      const times = reached.filter((n) => n.region === r).map((n) => n.acked_at_unix_ms - t0).sort((a, b) => a - b);
      const y = (k) => H - B - (k / Math.max(1, total)) * (H - B - 10);
      let d = `M${x(0)},${y(0)}`;
      times.forEach((t, k) => { d += ` L${x(t)},${y(k)} L${x(t)},${y(k + 1)}`; });
      d += ` L${x(span)},${y(times.length)}`;
      return h("svg:path", { d, fill: "none", stroke: colours[i % colours.length], "stroke-width": 2 },
        h("svg:title", {}, `${r}: ${times.length}/${total}`));
    });
    const chart = h("svg:svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `nodes on v${c.activation.to_version} over time, per region` },
      h("svg:line", { class: "axis", x1: L, y1: H - B, x2: W - 10, y2: H - B }),
      h("svg:line", { class: "axis", x1: L, y1: 10, x2: L, y2: H - B }),
      h("svg:text", { x: L, y: H - 8 }, "0 ms"),
      h("svg:text", { x: W - 80, y: H - 8 }, `${span} ms`),
      h("svg:text", { x: 4, y: 16 }, "100%"),
      lines);
    const slowest = [...c.nodes].sort((a, b) => (b.acked_at_unix_ms ?? Infinity) - (a.acked_at_unix_ms ?? Infinity)).slice(0, 10);
    show(
      h("h1", {}, "Convergence"), h("div", { class: "row" }, picker),
      h("p", { id: "converged" }, `${reached.length} of ${c.nodes.length} nodes held v${c.activation.to_version}` +
        (reached.length ? `, the last ${span} ms after the activation` : "")),
      h("div", { class: "panel" }, chart,
        h("ul", { class: "legend" }, regions.map((r, i) => h("li", {}, h("svg:svg", { width: 12, height: 12, "aria-hidden": "true" }, h("svg:rect", { width: 12, height: 12, fill: colours[i % colours.length] })), ` ${r}`)))),
      h("h2", {}, "Slowest nodes"),
      h("table", { id: "slowest" }, h("thead", {}, h("tr", {}, ["Node", "Region", "Held after", "Now holds"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, slowest.map((n) => h("tr", {}, h("td", {}, n.node), h("td", {}, n.region),
          h("td", {}, n.acked_at_unix_ms != null ? `${n.acked_at_unix_ms - t0} ms` : "not yet"),
          h("td", {}, n.acked_version ? `v${n.acked_version}` : "—"))))));
  };
  await render();
  leave = onEvents(["fleet"], () => render().catch(() => {}));
}

function health() {
  const render = () => {
    const hl = state.health;
    if (!hl) { show(h("h1", {}, "Health"), h("p", { class: "muted" }, "Waiting for the control plane…")); return; }
    const ups = Object.keys(hl.upstreams).sort();
    show(h("h1", {}, "Health"),
      h("p", { class: "muted" }, `A target is down fleet-wide when at least ${hl.quorum_percent}% of the proxies reporting it say so.`),
      ups.length ? null : h("p", { class: "muted" }, "No proxy reports active health checks."),
      ups.map((u) => h("section", { class: "panel", "data-upstream": u }, h("h2", {}, `upstream ${u}`),
        h("div", { class: "scroll" }, h("table", {},
          h("thead", {}, h("tr", {}, ["Target", "Fleet verdict", "Reports", "Seen down by"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, hl.upstreams[u].map((t) => h("tr", { "data-target": t.target },
            h("td", {}, t.target),
            h("td", {}, h("span", { class: `node ${t.healthy ? "state-on" : "state-nack"}` }, t.healthy ? "healthy" : "down")),
            h("td", {}, `${t.healthy_reports} healthy / ${t.unhealthy_reports} down`),
            h("td", {}, (t.down_on || []).length ? h("ul", {}, t.down_on.map((d) =>
              h("li", {}, `${d.node} (${d.region}) since ${ago(d.since_unix_ms)}${d.last_error ? ": " + d.last_error : ""}`))) : "—")))))))));
  };
  render();
  leave = onEvents(["health"], render);
}

async function audit() {
  let list;
  try {
    list = await api("/v1/audit?limit=200");
  } catch (err) {
    if (err.status === 403) {
      show(h("h1", {}, "Audit"), h("p", {}, "The audit trail needs a token with the admin role."));
      return;
    }
    throw err;
  }
  show(h("h1", {}, "Audit"), h("div", { class: "scroll" }, h("table", { id: "audit" },
    h("thead", {}, h("tr", {}, ["When", "Who", "Action", "Detail"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, list.audit.map((e) => h("tr", {}, h("td", {}, time(e.at_unix_ms)), h("td", {}, e.actor), h("td", {}, e.action), h("td", {}, e.detail)))))));
}

// === start ===

applyTheme();
document.getElementById("theme").addEventListener("click", toggleTheme);
document.getElementById("logout").addEventListener("click", () => logout());
window.addEventListener("hashchange", route);
if (state.token) start(); else showLogin();
