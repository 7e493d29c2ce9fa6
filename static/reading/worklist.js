/* The worklist: keyboard navigation (j/k or arrows, Enter opens) and a refresh every
 * 10 seconds that replaces the table when the server's list changed. */
(function () {
  "use strict";
  var INTERVAL_MS = 10000;
  var index = 0;

  function rows() { return Array.prototype.slice.call(document.querySelectorAll("[data-worklist] tbody tr")); }

  function select(i) {
    var all = rows();
    if (!all.length) return;
    index = Math.max(0, Math.min(all.length - 1, i));
    all.forEach(function (row, n) {
      row.classList.toggle("selected", n === index);
      if (n === index) row.setAttribute("aria-selected", "true"); else row.removeAttribute("aria-selected");
    });
    var link = all[index].querySelector("a");
    if (link) link.focus();
  }

  document.addEventListener("keydown", function (event) {
    var tag = (event.target && event.target.tagName) || "";
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    if (event.key === "j" || event.key === "ArrowDown") { select(index + 1); event.preventDefault(); }
    else if (event.key === "k" || event.key === "ArrowUp") { select(index - 1); event.preventDefault(); }
    else if (event.key === "Enter" && tag !== "A") {
      var row = rows()[index];
      if (row) window.location.href = row.getAttribute("data-href");
    }
  });

  function refresh() {
    if (document.hidden) return;
    fetch(window.location.href, { headers: { "X-Live-Refresh": "1" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("[data-worklist]");
        var current = document.querySelector("[data-worklist]");
        if (!fresh || !current) return;
        if (fresh.getAttribute("data-worklist-state") === current.getAttribute("data-worklist-state")) return;
        current.replaceWith(document.importNode(fresh, true));
        var announcer = document.querySelector("[data-live-announcer]");
        if (announcer) announcer.textContent = "The worklist was updated.";
        select(index);
      })
      .catch(function () { /* try again next time */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (rows().length) { rows()[0].classList.add("selected"); }
    window.setInterval(refresh, INTERVAL_MS);
  });
})();
