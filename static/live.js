// Live camera check: preview, one downscaled JPEG frame per interval to the server, rolling verdict,
// face boxes over the preview and a strip chart of per-frame scores. Settings come from data-
// attributes on #live (the CSP forbids inline script).
(function () {
  "use strict";
  var root = document.getElementById("live");
  if (!root) { return; }

  var startUrl = root.getAttribute("data-start-url");
  var csrfToken = root.getAttribute("data-csrf-token");
  var intervalMs = Math.max(100, parseInt(root.getAttribute("data-interval-ms"), 10) || 1000);
  var maxSide = Math.max(64, parseInt(root.getAttribute("data-max-side"), 10) || 480);

  var video = document.getElementById("live-video");
  var overlay = document.getElementById("live-overlay");
  var chart = document.getElementById("live-chart");
  var startButton = document.getElementById("live-start");
  var stopButton = document.getElementById("live-stop");
  var saveButton = document.getElementById("live-save");
  var message = document.getElementById("live-message");
  var verdictBadge = document.getElementById("live-verdict");
  var scoreText = document.getElementById("live-score");
  var explanation = document.getElementById("live-explanation");
  var faceText = document.getElementById("live-face");
  var rateText = document.getElementById("live-rate");
  var savedText = document.getElementById("live-saved");

  var grab = document.createElement("canvas");
  var stream = null;
  var session = null;
  var timer = null;
  var inFlight = false;
  var skippedHere = 0;  // frames not sent because the previous answer had not come back yet
  var history = [];  // {score: number|null} per scored frame, oldest first
  var threshold = 0.5;
  var band = [0.5, 0.5];
  var VERDICT_TEXT = { real: "Likely real", fake: "Likely fake", uncertain: "Uncertain",
                       no_face: "No face", waiting: "Waiting" };

  function say(text, isError) {
    message.textContent = text;
    message.className = "live-message" + (isError ? " error" : "");
  }

  function post(url, body, contentType) {
    var headers = { "X-CSRFToken": csrfToken, "Accept": "application/json" };
    if (contentType) { headers["Content-Type"] = contentType; }
    return fetch(url, { method: "POST", credentials: "same-origin", headers: headers, body: body || null })
      .then(function (response) {
        if (response.status === 204) { return { ok: true, status: 204, data: {} }; }
        return response.json().then(
          function (data) { return { ok: response.ok, status: response.status, data: data }; },
          function () { return { ok: false, status: response.status, data: { message: "Unexpected answer (" + response.status + ")." } }; });
      });
  }

  function percent(value) { return (value * 100).toFixed(Math.abs(value - threshold) < 0.05 ? 1 : 0) + " %"; }

  function classFor(score, faceBand) {
    var edges = faceBand || band;
    if (score >= edges[0] && score < edges[1]) { return "uncertain"; }
    return score >= threshold ? "fake" : "real";
  }

  function drawBoxes(answer) {
    overlay.width = answer.width;
    overlay.height = answer.height;
    var ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    var colours = { fake: "#c0392b", real: "#1e8449", uncertain: "#b9770e" };
    ctx.lineWidth = Math.max(2, answer.width / 160);
    var size = Math.max(12, Math.round(answer.height / 16));
    ctx.font = "bold " + size + "px sans-serif";
    ctx.textBaseline = "top";
    answer.faces.forEach(function (face, i) {
      var colour = colours[classFor(face.score, face.uncertain_band)];
      var b = face.box;
      var label = "#" + (i + 1) + " " + percent(face.score);
      var labelY = b[1] >= size + 6 ? b[1] - size - 6 : b[1] + b[3];
      ctx.strokeStyle = colour;
      ctx.strokeRect(b[0], b[1], b[2], b[3]);
      ctx.fillStyle = colour;  // a solid tab so the label reads on any picture
      ctx.fillRect(b[0], labelY, ctx.measureText(label).width + 8, size + 6);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, b[0] + 4, labelY + 3);
    });
  }

  function drawChart() {
    var ctx = chart.getContext("2d");
    var w = chart.width, h = chart.height, pad = 4;
    var slots = 60;
    var step = (w - 2 * pad) / (slots - 1);
    var y = function (score) { return pad + (1 - score) * (h - 2 * pad); };
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = "rgba(185, 119, 14, 0.15)";
    ctx.fillRect(0, y(band[1]), w, Math.max(1, y(band[0]) - y(band[1])));
    ctx.strokeStyle = "#888";
    ctx.setLineDash([4, 4]);
    ctx.beginPath(); ctx.moveTo(0, y(threshold)); ctx.lineTo(w, y(threshold)); ctx.stroke();
    ctx.setLineDash([]);
    var shown = history.slice(-slots);
    var offset = slots - shown.length;
    ctx.strokeStyle = "#2c3e50";
    ctx.lineWidth = 2;
    ctx.beginPath();
    var drawing = false;
    shown.forEach(function (point, i) {
      var x = pad + (offset + i) * step;
      if (point.score === null) { drawing = false; return; }
      if (drawing) { ctx.lineTo(x, y(point.score)); } else { ctx.moveTo(x, y(point.score)); drawing = true; }
    });
    ctx.stroke();
    shown.forEach(function (point, i) {
      if (point.score === null) { return; }
      ctx.fillStyle = { fake: "#c0392b", real: "#1e8449", uncertain: "#b9770e" }[classFor(point.score)];
      ctx.beginPath();
      ctx.arc(pad + (offset + i) * step, y(point.score), 3, 0, 2 * Math.PI);
      ctx.fill();
    });
  }

  function showRates(rates) {
    rateText.textContent = "Scored " + rates.scored_fps.toFixed(2) + " frames/s (" + rates.scored + " in all); dropped " +
      rates.dropped_fps.toFixed(2) + "/s by the server (" + rates.dropped + ")" +
      (skippedHere ? ", " + skippedHere + " not sent while the previous frame was still being scored" : "") + ".";
  }

  function showAnswer(answer) {
    threshold = answer.threshold;
    band = answer.rolling.uncertain_band || answer.uncertain_band;  // wider when the faces lost detail
    history.push({ score: answer.score });
    if (history.length > 600) { history.shift(); }
    drawBoxes(answer);
    drawChart();
    var rolling = answer.rolling;
    verdictBadge.textContent = VERDICT_TEXT[rolling.verdict] || rolling.verdict;
    verdictBadge.className = "badge verdict-" + (rolling.verdict === "waiting" ? "no_face" : rolling.verdict);
    scoreText.textContent = rolling.score === null ? "" :
      "Fake probability " + percent(rolling.score) + " over the last " + rolling.window_s + " s";
    explanation.textContent = rolling.explanation;
    faceText.textContent = answer.no_face ? "No face in the latest frame: it was not scored." :
      answer.faces.length + " face" + (answer.faces.length === 1 ? "" : "s") + " in the latest frame (" +
      answer.faces.map(function (f) { return percent(f.score); }).join(", ") + ").";
    showRates(answer.rates);
    saveButton.disabled = Boolean(session && session.saved);
    root.setAttribute("data-scored", String(answer.rates.scored));
  }

  function sendFrame() {
    if (!session || !video.videoWidth) { return; }
    if (inFlight) { skippedHere += 1; return; }
    var scale = Math.min(1, maxSide / Math.max(video.videoWidth, video.videoHeight));
    grab.width = Math.round(video.videoWidth * scale);
    grab.height = Math.round(video.videoHeight * scale);
    grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
    inFlight = true;
    var current = session;
    grab.toBlob(function (blob) {
      if (!blob || current !== session) { inFlight = false; return; }
      post(current.frame_url, blob, "image/jpeg").then(function (result) {
        inFlight = false;
        if (current !== session) { return; }
        if (result.ok) {
          showAnswer(result.data);
          say("Checking. Save the session to keep it in your history.");
        } else if (result.data && result.data.dropped) {
          if (result.data.rates) { showRates(result.data.rates); }
          say(result.data.message || "A frame was dropped.");
        } else if (result.status === 404) {
          say(result.data.message || "The session ended. Start again.", true);
          stop(false);
        } else {
          say(result.data.message || ("The frame was refused (" + result.status + ")."), true);
        }
      }).catch(function () {
        inFlight = false;
        say("The server could not be reached; retrying.", true);
      });
    }, "image/jpeg", 0.85);
  }

  function start() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say("This browser cannot open a camera here (it needs HTTPS or localhost).", true);
      return;
    }
    startButton.disabled = true;
    say("Asking for the camera…");
    navigator.mediaDevices.getUserMedia({ video: true, audio: false }).then(function (media) {
      stream = media;
      video.srcObject = media;
      return post(startUrl);
    }).then(function (result) {
      if (!result.ok) { throw new Error(result.data.message || "The session could not be started."); }
      session = result.data;
      history = [];
      skippedHere = 0;
      savedText.hidden = true;
      stopButton.disabled = false;
      say("Camera on. The first verdict comes after the first frame is scored.");
      timer = window.setInterval(sendFrame, intervalMs);
    }).catch(function (error) {
      var text = error && error.name === "NotAllowedError" ? "Camera permission was refused; allow it in the browser to use this check."
        : error && error.name === "NotFoundError" ? "No camera was found."
        : (error && error.message) || "The camera could not be started.";
      say(text, true);
      stop(true);
    });
  }

  function stop(discard) {
    if (timer) { window.clearInterval(timer); timer = null; }
    if (stream) { stream.getTracks().forEach(function (track) { track.stop(); }); stream = null; }
    video.srcObject = null;
    if (discard && session && !session.saved) { post(session.discard_url); }
    session = null;
    inFlight = false;
    startButton.disabled = false;
    stopButton.disabled = true;
    saveButton.disabled = true;
  }

  function save() {
    if (!session) { return; }
    saveButton.disabled = true;
    post(session.save_url).then(function (result) {
      if (!result.ok) {
        say(result.data.message || "The session could not be saved.", true);
        saveButton.disabled = false;
        return;
      }
      session.saved = true;
      savedText.hidden = false;
      savedText.textContent = "";
      var link = document.createElement("a");
      link.href = result.data.url;
      link.id = "live-saved-link";
      link.textContent = "Saved to your history (" + result.data.frames + " frames): open the result";
      savedText.appendChild(link);
      say("Saved. Later frames are not added to the saved result.");
    }).catch(function () {
      say("The server could not be reached; the session was not saved.", true);
      saveButton.disabled = false;
    });
  }

  startButton.addEventListener("click", start);
  stopButton.addEventListener("click", function () { stop(true); say("Camera stopped."); });
  saveButton.addEventListener("click", save);
  drawChart();
})();
