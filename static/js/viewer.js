/* Case viewer: method tabs, heatmap opacity, lung outline, explanation requests with a spinner. */
(function () {
  "use strict";
  var OPACITY_KEY = "cxr.heatmapOpacity";
  var LUNGS_KEY = "cxr.lungOutline";
  var chosenMethod = {}; // image id -> method the user picked or requested last

  function storedOpacity() {
    var value = parseInt(window.localStorage.getItem(OPACITY_KEY) || "45", 10);
    return isNaN(value) ? 45 : Math.min(100, Math.max(0, value));
  }

  function select(block, method, focus) {
    var tabs = block.querySelectorAll('[role="tab"]');
    var found = false;
    tabs.forEach(function (tab) { if (tab.dataset.method === method) found = true; });
    if (!found && tabs.length) method = tabs.length > 1 ? tabs[1].dataset.method : tabs[0].dataset.method;
    tabs.forEach(function (tab) {
      var on = tab.dataset.method === method;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      if (on && focus) tab.focus();
    });
    block.querySelectorAll('[role="tabpanel"]').forEach(function (panel) {
      panel.hidden = panel.id !== "panel-" + block.dataset.image + "-" + method;
    });
    block.querySelectorAll("img.heat").forEach(function (layer) {
      layer.hidden = layer.dataset.method !== method;
    });
    block.dataset.method = method;
  }

  function setOpacity(block, value) {
    block.querySelectorAll("img.heat").forEach(function (layer) { layer.style.opacity = value / 100; });
    var slider = block.querySelector("[data-opacity]");
    var output = block.querySelector("[data-opacity-value]");
    if (slider) { slider.value = value; slider.setAttribute("aria-valuetext", value + "%"); }
    if (output) output.textContent = value + "%";
  }

  function showLungs(block, on) {
    var outline = block.querySelector("[data-lung-outline]");
    var toggle = block.querySelector("[data-lung-toggle]");
    if (outline) outline.hidden = !on;
    if (toggle) toggle.checked = on;
  }

  function init(block) {
    var image = block.dataset.image;
    select(block, chosenMethod[image] || "gradcam", false);
    setOpacity(block, storedOpacity());
    // One choice for every image on the page, kept across visits (like the opacity).
    showLungs(block, window.localStorage.getItem(LUNGS_KEY) === "1");
    var lungToggle = block.querySelector("[data-lung-toggle]");
    if (lungToggle) {
      lungToggle.addEventListener("change", function () {
        window.localStorage.setItem(LUNGS_KEY, lungToggle.checked ? "1" : "0");
        document.querySelectorAll("[data-viewer]").forEach(function (other) { showLungs(other, lungToggle.checked); });
      });
    }
    block.querySelectorAll('[role="tab"]').forEach(function (tab) {
      tab.addEventListener("click", function () {
        chosenMethod[image] = tab.dataset.method;
        select(block, tab.dataset.method, false);
      });
      tab.addEventListener("keydown", function (event) {
        var tabs = Array.prototype.slice.call(block.querySelectorAll('[role="tab"]'));
        var index = tabs.indexOf(tab);
        var next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
        if (next === undefined) return;
        event.preventDefault();
        var target = tabs[(next + tabs.length) % tabs.length];
        chosenMethod[image] = target.dataset.method;
        select(block, target.dataset.method, true);
      });
    });
    var slider = block.querySelector("[data-opacity]");
    if (slider) {
      slider.addEventListener("input", function () {
        window.localStorage.setItem(OPACITY_KEY, slider.value);
        document.querySelectorAll("[data-viewer]").forEach(function (other) { setOpacity(other, parseInt(slider.value, 10)); });
      });
    }
  }

  function initRequestForm(form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var status = form.querySelector(".form-status");
      var button = form.querySelector("button");
      var method = form.querySelector("select").value;
      var article = form.closest("[data-image]");
      button.disabled = true;
      status.innerHTML = '<span class="spinner" aria-hidden="true"></span> Requesting…';
      fetch(form.action, { method: "POST", body: new FormData(form), headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) { return response.json().then(function (body) { return { ok: response.ok, body: body }; }); })
        .then(function (result) {
          if (!result.ok) throw new Error(result.body.error || "The request failed.");
          if (article) chosenMethod[article.dataset.image] = method;
          if (result.body.status === "done") {
            status.textContent = result.body.message;
            button.disabled = false;
            var block = article && article.querySelector("[data-viewer]");
            if (block) select(block, method, false);
            return;
          }
          status.innerHTML = '<span class="spinner" aria-hidden="true"></span> ' + result.body.message;
          if (article) article.setAttribute("data-live-pending", "");
          if (window.cxrLive) window.cxrLive.refreshSoon();
        })
        .catch(function (error) {
          status.textContent = error.message;
          status.classList.add("error-inline");
          button.disabled = false;
        });
    });
  }

  function initAll(root) {
    root.querySelectorAll("[data-viewer]").forEach(init);
    root.querySelectorAll("[data-explain-request]").forEach(initRequestForm);
  }

  document.addEventListener("DOMContentLoaded", function () { initAll(document); });
  document.addEventListener("live:updated", function (event) { initAll(event.target); });
})();
