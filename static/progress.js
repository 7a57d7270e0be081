// Live progress for a queued or running analysis. Without JavaScript a <noscript> refresh does the same.
(function () {
  "use strict";
  var box = document.getElementById("progress");
  if (!box) { return; }
  var url = box.getAttribute("data-status-url");
  var bar = document.getElementById("progress-bar");
  var statusText = document.getElementById("status-text");
  var stageText = document.getElementById("stage-text");
  var delay = 1000;

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (state) {
        if (state.finished) { window.location.reload(); return; }
        var percent = Math.round((state.progress || 0) * 100);
        bar.value = percent;
        bar.textContent = percent + " %";
        statusText.textContent = state.status.charAt(0).toUpperCase() + state.status.slice(1);
        stageText.textContent = state.stage || "waiting for a worker";
        delay = 1000;
        window.setTimeout(poll, delay);
      })
      .catch(function () {
        delay = Math.min(delay * 2, 15000);
        window.setTimeout(poll, delay);
      });
  }
  window.setTimeout(poll, delay);
})();
