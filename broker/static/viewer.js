// Camera grid: one WebSocket per camera (/cameras/{id}), one binary message per image,
// exactly what the Grafana Live Image Panel receives. Reconnects by itself.
"use strict";
const grid = document.getElementById("grid");
const tiles = new Map();

function tile(camera) {
  const el = document.createElement("div");
  el.className = "tile";
  el.dataset.camera = camera.id;
  el.innerHTML = '<img alt=""><div class="bar"><span class="dot"></span>' +
    '<span class="name"></span><span class="fps"></span><span class="lat"></span></div>';
  el.querySelector(".name").textContent = camera.name;
  el.querySelector("img").alt = camera.name;
  el.addEventListener("click", () => el.classList.toggle("big"));
  grid.appendChild(el);
  const t = { el, img: el.querySelector("img"), dot: el.querySelector(".dot"),
              fps: el.querySelector(".fps"), lat: el.querySelector(".lat"),
              url: null, times: [], online: camera.online, count: 0 };
  connect(camera.id, t);
  return t;
}

// Capture time from the test source's JPEG COM stamp "CB1 seq=… t=…", if present.
function stampTime(bytes) {
  const head = new TextDecoder("latin1").decode(bytes.subarray(0, 512));
  const at = head.indexOf("CB1 seq=");
  return at < 0 ? null : parseFloat(head.substring(at + 31, at + 52));
}

function connect(id, t) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/cameras/${encodeURIComponent(id)}`);
  ws.binaryType = "arraybuffer";
  t.dot.className = "dot";
  ws.onmessage = (event) => {
    if (typeof event.data === "string") return;
    const bytes = new Uint8Array(event.data);
    const url = URL.createObjectURL(new Blob([bytes], { type: "image/jpeg" }));
    if (t.url) URL.revokeObjectURL(t.url);
    t.url = url;
    t.img.src = url;
    t.count += 1;
    const now = performance.now();
    t.times.push(now);
    while (t.times.length && now - t.times[0] > 2000) t.times.shift();
    const captured = stampTime(bytes);
    if (captured !== null) t.lat.textContent = `${Math.max(0, Date.now() - captured * 1000).toFixed(0)} ms`;
  };
  ws.onclose = () => { t.dot.className = "dot"; setTimeout(() => connect(id, t), 2000); };
}

async function refresh() {
  try {
    const cameras = await (await fetch("/api/cameras")).json();
    for (const camera of cameras) {
      const t = tiles.get(camera.id) || tiles.set(camera.id, tile(camera)).get(camera.id);
      t.online = camera.online;
      t.dot.className = "dot " + (camera.online ? "live" : "offline");
      t.fps.textContent = `${camera.fps.toFixed(1)} fps`;
    }
    const live = cameras.filter((c) => c.online).length;
    document.getElementById("summary").textContent = `${live} of ${cameras.length} cameras live`;
  } catch (err) {
    document.getElementById("summary").textContent = "broker unreachable, retrying…";
  }
}
refresh();
setInterval(refresh, 1000);
