// ConsentBot console: live transcript updates (server-sent events) and small conveniences.
// No build step, no library. Rows arrive as server-rendered, escaped HTML.
(function () {
  "use strict";

  function placeItem(list, data) {
    var tpl = document.createElement("template");
    tpl.innerHTML = data.html.trim();
    var node = tpl.content.firstElementChild;
    if (!node) return;
    var old = document.getElementById(data.id);
    if (old) { old.replaceWith(node); return; }
    var empty = list.querySelector(".empty");
    if (empty) empty.remove();
    // keep time order: insert before the first row that is later
    var at = node.getAttribute("data-at");
    var rows = list.children;
    for (var i = rows.length - 1; i >= 0; i--) {
      if ((rows[i].getAttribute("data-at") || "") <= at) { rows[i].after(node); node.classList.add("fresh"); return; }
    }
    list.prepend(node);
    node.classList.add("fresh");
  }

  function live() {
    var root = document.querySelector("[data-events]");
    var list = document.getElementById("timeline");
    if (!root || !list || !window.EventSource) return;
    var badge = document.getElementById("live");
    var source = new EventSource(root.getAttribute("data-events"));
    source.addEventListener("open", function () { if (badge) badge.classList.add("on"); });
    source.addEventListener("error", function () { if (badge) badge.classList.remove("on"); });
    source.addEventListener("item", function (ev) {
      var data = JSON.parse(ev.data);
      var nearEnd = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
      placeItem(list, data);
      if (nearEnd) list.lastElementChild.scrollIntoView({block: "nearest"});
    });
    source.addEventListener("head", function (ev) {
      var head = JSON.parse(ev.data);
      document.body.classList.toggle("is-paused", !!head.paused);
      var state = document.getElementById("head-state");
      if (state) state.textContent = head.state;
      var paused = document.getElementById("flag-paused");
      if (paused) paused.hidden = !head.paused;
      var person = document.getElementById("flag-person");
      if (person) person.hidden = !head.needs_person;
    });
    source.addEventListener("gone", function () {
      source.close();
      if (badge) { badge.classList.remove("on"); badge.textContent = "erased"; }
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  function confirmations() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm"))) ev.preventDefault();
      });
    });
    document.querySelectorAll("form").forEach(function (form) {
      form.addEventListener("submit", function () {
        var button = form.querySelector("button[type=submit]");
        if (button && form.method.toLowerCase() === "post" && !form.hasAttribute("data-download")) {
          setTimeout(function () { button.disabled = true; }, 0);
        }
      });
    });
    var template = document.getElementById("reply-template");
    var text = document.getElementById("reply-text");
    if (template && text) {
      template.addEventListener("change", function () { text.required = !template.value; });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    live();
    confirmations();
  });
})();
