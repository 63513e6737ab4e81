// The mtaserver web console: views of the management port's JSON, refreshed live.
//
// Safety rule of this file: text that came from mail or the network (domains, error
// texts, job ids, addresses) only ever reaches the page through textContent or
// createTextNode; nothing here parses markup from a string. The page has a strict
// Content-Security-Policy, so this file is the only script and console.css the only
// style sheet (no inline style attributes either: classes only).
"use strict";

(function () {
  const POLL_MS = 3000;
  const SVG = "http://www.w3.org/2000/svg";
  const SERIES = ["delivered", "bounced", "deferred", "received"];
  const state = {
    session: null,
    route: null,
    view: null,
    timer: null,
    lastOk: null,
    failingSince: null,
    sort: {},
    filter: "",
    page: 0,
  };

  // -- DOM helpers (textContent only) ----------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") el.textContent = String(value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
  }

  function svg(tag, attrs) {
    const el = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    return el;
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }

  function fmtNumber(n) {
    return n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US");
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "-";
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
    if (n < 1024 * 1024 * 1024) return (n / 1024 / 1024).toFixed(1) + " MB";
    return (n / 1024 / 1024 / 1024).toFixed(2) + " GB";
  }

  function fmtDuration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    const d = Math.floor(seconds / 86400), hh = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (d) return d + "d " + hh + "h";
    if (hh) return hh + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function fmtAge(epoch) {
    if (epoch === null || epoch === undefined) return "-";
    return fmtDuration(Date.now() / 1000 - epoch);
  }

  function fmtDue(epoch) {
    if (epoch === null || epoch === undefined) return "-";
    const delta = epoch - Date.now() / 1000;
    return delta <= 0 ? "now" : "in " + fmtDuration(delta);
  }

  function fmtClock(date) {
    return date.toLocaleTimeString("en-GB", { hour12: false });
  }

  function link(href, text) {
    return h("a", { href: href, text: text });
  }

  const queueHref = (name) => "#queue/" + encodeURIComponent(name);
  const domainHref = (name) => "#domain/" + encodeURIComponent(name);
  const jobHref = (name) => "#job/" + encodeURIComponent(name);

  // -- server access ---------------------------------------------------------------

  // An absolute URL on this origin: fetch() refuses a URL with a user name in it, and
  // a relative one inherits the page's when the login was typed into the address.
  function here(path) {
    return location.origin + path;
  }

  async function getJSON(path) {
    let response;
    try {
      response = await fetch(here(path), { credentials: "same-origin", cache: "no-store" });
    } catch (err) {
      throw Object.assign(new Error("the server does not answer"), { offline: true });
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.message ? body.message : "HTTP " + response.status;
      throw Object.assign(new Error(message), { status: response.status, offline: response.status >= 500 });
    }
    return body.data;
  }

  async function act(fields, describe) {
    if (!state.session || !state.session.canAct) return;
    let response, body = null;
    try {
      response = await fetch(here("/ui/action"), {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": state.session.csrfToken },
        body: JSON.stringify(fields),
      });
      body = await response.json().catch(() => null);
    } catch (err) {
      notice(describe + ": the server does not answer", true);
      return;
    }
    if (response.status === 403 && body && /token/.test(body.message || "")) {
      await loadSession(); // the server restarted: a new token
    }
    const message = body && body.message ? body.message : "HTTP " + response.status;
    notice(response.ok ? describe + ": " + message : describe + " failed: " + message, !response.ok);
    refresh();
  }

  function notice(text, isError) {
    const el = document.getElementById("notice");
    el.textContent = text;
    el.hidden = false;
    el.classList.toggle("error", !!isError);
  }

  async function loadSession() {
    state.session = await getJSON("/ui/api/session");
    document.getElementById("host").textContent = state.session.hostName;
    document.getElementById("version").textContent = "mtaserver " + state.session.version;
    document.getElementById("level").textContent = "· access: " + state.session.level;
    document.title = state.session.hostName + " · mtaserver console";
  }

  // -- live state ------------------------------------------------------------------

  function markOk() {
    state.lastOk = new Date();
    state.failingSince = null;
    document.getElementById("offline").hidden = true;
    document.body.classList.remove("stale");
    const live = document.getElementById("live");
    live.textContent = "live · " + fmtClock(state.lastOk);
    live.classList.remove("down");
  }

  function markDown(err) {
    if (!state.failingSince) state.failingSince = new Date();
    const banner = document.getElementById("offline");
    const since = fmtClock(state.failingSince);
    banner.textContent = err.offline
      ? "The server is not answering (since " + since + "); the figures below are stale. Retrying…"
      : "Error: " + err.message;
    banner.hidden = false;
    document.body.classList.toggle("stale", !!err.offline);
    const live = document.getElementById("live");
    live.textContent = err.offline ? "not answering" : "error";
    live.classList.add("down");
  }

  // -- tables ----------------------------------------------------------------------

  // columns: [{key, label, num, render(row) -> node|string, sortValue(row)}]
  function sortableTable(id, caption, columns, rows, sortKey) {
    const sort = state.sort[id] || { key: sortKey || columns[0].key, dir: 1 };
    state.sort[id] = sort;
    const column = columns.find((c) => c.key === sort.key) || columns[0];
    const value = column.sortValue || ((row) => row[column.key]);
    const sorted = rows.slice().sort((a, b) => {
      const x = value(a), y = value(b);
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sort.dir;
    });
    const head = h("tr", {}, columns.map((c) => {
      if (c.sortable === false) return h("th", { scope: "col", text: c.label });
      const active = c.key === sort.key;
      const button = h("button", {
        type: "button",
        class: "sort",
        text: c.label,
        onclick: () => {
          state.sort[id] = { key: c.key, dir: active ? -sort.dir : (c.num ? -1 : 1) };
          rerender();
          const again = document.querySelector('[data-sort="' + id + "-" + c.key + '"]');
          if (again) again.focus();
        },
      });
      button.setAttribute("data-sort", id + "-" + c.key);
      button.id = "sort-" + id + "-" + c.key; // keeps keyboard focus across live refreshes
      return h("th", {
        scope: "col",
        class: c.num ? "num" : null,
        "aria-sort": active ? (sort.dir > 0 ? "ascending" : "descending") : "none",
      }, button);
    }));
    const body = h("tbody", {}, sorted.map((row) => h("tr", {}, columns.map((c) => {
      const content = c.render ? c.render(row) : fmtCell(row[c.key], c);
      return h(c.header ? "th" : "td", { class: c.num ? "num" : c.cls || null, scope: c.header ? "row" : null }, content);
    }))));
    if (!sorted.length) {
      body.appendChild(h("tr", {}, h("td", { colspan: columns.length, class: "empty", text: "nothing here" })));
    }
    return h("div", { class: "table-wrap" },
      h("table", { id: id }, h("caption", { text: caption }), h("thead", {}, head), body));
  }

  function fmtCell(value, column) {
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (column.num) return fmtNumber(value);
    return value === null || value === undefined || value === "" ? "-" : String(value);
  }

  function filterBox(label, placeholder) {
    const input = h("input", {
      type: "search",
      id: "filter",
      placeholder: placeholder,
      value: state.filter,
      autocomplete: "off",
      oninput: (event) => {
        state.filter = event.target.value;
        rerender();
      },
    });
    return h("div", { class: "filter" }, h("label", { for: "filter", text: label }), input);
  }

  function matches(row, keys) {
    const needle = state.filter.trim().toLowerCase();
    if (!needle) return true;
    return keys.some((k) => String(row[k] === null || row[k] === undefined ? "" : row[k]).toLowerCase().includes(needle));
  }

  function queueActions(row) {
    if (!state.session || !state.session.canAct) return null;
    const name = row.name;
    const box = h("div", { class: "actions" },
      row.paused
        ? h("button", { type: "button", class: "act", "data-action": "resume", "aria-label": "Resume " + name, text: "Resume",
            onclick: () => act({ action: "resume", queue: name }, "resume " + name) })
        : h("button", { type: "button", class: "act", "data-action": "pause", "aria-label": "Pause " + name, text: "Pause",
            onclick: () => act({ action: "pause", queue: name }, "pause " + name) }),
      h("button", { type: "button", class: "act", "data-action": "schedule", "aria-label": "Retry " + name + " now", text: "Retry now",
        onclick: () => act({ action: "schedule", queue: name }, "retry " + name) }),
      row.mode === "backoff"
        ? h("button", { type: "button", class: "act", "data-action": "normal", "aria-label": "Set " + name + " to normal mode", text: "Normal mode",
            onclick: () => act({ action: "normal", queue: name }, "normal mode " + name) })
        : null,
      h("button", { type: "button", class: "act danger", "data-action": "delete", "aria-label": "Delete the recipients of " + name, text: "Delete",
        onclick: () => {
          if (window.confirm("Delete all " + row.recipients + " recipient(s) queued for " + name + "? They are not bounced.")) {
            act({ action: "delete", queue: name, confirm: true }, "delete " + name);
          }
        } }));
    for (const button of box.querySelectorAll("button")) {
      button.id = "act-" + button.getAttribute("data-action") + "-" + name; // focus survives refreshes
    }
    return box;
  }

  function jobPauseButton(job) {
    const paused = job.paused, name = job.job, action = paused ? "resume-job" : "pause-job";
    const button = h("button", { type: "button", class: "act", "data-action": action,
      "aria-label": (paused ? "Resume job " : "Pause job ") + name, text: paused ? "Resume" : "Pause",
      onclick: () => act({ action: action, job: name }, (paused ? "resume job " : "pause job ") + name) });
    button.id = "act-" + action + "-" + name; // focus survives refreshes
    return button;
  }

  function jobActions(row) {
    if (!state.session || !state.session.canAct) return null;
    return h("div", { class: "actions" }, jobPauseButton(row));
  }

  // The columns of a roll-up of queues (domains, virtual MTAs), after the row's name.
  const ROLLUP_COLUMNS = [
    { key: "queues", label: "Queues", num: true },
    { key: "recipients", label: "Recipients", num: true },
    { key: "messages", label: "Messages", num: true },
    { key: "paused", label: "Paused", num: true },
    { key: "connections", label: "Connections", num: true },
    { key: "delivered", label: "Delivered", num: true },
    { key: "bounced", label: "Bounced", num: true },
    { key: "deferred", label: "Deferred", num: true },
  ];

  function queueColumns(withActions) {
    const columns = [
      { key: "name", label: "Queue", header: true, render: (r) => link(queueHref(r.name), r.name) },
      { key: "recipients", label: "Recipients", num: true },
      { key: "messages", label: "Messages", num: true },
      { key: "bytes", label: "KB", num: true, render: (r) => fmtNumber(Math.ceil(r.bytes / 1024)) },
      { key: "mode", label: "Mode", render: (r) => h("span", { class: "badge " + r.mode, text: r.mode }) },
      { key: "paused", label: "Paused", render: (r) => r.paused ? h("span", { class: "badge paused", text: "paused" }) : "no" },
      { key: "oldest", label: "Oldest", render: (r) => fmtAge(r.oldest), sortValue: (r) => r.oldest === null ? null : -r.oldest },
      { key: "lastError", label: "Last error", cls: "error-text", render: (r) => r.lastError || "-" },
      { key: "nextRetry", label: "Retry", render: (r) => fmtDue(r.nextRetry) },
    ];
    if (withActions && state.session && state.session.canAct) {
      columns.push({ key: "actions", label: "Actions", sortable: false, render: queueActions });
    }
    return columns;
  }

  // -- charts ----------------------------------------------------------------------

  function chart(id, title, history, series, width) {
    const height = 180, left = 44, right = 8, top = 10, bottom = 22;
    const points = history.length;
    let max = 1;
    for (const minute of history) for (const name of series) max = Math.max(max, minute[name] || 0);
    const x = (i) => left + (points <= 1 ? 0 : (i * (width - left - right)) / (points - 1));
    const y = (v) => top + (height - top - bottom) * (1 - v / max);
    const totals = series.map((name) => name + " " + history.reduce((sum, m) => sum + (m[name] || 0), 0));
    const root = svg("svg", { viewBox: "0 0 " + width + " " + height, class: "chart", role: "img", id: id,
      "aria-label": title + ", last " + points + " minutes: " + (series.length > 1 ? totals.join(", ") : "max " + max) });
    root.appendChild(svg("line", { x1: left, y1: y(0), x2: width - right, y2: y(0), class: "axis" }));
    root.appendChild(svg("line", { x1: left, y1: y(max), x2: width - right, y2: y(max), class: "grid" }));
    const label = (text, attrs) => {
      const t = svg("text", attrs);
      t.textContent = text;
      root.appendChild(t);
    };
    label(fmtNumber(max), { x: left - 4, y: y(max) + 4, class: "tick end" });
    label("0", { x: left - 4, y: y(0) + 4, class: "tick end" });
    label("-" + points + " min", { x: left, y: height - 6, class: "tick" });
    label("now", { x: width - right, y: height - 6, class: "tick end" });
    for (const name of series) {
      const coords = [];
      history.forEach((minute, i) => {
        const value = minute[name];
        if (value !== null && value !== undefined) coords.push(x(i).toFixed(1) + "," + y(value).toFixed(1));
      });
      const line = svg("polyline", { points: coords.join(" "), class: "series s-" + name });
      line.setAttribute("data-series", name);
      line.setAttribute("data-points", String(coords.length));
      root.appendChild(line);
    }
    const legend = h("ul", { class: "legend" }, series.map((name) =>
      h("li", {}, h("span", { class: "swatch s-" + name, "aria-hidden": "true" }), name)));
    return h("figure", { class: "chart-box" }, h("figcaption", { text: title }), root, legend);
  }

  // -- views -----------------------------------------------------------------------

  function heading(text, sub) {
    return h("div", { class: "heading" }, h("h1", { text: text }), sub ? h("p", { class: "sub", text: sub }) : null);
  }

  function card(label, value, extra, id) {
    return h("div", { class: "card", id: id || null },
      h("div", { class: "card-label", text: label }),
      h("div", { class: "card-value", text: value }),
      extra ? h("div", { class: "card-extra", text: extra }) : null);
  }

  function trafficTable(status) {
    const t = status.traffic;
    const day = status.lastDay || {};
    const rows = [
      ["Received (in)", t.in.lastMin.recipients, t.in.lastHr.recipients, day.received, t.in.total.recipients, "messages: " + t.in.total.messages + ", " + fmtBytes(t.in.total.bytes)],
      ["Delivered (out)", t.out.lastMin.recipients, t.out.lastHr.recipients, day.delivered, t.out.total.recipients, "messages: " + t.out.total.messages + ", " + fmtBytes(t.out.total.bytes)],
      ["Bounced", t.bounced.lastMin, t.bounced.lastHr, day.bounced, t.bounced.total, ""],
      ["Deferred", t.deferred.lastMin, t.deferred.lastHr, day.deferred, t.deferred.total, ""],
    ];
    return h("div", { class: "table-wrap" }, h("table", { id: "traffic" },
      h("caption", { text: "Traffic (recipients)" }),
      h("thead", {}, h("tr", {}, ["", "Last minute", "Last hour", "Last day", "Since start", ""].map((l, i) =>
        h("th", { scope: "col", class: i && i < 5 ? "num" : null, text: l })))),
      h("tbody", {}, rows.map((r) => h("tr", {},
        h("th", { scope: "row", text: r[0] }),
        r.slice(1, 5).map((v) => h("td", { class: "num", text: fmtNumber(v) })),
        h("td", { class: "muted", text: r[5] }))))));
  }

  const views = {
    status: {
      title: "Status",
      load: () => getJSON("/ui/api/status"),
      render: (data) => {
        const q = data.queue;
        const failing = (data.acct || []).filter((a) => a.failing).length;
        const backlog = (data.webhooks || []).reduce((s, w) => s + (w.backlog_batches || 0), 0);
        const cards = h("div", { class: "cards" },
          card("Uptime", fmtDuration(data.uptime), "since " + new Date(data.startedAt * 1000).toLocaleString("en-GB"), "card-uptime"),
          card("Version", data.version, data.hostName, "card-version"),
          card("Queued recipients", fmtNumber(q.recipients), fmtNumber(q.messages) + " message(s), " + fmtBytes(q.bytes), "card-recipients"),
          card("Queues", fmtNumber(q.queues), fmtNumber(q.paused) + " paused", "card-queues"),
          card("Connections", "in " + data.conn.smtpIn.cur + " · out " + data.conn.smtpOut.cur,
            "since start: in " + data.conn.smtpIn.total + ", out " + data.conn.smtpOut.total, "card-connections"),
          card("Webhook backlog", fmtNumber(backlog) + " batch(es)", (data.webhooks || []).length + " endpoint(s)", "card-webhooks"),
          card("Accounting", failing ? failing + " failing" : "healthy", (data.acct || []).length + " acct file(s)", "card-acct"));
        const acct = sortableTable("acct", "Accounting files", [
          { key: "acct_file", label: "File", header: true },
          { key: "failing", label: "Health", render: (r) => h("span", { class: "badge " + (r.failing ? "bad" : "ok"), text: r.failing ? "failing" : "ok" }) },
          { key: "errors", label: "Errors", num: true },
          { key: "last_error", label: "Last error", cls: "error-text" },
        ], data.acct || []);
        const hooks = sortableTable("webhooks", "Accounting webhooks", [
          { key: "acct_file", label: "Acct file", header: true },
          { key: "backlog_batches", label: "Batches waiting", num: true },
          { key: "backlog_bytes", label: "Bytes waiting", num: true },
          { key: "consecutive_failures", label: "Failures", num: true },
          { key: "last_error", label: "Last error", cls: "error-text" },
        ], data.webhooks || []);
        const actions = state.session && state.session.canAct
          ? h("div", { class: "toolbar" },
              h("button", { type: "button", class: "act", "data-action": "reload", text: "Reload config",
                onclick: () => act({ action: "reload" }, "reload") }),
              h("button", { type: "button", class: "act", "data-action": "rotate-acct", text: "Rotate acct files",
                onclick: () => act({ action: "rotate-acct" }, "rotate acct") }))
          : null;
        return [heading("Status", data.hostName), actions, cards,
          h("div", { class: "charts" },
            chart("chart-traffic", "Recipients per minute", data.history, SERIES, 600),
            chart("chart-queue", "Queued recipients", data.history, ["queued"], 300)),
          trafficTable(data), acct, hooks];
      },
    },
    queues: {
      title: "Queues",
      load: () => getJSON("/ui/api/queues"),
      render: (rows) => [heading("Queues", rows.length + " queue(s)"),
        filterBox("Filter queues", "domain, vmta or error text"),
        sortableTable("queues", "Queues", queueColumns(true),
          rows.filter((r) => matches(r, ["name", "lastError", "mode"])), "recipients")],
    },
    domains: {
      title: "Domains",
      load: () => getJSON("/ui/api/domains"),
      render: (rows) => [heading("Domains", rows.length + " domain(s) with mail"),
        filterBox("Filter domains", "domain"),
        sortableTable("domains", "Domains", [
          { key: "domain", label: "Domain", header: true, render: (r) => link(domainHref(r.domain), r.domain) },
          ...ROLLUP_COLUMNS,
        ], rows.filter((r) => matches(r, ["domain"])), "recipients")],
    },
    vmtas: {
      title: "Virtual MTAs",
      load: () => getJSON("/ui/api/vmtas"),
      render: (data) => [heading("Virtual MTAs", data.vmtas.length + " virtual MTA(s), " + data.pools.length + " pool(s)"),
        sortableTable("vmtas", "Virtual MTAs", [
          { key: "vmta", label: "Virtual MTA", header: true },
          ...ROLLUP_COLUMNS,
        ], data.vmtas),
        sortableTable("pools", "Virtual MTA pools", [
          { key: "pool", label: "Pool", header: true },
          { key: "vmtas", label: "Members", sortable: false, render: (r) => r.vmtas.join(", ") || "-" },
        ], data.pools)],
    },
    jobs: {
      title: "Jobs",
      load: () => getJSON("/ui/api/jobs"),
      render: (rows) => [heading("Jobs", rows.length + " job(s) with queued mail or paused"),
        filterBox("Filter jobs", "job id"),
        sortableTable("jobs", "Jobs", [
          { key: "job", label: "Job", header: true, render: (r) => link(jobHref(r.job), r.job) },
          { key: "messages", label: "Messages", num: true },
          { key: "recipients", label: "Recipients", num: true },
          { key: "paused", label: "Paused", render: (r) => r.paused ? h("span", { class: "badge paused", text: "paused" }) : "no" },
          state.session && state.session.canAct
            ? { key: "actions", label: "Actions", sortable: false, render: jobActions } : null,
        ].filter(Boolean), rows.filter((r) => matches(r, ["job"])), "recipients")],
    },
    queue: {
      title: "Queue",
      load: (name) => getJSON("/ui/api/queue?name=" + encodeURIComponent(name) + "&offset=" + state.page * 100 + "&limit=100"),
      render: (data) => {
        const q = data.queue;
        return [heading("Queue " + q.name, q.paused ? "paused" : q.mode + " mode"),
          h("p", {}, link("#queues", "← all queues"), " · domain ", link(domainHref(q.domain), q.domain)),
          sortableTable("queue-summary", "Summary", queueColumns(true), [q]),
          recipientsTable(data, true)];
      },
    },
    domain: {
      title: "Domain",
      load: (name) => getJSON("/ui/api/domain?name=" + encodeURIComponent(name)),
      render: (data) => {
        const d = data.domain;
        return [heading("Domain " + d.domain, d.queues + " queue(s)"),
          h("p", {}, link("#domains", "← all domains")),
          h("div", { class: "cards" },
            card("Recipients", fmtNumber(d.recipients)), card("Messages", fmtNumber(d.messages)),
            card("Delivered", fmtNumber(d.delivered)), card("Bounced", fmtNumber(d.bounced)),
            card("Deferred", fmtNumber(d.deferred)), card("Connections", fmtNumber(d.connections))),
          sortableTable("domain-queues", "Queues of this domain", queueColumns(true), data.queues, "recipients")];
      },
    },
    job: {
      title: "Job",
      load: (name) => getJSON("/ui/api/job?name=" + encodeURIComponent(name) + "&offset=" + state.page * 100 + "&limit=100"),
      render: (data) => {
        const j = data.job;
        const del = state.session && state.session.canAct
          ? h("div", { class: "toolbar" }, jobPauseButton(j), h("button", { type: "button", class: "act danger", "data-action": "delete-job",
              text: "Delete this job's recipients",
              onclick: () => {
                if (window.confirm("Delete the " + j.recipients + " queued recipient(s) of job " + j.job + "?")) {
                  act({ action: "delete-job", queue: "*", job: j.job, confirm: true }, "delete job " + j.job);
                }
              } }))
          : null;
        return [heading("Job " + j.job, (j.paused ? "paused, " : "") + j.messages + " message(s), " + j.recipients + " recipient(s) queued"),
          h("p", {}, link("#jobs", "← all jobs"), " · queues: ",
            data.queues.map((name, i) => [i ? ", " : "", link(queueHref(name), name)])),
          del, recipientsTable(data, false)];
      },
    },
  };

  function recipientsTable(data, inQueue) {
    const columns = [
      { key: "rcpt", label: "Recipient", header: true },
      inQueue ? null : { key: "queue", label: "Queue", render: (r) => link(queueHref(r.queue), r.queue) },
      { key: "msgId", label: "Message" },
      inQueue ? { key: "job", label: "Job", render: (r) => r.job ? link(jobHref(r.job), r.job) : "-" } : null,
      { key: "attempts", label: "Attempts", num: true },
      { key: "state", label: "State" },
      { key: "nextAttempt", label: "Next attempt", render: (r) => r.state === "ready" ? "now" : fmtDue(r.nextAttempt) },
      inQueue ? { key: "lastError", label: "Last error", cls: "error-text", render: (r) => r.lastError || "-" } : null,
    ].filter(Boolean);
    const first = data.total ? data.offset + 1 : 0, last = data.offset + data.recipients.length;
    const pager = h("nav", { class: "pager", "aria-label": "Recipient pages" },
      h("button", { type: "button", text: "← Previous", disabled: data.offset === 0,
        onclick: () => { state.page = Math.max(0, state.page - 1); refresh(); } }),
      h("span", { text: first + "–" + last + " of " + fmtNumber(data.total) }),
      h("button", { type: "button", text: "Next →", disabled: last >= data.total,
        onclick: () => { state.page += 1; refresh(); } }));
    return [sortableTable("recipients", "Recipients waiting", columns, data.recipients), pager];
  }

  // -- routing and the refresh loop --------------------------------------------------

  function parseRoute() {
    const hash = decodeURIComponentSafe(location.hash.replace(/^#\/?/, ""));
    const slash = hash.indexOf("/");
    const name = slash < 0 ? hash : hash.slice(0, slash);
    const arg = slash < 0 ? "" : hash.slice(slash + 1);
    if (views[name] && (arg || !["queue", "domain", "job"].includes(name))) return { name: name, arg: arg };
    return { name: "status", arg: "" };
  }

  function decodeURIComponentSafe(text) {
    try {
      return decodeURIComponent(text);
    } catch (err) {
      return text;
    }
  }

  function rerender() {
    if (state.view === null) return;
    const main = document.getElementById("main");
    const active = document.activeElement;
    const focusId = active && active.id ? active.id : null;
    const caret = focusId === "filter" ? active.selectionStart : null;
    clear(main);
    append(main, [views[state.route.name].render(state.view)]);
    if (focusId) {
      const again = document.getElementById(focusId);
      if (again) {
        again.focus();
        if (caret !== null && again.setSelectionRange) again.setSelectionRange(caret, caret);
      }
    }
  }

  let inFlight = null;
  async function refresh() {
    clearTimeout(state.timer);
    const route = state.route;
    const request = (inFlight = views[route.name].load(route.arg));
    try {
      const data = await request;
      if (request !== inFlight) return;
      state.view = data;
      markOk();
      rerender();
    } catch (err) {
      if (request !== inFlight) return;
      markDown(err);
      if (!err.offline && state.view === null) {
        const main = document.getElementById("main");
        clear(main);
        append(main, [heading(views[route.name].title), h("p", { class: "muted", text: err.message })]);
      }
    } finally {
      if (request === inFlight) state.timer = setTimeout(refresh, POLL_MS);
    }
  }

  function navigate(initial) {
    state.route = parseRoute();
    state.view = null;
    state.filter = "";
    state.page = 0;
    for (const a of document.querySelectorAll("nav a[data-view]")) {
      const current = a.getAttribute("data-view") === state.route.name;
      if (current) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    document.getElementById("notice").hidden = true;
    const main = document.getElementById("main");
    clear(main);
    append(main, [heading(views[state.route.name].title), h("p", { class: "muted", text: "loading…" })]);
    if (!initial) main.focus();
    refresh();
  }

  async function start() {
    try {
      await loadSession();
    } catch (err) {
      markDown(err);
      setTimeout(start, POLL_MS);
      return;
    }
    window.addEventListener("hashchange", () => navigate(false));
    navigate(true);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
