// The demo page's behaviour: read images the user chooses, drops or pastes, send each to the
// public V2 REST endpoint as a BYTES tensor (binary tensor extension: raw file bytes after the
// JSON header, no base64), and show the top-k classes, the request time, or the server's error
// as the server worded it. Plain JavaScript, no dependencies, nothing fetched from elsewhere.
"use strict";

(() => {
  const body = document.body;
  const MODEL = body.dataset.modelName;
  const DEFAULT_TOP_K = Number(body.dataset.topK);
  const INFER_URL = `v2/models/${encodeURIComponent(MODEL)}/infer`;
  const READY_URL = `v2/models/${encodeURIComponent(MODEL)}/ready`;
  const READY_POLL_MS = 5000;
  const MAX_IN_FLIGHT = 4; // requests at once; the rest wait their turn
  const INPUT_NAME = "image"; // the transformer's one input: BYTES, one encoded file per element

  const $ = (id) => document.getElementById(id);
  const fileInput = $("file-input");
  const dropZone = $("drop-zone");
  const results = $("results");
  const topKInput = $("top-k");
  const readiness = $("readiness");
  const keyPanel = $("key-panel");
  const keyInput = $("api-key");
  const keyMessage = $("key-message");
  const template = $("card-template");
  const encoder = new TextEncoder();

  // --- requests ---------------------------------------------------------------------------

  function authHeaders() {
    // The key lives in this input only: never in storage, cookies or the URL.
    const key = keyInput.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function askForKey(message) {
    keyPanel.hidden = false;
    keyPanel.classList.add("needed");
    keyMessage.textContent = message;
    if (!keyInput.value) keyInput.focus();
  }

  /** The V2 binary-extension body for one file: JSON header, then the length-prefixed bytes. */
  function inferBody(bytes, topK) {
    const tensor = new Uint8Array(4 + bytes.length);
    new DataView(tensor.buffer).setUint32(0, bytes.length, true); // BYTES element length, LE
    tensor.set(bytes, 4);
    const header = encoder.encode(
      JSON.stringify({
        inputs: [
          {
            name: INPUT_NAME,
            datatype: "BYTES",
            shape: [1],
            parameters: { binary_data_size: tensor.length },
          },
        ],
        parameters: { top_k: topK },
      }),
    );
    return { body: new Blob([header, tensor]), headerLength: header.length };
  }

  /** The top_k to send: the number typed, or the text as typed so the server can say why not. */
  function requestedTopK() {
    const text = topKInput.value.trim();
    if (text === "") return DEFAULT_TOP_K;
    const value = Number(text);
    return Number.isFinite(value) ? value : text;
  }

  /** The server's own words for a failed response: its "error" field, else its body text. */
  async function errorText(response) {
    const text = await response.text();
    try {
      const parsed = JSON.parse(text);
      if (parsed && typeof parsed.error === "string") return parsed.error;
      if (parsed && typeof parsed.detail === "string") return parsed.detail;
    } catch (_) {
      // not JSON: show the body as it came
    }
    return text || response.statusText;
  }

  async function classify(file, topK) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const { body: payload, headerLength } = inferBody(bytes, topK);
    const started = performance.now();
    const response = await fetch(INFER_URL, {
      method: "POST",
      headers: {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": String(headerLength),
        ...authHeaders(),
      },
      body: payload,
    });
    if (!response.ok) {
      const message = await errorText(response);
      const ms = performance.now() - started;
      if (response.status === 401 || response.status === 403) askForKey(message);
      return { ok: false, status: response.status, message, ms };
    }
    const answer = await response.json();
    const ms = performance.now() - started;
    const output = (name) => (answer.outputs || []).find((o) => o.name === name);
    const labels = output("label");
    const scores = output("score");
    if (!labels || !scores) {
      const message = "the response has no label and score outputs";
      return { ok: false, status: response.status, message, ms };
    }
    const classes = labels.data.map((label, i) => ({ label, score: scores.data[i] }));
    return { ok: true, classes, ms };
  }

  // A small queue so a folder of photos does not open dozens of connections at once.
  const waiting = [];
  let inFlight = 0;
  function schedule(job) {
    waiting.push(job);
    pump();
  }
  function pump() {
    while (inFlight < MAX_IN_FLIGHT && waiting.length) {
      const job = waiting.shift();
      inFlight += 1;
      job().finally(() => {
        inFlight -= 1;
        pump();
      });
    }
  }

  // --- cards ------------------------------------------------------------------------------

  const cards = []; // { file, element, url, generation, status }

  function addFiles(files) {
    const batch = document.createDocumentFragment(); // newest batch first, in the chosen order
    for (const file of files) {
      const element = template.content.firstElementChild.cloneNode(true);
      const url = URL.createObjectURL(file);
      const thumb = element.querySelector(".thumb");
      thumb.src = url;
      thumb.alt = file.name || "pasted image";
      thumb.addEventListener("error", () => thumb.classList.add("broken"), { once: true });
      element.querySelector(".name").textContent = file.name || "pasted image";
      element.querySelector(".name").title = file.name || "";
      batch.append(element);
      const card = { file, element, url, generation: 0, status: 0 };
      cards.push(card);
      run(card);
    }
    results.prepend(batch);
  }

  function run(card) {
    card.generation += 1;
    const generation = card.generation;
    const topK = requestedTopK();
    const el = card.element;
    el.className = "card pending";
    el.querySelector(".state").textContent = "classifying…";
    el.querySelector(".state").hidden = false;
    el.querySelector(".time").textContent = "";
    el.querySelector(".classes").replaceChildren();
    el.querySelector(".error").hidden = true;
    schedule(async () => {
      let outcome;
      try {
        outcome = await classify(card.file, topK);
      } catch (err) {
        outcome = { ok: false, status: 0, message: `request failed: ${err.message}`, ms: null };
      }
      if (generation === card.generation) show(card, outcome);
    });
  }

  function show(card, outcome) {
    card.status = outcome.ok ? 200 : outcome.status;
    const el = card.element;
    const state = el.querySelector(".state");
    if (outcome.ms !== null) el.querySelector(".time").textContent = `${Math.round(outcome.ms)} ms`;
    if (!outcome.ok) {
      el.className = "card failed";
      state.textContent = outcome.status ? `HTTP ${outcome.status}` : "no answer";
      const error = el.querySelector(".error");
      error.textContent = outcome.message;
      error.hidden = false;
      return;
    }
    el.className = "card done";
    state.hidden = true;
    const list = el.querySelector(".classes");
    for (const { label, score } of outcome.classes) {
      const item = document.createElement("li");
      const row = document.createElement("div");
      row.className = "row";
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = label;
      const value = document.createElement("span");
      value.className = "score";
      value.textContent = `${(score * 100).toFixed(1)}%`;
      row.append(name, value);
      const track = document.createElement("div");
      track.className = "track";
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
      track.append(bar);
      item.append(row, track);
      list.append(item);
    }
  }

  function clearCards() {
    for (const card of cards) {
      card.generation += 1;
      URL.revokeObjectURL(card.url);
      card.element.remove();
    }
    cards.length = 0;
  }

  // --- readiness --------------------------------------------------------------------------

  let pollTimer = null;
  let pollRound = 0; // a newer round (after a key change) supersedes one still waiting
  async function pollReadiness() {
    clearTimeout(pollTimer);
    const round = ++pollRound;
    if (document.hidden) return; // a background tab polls nothing; see visibilitychange below
    try {
      const response = await fetch(READY_URL, { headers: authHeaders(), cache: "no-store" });
      if (response.ok) {
        setBadge("ready", "ready", "the model is loaded and serving");
      } else if (response.status === 401 || response.status === 403) {
        const message = await errorText(response);
        setBadge("not-ready", "API key needed", message);
        askForKey(message);
      } else {
        const message = await errorText(response);
        setBadge("not-ready", `not ready (HTTP ${response.status})`, message);
      }
    } catch (err) {
      setBadge("unreachable", "unreachable", err.message);
    }
    if (round === pollRound) pollTimer = setTimeout(pollReadiness, READY_POLL_MS);
  }

  function setBadge(kind, text, detail) {
    readiness.className = `badge ${kind}`;
    readiness.textContent = text;
    readiness.title = detail || "";
  }

  // --- input: chooser, drag and drop, paste -----------------------------------------------

  fileInput.addEventListener("change", () => {
    addFiles([...fileInput.files]);
    fileInput.value = ""; // choosing the same file again still fires "change"
  });

  // Dropping anywhere on the page counts; without this a missed drop navigates to the file.
  let dragDepth = 0;
  document.addEventListener("dragenter", (event) => {
    event.preventDefault();
    dragDepth += 1;
    dropZone.classList.add("over");
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) dropZone.classList.remove("over");
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    dropZone.classList.remove("over");
    const files = [...(event.dataTransfer ? event.dataTransfer.files : [])];
    if (files.length) addFiles(files);
  });

  document.addEventListener("paste", (event) => {
    if (event.target === keyInput || event.target === topKInput) return;
    const files = [...(event.clipboardData ? event.clipboardData.files : [])];
    if (files.length) {
      event.preventDefault();
      addFiles(files);
    }
  });

  topKInput.addEventListener("change", () => cards.forEach(run));
  $("clear").addEventListener("click", clearCards);
  $("key-toggle").addEventListener("click", () => {
    keyPanel.hidden = !keyPanel.hidden;
    if (!keyPanel.hidden) keyInput.focus();
  });
  keyInput.addEventListener("change", () => {
    keyPanel.classList.remove("needed");
    pollReadiness();
    // Images refused for want of a key are asked again with the new one.
    cards.filter((card) => card.status === 401 || card.status === 403).forEach(run);
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) pollReadiness();
  });

  pollReadiness();
})();
