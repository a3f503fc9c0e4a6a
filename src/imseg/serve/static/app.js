// imseg click-to-segment page: plain JS, no build step. Talks to the REST API of imseg serve.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = [[30, 144, 255], [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211], [0, 206, 209],
  [255, 140, 0], [199, 21, 133], [127, 255, 0], [70, 130, 180]];

const state = {
  imageId: null, fileName: "image", width: 0, height: 0,
  points: [], labels: [], box: null, history: [],
  masks: [], selected: 0, mode: "prompt", seq: 0, drag: null, uploadSeq: 0,
};

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// ------------------------------------------------------------------ HTTP with optional API key
async function api(path, options = {}) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = Object.assign({}, options.headers || {});
    const key = sessionStorage.getItem("imseg-api-key");
    if (key) headers["X-API-Key"] = key;
    const response = await fetch(path, Object.assign({}, options, { headers }));
    if (response.status === 401 && attempt === 0) {
      const entered = window.prompt("This server needs an API key (X-API-Key):");
      if (!entered) break;
      sessionStorage.setItem("imseg-api-key", entered);
      continue;
    }
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) throw new Error(`${body.title || response.status}: ${body.detail || ""}`);
    return body;
  }
  throw new Error("Unauthorized: an API key is required.");
}

// ------------------------------------------------------------------ loading an image
async function loadFile(file) {
  if (!file) return;
  // only the latest upload may change the page: an earlier, slower one that answers later is ignored
  const upload = ++state.uploadSeq;
  setStatus(`Uploading ${file.name} and computing its embedding…`);
  try {
    const info = await api("/v1/images", {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
    });
    const bitmap = await createImageBitmap(file);
    if (upload !== state.uploadSeq) return;
    Object.assign(state, {
      imageId: info.image_id, fileName: file.name.replace(/\.[^.]+$/, "") || "image",
      width: info.width, height: info.height,
    });
    for (const id of ["image", "overlay", "prompts"]) {
      $(id).width = info.width;
      $(id).height = info.height;
    }
    $("image").getContext("2d").drawImage(bitmap, 0, 0, info.width, info.height);
    $("stage").hidden = false;
    resetPrompts();
    for (const id of ["clear", "everything", "find-text", "find"]) $(id).disabled = false;
    setStatus(`${file.name}: ${info.width}×${info.height}, ready (embedding ${info.cached ? "cached" : Math.round(info.embed_ms) + " ms"}). Click on an object.`);
  } catch (err) {
    if (upload === state.uploadSeq) setStatus(err.message, true);
  }
}

$("file").addEventListener("change", (e) => loadFile(e.target.files[0]));
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
}
// one handler loads a dropped file, wherever on the page it lands (a drop on #drop bubbles up to it)
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => { e.preventDefault(); loadFile(e.dataTransfer.files[0]); });

// ------------------------------------------------------------------ prompts
function toImage(e) {
  const canvas = $("prompts");
  const rect = canvas.getBoundingClientRect();
  const x = (e.clientX - rect.left) * (canvas.width / rect.width);
  const y = (e.clientY - rect.top) * (canvas.height / rect.height);
  return [Math.min(Math.max(x, 0), canvas.width), Math.min(Math.max(y, 0), canvas.height)];
}

const promptCanvas = $("prompts");
promptCanvas.addEventListener("contextmenu", (e) => e.preventDefault());
promptCanvas.addEventListener("mousedown", (e) => {
  if (!state.imageId) return;
  state.drag = { start: toImage(e), screen: [e.clientX, e.clientY], button: e.button, shift: e.shiftKey };
});
promptCanvas.addEventListener("mousemove", (e) => {
  if (!state.drag) return;
  drawPrompts([state.drag.start, toImage(e)]);
});
window.addEventListener("mouseup", (e) => {
  const drag = state.drag;
  if (!drag) return;
  state.drag = null;
  const end = toImage(e);
  const moved = Math.hypot(e.clientX - drag.screen[0], e.clientY - drag.screen[1]);
  if (moved > 5) {
    const box = [Math.min(drag.start[0], end[0]), Math.min(drag.start[1], end[1]),
      Math.max(drag.start[0], end[0]), Math.max(drag.start[1], end[1])];
    state.history.push({ kind: "box", previous: state.box });
    state.box = box.map((v) => Math.round(v * 10) / 10);
  } else {
    const label = drag.button === 2 || drag.shift ? 0 : 1;
    state.points.push(drag.start.map((v) => Math.round(v * 10) / 10));
    state.labels.push(label);
    state.history.push({ kind: "point" });
  }
  state.mode = "prompt";
  segment();
});

