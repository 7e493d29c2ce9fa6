/* Upload page: drag and drop, a list of chosen files, upload progress, and each
 * refusal shown next to the file it concerns. Without JavaScript the form still
 * posts normally and the server lists the refused files. */
(function () {
  "use strict";
  // DICOM files often arrive with an empty type (no .dcm extension): the server decides.
  var PREVIEWABLE = ["image/png", "image/jpeg"];
  var ACCEPTED = PREVIEWABLE.concat(["application/dicom"]);
  var form = document.getElementById("upload-form");
  if (!form) return;
  var input = form.querySelector('input[type="file"]');
  var zone = form.querySelector("[data-dropzone]");
  var list = form.querySelector("[data-file-list]");
  var progress = form.querySelector("[data-progress]");
  var bar = progress.querySelector("progress");
  var barText = progress.querySelector("[data-progress-text]");
  var formError = form.querySelector("[data-form-error]");
  var submit = form.querySelector('button[type="submit"]');
  var maxBytes = parseInt(form.dataset.maxBytes, 10);
  var maxFiles = parseInt(form.dataset.maxFiles, 10);
  var entries = []; // {file, error, element}

  function human(n) {
    if (n < 1024) return n + " bytes";
    return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : Math.round(n / 1024) + " kB";
  }

  function localProblem(file) {
    if (file.size === 0) return "the file is empty.";
    if (file.size > maxBytes) return "the file is " + human(file.size) + "; the limit is " + human(maxBytes) + ".";
    if (file.type && ACCEPTED.indexOf(file.type) === -1) return "not a PNG, JPEG or DICOM image (" + file.type + ").";
    return "";
  }

  function render() {
    list.innerHTML = "";
    entries.forEach(function (entry, index) {
      var item = document.createElement("li");
      item.className = entry.error ? "rejected" : "";
      item.dataset.file = entry.file.name;
      var thumb = document.createElement("img");
      thumb.alt = "";
      if (PREVIEWABLE.indexOf(entry.file.type) !== -1 && !entry.error) thumb.src = entry.url || (entry.url = URL.createObjectURL(entry.file));
      var text = document.createElement("span");
      var name = document.createElement("strong");
      name.textContent = entry.file.name;
      text.appendChild(name);
      text.appendChild(document.createTextNode(" · " + human(entry.file.size)));
      if (entry.error) {
        var error = document.createElement("span");
        error.className = "file-error";
        error.setAttribute("role", "alert");
        error.textContent = entry.error;
        text.appendChild(error);
      }
      var remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", "Remove " + entry.file.name);
      remove.addEventListener("click", function () {
        if (entry.url) URL.revokeObjectURL(entry.url);
        entries.splice(index, 1);
        render();
      });
      item.appendChild(thumb);
      item.appendChild(text);
      item.appendChild(remove);
      list.appendChild(item);
    });
    input.required = entries.length === 0;
  }

  function add(files) {
    Array.prototype.forEach.call(files, function (file) {
      entries.push({ file: file, error: localProblem(file) });
    });
    formError.textContent = entries.length > maxFiles ? "A case holds at most " + maxFiles + " images; remove " + (entries.length - maxFiles) + "." : "";
    render();
  }

  input.addEventListener("change", function () { add(input.files); input.value = ""; });
  // The button says what will happen: X-rays are classified, CT slices segmented.
  function labelSubmit() {
    var chosen = form.querySelector('input[name="modality"]:checked');
    var ct = chosen && chosen.value === "ct";
    submit.textContent = ct ? submit.dataset.submitCt : submit.dataset.submitXray;
  }
  form.querySelectorAll('input[name="modality"]').forEach(function (radio) {
    radio.addEventListener("change", labelSubmit);
  });
  if (submit.dataset.submitCt) labelSubmit();
  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) { event.preventDefault(); zone.classList.add("dragover"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    zone.addEventListener(type, function (event) { event.preventDefault(); zone.classList.remove("dragover"); });
  });
  zone.addEventListener("drop", function (event) { add(event.dataTransfer.files); });

  function showServerErrors(body) {
    var unmatched = entries.slice();
    (body.files || []).forEach(function (refusal) {
      var position = unmatched.findIndex(function (entry) { return entry.file.name === refusal.name; });
      if (position === -1) { formError.textContent = refusal.name + ": " + refusal.problem; return; }
      unmatched[position].error = refusal.problem;
      unmatched.splice(position, 1);
    });
    var fields = body.fields || {};
    Object.keys(fields).forEach(function (name) {
      if (name === "images" && (body.files || []).length) return;
      var field = form.querySelector('[name="' + name + '"]');
      var message = fields[name].join(" ");
      if (field && name !== "images") {
        var note = document.createElement("span");
        note.className = "error server-error";
        note.setAttribute("role", "alert");
        note.textContent = message;
        field.insertAdjacentElement("afterend", note);
      } else {
        formError.textContent = message;
      }
    });
    if (!formError.textContent) formError.textContent = body.error || "The upload was refused.";
    render();
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    form.querySelectorAll(".server-error").forEach(function (note) { note.remove(); });
    formError.textContent = "";
    if (!entries.length) { formError.textContent = "Choose at least one image."; return; }
    if (entries.some(function (entry) { return entry.error; })) {
      formError.textContent = "Remove the files marked with a problem, then upload again.";
      return;
    }
    var data = new FormData(form);
    data.delete(input.name);
    entries.forEach(function (entry) { data.append(input.name, entry.file, entry.file.name); });
    var request = new XMLHttpRequest();
    request.open("POST", form.action || window.location.href);
    request.setRequestHeader("Accept", "application/json");
    request.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var percent = Math.round((100 * e.loaded) / e.total);
      bar.value = percent;
      barText.textContent = percent < 100 ? percent + "%" : "100%, checking the images…";
    });
    request.addEventListener("load", function () {
      var body = {};
      try { body = JSON.parse(request.responseText); } catch (ignored) { body = { error: "The server answered " + request.status + "." }; }
      if (request.status === 201 && body.url) { barText.textContent = "Stored; opening the case…"; window.location.assign(body.url); return; }
      progress.hidden = true;
      submit.disabled = false;
      showServerErrors(body);
    });
    request.addEventListener("error", function () {
      progress.hidden = true;
      submit.disabled = false;
      formError.textContent = "The upload did not reach the server; check the connection and try again.";
    });
    progress.hidden = false;
    bar.value = 0;
    barText.textContent = "0%";
    submit.disabled = true;
    request.send(data);
  });
})();
