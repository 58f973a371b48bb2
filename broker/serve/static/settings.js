// The settings drawer: one camera's settings, in a side panel opened from its tile.
//
// The form is built from what the camera's worker supports: GET /api/cameras/{id}/settings
// answers a StatusResponse plus `supported` ({name: {type, default, min/max or choices}}).
// Integers with a range get a slider and a number box (the box holds the value, so a
// value out of range can still be typed and the broker says what is wrong), numbers a
// number box, choices a select, booleans a checkbox, strings a text box. "Apply" sends one
// PATCH with only the keys that differ from what the broker last reported; a refused
// change applies nothing, and the broker's problem with each key is shown under its field.
// Preset buttons come from GET /api/presets and POST /api/cameras/{id}/presets/{name}.
//
// The panel is #settings in index.html; viewer.js makes the one SettingsDrawer and opens
// it from each tile's gear button. Hooks for tests and styles: #settings[data-camera],
// #settings[data-state] (loading | ready | readonly | failed), .message[data-kind]
// (info | ok | error), each field's [name=KEY] and its .error[data-for=KEY].
"use strict";

const REQUEST_TIMEOUT_MS = 15000; // above control.command_timeout (5 s) plus the round trip
// Fields in this order; settings a worker adds beyond these follow in its own order.
const FIELD_ORDER = [
  "name", "width", "height", "fps", "format", "quality", "brightness", "contrast",
  "saturation", "sharpness", "auto_exposure", "exposure_time",
];
const LABELS = { fps: "FPS", auto_exposure: "Auto exposure", exposure_time: "Exposure" };
const HINTS = { exposure_time: "in 100 µs units (100 = 10 ms), while auto exposure is off" };
// What a failed request means, by HTTP status; the broker's own message follows.
const FAILURES = {
  0: "No answer from the broker.",
  401: "The token is missing or not valid.",
  403: "Read-only: needs an operator token.",
  404: "Not found.",
  429: "Too many commands: wait a second and try again.",
  502: "The camera's worker failed or was lost.",
  503: "Camera not connected: its worker is not on the broker's control channel.",
  504: "Timeout: the camera did not answer, so the change may or may not have applied " +
    "(Reload shows what it has now).",
};

const labelOf = (key) =>
  LABELS[key] ?? key.charAt(0).toUpperCase() + key.slice(1).replace(/_/g, " ");

function element(tag, props = {}, ...children) {
  const el = Object.assign(document.createElement(tag), props);
  el.append(...children);
  return el;
}

function describe(settings) {
  return Object.entries(settings).map(([key, value]) => `${key} = ${value}`).join(", ");
}