function resetPrompts() {
  Object.assign(state, { points: [], labels: [], box: null, history: [], masks: [], selected: 0, mode: "prompt" });
  state.seq++;
  drawPrompts();
  renderMasks();
}

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", resetPrompts);
document.addEventListener("keydown", (e) => { if ((e.ctrlKey || e.metaKey) && e.key === "z") undo(); });

function undo() {
  const last = state.history.pop();
  if (!last) return;
  if (last.kind === "point") { state.points.pop(); state.labels.pop(); } else { state.box = last.previous; }
  segment();
}

function drawPrompts(rubberBand) {
  const canvas = $("prompts");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const r = Math.max(4, Math.round(Math.max(canvas.width, canvas.height) / 150));
  ctx.lineWidth = Math.max(2, r / 2);
  const boxes = [];
  if (state.box) boxes.push(state.box);
  if (rubberBand) {
    const [[x0, y0], [x1, y1]] = rubberBand;
    boxes.push([Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)]);
  }
  ctx.strokeStyle = "#ffd700";
  for (const b of boxes) ctx.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
  state.points.forEach(([x, y], i) => {
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fillStyle = state.labels[i] === 1 ? "#32cd32" : "#ff4040";
    ctx.fill();
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  });
  $("undo").disabled = state.history.length === 0;
}

// ------------------------------------------------------------------ segmentation
async function segment() {
  drawPrompts();
  const seq = ++state.seq;
  if (!state.points.length && !state.box) { state.masks = []; renderMasks(); return; }
  const request = { mode: "prompt", multimask: true, formats: ["png", "rle"] };
  if (state.points.length) { request.points = state.points; request.labels = state.labels; }
  if (state.box) request.box = state.box;
  setStatus("Segmenting…");
  try {
    const result = await api(`/v1/images/${state.imageId}/segment`, {
      method: "POST", body: JSON.stringify(request), headers: { "Content-Type": "application/json" },
    });
    if (seq !== state.seq) return; // a newer click superseded this answer
    await showResult(result, "prompt");
    setStatus(`${result.masks.length} candidate masks in ${Math.round(result.timing_ms.total_ms)} ms.`);
  } catch (err) {
    if (seq === state.seq) setStatus(err.message, true);
  }
}

$("everything").addEventListener("click", async () => {
  if (!state.imageId) return;
  const seq = ++state.seq;
  setStatus("Segmenting everything (this runs the decoder on a grid of points)…");
  try {
    const result = await api(`/v1/images/${state.imageId}/segment`, {
      method: "POST", body: JSON.stringify({ mode: "everything", formats: ["png", "rle"] }),
      headers: { "Content-Type": "application/json" },
    });
    if (seq !== state.seq) return;
    Object.assign(state, { points: [], labels: [], box: null, history: [] });
    drawPrompts();
    await showResult(result, "everything");
    setStatus(`Everything mode: ${result.masks.length} masks in ${Math.round(result.timing_ms.total_ms)} ms.`);
  } catch (err) {
    if (seq === state.seq) setStatus(err.message, true);
  }
});

// text prompts: every mask of the typed phrases, coloured by phrase
$("find-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("find-text").value;
  if (!state.imageId || !text.trim()) return;
  const seq = ++state.seq;
  setStatus(`Finding "${text}"…`);
  try {
    const result = await api(`/v1/images/${state.imageId}/segment`, {
      method: "POST", body: JSON.stringify({ text, formats: ["png", "rle"] }),
      headers: { "Content-Type": "application/json" },
    });
    if (seq !== state.seq) return;
    Object.assign(state, { points: [], labels: [], box: null, history: [] });
    drawPrompts();
    await showResult(result, "text");
    setStatus(`Found ${result.masks.length} masks for "${text}" in ${Math.round(result.timing_ms.total_ms)} ms.`);
  } catch (err) {
    if (seq === state.seq) setStatus(err.message, true);
  }
});

// one colour per phrase, in the order phrases first appear among the masks (best first)
function labelColor(label) {
  const names = [...new Set(state.masks.map((m) => m.label))];
  return COLORS[Math.max(0, names.indexOf(label)) % COLORS.length];
}

function maskColor(m, k) {
  if (state.mode === "text") return labelColor(m.label);
  return state.mode === "everything" ? COLORS[k % COLORS.length] : COLORS[0];
}

function decodePng(b64) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.width; c.height = img.height;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, c.width, c.height).data;
      const mask = new Uint8Array(c.width * c.height);
      for (let i = 0; i < mask.length; i++) mask[i] = data[4 * i] > 127 ? 1 : 0;
      resolve(mask);
    };
    img.onerror = () => reject(new Error("could not decode a mask PNG"));
    img.src = "data:image/png;base64," + b64;
  });
}

