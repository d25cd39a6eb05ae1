// svlm web client: plain JavaScript over the websocket protocol (docs/protocol.md).
"use strict";
const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const tokenQuery = token ? "token=" + encodeURIComponent(token) : "";
const $ = (id) => document.getElementById(id);
let ws = null, nextId = 1, streams = [], unauthorized = false;
const answers = new Map();   // request id -> answer element
const watches = new Map();   // request id -> watch message (sent again after a reconnect)

// false when the connection is down: the message was not sent.
function send(msg) { if (!ws || ws.readyState !== WebSocket.OPEN) return false; ws.send(JSON.stringify(msg)); return true; }
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(proto + "//" + location.host + "/v1/ws" + (tokenQuery ? "?" + tokenQuery : ""));
  ws.onopen = () => { send({type: "hello", id: "hello", version: 1, token: token || undefined, status_interval: 2}); };
  ws.onmessage = (ev) => handle(JSON.parse(ev.data));
  ws.onclose = () => {
    // a server that went away took its running answers with it: say so instead of leaving them open
    for (const a of answers.values()) {
      a.text.textContent += (a.text.textContent ? " " : "") + "[connection lost: the answer was cut short]";
      a.box.classList.add("error");
    }
    answers.clear();
    // the same token would be refused again: wait for the user to load the page with ?token=
    if (unauthorized) return;
    setConn("disconnected: reconnecting…", "bad");
    setTimeout(connect, 2000);
  };
}

// video seconds as M:SS (H:MM:SS past an hour)
function clock(s) {
  s = Math.max(0, Math.floor(s));
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, sec = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

function setConn(text, cls) { const c = $("conn"); c.textContent = text; c.className = "pill " + (cls || ""); }

function handle(m) {
  switch (m.type) {
  case "hello":
    setConn("connected", "ok");
    $("model").textContent = "model: " + m.model;
    $("banner").hidden = !m.stand_in;
    send({type: "list", id: "list"});
    for (const w of watches.values()) send(w);   // a restarted server has forgotten them
    break;
  case "streams": case "status": renderStreams(m.streams); break;
  case "opened": case "closed": send({type: "list", id: "list"}); break;
  case "token": { const a = answers.get(m.id); if (a) a.text.textContent += m.text; break; }
  case "done": {
    const a = answers.get(m.id);
    if (a) {
      a.text.textContent = m.text;
      const t = m.timings;
      // which past the answer drew on (the stream's memory), and whether a token limit cut it
      const spans = m.memory ? m.memory.spans.map((s) => `${clock(s.from)}–${clock(s.to)}`).join(", ") : "";
      a.stats.textContent = `${m.tokens.completion} tokens · first token ${t.client_ttft_ms.toFixed(0)} ms · ${t.tokens_per_s.toFixed(1)} tok/s` +
        (m.cancelled ? " · cancelled" : "") + (m.finish_reason === "length" ? " · cut at the token limit" : "") +
        (spans ? ` · from memory: ${spans}` : "");
      a.box.classList.add("done");
      answers.delete(m.id);
    }
    break;
  }
  case "alert": {
    const li = el("li", "", `[${m.stream} @ ${m.video_time.toFixed(1)} s] ${(watches.get(m.id) || {}).question || ""} → ${m.answer}`);
    $("alerts").prepend(li);
    break;
  }
  case "watching": break;
  case "unwatched": watches.delete(m.id); break;
  case "error": {
    const a = answers.get(m.id);
    const text = `${m.code}: ${m.message}`;
    if (watches.has(m.id)) watches.delete(m.id);   // a refused watch is not sent again
    if (a) { a.text.textContent = text; a.box.classList.add("error"); answers.delete(m.id); }
    else { const d = el("div", "answer error", text); $("chat").append(d); }
    if (m.code === "unauthorized") {
      unauthorized = true;
      setConn(token ? "token refused: open the page with the right ?token=" : "needs a token: open the page as /?token=TOKEN", "bad");
    }
    break;
  }
  }
}

function snapshotUrl(name) {
  return `/v1/streams/${encodeURIComponent(name)}/snapshot.jpg?t=${Date.now()}` + (tokenQuery ? "&" + tokenQuery : "");
}

function renderStreams(list) {
  streams = list;
  const box = $("stream-list");
  const names = new Set(list.map((s) => s.stream));
  for (const card of [...box.children]) if (!names.has(card.dataset.name)) card.remove();
  for (const s of list) {
    let card = box.querySelector(`[data-name="${CSS.escape(s.stream)}"]`);
    if (!card) {
      card = el("div", "stream"); card.dataset.name = s.stream;
      const img = el("img"); img.alt = "latest frame of " + s.stream;
      card.append(el("strong", "", s.stream), img, el("div", "meta"));
      box.append(card);
    }
    card.querySelector(".meta").textContent =   // (reason: why a stream is down)
      `${s.state}${s.reason ? " — " + s.reason : ""} · ${s.fps_in.toFixed(2)} fps · ${s.frames_in} frames · ${s.drops} dropped · ${s.reconnects} reconnects · ${(s.memory_total / 1048576).toFixed(1)} MiB`;
  }
  const sel = $("stream-select"), cur = sel.value;
  sel.replaceChildren(...list.map((s) => { const o = el("option", "", s.stream); o.value = s.stream; return o; }));
  if (names.has(cur)) sel.value = cur;
}

// Frames refresh about once a second; a new image replaces the old only when it has loaded.
setInterval(() => {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;   // the server is down: no failing requests
  for (const card of $("stream-list").children) {
    const img = card.querySelector("img"), next = new Image();
    next.onload = () => { img.src = next.src; };
    next.src = snapshotUrl(card.dataset.name);
  }
}, 1000);

$("ask-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("question").value.trim(), stream = $("stream-select").value;
  if (!q || !stream) return;
  const id = "q" + nextId++;
  $("chat").append(el("div", "q", `${stream}: ${q}`));
  const box = el("div", "answer"), text = el("span", "text"), stats = el("span", "stats");
  box.append(text, stats); $("chat").append(box);
  if (send({type: "ask", id, stream, question: q, max_tokens: 256})) answers.set(id, {box, text, stats});
  else { text.textContent = "not connected to the server: the question was not sent (reconnecting…)"; box.classList.add("error"); }
  $("question").value = "";
  $("chat").scrollTop = $("chat").scrollHeight;
});

$("watch-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("watch-question").value.trim(), stream = $("stream-select").value;
  if (!q || !stream) return;
  const id = "w" + nextId++;
  const msg = {type: "watch", id, stream, question: q, condition: $("watch-condition").value,
               interval: Number($("watch-interval").value) || 5};
  if (!send(msg)) { $("alerts").prepend(el("li", "error", "not connected to the server: the watch was not sent")); return; }
  watches.set(id, msg);
  $("watch-question").value = "";
});

$("open-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (!send({type: "open", id: "o" + nextId++, stream: $("open-name").value.trim(), uri: $("open-uri").value.trim()}))
    $("chat").append(el("div", "answer error", "not connected to the server: the stream was not opened"));
});

connect();
