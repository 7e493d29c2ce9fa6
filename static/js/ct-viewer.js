/* CT case viewer: mask layer toggles and opacity, the Masks / Grad-CAM tabs, and the
 * strip of slices (one slice shown at a time; without JavaScript every slice is shown
 * and the strip's links jump to them). Choices are kept across visits. */
(function () {
  "use strict";
  var OPACITY_KEY = "cxr.ct.maskOpacity";
  var HEAT_KEY = "cxr.ct.heatOpacity";
  var LAYER_KEY = "cxr.ct.layer.";
  var chosenTab = {}; // image id -> "masks" | "gradcam"
  var selectedSlice = null;

  function stored(key, fallback) {
    var value = parseInt(window.localStorage.getItem(key) || String(fallback), 10);
    return isNaN(value) ? fallback : Math.min(100, Math.max(0, value));
  }

  function layerOn(kind) {
    return window.localStorage.getItem(LAYER_KEY + kind) !== "0";
  }

  function showLayers(block) {
    var masks = (block.dataset.tab || "masks") === "masks";
    block.querySelectorAll("img.ct-layer").forEach(function (layer) {
      layer.hidden = !masks || !layerOn(layer.dataset.layer);
    });
    block.querySelectorAll("img.ct-heat").forEach(function (layer) { layer.hidden = masks; });
    block.querySelectorAll("[data-layer-toggle]").forEach(function (toggle) {
      toggle.checked = layerOn(toggle.dataset.layerToggle);
    });
  }

  function setOpacity(block, value, selector, slider, output) {
    block.querySelectorAll(selector).forEach(function (layer) { layer.style.opacity = value / 100; });
    var input = block.querySelector(slider);
    var shown = block.querySelector(output);
    if (input) { input.value = value; input.setAttribute("aria-valuetext", value + "%"); }
    if (shown) shown.textContent = value + "%";
  }

  function selectTab(block, tab, focus) {
    block.dataset.tab = tab;
    block.querySelectorAll('[role="tab"]').forEach(function (button) {
      var on = button.dataset.tab === tab;
      button.setAttribute("aria-selected", on ? "true" : "false");
      button.tabIndex = on ? 0 : -1;
      if (on && focus) button.focus();
    });
    block.querySelectorAll('[role="tabpanel"]').forEach(function (panel) {
      panel.hidden = panel.dataset.tab !== tab;
    });
    showLayers(block);
  }

  function everyViewer(callback) {
    document.querySelectorAll("[data-ct-viewer]").forEach(callback);
  }

  function init(block) {
    var image = block.dataset.image;
    selectTab(block, chosenTab[image] || "masks", false);
    setOpacity(block, stored(OPACITY_KEY, 50), "img.ct-layer:not(.ct-outline)", "[data-mask-opacity]", "[data-mask-opacity-value]");
    setOpacity(block, stored(HEAT_KEY, 45), "img.ct-heat", "[data-heat-opacity]", "[data-heat-opacity-value]");
    block.querySelectorAll("[data-layer-toggle]").forEach(function (toggle) {
      toggle.addEventListener("change", function () {
        window.localStorage.setItem(LAYER_KEY + toggle.dataset.layerToggle, toggle.checked ? "1" : "0");
        everyViewer(showLayers);
      });
    });
    var mask = block.querySelector("[data-mask-opacity]");
    if (mask) {
      mask.addEventListener("input", function () {
        window.localStorage.setItem(OPACITY_KEY, mask.value);
        everyViewer(function (other) {
          setOpacity(other, parseInt(mask.value, 10), "img.ct-layer:not(.ct-outline)", "[data-mask-opacity]", "[data-mask-opacity-value]");
        });
      });
    }
    var heat = block.querySelector("[data-heat-opacity]");
    if (heat) {
      heat.addEventListener("input", function () {
        window.localStorage.setItem(HEAT_KEY, heat.value);
        everyViewer(function (other) {
          setOpacity(other, parseInt(heat.value, 10), "img.ct-heat", "[data-heat-opacity]", "[data-heat-opacity-value]");
        });
      });
    }
    block.querySelectorAll('[role="tab"]').forEach(function (button) {
      button.addEventListener("click", function () {
        chosenTab[image] = button.dataset.tab;
        selectTab(block, button.dataset.tab, false);
      });
      button.addEventListener("keydown", function (event) {
        if (["ArrowRight", "ArrowLeft", "Home", "End"].indexOf(event.key) === -1) return;
        event.preventDefault();
        var next = button.dataset.tab === "masks" ? "gradcam" : "masks";
        if (event.key === "Home") next = "masks";
        if (event.key === "End") next = "gradcam";
        chosenTab[image] = next;
        selectTab(block, next, true);
      });
    });
  }

  function showSlice(id) {
    var strip = document.querySelector("[data-slice-strip]");
    if (!strip) return;
    selectedSlice = id;
    strip.querySelectorAll("[data-slice-link]").forEach(function (link) {
      if (link.dataset.sliceLink === id) link.setAttribute("aria-current", "true");
      else link.removeAttribute("aria-current");
    });
    document.querySelectorAll("article[data-slice]").forEach(function (article) {
      article.hidden = article.dataset.slice !== id;
    });
  }

  function initStrip() {
    var strip = document.querySelector("[data-slice-strip]");
    if (!strip) return;
    var links = strip.querySelectorAll("[data-slice-link]");
    links.forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        showSlice(link.dataset.sliceLink);
      });
    });
    var wanted = window.location.hash.replace("#slice-", "");
    var first = links.length ? links[0].dataset.sliceLink : null;
    showSlice(strip.querySelector('[data-slice-link="' + wanted + '"]') ? wanted : first);
  }

  document.addEventListener("DOMContentLoaded", function () {
    everyViewer(init);
    initStrip();
  });
  document.addEventListener("live:updated", function (event) {
    event.target.querySelectorAll("[data-ct-viewer]").forEach(init);
    if (event.target.matches && event.target.matches("[data-slice-strip]")) {
      var keep = selectedSlice;
      initStrip();
      if (keep !== null) showSlice(keep);
      return;
    }
    if (selectedSlice !== null && event.target.matches && event.target.matches("article[data-slice]")) {
      event.target.hidden = event.target.dataset.slice !== selectedSlice;
    }
  });
})();
