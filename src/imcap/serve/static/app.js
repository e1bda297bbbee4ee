// The imcap page: caption dropped or picked images, show attention per word, search the index.
"use strict";

const $ = (id) => document.getElementById(id);
let apiKey = localStorage.getItem("imcap-api-key") || "";

async function api(path, options = {}) {
  // Fetch an API route with the key (if any); resolve to the JSON body, reject with the server's message.
  const headers = { ...(options.headers || {}) };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: reported below */ }
  if (!response.ok) {
    const error = new Error(body && body.message ? body.message : `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

async function loadModel() {
  try {
    const card = await api("/v1/model");
    const args = card.model_args || {};
    const metric = Object.entries(card.metrics || {})
      .filter(([k, v]) => typeof v === "number" && k !== "iteration" && k !== "epoch")
      .slice(0, 3).map(([k, v]) => `${k} ${+v.toFixed(3)}`).join(", ");
    $("model-info").textContent = `${args.model} · ${args.cnn} CNN · vocabulary ${card.vocab_size} · iteration ${card.iteration}` + (metric ? ` · ${metric}` : "");
    const serving = card.serving || {};
    $("beam-size").max = $("num-captions").max = serving.max_beam_size;
    $("max-length").max = serving.max_caption_length;
    $("attention").disabled = !serving.has_attention;
    $("attention").checked = !!serving.has_attention;
    $("search-box").hidden = !serving.search_index;
    $("key-box").hidden = true;
  } catch (error) {
    $("model-info").textContent = `model card: ${error.message}`;
    if (error.status === 401) $("key-box").hidden = false;
  }
}

function captionUrl() {
  const params = new URLSearchParams({
    beam_size: $("beam-size").value,
    n: $("num-captions").value,
    max_length: $("max-length").value,
    attention: $("attention").checked && !$("attention").disabled,
  });
  return `/v1/caption?${params}`;
}

function newCard(file) {
  const card = $("card-template").content.firstElementChild.cloneNode(true);
  card.querySelector("img").src = URL.createObjectURL(file);
  card.querySelector(".name").textContent = file.name;
  $("results").prepend(card);
  return card;
}

function drawAttention(card, map) {
  // Paint one (h, w) map, values in [0, 1], over the image; the browser smooths it when scaling up.
  const canvas = card.querySelector(".overlay");
  const h = map.length, w = map[0].length;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = 4 * (y * w + x);
      pixels.data.set([255, 200, 0, Math.round(160 * map[y][x])], i);
    }
  }
  ctx.putImageData(pixels, 0, 0);
}

function clearAttention(card) {
  const canvas = card.querySelector(".overlay");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

function showCaptions(card, result) {
  const list = card.querySelector(".captions");
  for (const cap of result.captions) {
    const item = document.createElement("li");
    const text = document.createElement("span");
    text.className = "caption";
    if (cap.attention) {
      cap.attention.words.forEach((word, i) => {
        const span = document.createElement("span");
        span.className = "word";
        span.textContent = word;
        span.addEventListener("mouseenter", () => drawAttention(card, cap.attention.maps[i]));
        span.addEventListener("mouseleave", () => clearAttention(card));
        text.append(span, i + 1 < cap.attention.words.length ? " " : "");
      });
    } else {
      text.textContent = cap.caption;
    }
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = cap.score === null ? "" : `log p ${cap.score.toFixed(2)}`;
    item.append(text, score);
    list.append(item);
  }
}

async function captionFile(file) {
  const card = newCard(file);
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const body = await api(captionUrl(), { method: "POST", body: form });
    const result = body.results[0];
    showCaptions(card, result);
    card.querySelector(".status").textContent =
      `${result.width}×${result.height} · ${body.timing.total_ms.toFixed(0)} ms (batch of ${result.batch_size})`;
    card.dataset.state = "done";
  } catch (error) {
    card.querySelector(".status").textContent = `error: ${error.message}`;
    card.dataset.state = "error";
  }
}

function captionFiles(files) {
  for (const file of files) captionFile(file);
}

async function search(event) {
  event.preventDefault();
  const list = $("search-results");
  list.replaceChildren();
  $("search-status").textContent = "searching…";
  try {
    const body = await api("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: $("search-query").value, k: Number($("search-k").value) }),
    });
    for (const hit of body.results) {
      const item = document.createElement("li");
      item.textContent = `${hit.path} (score ${hit.score.toFixed(3)})`;
      list.append(item);
    }
    $("search-status").textContent = `${body.results.length} results in ${body.timing.total_ms.toFixed(0)} ms`;
  } catch (error) {
    $("search-status").textContent = `error: ${error.message}`;
  }
}

function setUp() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    captionFiles(e.dataTransfer.files);
  });
  $("file-input").addEventListener("change", (e) => { captionFiles(e.target.files); e.target.value = ""; });
  $("search-form").addEventListener("submit", search);
  $("key-box").addEventListener("submit", (e) => {
    e.preventDefault();
    apiKey = $("api-key").value.trim();
    localStorage.setItem("imcap-api-key", apiKey);
    loadModel();
  });
  loadModel();
}

setUp();
