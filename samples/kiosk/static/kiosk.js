// The kiosk page: one classifier, text or image in, label + score + the server's latency out.
"use strict";

const $ = (id) => document.getElementById(id);
let kind = null;
let maxBodyBytes = Infinity;
let requests = 0;

function ms(x) {
  return x < 10 ? x.toFixed(2) : x.toFixed(1);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function showResult(answer, roundTripMs) {
  const t = answer.timing;
  $("label").textContent = answer.label;
  $("score").textContent = answer.score.toFixed(4);
  $("top").replaceChildren(...answer.top.map((row) => {
    const li = document.createElement("li");
    li.textContent = `${row.label} ${row.score.toFixed(4)}`;
    return li;
  }));
  $("latency").textContent =
    `latency ${ms(t.preprocess_ms + t.inference_ms)} ms ` +
    `(preprocess ${ms(t.preprocess_ms)} ms + inference ${ms(t.inference_ms)} ms; ` +
    `round trip ${ms(roundTripMs)} ms)`;
  $("latency").dataset.ms = (t.preprocess_ms + t.inference_ms).toString();
  $("result").hidden = false;
}

async function predict(body) {
  const seq = ++requests;
  $("error").hidden = true;
  $("result").dataset.state = "busy";
  const started = performance.now();
  try {
    const response = await fetch("/api/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (seq !== requests) return; // a newer request is on its way
    if (!response.ok) {
      $("result").hidden = true;
      showError(`${answer.error}. ${answer.fix || ""}`);
    } else {
      showResult(answer, performance.now() - started);
    }
  } catch (err) {
    showError(`the kiosk did not answer: ${err}`);
  } finally {
    if (seq === requests) {
      $("result").dataset.state = "done";
      $("result").dataset.seq = String(seq);
    }
  }
}

function submitText(event) {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) {
    showError("the text is empty. Type some text before pressing Classify");
    return;
  }
  $("submit").disabled = true;
  predict({ text, top_k: 3 }).finally(() => { $("submit").disabled = false; });
}

function submitFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    showError(`${file.name} is not an image. Drop a PNG, JPEG, GIF, BMP or WebP file`);
    return;
  }
  if (file.size * 4 / 3 + 1024 > maxBodyBytes) { // base64 grows it by a third
    const mb = (n) => (n / 1048576).toFixed(1);
    showError(`${file.name} is ${mb(file.size)} MB; this kiosk takes images up to ${mb(maxBodyBytes * 3 / 4)} MB`);
    return;
  }
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const reader = new FileReader();
  reader.onload = () => predict({ image: reader.result, top_k: 3 });
  reader.onerror = () => showError(`cannot read ${file.name}`);
  reader.readAsDataURL(file);
}

function setUpDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    submitFile(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", () => submitFile($("file").files[0]));
}

async function start() {
  try {
    const info = await (await fetch("/api/info")).json();
    kind = info.input;
    maxBodyBytes = info.max_body_bytes;
    const precision = info.precision ? ` ${info.precision}` : "";
    $("model").textContent =
      `${info.artifact} — ${info.task} (${info.format}${precision}, ${info.runtime} on ${info.device}); ` +
      (info.labels.length <= 12 ? `labels: ${info.labels.join(", ")}` : `${info.labels.length} labels`);
  } catch (err) {
    showError(`cannot reach the kiosk server: ${err}`);
    return;
  }
  $("text-form").hidden = kind !== "text";
  $("image-form").hidden = kind !== "image";
  $("text-form").addEventListener("submit", submitText);
  setUpDrop();
  document.body.dataset.ready = kind;
}

start();