async function showResult(result, mode) {
  const bitmaps = await Promise.all(result.masks.map((m) => decodePng(m.png)));
  state.masks = result.masks.map((m, i) => Object.assign({}, m, { bitmap: bitmaps[i] }));
  state.selected = 0;
  state.mode = mode;
  renderMasks();
}

function shownMasks() {
  if (state.mode !== "prompt") return state.masks;
  return state.masks.length ? [state.masks[state.selected]] : [];
}

function paint(canvas, masks, alpha) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(state.width, state.height);
  masks.forEach((m, k) => {
    const color = maskColor(m, k);
    const bits = m.bitmap;
    for (let i = 0; i < bits.length; i++) {
      if (!bits[i]) continue;
      image.data[4 * i] = color[0]; image.data[4 * i + 1] = color[1];
      image.data[4 * i + 2] = color[2]; image.data[4 * i + 3] = alpha;
    }
  });
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.putImageData(image, 0, 0);
}

function renderMasks() {
  const overlay = $("overlay");
  const shown = shownMasks();
  if (state.width) paint(overlay, shown, 140);
  const score = $("score");
  if (state.mode !== "prompt") {
    score.textContent = `${state.masks.length} masks`;
    score.dataset.score = "";
  } else if (shown.length) {
    score.textContent = `score ${shown[0].score.toFixed(3)} · area ${shown[0].area} px`;
    score.dataset.score = String(shown[0].score);
  } else {
    score.textContent = "no mask yet";
    score.dataset.score = "";
  }
  const list = $("candidates");
  list.replaceChildren();
  if (state.mode === "prompt") {
    state.masks.forEach((m, i) => {
      const item = document.createElement("div");
      item.className = "candidate" + (i === state.selected ? " selected" : "");
      item.dataset.index = String(i);
      const thumb = document.createElement("canvas");
      thumb.width = state.width; thumb.height = state.height;
      paint(thumb, [m], 255);
      const label = document.createElement("span");
      label.textContent = `#${i + 1} score ${m.score.toFixed(3)}`;
      item.append(thumb, label);
      item.addEventListener("click", () => { state.selected = i; renderMasks(); });
      list.append(item);
    });
  } else if (state.mode === "text") {
    state.masks.forEach((m, k) => {
      const item = document.createElement("div");
      item.className = "candidate";
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `rgb(${maskColor(m, k).join(",")})`;
      const label = document.createElement("span");
      label.textContent = `${m.label} · score ${m.score.toFixed(3)} (box ${m.detector_score.toFixed(3)})`;
      label.prepend(swatch);
      item.append(label);
      list.append(item);
    });
  }
  for (const id of ["download-png", "download-coco"]) $(id).disabled = shown.length === 0;
}

// ------------------------------------------------------------------ downloads
function saveBlob(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

$("download-png").addEventListener("click", () => {
  // single mask: 255 = object; everything and text: gray level = mask number (1, 2, …), 0 = background
  const shown = shownMasks();
  const c = document.createElement("canvas");
  c.width = state.width; c.height = state.height;
  const ctx = c.getContext("2d");
  const image = ctx.createImageData(state.width, state.height);
  for (let i = 0; i < state.width * state.height; i++) image.data[4 * i + 3] = 255;
  shown.forEach((m, k) => {
    const value = state.mode !== "prompt" ? Math.min(k + 1, 255) : 255;
    for (let i = 0; i < m.bitmap.length; i++) {
      if (m.bitmap[i]) image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = value;
    }
  });
  ctx.putImageData(image, 0, 0);
  c.toBlob((blob) => saveBlob(blob, `${state.fileName}_mask.png`), "image/png");
});

$("download-coco").addEventListener("click", () => {
  // text mode: one category per phrase; otherwise a single "object" category
  const names = state.mode === "text" ? [...new Set(state.masks.map((m) => m.label))] : ["object"];
  const annotations = shownMasks().map((m, i) => ({
    id: i + 1, image_id: 1, category_id: state.mode === "text" ? names.indexOf(m.label) + 1 : 1,
    segmentation: m.rle, area: m.area, bbox: m.bbox, score: m.score, iscrowd: 0,
  }));
  const coco = {
    images: [{ id: 1, file_name: state.fileName, width: state.width, height: state.height }],
    annotations, categories: names.map((name, i) => ({ id: i + 1, name })),
  };
  saveBlob(new Blob([JSON.stringify(coco)], { type: "application/json" }), `${state.fileName}_coco.json`);
});

// ------------------------------------------------------------------ model name
api("/v1/models").then((b) => { $("model").textContent = b.models.map((m) => m.name).join(", "); }).catch(() => {});
