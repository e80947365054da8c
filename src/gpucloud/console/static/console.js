// gpucloud console: the only script besides htmx. Served as a file (the CSP allows no
// inline script). Copy buttons, and keeping followed logs scrolled to their end.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.textContent.trim();
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done);
    } else {
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      try { document.execCommand("copy"); done(); } catch (e) { /* text stays selected */ }
    }
  });
  document.addEventListener("htmx:afterSwap", function () {
    document.querySelectorAll("pre[data-follow]").forEach(function (pre) {
      pre.scrollTop = pre.scrollHeight;
    });
  });
})();