class SettingsDrawer {
  constructor(panel, withToken) {
    this.el = panel;
    this.withToken = withToken;
    this.title = panel.querySelector("#settings-title");
    this.subtitle = panel.querySelector(".subtitle");
    this.message = panel.querySelector(".message");
    this.form = panel.querySelector("form");
    this.fieldset = panel.querySelector("fieldset");
    this.fields = panel.querySelector(".fields");
    this.presetList = panel.querySelector(".preset-list");
    this.closeButton = panel.querySelector(".close");
    this.applyButton = panel.querySelector(".apply");
    this.reloadButton = panel.querySelector(".reload");
    this.camera = null; // the id of the camera shown, null while closed
    this.opener = null; // the element that gets the focus back on close
    this.ticket = null; // a new object per opening: answers for an older one are dropped
    this.summary = null; // the camera's /api/cameras entry
    this.supported = {};
    this.settings = {}; // the camera's settings as the broker last reported them
    this.inputs = new Map(); // setting → the element that holds its value
    this.readOnly = false;
    this.busy = false;
    this.form.noValidate = true; // the broker validates, and says what is wrong per key
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.apply();
    });
    this.closeButton.addEventListener("click", () => this.close());
    this.reloadButton.addEventListener("click", () => this.load(this.ticket));
  }

  get isOpen() {
    return !this.el.hidden;
  }

  // camera: its /api/cameras entry; opener: where the focus returns on close.
  open(camera, opener) {
    const ticket = (this.ticket = {});
    this.camera = this.el.dataset.camera = camera.id;
    this.opener = opener;
    this.update(camera);
    this.supported = {};
    this.settings = {};
    this.inputs.clear();
    this.readOnly = this.busy = false;
    this.fields.replaceChildren();
    this.presetList.replaceChildren();
    this.el.hidden = false;
    document.body.classList.add("drawer-open");
    this.closeButton.focus();
    this.load(ticket);
    this.loadPresets(ticket);
  }

  // The camera's latest /api/cameras entry: its name and whether its worker is connected.
  update(camera) {
    this.summary = camera;
    this.title.textContent = camera.name;
    this.subtitle.textContent =
      `${camera.id} · ${camera.connected ? "worker connected" : "worker not connected"}`;
  }

  // Closes the drawer; false if it was not open (so Escape can un-enlarge a tile instead).
  close() {
    if (!this.isOpen) return false;
    this.el.hidden = true;
    this.ticket = this.camera = null;
    delete this.el.dataset.camera;
    document.body.classList.remove("drawer-open");
    if (this.opener?.isConnected) this.opener.focus();
    this.opener = null;
    return true;
  }

  // -- requests ---------------------------------------------------------------------

  // {status, data}: status 0 when the broker did not answer, data the JSON body or null.
  async request(method, path, body) {
    const init = { method, cache: "no-store", signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) };
    if (body !== undefined) {
      init.headers = { "Content-Type": "application/json" };
      init.body = JSON.stringify(body);
    }
    try {
      const response = await fetch(this.withToken(path), init);
      const data = await response.json().catch(() => null);
      return { status: response.status, data };
    } catch {
      return { status: 0, data: null };
    }
  }

  path(suffix) {
    return `/api/cameras/${encodeURIComponent(this.camera)}/${suffix}`;
  }

  // Runs one command with the form locked; null when the drawer moved on meanwhile.
  async command(method, path, body) {
    const ticket = this.ticket;
    this.setBusy(true);
    const answer = await this.request(method, path, body);
    if (ticket !== this.ticket) return null;
    this.setBusy(false);
    if (answer.data?.settings && Object.keys(answer.data.settings).length) {
      this.settings = answer.data.settings;
    }
    return answer;
  }

  async load(ticket) {
    if (ticket !== this.ticket || !ticket) return;
    this.el.dataset.state = "loading";
    this.say("info", "Loading…");
    const answer = await this.command("GET", this.path("settings"));
    if (!answer) return;
    if (answer.status === 200) {
      this.supported = answer.data.supported ?? {};
      this.render();
      this.el.dataset.state = "ready";
      this.say("info", answer.data.message);
    } else if (answer.data?.error === "not_connected" && answer.data.supported) {
      // No worker: the broker's own settings (analytics) still apply to this camera.
      this.supported = answer.data.supported;
      const defaults = Object.fromEntries(
        Object.entries(this.supported).map(([key, spec]) => [key, spec.default]));
      this.settings = { ...defaults, ...(answer.data.settings ?? {}) };
      this.render();
      this.el.dataset.state = "ready";
      this.say("info", `${FAILURES[503]} Only the broker's own settings (analytics) apply.`);
    } else if (answer.status === 403) {
      this.readOnly = true;
      this.renderReadOnly(this.summary.settings ?? {});
      this.el.dataset.state = "readonly";
      this.fail(answer);
    } else {
      this.fields.replaceChildren();
      this.inputs.clear();
      this.el.dataset.state = "failed";
      this.fail(answer);
    }
    this.setBusy(false);
  }

  async apply() {
    if (this.busy || this.readOnly || !this.inputs.size) return;
    this.clearErrors();
    const changes = this.changes();
    if (!Object.keys(changes).length) {
      this.say("info", "Nothing to apply: no field was changed.");
      return;
    }
    const answer = await this.command("PATCH", this.path("settings"), changes);
    if (!answer) return;
    if (answer.status === 200) {
      this.show(this.settings);
      this.say("ok", answer.data.message);
    } else if (answer.data?.errors) {
      // All or nothing: nothing was applied. The fields keep what was typed, so each
      // problem sits next to the value it is about.
      this.showErrors(answer.data.errors);
    } else {
      this.fail(answer);
    }
  }

  async loadPresets(ticket) {
    const answer = await this.request("GET", "/api/presets");
    if (ticket !== this.ticket) return;
    if (answer.status !== 200 || typeof answer.data !== "object" || !answer.data) {
      const why = answer.status ? `HTTP ${answer.status}` : "no answer";
      this.presetList.replaceChildren(
        element("p", { className: "note", textContent: `Presets unavailable (${why}).` }));
      return;
    }
    const names = Object.keys(answer.data).sort();
    if (!names.length) {
      this.presetList.replaceChildren(
        element("p", { className: "note", textContent: "No presets in the config." }));
      return;
    }
    this.presetList.replaceChildren(...names.map((name) => {
      const button = element("button", { type: "button", textContent: name,
        title: describe(answer.data[name]) });
      button.dataset.preset = name;
      button.addEventListener("click", () => this.applyPreset(name));
      return button;
    }));
    this.setBusy(this.busy);
  }

  async applyPreset(name) {
    if (this.busy || this.readOnly) return;
    this.clearErrors();
    const answer = await this.command("POST", this.path(`presets/${encodeURIComponent(name)}`));
    if (!answer) return;
    if (answer.status === 200) {
      if (this.inputs.size) this.show(this.settings);
      this.say("ok", answer.data.message);
    } else if (answer.data?.errors) {
      this.showErrors(answer.data.errors);
    } else {
      this.fail(answer);
    }
  }

  // -- the form ---------------------------------------------------------------------

  render() {
    const keys = ordered(this.supported);
    this.inputs.clear();
    this.fields.replaceChildren(...keys.map((key) => this.field(key, this.supported[key])));
    this.show(this.settings);
  }

  field(key, spec) {
    const id = `setting-${key}`;
    const input = inputFor(spec);
    input.id = id;
    input.name = key;
    const error = element("div", { className: "error", id: `${id}-error` });
    error.dataset.for = key;
    input.setAttribute("aria-describedby", error.id);
    let widget = input;
    if (input.type === "number" && spec.type === "int" && spec.min !== undefined) {
      // A slider beside the box; the box holds the value (and may hold one out of range).
      const slider = element("input", { type: "range", min: spec.min, max: spec.max, step: 1,
        tabIndex: -1 });
      slider.setAttribute("aria-hidden", "true");
      slider.dataset.for = key;
      slider.addEventListener("input", () => { input.value = slider.value; });
      input.addEventListener("input", () => { slider.value = input.value; });
      input.slider = slider;
      widget = element("div", { className: "range" }, slider, input);
    }
    if (key === "auto_exposure") input.addEventListener("change", () => this.syncExposure());
    this.inputs.set(key, input);
    const row = element("div", { className: "field" },
      element("label", { htmlFor: id, textContent: labelOf(key) }), widget);
    if (HINTS[key]) row.append(element("div", { className: "hint", textContent: HINTS[key] }));
    row.append(error);
    row.dataset.key = key;
    return row;
  }

  // Puts the broker's settings into the fields.
  show(settings) {
    for (const [key, input] of this.inputs) {
      const value = settings[key];
      if (input.type === "checkbox") input.checked = Boolean(value);
      else input.value = value ?? "";
      if (input.slider) input.slider.value = value ?? input.slider.min;
    }
    this.syncExposure();
  }

  // The exposure time is the camera's own choice while auto exposure is on.
  syncExposure() {
    const auto = this.inputs.get("auto_exposure");
    const time = this.inputs.get("exposure_time");
    if (!auto || !time) return;
    time.disabled = auto.checked;
    if (time.slider) time.slider.disabled = auto.checked;
  }

  // The keys whose field differs from what the broker reported, with their values.
  changes() {
    const changes = {};
    for (const [key, input] of this.inputs) {
      if (input.disabled) continue;
      const value = valueOf(input, this.supported[key]);
      const current = this.settings[key];
      if (current === undefined && (value === null || value === "")) continue;
      if (value !== current) changes[key] = value;
    }
    return changes;
  }

  showErrors(errors) {
    const general = [];
    for (const [key, problem] of Object.entries(errors)) {
      const error = this.fields.querySelector(`.error[data-for="${CSS.escape(key)}"]`);
      if (error) {
        error.textContent = problem;
        error.parentElement.classList.add("invalid");
      } else {
        general.push(`${key}: ${problem}`);
      }
    }
    this.say("error", ["Nothing was changed: fix the fields marked below.", ...general].join(" "));
  }

  clearErrors() {
    for (const error of this.fields.querySelectorAll(".error")) error.textContent = "";
    for (const row of this.fields.querySelectorAll(".invalid")) row.classList.remove("invalid");
  }

  // Without an operator token: what /api/cameras knows, as a plain list.
  renderReadOnly(settings) {
    this.inputs.clear();
    const keys = ordered(settings);
    const shown = (value) => (typeof value === "boolean" ? (value ? "on" : "off") : String(value));
    const rows = keys.map((key) => element("div", {}, element("dt", { textContent: labelOf(key) }),
      element("dd", { textContent: settings[key] === "" ? "—" : shown(settings[key]) })));
    this.fields.replaceChildren(rows.length
      ? element("dl", { className: "readonly" }, ...rows)
      : element("p", { className: "note", textContent: "No settings known yet." }));
  }

  setBusy(busy) {
    this.busy = busy;
    this.el.setAttribute("aria-busy", String(busy));
    this.fieldset.disabled = this.applyButton.disabled = busy || this.readOnly || !this.inputs.size;
    this.reloadButton.disabled = busy;
    for (const button of this.presetList.querySelectorAll("button")) {
      button.disabled = busy || this.readOnly;
    }
  }

  say(kind, text) {
    this.message.dataset.kind = kind;
    this.message.textContent = text ?? "";
    this.message.hidden = !text;
  }

  fail(answer) {
    const known = FAILURES[answer.status] ?? `The broker answered HTTP ${answer.status}.`;
    const detail = answer.data?.message;
    this.say("error", detail && answer.status !== 403 ? `${known} ${detail}` : known);
  }
}

