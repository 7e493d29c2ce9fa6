/* Live pages without a reload.
 *
 * Elements marked data-live="<key>" carry data-live-state; while any element on the
 * page is marked data-live-pending, the page is fetched again every few seconds and
 * each live element whose state changed is replaced by its fresh server-rendered copy
 * (the server stays the only place that decides what is shown). A "live:updated" event
 * is dispatched on each replaced element so widgets can initialise themselves again.
 *
 * At most one request per INTERVAL_MS per page, none while nothing is pending or the tab
 * is hidden. Each request sends the ETag of the last answer (If-None-Match): the server
 * answers 304, with nothing rendered, while nothing on the page has changed.
 */
(function () {
  "use strict";
  var INTERVAL_MS = 2000;
  var timer = null;
  var etag = null;
  var busy = false; // a request in flight: never two at once
  var announcer = document.querySelector("[data-live-announcer]");

  function pending() {
    return document.querySelector("[data-live-pending]") !== null;
  }

  function announce(element) {
    var text = element.getAttribute("data-live-announce");
    if (announcer && text) announcer.textContent = text;
  }

  function refresh() {
    timer = null;
    busy = true;
    var headers = { "X-Live-Refresh": "1" };
    if (etag) headers["If-None-Match"] = etag;
    // no-store: the answer is the server's (a 304 comes to this script as a 304).
    fetch(window.location.href, { headers: headers, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 304) return null;
        if (!response.ok) throw new Error("HTTP " + response.status);
        etag = response.headers.get("ETag");
        return response.text();
      })
      .then(function (html) {
        busy = false;
        if (html === null) { schedule(); return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (element) {
          var key = element.getAttribute("data-live");
          var replacement = fresh.querySelector('[data-live="' + CSS.escape(key) + '"]');
          if (!replacement) return;
          if (replacement.getAttribute("data-live-state") === element.getAttribute("data-live-state")) {
            // Same content; only whether it is still worth watching may differ.
            element.toggleAttribute("data-live-pending", replacement.hasAttribute("data-live-pending"));
            return;
          }
          var adopted = document.importNode(replacement, true);
          element.replaceWith(adopted);
          announce(adopted);
          adopted.dispatchEvent(new CustomEvent("live:updated", { bubbles: true }));
        });
        schedule();
      })
      .catch(function () {
        // A network hiccup or a restart: try again a little later.
        busy = false;
        timer = window.setTimeout(refresh, INTERVAL_MS * 3);
      });
  }

  function schedule(now) {
    if (timer !== null || busy || !pending() || document.hidden) return;
    timer = window.setTimeout(refresh, now ? 0 : INTERVAL_MS);
  }

  window.cxrLive = { refreshSoon: function () { if (timer !== null) { window.clearTimeout(timer); timer = null; } schedule(true); } };
  document.addEventListener("DOMContentLoaded", function () { schedule(); });
  // A hidden tab stops polling; shown again, it looks at once.
  document.addEventListener("visibilitychange", function () {
    if (document.hidden && timer !== null) { window.clearTimeout(timer); timer = null; }
    if (!document.hidden) schedule(true);
  });
})();
