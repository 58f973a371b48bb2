// Analytics on the viewer page: the latest detection boxes over each tile and a motion
// badge, drawn client-side from the /ws events (objects_detected, motion_started,
// motion_stopped). One /ws connection for the whole page, reconnected every 2 s; it
// subscribes to nothing, since events arrive for every camera the token may watch.
//
// Boxes are in frame pixels (the event's width and height); the overlay covers the part
// of the <img> the frame occupies (object-fit: contain), so boxes sit on what they mark.
// A tile's boxes go after BOX_TTL_MS without a new detection. Each tile carries
// data-motion (true while motion) and data-boxes (boxes shown).
//
// Uses `tiles` and `withToken` of viewer.js (loaded before this file).
"use strict";
const BOX_TTL_MS = 1500;
const ANALYTICS_RECONNECT_MS = 2000;
const overlays = new Map(); // camera id -> {layer, badge, expires, frame}

function overlayOf(id) {
  const tile = tiles.get(id);
  if (!tile) return null;
  let overlay = overlays.get(id);
  if (!overlay || overlay.tile !== tile) {
    const layer = document.createElement("div");
    layer.className = "boxes";
    const badge = document.createElement("span");
    badge.className = "motion";
    badge.textContent = "motion";
    badge.hidden = true;
    tile.el.append(layer, badge);
    overlay = { tile, layer, badge, expires: 0, frame: null };
    overlays.set(id, overlay);
  }
  return overlay;
}

// The rectangle (in the tile's pixels) where the <img> shows the frame.
function frameRect(img) {
  const w = img.clientWidth, h = img.clientHeight;
  const nw = img.naturalWidth || 16, nh = img.naturalHeight || 9;
  const scale = Math.min(w / nw, h / nh);
  const fw = nw * scale, fh = nh * scale;
  return { left: img.offsetLeft + (w - fw) / 2, top: img.offsetTop + (h - fh) / 2, width: fw, height: fh };
}

function place(overlay) {
  const rect = frameRect(overlay.tile.img);
  const style = overlay.layer.style;
  style.left = `${rect.left}px`;
  style.top = `${rect.top}px`;
  style.width = `${rect.width}px`;
  style.height = `${rect.height}px`;
}

function showObjects(id, data) {
  const overlay = overlayOf(id);
  if (!overlay || !Array.isArray(data.objects)) return;
  const width = data.width || 1, height = data.height || 1;
  const boxes = data.objects.map((object) => {
    const [x, y, w, h] = object.box;
    const box = document.createElement("div");
    box.className = "box";
    box.style.left = `${(100 * x) / width}%`;
    box.style.top = `${(100 * y) / height}%`;
    box.style.width = `${(100 * w) / width}%`;
    box.style.height = `${(100 * h) / height}%`;
    const label = document.createElement("span");
    label.textContent = `${object.label} ${Math.round(object.confidence * 100)}%`;
    box.append(label);
    return box;
  });
  overlay.layer.replaceChildren(...boxes);
  overlay.expires = performance.now() + BOX_TTL_MS;
  overlay.tile.el.dataset.boxes = boxes.length;
  place(overlay);
}

function showMotion(id, active) {
  const overlay = overlayOf(id);
  if (!overlay) return;
  overlay.badge.hidden = !active;
  overlay.tile.el.dataset.motion = active;
}

function expire() {
  const now = performance.now();
  for (const [id, overlay] of overlays) {
    if (tiles.get(id) !== overlay.tile) {
      overlays.delete(id); // the tile went away
      continue;
    }
    if (overlay.expires && now > overlay.expires) {
      overlay.layer.replaceChildren();
      overlay.expires = 0;
      overlay.tile.el.dataset.boxes = 0;
    }
    if (overlay.expires) place(overlay); // the tile may have been enlarged or resized
  }
}

(function listen() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}${withToken("/ws")}`);
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type !== "event") return;
    if (message.event === "objects_detected") showObjects(message.camera, message.data || {});
    else if (message.event === "motion_started") showMotion(message.camera, true);
    else if (message.event === "motion_stopped") showMotion(message.camera, false);
  };
  ws.onclose = () => {
    if (!unloading) setTimeout(listen, ANALYTICS_RECONNECT_MS);
  };
  addEventListener("pagehide", () => ws.close(1000), { once: true });
})();
setInterval(expire, 250);
