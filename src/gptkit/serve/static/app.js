// The gptkit playground: plain JavaScript, no build step. It calls the same API as any client:
// POST /v1/completions and /v1/chat/completions with stream=true (server-sent events),
// POST /v1/attention, POST /v1/classify, and the arena's /v1/arena/* (the Compare tab).
"use strict";

const $ = (id) => document.getElementById(id);
let health = null;
let controller = null; // aborts the running stream (the server then stops generating)

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error ? body.error.message : JSON.stringify(body)}`;
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

function show(id, text) {
  const el = $(id);
  el.textContent = text || "";
  el.classList.toggle("hidden", !text);
}

// --- tabs ------------------------------------------------------------------------------------
function selectTab(tab) {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
  document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("hidden", p.id !== tab.dataset.panel));
  if (tab.id === "tab-attention" && !$("attn-prompt").value) $("attn-prompt").value = $("prompt").value;
  // the sampling controls are shared: they move to the tab that generates
  const columns = $(tab.dataset.panel).querySelector(".columns");
  if (columns && $("controls").parentElement !== columns) columns.appendChild($("controls"));
}
document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => selectTab(tab)));

// --- set-up from /health ---------------------------------------------------------------------
async function init() {
  try {
    const response = await fetch("/health");
    health = await response.json();
  } catch (e) {
    $("model-info").textContent = "server unreachable";
    return;
  }
  $("model-info").textContent =
    `${health.model} · ${health.task === "classify" ? "classifier" : "language model"} · context ${health.context_length} tokens`;
  $("key-row").classList.toggle("hidden", !health.auth);
  if (health.task === "classify") {
    ["tab-generate", "tab-chat", "tab-attention"].forEach((id) => $(id).classList.add("hidden"));
    $("tab-classify").classList.remove("hidden");
    selectTab($("tab-classify"));
  } else {
    const d = health.defaults;
    $("max_tokens").value = Math.min(d.max_tokens, 200);
    $("max_tokens").max = health.limits.max_tokens;
    $("temperature").value = d.temperature;
    $("top_p").value = d.top_p;
    $("top_k").value = d.top_k;
    if (health.arena) await initArena();
  }
  ["temperature", "top_p"].forEach((id) => {
    const sync = () => ($(id + "-value").textContent = Number($(id).value).toFixed(2));
    $(id).addEventListener("input", sync);
    sync();
  });
  document.body.dataset.ready = "1";
}

// --- generation ------------------------------------------------------------------------------
function sampling() {
  const body = {
    max_tokens: parseInt($("max_tokens").value, 10),
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top_p").value),
    top_k: parseInt($("top_k").value || "0", 10),
    stream: true,
  };
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = parseInt(seed, 10);
  const stops = $("stop").value.split("\n").filter((s) => s !== "")
    .map((s) => s.replace(/\\n/g, "\n").replace(/\\t/g, "\t"));
  if (stops.length) body.stop = stops;
  return body;
}

function request() {
  return { prompt: $("prompt").value, ...sampling() };
}

// Read a server-sent event stream, calling onEvent with each JSON payload until [DONE].
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") continue;
      const event = JSON.parse(data);
      if (event.error) throw new Error(event.error.message);
      onEvent(event);
    }
  }
}

function setRunning(running) {
  $("generate").disabled = running;
  $("stop-button").disabled = !running;
  $("output").classList.toggle("streaming", running);
  document.body.dataset.state = running ? "streaming" : "done";
}

async function generate() {
  show("error", "");
  const body = request();
  $("out-prompt").textContent = body.prompt;
  $("completion").textContent = "";
  $("stats").textContent = "";
  setRunning(true);
  controller = new AbortController();
  const start = performance.now();
  let first = null, pieces = 0, reason = null;
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readEvents(response, (event) => {
      for (const choice of event.choices) {
        if (choice.text) {
          if (first === null) first = performance.now() - start;
          $("completion").textContent += choice.text;
          pieces += 1;
          $("output").scrollTop = $("output").scrollHeight;
        }
        if (choice.finish_reason) reason = choice.finish_reason;
      }
      const seconds = (performance.now() - start) / 1000;
      $("stats").textContent = `${pieces} chunks · first after ${first === null ? "–" : first.toFixed(0) + " ms"} · ${seconds.toFixed(1)} s`;
    });
    const seconds = (performance.now() - start) / 1000;
    $("stats").textContent = `${pieces} chunks in ${seconds.toFixed(2)} s · first after ${first === null ? "–" : first.toFixed(0) + " ms"} · finished: ${reason || "?"}`;
    document.body.dataset.finish = reason || "";
  } catch (e) {
    if (e.name === "AbortError") {
      $("stats").textContent += " · stopped";
      document.body.dataset.finish = "aborted";
    } else {
      show("error", e.message);
      document.body.dataset.finish = "error";
    }
  } finally {
    controller = null;
    setRunning(false);
  }
}

$("generate").addEventListener("click", generate);
$("stop-button").addEventListener("click", () => controller && controller.abort());
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate();
});

// --- chat ------------------------------------------------------------------------------------
let history = []; // the conversation: {role, content}, without the system prompt
let chatController = null;

function addMessage(role, content) {
  $("chat-empty").classList.add("hidden");
  const el = document.createElement("div");
  el.className = "msg " + role;
  el.innerHTML = '<span class="who"></span><span class="body"></span>';
  el.querySelector(".who").textContent = role === "user" ? "you" : "assistant";
  el.querySelector(".body").textContent = content;
  $("conversation").appendChild(el);
  $("conversation").scrollTop = $("conversation").scrollHeight;
  return el.querySelector(".body");
}

function setChatting(running) {
  $("send").disabled = running;
  $("chat-stop").disabled = !running;
  $("conversation").classList.toggle("streaming", running);
  document.body.dataset.chat = running ? "streaming" : "done";
}

async function send() {
  const text = $("chat-input").value;
  if (!text.trim() || chatController) return;
  show("chat-error", "");
  $("chat-input").value = "";
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const system = $("system").value.trim();
  const body = {
    messages: [...(system ? [{ role: "system", content: system }] : []), ...history],
    ...sampling(), stream: true,
  };
  window.lastChatRequest = body; // what was sent (the browser test reads it)
  const reply = addMessage("assistant", "");
  setChatting(true);
  chatController = new AbortController();
  const start = performance.now();
  let reason = null, pieces = 0;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: chatController.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readEvents(response, (event) => {
      for (const choice of event.choices) {
        if (choice.delta && choice.delta.content) {
          reply.textContent += choice.delta.content;
          pieces += 1;
          $("conversation").scrollTop = $("conversation").scrollHeight;
        }
        if (choice.finish_reason) reason = choice.finish_reason;
      }
    });
    const seconds = (performance.now() - start) / 1000;
    $("chat-stats").textContent = `${pieces} chunks in ${seconds.toFixed(2)} s · finished: ${reason || "?"}`;
    document.body.dataset.chatFinish = reason || "";
  } catch (e) {
    if (e.name === "AbortError") {
      $("chat-stats").textContent = "stopped";
      document.body.dataset.chatFinish = "aborted";
    } else {
      show("chat-error", e.message);
      document.body.dataset.chatFinish = "error";
    }
  } finally {
    // the reply as far as it came stays part of the conversation (an empty one does not)
    if (reply.textContent) history.push({ role: "assistant", content: reply.textContent });
    else reply.parentElement.remove();
    chatController = null;
    setChatting(false);
  }
}

function resetChat() {
  if (chatController) chatController.abort();
  history = [];
  $("conversation").querySelectorAll(".msg").forEach((m) => m.remove());
  $("chat-empty").classList.remove("hidden");
  $("chat-stats").textContent = "";
  show("chat-error", "");
}

$("send").addEventListener("click", send);
$("chat-stop").addEventListener("click", () => chatController && chatController.abort());
$("chat-reset").addEventListener("click", resetChat);
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});

// --- attention map ---------------------------------------------------------------------------
const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];
function color(v) {
  const x = Math.max(0, Math.min(1, v)) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
  const a = VIRIDIS[i], b = VIRIDIS[i + 1];
  const mix = (k) => Math.round(parseInt(a.substr(k, 2), 16) * (1 - f) + parseInt(b.substr(k, 2), 16) * f);
  return `rgb(${mix(1)},${mix(3)},${mix(5)})`;
}

let maps = null; // the last /v1/attention answer

function fillSelect(select, count, extra) {
  const keep = select.value;
  select.innerHTML = "";
  if (extra) select.add(new Option(extra[1], extra[0]));
  for (let i = 0; i < count; i++) select.add(new Option(String(i), String(i)));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

async function loadAttention() {
  show("attn-error", "");
  const layer = parseInt($("layer").value || "0", 10);
  try {
    const response = await fetch("/v1/attention", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ prompt: $("attn-prompt").value, layer: layer }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    maps = await response.json();
    fillSelect($("layer"), maps.n_layer);
    $("layer").value = String(maps.layer);
    fillSelect($("head"), maps.n_head, ["mean", "mean"]);
    drawAttention();
  } catch (e) {
    show("attn-error", e.message);
  }
}

function headWeights() {
  const head = $("head").value;
  if (head !== "mean" && head !== "") return maps.weights[parseInt(head, 10)];
  const T = maps.tokens.length, out = [];
  for (let q = 0; q < T; q++) {
    out.push([]);
    for (let k = 0; k < T; k++) {
      let s = 0;
      for (const w of maps.weights) s += w[q][k];
      out[q].push(s / maps.weights.length);
    }
  }
  return out;
}

function drawAttention() {
  if (!maps) return;
  const T = maps.tokens.length, w = headWeights();
  const cell = Math.max(8, Math.min(30, Math.floor(640 / T)));
  const ctx0 = $("attn-canvas").getContext("2d");
  ctx0.font = "12px ui-monospace, monospace";
  const labelWidth = Math.ceil(Math.max(...maps.tokens.map((t) => ctx0.measureText(t).width))) + 10;
  const canvas = $("attn-canvas");
  const ratio = window.devicePixelRatio || 1;
  const width = labelWidth + T * cell + 10, height = labelWidth + T * cell + 10;
  canvas.width = width * ratio; canvas.height = height * ratio;
  canvas.style.width = width + "px"; canvas.style.height = height + "px";
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, width, height);
  ctx.font = "12px ui-monospace, monospace";
  ctx.fillStyle = "#1d2330";
  ctx.textBaseline = "middle";
  const showLabels = cell >= 10;
  for (let i = 0; i < T; i++) {
    if (showLabels) {
      ctx.textAlign = "right";
      ctx.fillText(maps.tokens[i], labelWidth - 6, labelWidth + i * cell + cell / 2); // queries
      ctx.save();
      ctx.translate(labelWidth + i * cell + cell / 2, labelWidth - 6);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(maps.tokens[i], 0, 0); // keys
      ctx.restore();
    }
    for (let k = 0; k < T; k++) {
      ctx.fillStyle = k > i ? "#e4e4e4" : color(w[i][k]);
      ctx.fillRect(labelWidth + k * cell, labelWidth + i * cell, cell - 1, cell - 1);
    }
    ctx.fillStyle = "#1d2330";
  }
  canvas.dataset.tokens = String(T);
  canvas.dataset.left = String(labelWidth);
  canvas.dataset.cell = String(cell);
  const head = $("head").value === "mean" ? "mean of heads" : "head " + $("head").value;
  $("attn-note").textContent = `layer ${maps.layer}, ${head}: rows are queries, columns keys`;
  $("attn-legend").classList.remove("hidden");
  document.body.dataset.attention = "drawn";
}

$("attn-canvas").addEventListener("mousemove", (e) => {
  if (!maps) return;
  const c = $("attn-canvas"), left = +c.dataset.left, cell = +c.dataset.cell;
  const rect = c.getBoundingClientRect();
  const k = Math.floor((e.clientX - rect.left - left) / cell), q = Math.floor((e.clientY - rect.top - left) / cell);
  const T = maps.tokens.length;
  if (q < 0 || k < 0 || q >= T || k >= T) { $("attn-tip").textContent = ""; return; }
  const value = k > q ? "masked (a token never sees later ones)" : headWeights()[q][k].toFixed(3);
  $("attn-tip").textContent = `query ${q} "${maps.tokens[q]}" → key ${k} "${maps.tokens[k]}": ${value}`;
});
$("show-attention").addEventListener("click", loadAttention);
$("layer").addEventListener("change", loadAttention);
$("head").addEventListener("change", drawAttention);

// --- classification --------------------------------------------------------------------------
async function classify() {
  show("classify-error", "");
  $("classify-result").innerHTML = "";
  try {
    const response = await fetch("/v1/classify", {
      method: "POST", headers: headers(), body: JSON.stringify({ input: $("classify-text").value }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    const item = body.data[0], out = $("classify-result");
    if (body.task === "sequence") {
      for (const s of item.scores) {
        const row = document.createElement("div");
        row.className = "bar";
        row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
        row.querySelector(".name").textContent = s.label;
        row.querySelector(".fill").style.width = (100 * s.score).toFixed(1) + "%";
        row.querySelector(".value").textContent = s.score.toFixed(3);
        out.appendChild(row);
      }
    } else {
      for (const w of item.words) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = w.word;
        const b = document.createElement("b");
        b.textContent = w.tag;
        tag.appendChild(b);
        out.appendChild(tag);
      }
    }
  } catch (e) {
    show("classify-error", e.message);
  }
}
$("classify").addEventListener("click", classify);

// --- compare (the arena: gptkit serve --compare) ----------------------------------------------
let battle = null;

async function initArena() {
  let response;
  try {
    response = await fetch("/v1/arena", { headers: headers() });
  } catch (e) {
    return;
  }
  $("tab-compare").classList.remove("hidden");
  if (!response.ok) return; // 401: the key is asked for; battles will say what is wrong
  const info = await response.json();
  $("arena-models").textContent = `(${info.models.length} models)`;
  $("arena-next").classList.toggle("hidden", !info.prompts);
}

function setArena(state) {
  // idle -> streaming -> voting -> voted
  $("arena-start").disabled = $("arena-next").disabled = state === "streaming";
  document.querySelectorAll(".votes button").forEach((b) => (b.disabled = state !== "voting"));
  $("panel-compare").classList.toggle("streaming", state === "streaming");
  document.body.dataset.arena = state;
}

async function streamSide(id, side, maxTokens) {
  const response = await fetch(`/v1/arena/battles/${id}/answers/${side}`, {
    method: "POST", headers: headers(), body: JSON.stringify({ max_tokens: maxTokens, stream: true }),
  });
  if (!response.ok) throw new Error(await errorText(response));
  await readEvents(response, (event) => {
    for (const choice of event.choices) $("arena-text-" + side).textContent += choice.text;
  });
}

async function startBattle(fromFile) {
  show("arena-error", "");
  $("arena-result").textContent = "";
  for (const side of ["a", "b"]) {
    $("arena-text-" + side).textContent = "";
    $("arena-name-" + side).textContent = "";
  }
  setArena("streaming");
  try {
    const response = await fetch("/v1/arena/battles", {
      method: "POST", headers: headers(),
      body: JSON.stringify(fromFile ? {} : { prompt: $("arena-prompt").value }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    battle = await response.json();
    $("arena-prompt").value = battle.prompt;
    const maxTokens = parseInt($("arena-max-tokens").value || "100", 10);
    await Promise.all(["a", "b"].map((side) => streamSide(battle.id, side, maxTokens)));
    setArena("voting");
  } catch (e) {
    show("arena-error", e.message);
    setArena("idle");
  }
}

async function vote(winner) {
  show("arena-error", "");
  try {
    const response = await fetch(`/v1/arena/battles/${battle.id}/vote`, {
      method: "POST", headers: headers(), body: JSON.stringify({ winner }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    const result = await response.json();
    $("arena-name-a").textContent = result.a;
    $("arena-name-b").textContent = result.b;
    const said = { a: `${result.a} won`, b: `${result.b} won`, tie: "a tie", both_bad: "both bad" };
    $("arena-result").textContent = `Vote stored: ${said[winner]}.`;
    setArena("voted");
  } catch (e) {
    show("arena-error", e.message);
  }
}

$("arena-start").addEventListener("click", () => startBattle(false));
$("arena-next").addEventListener("click", () => startBattle(true));
document.querySelectorAll(".votes button").forEach((b) => b.addEventListener("click", () => vote(b.dataset.winner)));

init();
