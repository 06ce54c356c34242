/* Thrifty dashboard: reads /v1/thrifty/usage and /v1/thrifty/budgets with the admin key. */
"use strict";
(function () {
  const KEY = "thrifty-admin-key";
  const LEVERS = ["cache", "batch", "distill", "tier"];
  const COLORS = { cost: "#6b7280", cache: "#2563eb", batch: "#d97706", distill: "#7c3aed",
    tier: "#059669", gateway: "#9ca3af" };
  const PERIODS = {
    day: { ms: 24 * 3600e3, bucket: "hour", step: 3600e3 },
    week: { ms: 7 * 24 * 3600e3, bucket: "hour", step: 3600e3 },
    month: { ms: 30 * 24 * 3600e3, bucket: "day", step: 24 * 3600e3 },
  };
  const $ = (id) => document.getElementById(id);
  const C = () => window.ThriftyCharts;

  function money(v) {
    const a = Math.abs(v);
    const digits = a >= 100 ? 0 : a >= 1 ? 2 : a >= 0.01 ? 3 : 5;
    return (v < 0 ? "-$" : "$") + a.toFixed(digits);
  }
  const pct = (v) => (100 * v).toFixed(v > 0 && v < 0.1 ? 1 : 0) + "%";

  class AuthError extends Error {}

  async function getJSON(path) {
    const key = sessionStorage.getItem(KEY);
    const resp = await fetch(path, { headers: { Authorization: "Bearer " + key },
      cache: "no-store" });
    if (resp.status === 401 || resp.status === 403) {
      throw new AuthError("The gateway refused this key (the dashboard needs the admin key).");
    }
    if (!resp.ok) throw new Error(`${path} answered ${resp.status}`);
    return resp.json();
  }

  function showError(message) {
    const node = $("error");
    node.textContent = message || "";
    node.hidden = !message;
  }

  function showLogin(message) {
    $("login").hidden = false;
    $("content").hidden = true;
    $("controls").hidden = true;
    showError(message);
  }

  function floorTo(t, step) {
    return Math.floor(t / step) * step;
  }

  /* Sum the ledger's (start, tenant, route, model) buckets per start time. */
  function perSlot(buckets, filter) {
    const out = new Map();
    for (const b of buckets) {
      if (filter && !filter(b)) continue;
      const t = Date.parse(b.start);
      const acc = out.get(t) || { cost: 0, baseline: 0, requests: 0, saved: {} };
      acc.cost += b.cost_usd;
      acc.baseline += b.baseline_cost_usd;
      acc.requests += b.requests;
      for (const lever of LEVERS) {
        acc.saved[lever] = (acc.saved[lever] || 0) + (b.saved_by_lever_usd[lever] || 0);
      }
      out.set(t, acc);
    }
    return out;
  }

  function slotLabel(t, bucket) {
    const d = new Date(t);
    const iso = d.toISOString();
    return bucket === "day" ? iso.slice(0, 10) : iso.slice(0, 10) + " " + iso.slice(11, 16);
  }

  function kpi(label, value, cls) {
    const div = document.createElement("div");
    div.className = "kpi";
    const l = document.createElement("div");
    l.className = "label";
    l.textContent = label;
    const v = document.createElement("div");
    v.className = "value" + (cls ? " " + cls : "");
    v.textContent = value;
    div.append(l, v);
    return div;
  }

  function renderKpis(usage) {
    const t = usage.totals;
    const node = $("kpis");
    node.replaceChildren();
    const share = t.baseline_cost_usd > 0 ? ` (${pct(t.saved_usd / t.baseline_cost_usd)})` : "";
    node.append(
      kpi("Spend", money(t.cost_usd)),
      kpi("Without Thrifty", money(t.baseline_cost_usd)),
      kpi("Saved (gross)", money(t.saved_usd) + share, t.saved_usd >= 0 ? "good" : "bad"),
    );
    if (usage.net_savings) {
      const net = usage.net_savings.net_saved_usd;
      node.append(kpi("Saved (net of Thrifty)", money(net), net >= 0 ? "good" : "bad"));
    }
    const req = t.requests || 0;
    node.append(
      kpi("Requests", String(req)),
      kpi("Cache hit rate", req ? pct(t.served_by_lever.cache / req) : "-"),
      kpi("Student coverage", req ? pct(t.served_by_lever.distill / req) : "-"),
    );
  }

  function renderOverTime(usage, period, sinceMs, nowMs) {
    const p = PERIODS[period];
    const slots = perSlot(usage.buckets || []);
    const labels = [];
    const cost = [];
    const saved = Object.fromEntries(LEVERS.map((l) => [l, []]));
    for (let t = floorTo(sinceMs, p.step); t <= nowMs; t += p.step) {
      const s = slots.get(t) || { cost: 0, saved: {} };
      labels.push(slotLabel(t, p.bucket));
      cost.push(s.cost);
      for (const lever of LEVERS) saved[lever].push(s.saved[lever] || 0);
    }
    C().stackedBars($("chart-over-time"), {
      id: "over-time",
      labels: labels,
      fmt: money,
      short: (l) => (p.bucket === "day" ? l.slice(5) : l.slice(5, 10) === labels[0].slice(5, 10)
        ? l.slice(11) : l.slice(5)),
      series: [{ name: "spend", color: COLORS.cost, values: cost }].concat(
        LEVERS.map((l) => ({ name: "saved: " + l, color: COLORS[l], values: saved[l] }))),
    });
  }

  /* Requests a lever answered; for `tier`, requests a cheaper tier served (routed or not). */
  function leverCount(totals, lever) {
    if (lever !== "tier") return totals.served_by_lever[lever];
    const tiers = totals.served_by_tier || {};
    return Object.entries(tiers).reduce((n, [name, c]) => n + (name === "route" ? 0 : c), 0);
  }

  function renderHitRates(usage) {
    const t = usage.totals;
    const req = t.requests || 0;
    C().hbars($("chart-hit-rates"), {
      id: "hit-rates",
      max: 1,
      fmt: pct,
      emptyText: "No request was answered by a lever in this period.",
      items: LEVERS.map((l) => ({ label: l, value: req ? leverCount(t, l) / req : 0,
        color: COLORS[l], note: `${leverCount(t, l)} of ${req}` })),
    });
  }

  function renderTop(nodeId, rows, field) {
    C().hbars($(nodeId), {
      id: nodeId.replace("chart-", ""),
      fmt: money,
      items: rows.map((r) => ({ label: r[field], value: r.cost_usd,
        note: `saved ${money(r.saved_usd)}` })).sort((a, b) => b.value - a.value),
    });
  }

  function renderCoverage(usage) {
    C().hbars($("chart-coverage"), {
      id: "coverage",
      max: 1,
      fmt: pct,
      color: COLORS.distill,
      emptyText: "No route is answered by a student yet.",
      items: usage.by_route.map((r) => ({ label: r.route,
        value: r.requests ? r.served_by_lever.distill / r.requests : 0,
        note: `${r.served_by_lever.distill} of ${r.requests}` }))
        .sort((a, b) => b.value - a.value),
    });
  }

  function cell(row, content, cls) {
    const td = document.createElement(row.parentElement && row.parentElement.tagName === "THEAD"
      ? "th" : "td");
    td.textContent = content;
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  function renderNet(usage) {
    const node = $("net-savings");
    node.replaceChildren();
    const table = document.createElement("table");
    table.id = "net-table";
    const head = table.createTHead().insertRow();
    for (const h of ["lever", "gross saved", "running cost", "net"]) {
      const th = document.createElement("th");
      th.textContent = h;
      head.appendChild(th);
    }
    const body = table.createTBody();
    const gross = usage.totals.saved_by_lever_usd;
    const ns = usage.net_savings;
    for (const lever of LEVERS) {
      const row = body.insertRow();
      const running = ns ? ns.running_cost_usd[lever] : 0;
      const net = ns ? ns.net_by_lever_usd[lever] : gross[lever];
      cell(row, lever);
      cell(row, money(gross[lever]));
      cell(row, ns ? money(running) : "-");
      cell(row, money(net), net < 0 ? "neg" : "pos");
    }
    if (ns) {
      const row = body.insertRow();
      cell(row, "gateway (shared)");
      cell(row, "-");
      cell(row, money(ns.running_cost_usd.gateway));
      cell(row, money(-ns.running_cost_usd.gateway), "neg");
      const total = body.insertRow();
      cell(total, "total");
      cell(total, money(usage.totals.saved_usd));
      cell(total, money(Object.values(ns.running_cost_usd).reduce((a, b) => a + b, 0)));
      cell(total, money(ns.net_saved_usd), ns.net_saved_usd < 0 ? "neg" : "pos");
    }
    node.appendChild(table);
    if (!ns) {
      const p = document.createElement("p");
      p.className = "hint";
      p.textContent = "Set spec.netSavings (prices and workloads) to see savings net of " +
        "Thrifty's own running cost.";
      node.appendChild(p);
    }
  }

  async function renderBudgets(budgets) {
    const node = $("budgets");
    node.replaceChildren();
    if (!budgets.length) {
      C().empty(node, "No budget is configured.");
      return;
    }
    const byStart = new Map();
    for (const b of budgets) {
      if (!byStart.has(b.period_start)) {
        byStart.set(b.period_start, getJSON(
          `/v1/thrifty/usage?bucket=hour&since=${encodeURIComponent(b.period_start)}`));
      }
    }
    for (const b of budgets) {
      const usage = await byStart.get(b.period_start);
      const x0 = Date.parse(b.period_start);
      const x1 = Date.parse(b.period_end);
      const slots = perSlot(usage.buckets || [], (row) => row[b.scope] === b.owner);
      const times = [...slots.keys()].sort((a, c) => a - c);
      let sum = 0;
      const points = [[x0, 0]];
      for (const t of times) {
        points.push([t, sum]);  // flat until the hour the money was spent in
        sum += slots.get(t).cost;
        points.push([Math.min(t + 3600e3, Date.now()), sum]);
      }
      const spent = Math.max(b.spent_usd, sum);
      const now = Math.min(Date.now(), x1);
      const rate = now > x0 ? spent / (now - x0) : 0;
      const section = document.createElement("div");
      section.className = "budget";
      const h = document.createElement("h3");
      const named = [["soft", b.soft_limit_usd], ["hard", b.hard_limit_usd]]
        .filter(([, v]) => v !== null).map(([k, v]) => `${k} ${money(v)}`).join(", ");
      h.textContent = `${b.scope} ${b.owner} - ${b.period} from ${b.period_start.slice(0, 10)}: ` +
        `${money(b.spent_usd)} spent (${named || "no limit"}) `;
      const badge = document.createElement("span");
      badge.className = "badge " + b.state;
      badge.textContent = b.state === "ok" ? "within budget" : b.state + " limit reached";
      h.appendChild(badge);
      const chart = document.createElement("div");
      chart.className = "chart";
      section.append(h, chart);
      node.appendChild(section);
      const limits = [];
      if (b.soft_limit_usd !== null) limits.push({ name: "soft", value: b.soft_limit_usd,
        color: "#d97706" });
      if (b.hard_limit_usd !== null) limits.push({ name: "hard", value: b.hard_limit_usd,
        color: "#dc2626" });
      C().lines(chart, {
        id: `budget-${b.scope}-${b.owner}`,
        x0: x0, x1: x1, fmt: money, limits: limits,
        ticks: [[x0, b.period_start.slice(0, 10)], [x1, b.period_end.slice(0, 10)]],
        series: [
          { name: "spent", color: COLORS.cost, points: points },
          { name: "projected", color: "#9ca3af", points: [[now, spent], [x1, spent + rate * (x1 - now)]] },
        ],
      });
    }
  }

  async function load() {
    const period = $("period").value;
    const p = PERIODS[period];
    const nowMs = Date.now();
    const sinceMs = floorTo(nowMs - p.ms + p.step, p.step);
    const since = new Date(sinceMs).toISOString();
    try {
      const [usage, budgets] = await Promise.all([
        getJSON(`/v1/thrifty/usage?bucket=${p.bucket}&since=${encodeURIComponent(since)}`),
        getJSON("/v1/thrifty/budgets"),
      ]);
      if (!budgets.admin) {
        throw new AuthError("This is a tenant key: the dashboard needs the admin key.");
      }
      $("login").hidden = true;
      $("controls").hidden = false;
      $("content").hidden = false;
      showError("");
      renderKpis(usage);
      renderOverTime(usage, period, sinceMs, nowMs);
      renderHitRates(usage);
      renderNet(usage);
      renderTop("chart-routes", usage.by_route, "route");
      renderTop("chart-tenants", usage.by_tenant, "tenant");
      renderTop("chart-models", usage.by_model, "model");
      renderCoverage(usage);
      await renderBudgets(budgets.data);
      $("generated").textContent = `Ledger read at ${usage.generated_at}.`;
      document.body.dataset.loaded = "true";
    } catch (err) {
      if (err instanceof AuthError) {
        sessionStorage.removeItem(KEY);
        showLogin(err.message);
      } else {
        showError("Could not load the ledger: " + err.message);
      }
    }
  }

  function start() {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, $("key").value.trim());
      $("key").value = "";
      load();
    });
    $("refresh").addEventListener("click", load);
    $("period").addEventListener("change", load);
    $("logout").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      showLogin("");
    });
    if (sessionStorage.getItem(KEY)) load();
    else showLogin("");
  }

  document.addEventListener("DOMContentLoaded", start);
})();
