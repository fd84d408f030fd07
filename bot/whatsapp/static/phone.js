// Sandbox phone page: drives the simulator's JSON API (/_sim/api/), no build step.
(() => {
  "use strict";
  const root = document.getElementById("phone");
  const base = root.dataset.base;
  const api = base + "_sim/api/";
  const $ = (id) => document.getElementById(id);
  const state = { current: null, cursor: 0, bubbles: new Map(), typing: false, poll: 0 };

  async function call(method, path, body) {
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(api + path, init);
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    return data;
  }

  function say(text) { $("status").textContent = text || ""; }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const TICKS = { sent: "\u2713", delivered: "\u2713\u2713", read: "\u2713\u2713", failed: "\u2717 failed" };

  function tap(message, choice) {
    call("POST", `customers/${state.current}/taps`, { message_id: message.id, choice_id: choice })
      .then(() => say(""), (e) => say(e.message));
  }

  function choiceButton(message, id, title, desc) {
    const b = el("button", "", title);
    b.type = "button";
    if (desc) b.appendChild(el("span", "row-desc", desc));
    b.addEventListener("click", () => tap(message, id));
    return b;
  }

  function bubble(m) {
    const node = el("div", "bubble " + m.direction);
    if (m.context_id) {
      const quoted = state.bubbles.get(m.context_id);
      node.appendChild(el("div", "quote", quoted ? quoted.text.slice(0, 80) : "(quoted message)"));
    }
    if (m.header) node.appendChild(el("div", "hdr", m.header));
    node.appendChild(el("div", "", m.text));
    if (m.footer) node.appendChild(el("div", "ftr", m.footer));
    const choices = el("div", "choices");
    for (const b of m.buttons || []) choices.appendChild(choiceButton(m, b.id, b.title));
    for (const q of m.quick_replies || []) choices.appendChild(choiceButton(m, q.payload, q.title));
    if (m.list) {
      const details = el("details");
      details.appendChild(el("summary", "", "\u2630 " + m.list.button));
      for (const s of m.list.sections) {
        if (s.title) details.appendChild(el("div", "section", s.title));
        for (const r of s.rows) details.appendChild(choiceButton(m, r.id, r.title, r.description));
      }
      choices.appendChild(details);
    }
    if (choices.childNodes.length) node.appendChild(choices);
    const time = new Date(m.time * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    let meta = time;
    if (m.direction === "customer") meta += " " + (TICKS[m.status] || "");
    else meta += " \u00b7 " + m.status;
    if (m.error) meta += ` (${m.error.code} ${m.error.title || ""})`;
    node.appendChild(el("div", "meta " + m.status, meta));
    return node;
  }

  function render() {
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    box.replaceChildren(...[...state.bubbles.values()].map(bubble));
    if (atBottom) box.scrollTop = box.scrollHeight;
    $("typing").textContent = state.typing ? "typing\u2026" : "";
  }

  async function poll(token) {
    while (token === state.poll) {
      try {
        const r = await call("GET", `customers/${state.current}/messages?since=${state.cursor}&wait=20`);
        if (token !== state.poll) return;
        for (const m of r.messages) state.bubbles.set(m.id, m);
        state.cursor = r.cursor;
        state.typing = r.typing;
        render();
      } catch (e) {
        say(e.message);
        await new Promise((ok) => setTimeout(ok, 1000));
      }
    }
  }

  function choose(number, label) {
    state.current = number;
    state.cursor = 0;
    state.bubbles = new Map();
    state.poll += 1;
    $("chat-title").textContent = label;
    $("send-text").disabled = false;
    $("send-button").disabled = false;
    render();
    poll(state.poll);
  }

  async function loadCustomers(select) {
    const data = await call("GET", "customers");
    const sel = $("customer-select");
    sel.replaceChildren(el("option", "", "\u2014 choose \u2014"));
    for (const c of data.customers) {
      const opt = el("option", "", `${c.name} (+${c.number})`);
      opt.value = c.number;
      sel.appendChild(opt);
    }
    if (select) {
      sel.value = select;
      const c = data.customers.find((x) => x.number === select);
      if (c) choose(c.number, `${c.name} (+${c.number})`);
    }
  }

  for (const b of JSON.parse(root.dataset.businesses)) {
    const opt = el("option", "", `+${b.display}`);
    opt.value = b.phone_number_id;
    $("new-business").appendChild(opt);
  }

  $("customer-select").addEventListener("change", (ev) => {
    const opt = ev.target.selectedOptions[0];
    if (opt && opt.value) choose(opt.value, opt.textContent);
  });

  $("new-customer").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    try {
      const c = await call("POST", "customers", {
        name: f.name.value, number: f.number.value, business: f.business.value,
      });
      f.reset();
      await loadCustomers(c.number);
      say("");
    } catch (e) { say(e.message); }
  });

  $("send-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("send-text");
    const text = input.value;
    if (!text.trim() || !state.current) return;
    input.value = "";
    try { await call("POST", `customers/${state.current}/messages`, { text }); say(""); }
    catch (e) { say(e.message); input.value = text; }
  });

  $("inject-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const code = f.code.value === "timeout" ? "timeout" : Number(f.code.value);
    try {
      await fetch(base + "_sim/inject", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ code, count: Number(f.count.value), to: state.current || undefined }),
      });
      say(`next ${f.count.value} send(s) will fail with ${f.code.value}`);
    } catch (e) { say(e.message); }
  });

  loadCustomers(null).catch((e) => say(e.message));
})();
