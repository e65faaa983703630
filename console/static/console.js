// The device page: one uPlot chart per metric (avg line, min-max band, count on hover),
// refreshed as windows close. Data comes from this console's own /api, never from elsewhere.
"use strict";

(function () {
  const root = document.getElementById("device");
  if (!root) return;
  const device = root.dataset.device;
  const status = document.getElementById("status");
  const charts = document.getElementById("charts");
  const REFRESH_MS = 15000;
  // ?range=1d opens the page on another range (links, bookmarks, the benchmark).
  const asked = new URLSearchParams(location.search).get("range");
  let range = ["1h", "1d", "1w"].includes(asked) ? asked : "1h";
  let custom = null;
  let plots = {};
  let timer = null;
  let firstChartShown = false;

  function say(text, kind) {
    status.textContent = text;
    status.className = "status " + (kind || "");
  }

  function fmt(v) {
    return v == null ? "-" : Number(v).toFixed(2);
  }

  function options(metric, width) {
    return {
      title: metric,
      width: width,
      height: 220,
      scales: { x: { time: true } },
      series: [
        {},
        { label: "min", stroke: "rgba(31,119,180,0.4)", width: 1, value: (u, v) => fmt(v) },
        { label: "max", stroke: "rgba(31,119,180,0.4)", width: 1, value: (u, v) => fmt(v) },
        { label: "avg", stroke: "#1f77b4", width: 2, value: (u, v) => fmt(v) },
      ],
      bands: [{ series: [2, 1], fill: "rgba(31,119,180,0.15)" }],
      hooks: {
        setCursor: [
          (u) => {
            const i = u.cursor.idx;
            const counts = u._counts || [];
            u._countEl.textContent = i == null || counts[i] == null ? "" : "count " + counts[i];
          },
        ],
      },
    };
  }

  function draw(body) {
    const names = Object.keys(body.metrics);
    if (names.length === 0) {
      for (const name of Object.keys(plots)) plots[name].destroy();
      plots = {};
      charts.textContent = "";
      say("No data yet in this range: a 1-minute window appears about a minute after its readings.", "empty");
      return;
    }
    for (const name of Object.keys(plots)) {
      if (!(name in body.metrics)) {
        plots[name].destroy();
        delete plots[name];
      }
    }
    const width = Math.max(320, charts.clientWidth - 10);
    for (const name of names) {
      const col = body.metrics[name];
      const data = [col.t, col.min, col.max, col.avg];
      let plot = plots[name];
      if (!plot) {
        const box = document.createElement("div");
        box.className = "chart";
        box.dataset.metric = name;
        const count = document.createElement("div");
        count.className = "count";
        charts.appendChild(box);
        plot = new uPlot(options(name, width), data, box);
        plot._countEl = count;
        box.appendChild(count);
        plots[name] = plot;
      } else {
        plot.setData(data);
      }
      plot._counts = col.count;
      plot.root.parentNode.dataset.points = String(col.t.length);
    }
    const points = names.reduce((n, name) => n + body.metrics[name].t.length, 0);
    say(`${points} ${body.window} windows of ${names.length} metric(s), updated ${new Date().toLocaleTimeString()}`, "ok");
    if (!firstChartShown) {
      firstChartShown = true;
      // Read by the browser tests and the benchmark: time from navigation start to the first chart.
      document.body.dataset.firstChartMs = String(Math.round(performance.now()));
    }
  }

  async function load() {
    let url = `/api/devices/${encodeURIComponent(device)}/series?range=${range}`;
    if (range === "custom" && custom) url += `&from=${custom.from}&to=${custom.to}`;
    let response;
    try {
      response = await fetch(url, { headers: { Accept: "application/json" } });
    } catch (e) {
      say("The console does not answer; retrying.", "error");
      return;
    }
    if (response.status === 401) {
      stop();
      status.className = "status error";
      status.innerHTML = 'You are signed out. <a href="/login?next=' +
        encodeURIComponent(location.pathname) + '">Sign in again</a>';
      return;
    }
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : "HTTP " + response.status;
      say((response.status === 404 ? "Unknown device: " : "Data unavailable (query API down?): ") + detail, "error");
      return;
    }
    draw(body);
  }

  async function refreshSummary() {
    const response = await fetch(`/api/devices/${encodeURIComponent(device)}/summary`).catch(() => null);
    if (!response || !response.ok) return;
    const body = await response.json();
    const tbody = document.querySelector("#summary tbody");
    if (!body.items.length) return;
    tbody.textContent = "";
    for (const item of body.items) {
      const tr = document.createElement("tr");
      for (const v of [item.metric, item.count, fmt(item.min), fmt(item.avg), fmt(item.max), item.firstTs, item.lastTs, item.late]) {
        const td = document.createElement("td");
        td.textContent = v == null ? "" : String(v);
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
  }

  function stop() {
    if (timer) clearInterval(timer);
    timer = null;
  }

  function start() {
    stop();
    load();
    // A custom range in the past does not change; the relative ones move with the clock.
    if (range !== "custom") {
      timer = setInterval(() => { load(); refreshSummary(); }, REFRESH_MS);
    }
  }

  document.getElementById("ranges").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-range]");
    if (!button) return;
    if (button.dataset.range === "custom") {
      const from = Date.parse(document.getElementById("custom-from").value);
      const to = Date.parse(document.getElementById("custom-to").value);
      if (Number.isNaN(from) || Number.isNaN(to) || to <= from) {
        say("Pick a start and an end, the end after the start.", "error");
        return;
      }
      custom = { from, to };
    }
    range = button.dataset.range;
    for (const b of document.querySelectorAll("#ranges button")) b.classList.toggle("active", b === button);
    start();
  });

  window.addEventListener("resize", () => {
    const width = Math.max(320, charts.clientWidth - 10);
    for (const plot of Object.values(plots)) plot.setSize({ width, height: 220 });
  });

  for (const b of document.querySelectorAll("#ranges button")) b.classList.toggle("active", b.dataset.range === range);
  start();
})();
