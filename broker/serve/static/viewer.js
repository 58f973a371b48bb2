// Camera grid: one WebSocket per camera (/cameras/{id}), one binary message per image,
// exactly what the Grafana Live Image Panel receives. Tiles follow /api/cameras (polled
// each second), so cameras added to the config show up after a broker restart; sockets
// reconnect every 2 s until the page unloads.
//
// Each tile carries data-camera, data-state (live | connecting | offline), data-frames
// (images received) and data-nodata (the last image was the broker's "No Data" picture).
//
// A broker with [[tokens]] is opened as /?token=T: the token is passed on to every API
// call and WebSocket (a browser cannot set headers on a WebSocket).
//
// Each tile's gear button opens the settings drawer (settings.js) for its camera. Escape
// closes the drawer if it is open, else un-enlarges the big tile.
"use strict";
const RECONNECT_MS = 2000;
const FPS_WINDOW_MS = 2000;
const STALE_MS = 3000; // an open socket with no image for this long is shown offline
const grid = document.getElementById("grid");
const summary = document.getElementById("summary");
const latin1 = new TextDecoder("latin1");
const tiles = new Map();
let unloading = false;
let reachable = null; // null until /api/cameras first answers or fails
const token = new URLSearchParams(location.search).get("token");
const withToken = (path) =>
  token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;
const drawer = new SettingsDrawer(document.getElementById("settings"), withToken);
const GEAR = '<svg viewBox="0 0 24 24" aria-hidden="true"><circle cx="12" cy="12" r="8" ' +
  'fill="none" stroke="currentColor" stroke-width="4" stroke-dasharray="3.14 3.14"/>' +
  '<circle cx="12" cy="12" r="5" fill="none" stroke="currentColor" stroke-width="3"/></svg>';

// Capture time (Unix s) from the worker's JPEG COM stamp "CB1 seq=… t=…", if present.
function stampTime(bytes) {
  const head = latin1.decode(bytes.subarray(0, 512));
  const at = head.indexOf("CB1 seq=");
  return at < 0 ? null : parseFloat(head.substring(at + 31, at + 52));
}

class Tile {
  constructor(camera) {
    this.id = camera.id;
    this.camera = camera; // its latest /api/cameras entry
    this.online = camera.online; // from /api/cameras
    this.stamps = false; // this camera's frames carry latency stamps
    this.ws = null;
    this.open = false;
    this.received = false; // an image arrived since the socket opened
    this.frames = 0;
    this.times = []; // arrival times of camera frames (not "No Data") in the fps window
    this.lastAt = 0;
    this.nodata = false;
    this.url = null;
    this.timer = 0;
    const el = (this.el = document.createElement("div"));
    el.className = "tile";
    el.tabIndex = 0;
    el.dataset.camera = camera.id;
    el.innerHTML = '<img alt=""><div class="bar"><span class="dot"></span>' +
      '<span class="name"></span><span class="fps"></span><span class="lat">—</span>' +
      `<button type="button" class="gear">${GEAR}</button></div>`;
    this.img = el.querySelector("img");
    this.dot = el.querySelector(".dot");
    this.fps = el.querySelector(".fps");
    this.lat = el.querySelector(".lat");
    this.gear = el.querySelector(".gear");
    this.gear.addEventListener("click", (event) => {
      event.stopPropagation(); // not a click on the tile: it neither enlarges nor shrinks
      drawer.open(this.camera, this.gear);
    });
    this.rename(camera.name);
    this.connect();
    this.render(performance.now());
  }

  // The name shows the camera's `name` setting once set, so it may change.
  rename(name) {
    this.name = name;
    this.img.alt = this.el.querySelector(".name").textContent = name;
    this.el.title = `${name} (${this.id})`;
    this.gear.title = `Settings of ${name}`;
    this.gear.setAttribute("aria-label", this.gear.title);
  }

