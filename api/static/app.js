// The operator page: a form that calls POST /predict, the alerts (GET /api/alerts) with
// buttons to acknowledge and label them, and per-device live charts fed by
// GET /api/recent (InfluxDB), polled every few seconds. Plain browser JavaScript, no build.
"use strict";

(function () {
  const body = document.body;
  const REFRESH_MS = Number(body.dataset.refreshMs) || 5000;
  const KEYS_ENABLED = body.dataset.keysEnabled === "true";
  const KEY_STORAGE = "factory-api-key";
  const FIELDS = [
    { name: "temperature_c", label: "temperature °C", color: "#e36209" },
    { name: "humidity_pct", label: "humidity %", color: "#1f6feb" },
    { name: "sound_db", label: "sound dB", color: "#8250df" },
  ];
  const $ = (id) => document.getElementById(id);
  const charts = new Map(); // "line/device" -> {card, readings: uPlot, score: uPlot}
  let pollTimer = null;

  // --- API key (kept for this browser tab only) ------------------------------------
  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }
  function askForKey(message) {
    $("key-panel").hidden = false;
    $("key-message").textContent = message || "";
    $("api-key").focus();
  }
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    $("api-key").value = "";
    $("key-panel").hidden = true;
    refresh();
  });

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    const key = apiKey();
    if (key) opts.headers["X-API-Key"] = key;
    const resp = await fetch(path, opts);
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (resp.status === 401) {
      askForKey(key ? "That key was not accepted." : "");
    }
    if (!resp.ok) {
      const err = (data && data.error) || {};
      const e = new Error(err.message || `HTTP ${resp.status}`);
      e.status = resp.status;
      e.field = err.field;
      throw e;
    }
    return data;
  }

  // --- the form ---------------------------------------------------------------------
  function fmt(x, digits) {
    return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
  }

  function showResult(r) {
    const anomalous = r.is_anomaly;
    const box = $("result");
    box.hidden = false;
    box.dataset.state = anomalous ? "anomaly" : "normal";
    const badge = $("result-anomaly");
    badge.textContent = anomalous ? "Anomaly: yes" : "Anomaly: no";
    badge.className = "badge " + (anomalous ? "bad" : "ok");
    $("result-score").textContent = fmt(r.score, 3);
    $("result-threshold").textContent = fmt(r.threshold, 3);
    $("result-bar").style.width = `${Math.min(100, r.score * 100)}%`;
    $("result-threshold-mark").style.left = `${Math.min(100, r.threshold * 100)}%`;
    $("model-version").textContent = r.model_version;
    const rows = r.drivers.map((d) => {
      const width = Math.min(120, Math.abs(d.z) * 20);
      const high = Math.abs(d.z) >= 3 ? " high" : "";
      // The time-aware model names signals of a field: "humidity_pct__level".
      const [name, signal] = d.feature.split("__");
      const field = FIELDS.find((f) => f.name === name);
      const label = field ? field.label + (signal ? ` · ${signal}` : "") : d.feature;
      return `<tr data-feature="${d.feature}"><td>${label}</td>` +
        `<td class="num">${fmt(d.value, 2)}</td>` +
        `<td class="num"><span class="zbar${high}" style="width:${width}px"></span>` +
        `${d.z > 0 ? "+" : ""}${fmt(d.z, 2)}</td></tr>`;
    });
    $("result-drivers").innerHTML = rows.join("");
  }

  $("predict-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("predict-error").hidden = true;
    const reading = {};
    for (const f of FIELDS) {
      const raw = $(f.name).value;
      reading[f.name] = raw === "" ? null : Number(raw);
    }
    try {
      const result = await api("/predict", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(reading),
      });
      showResult(result);
    } catch (e) {
      $("result").hidden = true;
      $("predict-error").hidden = false;
      $("predict-error").textContent = e.message;
      if (e.field && $(e.field)) $(e.field).focus();
    }
  });

  // --- alerts: list, acknowledge, label ----------------------------------------------
  const NAME_STORAGE = "factory-operator-name"; // remembered so nobody types it twice
  const KIND_TEXT = {
    process_anomaly: "process anomaly",
    sensor_fault: "sensor fault",
    model_drift: "model drift",
  };
  const LABEL_TEXT = { real_fault: "real fault", false_alarm: "false alarm" };
  const FIELD_INPUTS = { by: "alert-by", note: "alert-note", fault_type: "alert-fault-type" };
  const alertsById = new Map();
  // Acknowledgements the broker accepted that the gateway has not recorded yet.
  const pendingAcks = new Map();
  let dialogFor = null; // {action, alert} while the dialog is open

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "–";
  }

  function cell(tr, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  function actionButton(text, action, alertId) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "small" + (action === "ack" ? "" : " secondary");
    b.textContent = text;
    b.dataset.action = action;
    b.dataset.alertId = alertId;
    return b;
  }

  // Built with textContent only: names and notes are typed by people.
  function alertRow(a) {
    const tr = document.createElement("tr");
    tr.dataset.alertId = a.alert_id;
    tr.dataset.state = a.state;
    const badge = document.createElement("span");
    badge.className = "badge " + (a.state === "firing" ? "bad" : "ok");
    badge.textContent = a.state;
    cell(tr, "").appendChild(badge);
    cell(tr, `${a.line} / ${a.device}`);
    cell(tr, (KIND_TEXT[a.kind] || a.kind) + (a.fault ? ` · ${a.fault}` : ""));
    cell(tr, when(a.started));
    cell(tr, fmt(a.peak_score, 2), "num");
    let ack = "–";
    if (a.acknowledged_by) {
      pendingAcks.delete(a.alert_id);
      ack = `${a.acknowledged_by}, ${when(a.acknowledged_at)}`;
      tr.dataset.ack = "acknowledged";
    } else if (pendingAcks.has(a.alert_id)) {
      ack = `sent by ${pendingAcks.get(a.alert_id)}, waiting for the gateway`;
      tr.dataset.ack = "sent";
    }
    const ackCell = cell(tr, ack, "ack");
    if (a.note) ackCell.title = a.note;
    const label = a.label;
    tr.dataset.label = label ? label.label : "";
    const labelCell = cell(
      tr,
      label ? `${LABEL_TEXT[label.label] || label.label} (${label.by})` : "–",
      "label",
    );
    if (label) labelCell.title = [label.fault_type, label.note].filter(Boolean).join(" · ");
    const actions = cell(tr, "", "actions");
    if (a.state === "firing" && !tr.dataset.ack) {
      actions.appendChild(actionButton("Acknowledge", "ack", a.alert_id));
    }
    actions.appendChild(actionButton("Real fault", "real_fault", a.alert_id));
    actions.appendChild(actionButton("False alarm", "false_alarm", a.alert_id));
    return tr;
  }

  async function refreshAlerts() {
    const params = new URLSearchParams({
      state: $("alert-state").value,
      hours: $("alert-hours").value,
    });
    if ($("line-filter").value) params.set("line", $("line-filter").value);
    try {
      const data = await api(`/api/alerts?${params}`);
      alertsById.clear();
      for (const a of data.alerts) alertsById.set(a.alert_id, a);
      $("alerts-body").replaceChildren(...data.alerts.map(alertRow));
      $("alerts-body").dataset.count = String(data.alerts.length);
      $("no-alerts").hidden = data.alerts.length > 0;
      const more = data.truncated ? " (the newest shown)" : "";
      $("alerts-status").textContent =
        `${data.count} alert${data.count === 1 ? "" : "s"}${more} · ` +
        `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      $("alerts-status").textContent = `not updated: ${e.message}`;
    }
  }

  function openAlertDialog(action, alert) {
    dialogFor = { action, alert };
    $("alert-dialog-title").textContent =
      action === "ack" ? "Acknowledge alert" : `Label as ${LABEL_TEXT[action]}`;
    $("alert-dialog-what").textContent =
      `${alert.line} / ${alert.device} · ${KIND_TEXT[alert.kind] || alert.kind}` +
      `${alert.fault ? " · " + alert.fault : ""} · started ${when(alert.started)}`;
    $("alert-by").value = localStorage.getItem(NAME_STORAGE) || "";
    $("alert-note").value = "";
    $("alert-fault-type").value = "";
    $("alert-fault-type-row").hidden = action !== "real_fault";
    $("alert-dialog-error").hidden = true;
    $("alert-confirm").textContent = action === "ack" ? "Acknowledge" : "Save label";
    $("alert-dialog").showModal();
    ($("alert-by").value ? $("alert-note") : $("alert-by")).focus();
  }

  $("alerts-body").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-action]");
    const alert = b && alertsById.get(b.dataset.alertId);
    if (alert) openAlertDialog(b.dataset.action, alert);
  });
  $("alert-cancel").addEventListener("click", () => $("alert-dialog").close());
  $("alert-dialog").addEventListener("close", () => {
    dialogFor = null;
  });

  $("alert-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!dialogFor) return;
    const { action, alert } = dialogFor;
    const by = $("alert-by").value.trim();
    const note = $("alert-note").value.trim();
    const body = { by };
    if (note) body.note = note;
    let path = `/api/alerts/${encodeURIComponent(alert.alert_id)}/ack`;
    if (action !== "ack") {
      path = `/api/alerts/${encodeURIComponent(alert.alert_id)}/label`;
      body.label = action;
      const faultType = $("alert-fault-type").value.trim();
      if (action === "real_fault" && faultType) body.fault_type = faultType;
    }
    $("alert-confirm").disabled = true;
    try {
      const result = await api(path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      localStorage.setItem(NAME_STORAGE, by);
      if (action === "ack") pendingAcks.set(alert.alert_id, by);
      $("alert-dialog").close();
      $("alert-message").hidden = false;
      $("alert-message").textContent =
        action === "ack"
          ? `Acknowledgement of ${alert.line} / ${alert.device} sent on ${result.topic}.`
          : `${alert.line} / ${alert.device} labelled ${LABEL_TEXT[action]}.`;
      refreshAlerts();
    } catch (e) {
      $("alert-dialog-error").hidden = false;
      $("alert-dialog-error").textContent = e.message;
      if (e.field && FIELD_INPUTS[e.field]) $(FIELD_INPUTS[e.field]).focus();
    } finally {
      $("alert-confirm").disabled = false;
    }
  });
  $("alert-state").addEventListener("change", refreshAlerts);
  $("alert-hours").addEventListener("change", refreshAlerts);

  // --- live charts ------------------------------------------------------------------
  // Draw a thin red band at every anomalous reading: the alert markers.
  function alertMarks(getFlags) {
    return {
      hooks: {
        drawAxes: [
          (u) => {
            const flags = getFlags();
            const xs = u.data[0];
            const ctx = u.ctx;
            ctx.save();
            ctx.fillStyle = "rgba(209, 36, 47, 0.18)";
            const w = Math.max(2, Math.round(2 * devicePixelRatio));
            for (let i = 0; i < xs.length; i++) {
              if (!flags[i]) continue;
              const x = Math.round(u.valToPos(xs[i], "x", true));
              ctx.fillRect(x - w / 2, u.bbox.top, w, u.bbox.height);
            }
            ctx.restore();
          },
        ],
      },
    };
  }

  function chartWidth(card) {
    return Math.max(300, card.clientWidth - 24);
  }

  function readingsData(dev) {
    const t = dev.time.map((ms) => ms / 1000);
    return [t, ...FIELDS.map((f) => dev.values[f.name] || t.map(() => null))];
  }

  function scoreData(dev, threshold) {
    const t = dev.time.map((ms) => ms / 1000);
    const alerts = dev.score.map((s, i) => (dev.is_anomaly[i] ? s : null));
    return [t, dev.score, alerts, t.map(() => threshold)];
  }

  function makeCard(key, dev) {
    const card = document.createElement("article");
    card.className = "device";
    card.dataset.key = key;
    card.innerHTML =
      `<header><h3></h3><div class="stats"></div></header>` +
      `<div class="chart readings"></div><div class="chart scores"></div>`;
    card.querySelector("h3").textContent = `${dev.line} / ${dev.device}`;
    $("devices").appendChild(card);
    const entry = { card, flags: [] };
    const width = chartWidth(card);
    const axisFont = "11px system-ui, sans-serif";
    entry.readings = new uPlot(
      {
        width,
        height: 150,
        legend: { show: false },
        cursor: { points: { size: 6 } },
        plugins: [alertMarks(() => entry.flags)],
        axes: [{ font: axisFont }, { font: axisFont, size: 44 }],
        series: [
          {},
          ...FIELDS.map((f) => ({ label: f.label, stroke: f.color, width: 1.5 })),
        ],
      },
      readingsData(dev),
      card.querySelector(".readings"),
    );
    entry.score = new uPlot(
      {
        width,
        height: 110,
        legend: { show: false },
        plugins: [alertMarks(() => entry.flags)],
        scales: { y: { range: [0, 1] } },
        axes: [{ font: axisFont }, { font: axisFont, size: 44, splits: () => [0, 0.5, 1] }],
        series: [
          {},
          { label: "score", stroke: "#24292f", width: 1.2 },
          {
            label: "alert",
            stroke: "#d1242f",
            width: 0,
            paths: () => null,
            points: { show: true, size: 7, fill: "#d1242f", stroke: "#d1242f" },
          },
          { label: "threshold", stroke: "#d1242f", width: 1, dash: [4, 4] },
        ],
      },
      scoreData(dev, 1),
      card.querySelector(".scores"),
    );
    return entry;
  }

  function updateCard(entry, dev, threshold) {
    entry.flags = dev.is_anomaly;
    entry.readings.setData(readingsData(dev));
    entry.score.setData(scoreData(dev, threshold));
    const last = dev.score.length ? dev.score[dev.score.length - 1] : null;
    const stats = entry.card.querySelector(".stats");
    stats.innerHTML =
      `${dev.points} readings · last score ${fmt(last, 2)} · ` +
      `<span class="${dev.anomalies ? "alerts" : ""}">${dev.anomalies} alerts</span>`;
    entry.card.classList.toggle("alerting", dev.is_anomaly.slice(-5).some(Boolean));
    // What the page rendered, for people and browser tests alike.
    entry.card.dataset.points = String(entry.score.data[0].length);
    entry.card.dataset.anomalies = String(dev.anomalies);
  }

  function updateLineFilter(devices) {
    const select = $("line-filter");
    const known = new Set(Array.from(select.options).map((o) => o.value));
    for (const line of new Set(devices.map((d) => d.line))) {
      if (!known.has(line)) select.add(new Option(line, line));
    }
  }

  async function refresh() {
    clearTimeout(pollTimer);
    refreshAlerts(); // polled with the charts; not awaited, so neither waits on the other
    const params = new URLSearchParams({ minutes: $("minutes").value });
    if ($("line-filter").value) params.set("line", $("line-filter").value);
    try {
      const data = await api(`/api/recent?${params}`);
      $("model-version").textContent = data.model_version;
      updateLineFilter(data.devices);
      const seen = new Set();
      for (const dev of data.devices) {
        const key = `${dev.line}/${dev.device}`;
        seen.add(key);
        let entry = charts.get(key);
        if (!entry) {
          entry = makeCard(key, dev);
          charts.set(key, entry);
        }
        updateCard(entry, dev, data.threshold);
      }
      for (const [key, entry] of charts) {
        if (!seen.has(key)) {
          entry.readings.destroy();
          entry.score.destroy();
          entry.card.remove();
          charts.delete(key);
        }
      }
      $("devices").dataset.devices = String(charts.size);
      $("no-data").hidden = charts.size > 0;
      $("live-status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      $("live-status").textContent = `not updated: ${e.message}`;
    }
    pollTimer = setTimeout(refresh, REFRESH_MS);
  }

  window.addEventListener("resize", () => {
    for (const entry of charts.values()) {
      const width = chartWidth(entry.card);
      entry.readings.setSize({ width, height: 150 });
      entry.score.setSize({ width, height: 110 });
    }
  });
  $("line-filter").addEventListener("change", refresh);
  $("minutes").addEventListener("change", refresh);

  // ?line=...&minutes=... preselect the view (bookmarkable).
  const wanted = new URLSearchParams(location.search);
  if (wanted.get("line")) {
    const select = $("line-filter");
    select.add(new Option(wanted.get("line"), wanted.get("line")));
    select.value = wanted.get("line");
  }
  if (wanted.get("minutes")) {
    const minutes = $("minutes");
    if (!Array.from(minutes.options).some((o) => o.value === wanted.get("minutes"))) {
      minutes.add(new Option(`${wanted.get("minutes")} min`, wanted.get("minutes")));
    }
    minutes.value = wanted.get("minutes");
  }

  if (KEYS_ENABLED && !apiKey()) askForKey("");
  refresh();
})();