// The keys of `settings` in FIELD_ORDER, then the others in their own order.
function ordered(settings) {
  const rank = (key) => (FIELD_ORDER.includes(key) ? FIELD_ORDER.indexOf(key) : FIELD_ORDER.length);
  return Object.keys(settings).sort((a, b) => rank(a) - rank(b)); // sort is stable
}

// The input for one setting, from its description in `supported`.
function inputFor(spec) {
  if (spec.type === "bool") return element("input", { type: "checkbox" });
  if (spec.choices) {
    return element("select", {}, ...spec.choices.map((choice) =>
      element("option", { value: choice, textContent: choice })));
  }
  if (spec.type === "int" || spec.type === "float") {
    const input = element("input", { type: "number", step: spec.type === "int" ? 1 : "any" });
    if (spec.min !== undefined) Object.assign(input, { min: spec.min, max: spec.max });
    return input;
  }
  const input = element("input", { type: "text", spellcheck: false });
  if (spec.type === "str" && spec.max !== undefined) input.maxLength = spec.max;
  return input;
}

// A field's value as the broker expects it; an empty or unreadable number is sent as null
// (the broker then says what it wants).
function valueOf(input, spec) {
  if (input.type === "checkbox") return input.checked;
  if (spec.type === "int" || spec.type === "float") {
    const number = input.value.trim() === "" ? NaN : Number(input.value);
    return Number.isFinite(number) ? number : null;
  }
  return input.value;
}