  connect() {
    this.timer = 0;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = (this.ws = new WebSocket(
      // format=jpeg: a tile is an <img>, so a camera of a raw format (BMP, TIFF, LZ4)
      // comes as the JPEG the broker derives from each frame.
      `${scheme}//${location.host}${withToken(`/cameras/${encodeURIComponent(this.id)}?format=jpeg`)}`));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { this.open = true; };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") this.receive(new Uint8Array(event.data));
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.open = this.received = false;
      this.times = [];
      this.render(performance.now());
      if (!unloading) this.timer = setTimeout(() => this.connect(), RECONNECT_MS);
    };
  }

  receive(bytes) {
    const url = URL.createObjectURL(new Blob([bytes], { type: "image/jpeg" }));
    this.img.src = url;
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = url;
    const now = performance.now();
    const captured = stampTime(bytes);
    // The "No Data" image has no stamp; neither have frames of cameras that never stamp,
    // so for those only /api/cameras tells offline.
    this.nodata = captured === null && (this.stamps || !this.online);
    if (captured !== null) {
      this.stamps = this.online = true;
      this.lat.textContent = `${Math.max(0, Date.now() - captured * 1000).toFixed(0)} ms`;
    } else {
      this.lat.textContent = "—";
    }
    if (!this.nodata) this.times.push(now);
    this.frames += 1;
    this.received = true;
    this.lastAt = now;
    this.el.dataset.frames = this.frames;
    this.el.dataset.nodata = this.nodata;
    this.render(now);
  }

  state(now) {
    if (!this.open || !this.received) return "connecting";
    if (!this.online || this.nodata || now - this.lastAt > STALE_MS) return "offline";
    return "live";
  }

  render(now) {
    const state = this.state(now);
    if (this.el.dataset.state !== state) {
      this.el.dataset.state = state;
      this.dot.className = `dot ${state}`;
      this.dot.title = state;
    }
    while (this.times.length && now - this.times[0] > FPS_WINDOW_MS) this.times.shift();
    const n = this.times.length; // frame intervals over their span, so a steady 15 reads 15.0
    const fps = n > 1 ? ((n - 1) * 1000) / (this.times[n - 1] - this.times[0]) : 0;
    this.fps.textContent = `${fps.toFixed(1)} fps`;
    if (state !== "live") this.lat.textContent = "—";
    return state;
  }

  close() {
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    if (this.url) URL.revokeObjectURL(this.url);
    this.el.remove();
  }
}

function zoom(el) {
  const big = grid.querySelector(".tile.big");
  if (big) big.classList.remove("big");
  if (el && el !== big) el.classList.add("big");
  document.body.classList.toggle("zoomed", Boolean(el && el !== big));
}

grid.addEventListener("click", (event) => {
  event.stopPropagation();
  zoom(event.target.closest(".tile"));
});
document.addEventListener("click", (event) => {
  if (!event.target.closest("#settings")) zoom(null); // the backdrop around a big tile
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    if (!drawer.close()) zoom(null);
  }
  else if (event.key === "Enter" && event.target.matches(".tile")) zoom(event.target);
});

function update() {
  if (reachable === null) return;
  const now = performance.now();
  let live = 0;
  for (const t of tiles.values()) if (t.render(now) === "live") live += 1;
  const text = `${live} of ${tiles.size} cameras live`;
  summary.textContent = reachable ? text : `${text} · broker unreachable, retrying…`;
}

async function refresh() {
  try {
    const signal = AbortSignal.timeout(5000);
    const response = await fetch(withToken("/api/cameras"), { cache: "no-store", signal });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const cameras = await response.json();
    const ids = new Set(cameras.map((c) => c.id));
    for (const [id, t] of tiles) {
      if (!ids.has(id)) {
        if (drawer.camera === id) drawer.close();
        t.close();
        tiles.delete(id);
      }
    }
    for (const camera of cameras) {
      let t = tiles.get(camera.id);
      if (!t) {
        tiles.set(camera.id, (t = new Tile(camera)));
        grid.appendChild(t.el);
      }
      t.online = camera.online;
      t.camera = camera;
      if (t.name !== camera.name) t.rename(camera.name);
      if (drawer.camera === camera.id) drawer.update(camera);
    }
    reachable = true;
  } catch {
    reachable = false;
  }
  update();
}

addEventListener("pagehide", () => {
  unloading = true;
  for (const t of tiles.values()) t.ws?.close(1000);
});
addEventListener("pageshow", (event) => {
  if (!event.persisted) return; // back from the back/forward cache: reopen the sockets
  unloading = false;
  for (const t of tiles.values()) if (!t.ws && !t.timer) t.connect();
});

(async function poll() {
  await refresh();
  setTimeout(poll, 1000);
})();
setInterval(update, 500);
