// Keyboard shortcuts of the verdict forms (labelling queue, a verdict's page, adjudication):
// the keys named by data-key press their button; not while typing a note or with a modifier.
// A static file, not an inline script: the Content-Security-Policy forbids inline scripts.
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    if (event.target.closest("textarea, input, select") || event.ctrlKey || event.metaKey || event.altKey) return;
    var form = document.querySelector("[data-verdict-form]");
    if (!form) return;
    var target = form.querySelector('[data-key="' + event.key + '"]');
    if (target) {
      event.preventDefault();
      target.click();
    }
  });
})();
