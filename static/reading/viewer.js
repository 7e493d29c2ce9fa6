/* The reading room's viewer: two viewports, each a canvas that shows one source (an image
 * of the study or of an earlier one) with zoom (to 1:1 of the original pixels and beyond),
 * pan, window/level on the original values (a DICOM's modality values, in HU for CT; the
 * 8-bit rendition otherwise), presets, invert, reset, the lung outline drawn in the same
 * transform (so it stays registered at every zoom) with its opacity, and slice scrolling
 * through a CT series (wheel, Page Up/Down). The pixel under the pointer is read out as
 * its stored value and the grey it is shown with. No library: plain canvas 2D. */
(function () {
  "use strict";
  var sources = JSON.parse(document.getElementById("rv-sources").textContent);
  var byKey = {};
  sources.forEach(function (s) { byKey[s.key] = s; });
  var loaded = {}; // key -> Promise of {width, height, values: Float32Array, meta}

  var previews = {}; // key -> Promise of the 8-bit rendition as data

  function loadPng(source) {
    if (previews[source.key]) return previews[source.key];
    previews[source.key] = new Promise(function (resolve, reject) {
      var img = new Image();
      img.onload = function () {
        var c = document.createElement("canvas");
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        var ctx = c.getContext("2d");
        ctx.drawImage(img, 0, 0);
        var rgba = ctx.getImageData(0, 0, c.width, c.height).data;
        var values = new Float32Array(c.width * c.height);
        for (var i = 0; i < values.length; i++) values[i] = rgba[i * 4];
        resolve({ width: c.width, height: c.height, values: values, preview: true,
                  meta: { window: [127.5, 256], presets: { "default": [127.5, 256] }, min: 0, max: 255, monochrome1: false, units: "", header: null } });
      };
      img.onerror = reject;
      img.src = source.file;
    });
    return previews[source.key];
  }

  // The full-resolution data: a DICOM's modality values, else the 8-bit rendition.
  function load(source) {
    if (!source.values) return loadPng(source);
    if (loaded[source.key]) return loaded[source.key];
    var meta = fetch(source.meta, { credentials: "same-origin" }).then(function (r) { return r.json(); });
    // The server's float32 copy of the same values (pixels.values: pydicom, every
    // transfer syntax the platform stores decoded).
    function fromServer() {
      return Promise.all([
        meta,
        fetch(source.values, { credentials: "same-origin" }).then(function (r) { return r.arrayBuffer(); })
      ]).then(function (parts) {
        return { width: parts[0].width, height: parts[0].height, values: new Float32Array(parts[1]), meta: parts[0], library: "" };
      });
    }
    if (window.cxrDicom && source.dicom) {
      // The stored DICOM itself, parsed here by dicom-parser (static/reading/dicom.bundle.js).
      loaded[source.key] = Promise.all([
        meta,
        fetch(source.dicom, { credentials: "same-origin" }).then(function (r) { return r.arrayBuffer(); })
      ]).then(function (parts) {
        var parsed;
        try {
          parsed = window.cxrDicom.parse(parts[1]);
        } catch (error) {
          // A compressed transfer syntax (JPEG, JPEG 2000, RLE, deflate: dicom-parser
          // decodes none) or pixel data it cannot read: the server decodes them.
          return fromServer();
        }
        return { width: parsed.width, height: parsed.height, values: parsed.values, meta: parts[0], library: window.cxrDicom.library };
      });
    } else {
      // Without the bundle: the server's copy.
      loaded[source.key] = fromServer();
    }
    return loaded[source.key];
  }

  function loadLayer(url) {
    if (!url) return Promise.resolve(null);
    return new Promise(function (resolve) {
      var img = new Image();
      img.onload = function () { resolve(img); };
      img.onerror = function () { resolve(null); };
      img.src = url;
    });
  }

  function loadOutline(source) { return loadLayer(source.outline); }

  function Viewport(root) {
    this.root = root;
    this.canvas = root.querySelector("[data-canvas]");
    this.ctx = this.canvas.getContext("2d");
    this.offscreen = document.createElement("canvas");
    this.data = null; this.outline = null; this.source = null;
    this.scale = 1; this.tx = 0; this.ty = 0; this.fitted = true;
    this.centre = 0; this.width = 1; this.invert = false; this.opacity = 0.7; this.heatOpacity = 0; this.heat = null;
    this.bind();
  }

  Viewport.prototype.q = function (sel) { return this.root.querySelector(sel); };

  Viewport.prototype.show = function (key) {
    var self = this, source = byKey[key];
    if (!source) return Promise.resolve();
    var started = performance.now();
    self.source = source;
    self.root.setAttribute("data-showing", key);
    ["data-ready", "data-first-image-ms", "data-full-res-ms", "data-first-image-at", "data-full-res-at"].forEach(function (name) { self.root.removeAttribute(name); });
    var sliceOut = self.q("[data-slice]");
    var series = self.series();
    sliceOut.textContent = series.length > 1 ? "slice " + (series.indexOf(source) + 1) + " of " + series.length : "";
    function painted(name) {
      // Since show() began, and since the page's navigation began (make bench reads these).
      if (self.root.hasAttribute(name)) return;
      self.root.setAttribute(name, String(Math.round(performance.now() - started)));
      self.root.setAttribute(name.replace("-ms", "-at"), String(Math.round(performance.now())));
    }
    var full = null;
    if (source.values) {
      // The 8-bit rendition first (small, fast), then the original values replace it.
      loadPng(source).then(function (preview) {
        if (self.source !== source || full) return;
        var keepView = self.data && self.data.width === preview.width && self.data.height === preview.height;
        self.data = preview;
        self.setWindow(127.5, 256);
        if (!keepView) self.fit();
        painted("data-first-image-ms");
      }).catch(function () { /* the full data still comes */ });
    }
    return Promise.all([load(source), loadOutline(source), loadLayer(source.heat)]).then(function (parts) {
      if (self.source !== source) return;
      full = parts[0];
      var keepView = self.data && self.data.width === full.width && self.data.height === full.height;
      self.data = full; self.outline = parts[1]; self.heat = parts[2];
      self.root.setAttribute("data-heat", self.heat ? source.heat_method : "");
      var presets = self.data.meta.presets || {};
      var select = self.q("[data-preset]");
      select.innerHTML = "";
      Object.keys(presets).forEach(function (name) {
        var option = document.createElement("option");
        option.value = name; option.textContent = name; select.appendChild(option);
      });
      self.setWindow(self.data.meta.window[0], self.data.meta.window[1]);
      if (!keepView) self.fit();
      self.showHeader();
      painted("data-first-image-ms");
      painted("data-full-res-ms");
      self.root.setAttribute("data-dicom", source.values ? "1" : "0");
      self.root.setAttribute("data-library", self.data.library || "");
      self.root.setAttribute("data-ready", "1");
    });
  };

  Viewport.prototype.series = function () {
    var self = this;
    return sources.filter(function (s) { return self.source && s.case === self.source.case; });
  };

  Viewport.prototype.showHeader = function () {
    if (this.root.getAttribute("data-viewport") !== "main") return;
    var panel = document.querySelector("[data-dicom-header]");
    if (!panel) return;
    var header = this.data.meta.header;
    panel.innerHTML = "";
    if (!header) {
      var p = document.createElement("p"); p.className = "meta";
      p.textContent = "This image was not uploaded as DICOM: it has no header.";
      panel.appendChild(p); return;
    }
    var table = document.createElement("table");
    var caption = document.createElement("caption"); caption.className = "visually-hidden";
    caption.textContent = "DICOM header"; table.appendChild(caption);
    header.forEach(function (row) {
      var tr = document.createElement("tr");
      [row.tag, row.name, row.value].forEach(function (text) {
        var td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
      });
      table.appendChild(tr);
    });
    panel.appendChild(table);
  };

  Viewport.prototype.setWindow = function (centre, width) {
    this.centre = Number(centre); this.width = Math.max(1e-6, Number(width));
    this.q("[data-centre]").value = +this.centre.toFixed(2);
    this.q("[data-width]").value = +this.width.toFixed(2);
    this.root.setAttribute("data-window", this.centre + "/" + this.width);
    this.paintOffscreen(); this.render();
  };

  Viewport.prototype.grey = function (value) {
    var low = this.centre - this.width / 2;
    var g = (value - low) / this.width;
    g = g < 0 ? 0 : g > 1 ? 1 : g;
    if (this.data.meta.monochrome1) g = 1 - g;
    if (this.invert) g = 1 - g;
    return Math.round(g * 255);
  };

  Viewport.prototype.paintOffscreen = function () {
    if (!this.data) return;
    var w = this.data.width, h = this.data.height, values = this.data.values;
    this.offscreen.width = w; this.offscreen.height = h;
    var octx = this.offscreen.getContext("2d");
    var image = octx.createImageData(w, h), out = image.data;
    var low = this.centre - this.width / 2, k = 255 / this.width;
    var flip = (!!this.data.meta.monochrome1) !== this.invert;
    for (var i = 0, j = 0; i < values.length; i++, j += 4) {
      var g = (values[i] - low) * k;
      g = g < 0 ? 0 : g > 255 ? 255 : g;
      if (flip) g = 255 - g;
      out[j] = out[j + 1] = out[j + 2] = g; out[j + 3] = 255;
    }
    octx.putImageData(image, 0, 0);
  };

  Viewport.prototype.resize = function () {
    var ratio = window.devicePixelRatio || 1;
    var rect = this.canvas.getBoundingClientRect();
    this.canvas.width = Math.max(1, Math.round(rect.width * ratio));
    this.canvas.height = Math.max(1, Math.round(rect.height * ratio));
  };

  Viewport.prototype.fit = function () {
    this.resize();
    if (!this.data) return;
    var s = Math.min(this.canvas.width / this.data.width, this.canvas.height / this.data.height);
    this.scale = s;
    this.tx = (this.canvas.width - this.data.width * s) / 2;
    this.ty = (this.canvas.height - this.data.height * s) / 2;
    this.fitted = true;
    this.render();
  };

  Viewport.prototype.zoomAt = function (factor, cx, cy) {
    if (cx === undefined) { cx = this.canvas.width / 2; cy = this.canvas.height / 2; }
    var next = Math.max(0.02, Math.min(32, this.scale * factor));
    this.tx = cx - (cx - this.tx) * (next / this.scale);
    this.ty = cy - (cy - this.ty) * (next / this.scale);
    this.scale = next; this.fitted = false;
    this.render();
  };

  Viewport.prototype.render = function () {
    var ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.data) return;
    ctx.imageSmoothingEnabled = this.scale < 1;
    ctx.setTransform(this.scale, 0, 0, this.scale, this.tx, this.ty);
    ctx.drawImage(this.offscreen, 0, 0);
    // The heatmap is stretched over the whole image, as on the case page, in the same
    // transform as the image: it stays registered at every zoom and pan.
    if (this.heat && this.heatOpacity > 0) {
      ctx.globalAlpha = this.heatOpacity;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(this.heat, 0, 0, this.data.width, this.data.height);
      ctx.globalAlpha = 1;
    }
    if (this.outline && this.opacity > 0) {
      ctx.globalAlpha = this.opacity;
      ctx.drawImage(this.outline, 0, 0, this.data.width, this.data.height);
      ctx.globalAlpha = 1;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    var percent = Math.round(this.scale * 1000) / 10;
    this.root.setAttribute("data-scale", String(Math.round(this.scale * 1e4) / 1e4));
    this.q("[data-zoom]").textContent = (this.fitted ? "fit, " : "") + percent + "% (1:1 = 100%)";
  };

  Viewport.prototype.readout = function (event) {
    if (!this.data) return;
    var ratio = this.canvas.width / this.canvas.getBoundingClientRect().width;
    var rect = this.canvas.getBoundingClientRect();
    var x = Math.floor(((event.clientX - rect.left) * ratio - this.tx) / this.scale);
    var y = Math.floor(((event.clientY - rect.top) * ratio - this.ty) / this.scale);
    var out = this.q("[data-readout]");
    if (x < 0 || y < 0 || x >= this.data.width || y >= this.data.height) {
      out.textContent = "outside the image"; out.removeAttribute("data-value"); return;
    }
    var value = this.data.values[y * this.data.width + x];
    var grey = this.grey(value);
    out.setAttribute("data-x", x); out.setAttribute("data-y", y);
    out.setAttribute("data-value", value); out.setAttribute("data-grey", grey);
    out.textContent = "x " + x + ", y " + y + ": value " + (+value.toFixed(1)) + (this.data.meta.units ? " " + this.data.meta.units : "") + ", shown grey " + grey;
  };

  Viewport.prototype.step = function (delta) {
    var series = this.series();
    var at = series.indexOf(this.source);
    var next = series[at + delta];
    if (next) { var select = this.q("[data-source]"); if (select) select.value = next.key; this.show(next.key); }
  };

  Viewport.prototype.bind = function () {
    var self = this, drag = null;
    self.root.querySelectorAll("[data-action]").forEach(function (button) {
      button.addEventListener("click", function () {
        var action = button.getAttribute("data-action");
        if (action === "zoom-in") self.zoomAt(1.25);
        else if (action === "zoom-out") self.zoomAt(0.8);
        else if (action === "one-to-one") self.zoomAt(1 / self.scale);
        else if (action === "reset") {
          self.invert = false;
          self.q('[data-action="invert"]').setAttribute("aria-pressed", "false");
          self.setWindow(self.data.meta.window[0], self.data.meta.window[1]); self.fit();
        } else if (action === "invert") {
          self.invert = !self.invert; button.setAttribute("aria-pressed", String(self.invert));
          self.paintOffscreen(); self.render();
        }
      });
    });
    var source = self.q("[data-source]");
    if (source) source.addEventListener("change", function () { self.show(source.value); });
    self.q("[data-preset]").addEventListener("change", function (event) {
      var preset = self.data && self.data.meta.presets[event.target.value];
      if (preset) self.setWindow(preset[0], preset[1]);
    });
    ["[data-centre]", "[data-width]"].forEach(function (sel) {
      self.q(sel).addEventListener("change", function () {
        self.setWindow(self.q("[data-centre]").value, self.q("[data-width]").value);
      });
    });
    self.q("[data-opacity]").addEventListener("input", function (event) {
      self.opacity = Number(event.target.value) / 100; self.render();
    });
    self.q("[data-heat-opacity]").addEventListener("input", function (event) {
      self.heatOpacity = Number(event.target.value) / 100; self.render();
    });
    var canvas = self.canvas;
    canvas.addEventListener("pointerdown", function (event) {
      drag = { x: event.clientX, y: event.clientY, button: event.button, shift: event.shiftKey,
               centre: self.centre, width: self.width, tx: self.tx, ty: self.ty };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointermove", function (event) {
      self.readout(event);
      if (!drag) return;
      var ratio = canvas.width / canvas.getBoundingClientRect().width;
      var dx = event.clientX - drag.x, dy = event.clientY - drag.y;
      if (drag.button === 2 || drag.shift) {
        // Window/level drag: right or shift-drag; horizontal width, vertical level.
        var span = self.data.meta.max - self.data.meta.min || 256;
        self.setWindow(drag.centre + dy * span / 500, Math.max(1, drag.width + dx * span / 500));
      } else {
        self.tx = drag.tx + dx * ratio; self.ty = drag.ty + dy * ratio; self.fitted = false; self.render();
      }
    });
    canvas.addEventListener("pointerup", function () { drag = null; });
    canvas.addEventListener("contextmenu", function (event) { event.preventDefault(); });
    canvas.addEventListener("wheel", function (event) {
      event.preventDefault();
      if (self.series().length > 1 && !event.ctrlKey) { self.step(event.deltaY > 0 ? 1 : -1); return; }
      var rect = canvas.getBoundingClientRect(), ratio = canvas.width / rect.width;
      self.zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, (event.clientX - rect.left) * ratio, (event.clientY - rect.top) * ratio);
    }, { passive: false });
    self.root.addEventListener("keydown", function (event) {
      if (event.target !== self.root) return;
      var k = event.key, done = true, pan = 40;
      if (k === "+" || k === "=") self.zoomAt(1.25);
      else if (k === "-") self.zoomAt(0.8);
      else if (k === "1") self.zoomAt(1 / self.scale);
      else if (k === "0") self.fit();
      else if (k === "i") self.q('[data-action="invert"]').click();
      else if (k === "PageDown" || k === "ArrowDown" && event.altKey) self.step(1);
      else if (k === "PageUp" || k === "ArrowUp" && event.altKey) self.step(-1);
      else if (k === "ArrowLeft") { self.tx += pan; self.render(); }
      else if (k === "ArrowRight") { self.tx -= pan; self.render(); }
      else if (k === "ArrowUp") { self.ty += pan; self.render(); }
      else if (k === "ArrowDown") { self.ty -= pan; self.render(); }
      else done = false;
      if (done) event.preventDefault();
    });
    window.addEventListener("resize", function () { if (self.fitted) self.fit(); else { self.resize(); self.render(); } });
  };

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-viewport]").forEach(function (root) {
      var viewport = new Viewport(root);
      var select = root.querySelector("[data-source]");
      viewport.show(select ? select.value : (sources[0] && sources[0].key));
    });
  });
})();
