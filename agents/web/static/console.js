/* kaifong console — live picture of a city's incidents for command centres.
 *
 * Loads a snapshot from /api/* and follows /api/stream (Server-Sent Events); no polling, no
 * libraries, no request leaves this origin. Every value from the server is rendered with
 * textContent / setAttribute, never as HTML (descriptions are free text from the public).
 */
(() => {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  const TERMINAL = new Set(["resolved", "cancelled"]);
  const LEVEL_RANK = { grid: 0, street: 1, district: 2, city: 3 };
  const LEVEL_ZH = { grid: "网格", street: "街道", district: "区", city: "市" };
  // The escalation schema's reason enum, in words.
  const REASON = {
    ring_deadline_missed: "deadline missed 圈层超时",
    no_candidate: "no unit available 无可用单元",
    unit_declined: "unit declined 单元拒绝",
    severity: "severity 1 重大事件",
  };
  // The default ring table's names (KAIFONG_RINGS may name others: those are shown as they are).
  const RING_ZH = { self_rescue: "自救", mutual_aid: "互救", grid: "网格", street: "街道", professional: "专业力量" };
  const DECLINE_REASON = {
    busy: "busy 忙碌", unreachable: "unreachable 联系不上", no_capacity: "no capacity 力量不足",
    off_duty: "off duty 不在岗", other: "other 其他",
  };
  // Released and replaced: the unit is no longer coming.
  const RELEASED = new Set(["no_show", "declined"]);
  const CATEGORY_ZH = {
    fire: "火警", medical: "急救", violence: "治安", drowning: "溺水", crowd: "人群聚集",
    traffic: "交通", flood: "内涝", gas: "燃气", other: "其他",
  };
  const STATUS_ZH = {
    open: "待处置", acknowledged: "已接警", en_route: "在途", on_scene: "到场", resolved: "已处置",
    cancelled: "已取消", assigned: "已派", declined: "拒绝", no_show: "未响应",
  };
  const DRILL_OUTCOMES = [
    ["pass", "pass 通过"], ["late", "late 迟到"], ["fail", "fail 未通过"],
    ["no_answer", "no answer 未应答"], ["aborted", "aborted 中止"],
  ];
  const ACKED_SHOWN = 30;

  const S = {
    incidents: new Map(), // id → {state, description, details, loading, liveAt}
    escalations: new Map(), // id → {body…, acked_at, acked_by, notifications, sending}
    geo: null,
    summary: null,
    filter: { district: "", grid: "" },
    // The server's clock: its "now" at a local instant and its rate (1 except in an accelerated
    // simulation), so countdowns agree with the worker whatever the browser's clock says.
    clockBase: { server: Date.now(), local: Date.now(), scale: 1 },
    // Who is signed in (GET /api/session): the credential itself lives in an HttpOnly cookie
    // this script never sees. scope: the districts a district seat covers (null: the city).
    session: null,
    scope: null,
    source: null,
    mapProjection: null,
  };

  // -- small helpers ------------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  const now = () => S.clockBase.server + (Date.now() - S.clockBase.local) * S.clockBase.scale;
  const pad = (n) => String(n).padStart(2, "0");

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
  }

  function clockTime(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function notice(text) {
    const n = $("notice");
    n.textContent = text;
    n.hidden = false;
    clearTimeout(notice.timer);
    notice.timer = setTimeout(() => { n.hidden = true; }, 8000);
  }

  // A token in the address (an old bookmark's ?token=) signs nothing in: it is ignored and taken
  // out of the address bar, so that it is not kept in the history, a screenshot or a bookmark.
  function scrubAddress() {
    const params = new URLSearchParams(location.search);
    if (!params.has("token") && !params.has("seat")) return;
    params.delete("token");
    params.delete("seat");
    const qs = params.toString();
    history.replaceState(null, "", location.pathname + (qs ? `?${qs}` : "") + location.hash);
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options, headers });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    return { status: response.status, ok: response.ok, body };
  }

  // -- state: incidents ---------------------------------------------------------------------------
  function upsertState(state, { live = false, description } = {}) {
    const id = state.incident_id;
    let rec = S.incidents.get(id);
    if (!rec) {
      rec = { state, description: null, details: false, loading: false, liveAt: 0 };
      S.incidents.set(id, rec);
    } else if (rec.state.version > state.version) {
      return; // a replay or a late snapshot: the newer version stays
    } else {
      rec.state = state;
    }
    if (description !== undefined) {
      rec.description = description;
      rec.details = true;
    }
    if (live) rec.liveAt = Date.now();
    if (!rec.details && !TERMINAL.has(state.status)) loadDetails(id);
    scheduleRender();
  }

  async function loadDetails(id) {
    const rec = S.incidents.get(id);
    if (!rec || rec.loading) return;
    rec.loading = true;
    try {
      const r = await api(`/api/incidents/${encodeURIComponent(id)}`);
      if (r.ok && r.body) {
        rec.description = (r.body.report && r.body.report.description) || null;
        rec.details = true;
        upsertState(r.body.state);
        for (const e of r.body.escalations || []) upsertEscalation(e);
      }
    } finally {
      rec.loading = false;
    }
    scheduleRender();
  }

  // -- state: escalations -------------------------------------------------------------------------
  function upsertEscalation(view, { notification } = {}) {
    const id = view.escalation_id;
    const cur = S.escalations.get(id);
    if (!cur) {
      S.escalations.set(id, { ...view, notifications: view.notifications || notification || 0 });
    } else {
      const acked_at = cur.acked_at || view.acked_at || null;
      const acked_by = cur.acked_by || view.acked_by || null;
      Object.assign(cur, view, {
        acked_at, acked_by,
        notifications: Math.max(cur.notifications || 0, view.notifications || 0, notification || 0),
      });
    }
    scheduleRender();
  }

  function markAcked(id, at, by) {
    const cur = S.escalations.get(id);
    if (!cur || cur.acked_at) return;
    cur.acked_at = at;
    cur.acked_by = by;
    scheduleRender();
  }

  async function acknowledge(id, button) {
    const esc = S.escalations.get(id);
    if (!esc || esc.acked_at || esc.sending) return;
    esc.sending = true;
    button.disabled = true;
    button.dataset.state = "sending";
    button.textContent = "Sending… 发送中";
    try {
      // No "by": the server records the signed-in seat (or "console" for the service token).
      const r = await api(`/api/escalations/${encodeURIComponent(id)}/ack`, { method: "POST" });
      if (r.status === 202 && r.body) {
        esc.sending = false;
        markAcked(id, r.body.at, r.body.by);
      } else if (r.status === 401) {
        askSignIn("Sign in to acknowledge 请先登录");
      } else if (r.status === 403) {
        notice(`Not allowed: ${(r.body && r.body.message) || "refused"} 无权限`);
      } else {
        notice(`Acknowledgement refused (${r.status}) 确认失败`);
      }
    } catch (_) {
      notice("Acknowledgement not sent: the worker is unreachable 网络错误");
    } finally {
      esc.sending = false;
      scheduleRender(true);
    }
  }

  // -- filters ------------------------------------------------------------------------------------
  function matches(district, grid) {
    const f = S.filter;
    if (f.district && district !== f.district) return false;
    if (f.grid && !(grid || "").toLowerCase().includes(f.grid.toLowerCase())) return false;
    return true;
  }

  // -- rings: one source of truth for the card clocks and the map dots -----------------------------
  // cls drives the colour; flag says it in words too (colour alone is not enough on a wall).
  function ringView(ring, t) {
    const deadline = Date.parse(ring.deadline_at);
    const seconds = ring.seconds !== null && ring.seconds !== undefined ? Math.round(ring.seconds) : null;
    if (ring.state === "met") return { cls: "met", flag: "MET 到场", text: `✓ ${seconds}s` };
    if (ring.state === "stopped") return { cls: "stopped", flag: "stopped", text: "—" };
    if (ring.state === "breached" && seconds !== null) return { cls: "late", flag: "LATE 超时", text: `✗ ${seconds}s` };
    if (ring.state === "breached" || t >= deadline) {
      return { cls: "late", flag: "LATE 超时", text: `+${duration((t - deadline) / 1000)}` };
    }
    return { cls: "pending", flag: "", text: duration(Math.ceil((deadline - t) / 1000)) };
  }

  function incidentTone(state, t) {
    let tone = "met";
    for (const ring of state.rings || []) {
      const v = ringView(ring, t).cls;
      if (v === "late") return "late";
      if (v === "pending") tone = "pending";
    }
    return tone;
  }

  // -- rendering ----------------------------------------------------------------------------------
  let renderTimer = null;
  function scheduleRender(now_ = false) {
    if (now_) { clearTimeout(renderTimer); renderTimer = null; render(); return; }
    if (renderTimer === null) renderTimer = setTimeout(() => { renderTimer = null; render(); }, 30);
  }

  // Keyed lists: an unchanged item keeps its DOM node (a click in progress is not lost to a
  // re-render); a node is only moved when the order changed.
  function reconcile(container, cache, items) {
    const seen = new Set();
    items.forEach(({ key, sig, build }, i) => {
      seen.add(key);
      let entry = cache.get(key);
      if (!entry || entry.sig !== sig) {
        const node = build();
        if (entry && entry.node.parentNode === container) container.replaceChild(node, entry.node);
        entry = { sig, node };
        cache.set(key, entry);
      }
      if (container.children[i] !== entry.node) container.insertBefore(entry.node, container.children[i] || null);
    });
    for (const [key, entry] of cache) {
      if (!seen.has(key)) { entry.node.remove(); cache.delete(key); }
    }
  }

  const incidentNodes = new Map();
  const escalationNodes = new Map();

  function visibleIncidents() {
    return [...S.incidents.values()]
      .filter((r) => !TERMINAL.has(r.state.status) && matches(r.state.district, r.state.grid))
      .sort((a, b) => (Date.parse(b.state.reported_at) - Date.parse(a.state.reported_at))
        || (a.state.incident_id < b.state.incident_id ? 1 : -1));
  }

  function buildIncident(rec) {
    const s = rec.state;
    const card = el("article", "incident");
    card.dataset.incident = s.incident_id;
    if (s.exercise) card.classList.add("exercise");
    const head = el("header", "inc-head");
    head.append(el("span", `sev sev-${s.severity}`, `S${s.severity}`));
    head.append(el("span", "category", `${CATEGORY_ZH[s.category] || ""} ${s.category}`.trim()));
    if (s.exercise) head.append(el("span", "badge-exercise", "EXERCISE 演练"));
    head.append(el("span", "inc-status", `${STATUS_ZH[s.status] || ""} ${s.status}`.trim()));
    if (s.escalation_level) {
      head.append(el("span", "badge-level", `↑ ${LEVEL_ZH[s.escalation_level] || ""} ${s.escalation_level}`));
    }
    head.append(el("span", "inc-id", s.incident_id));
    card.append(head);

    const where = el("div", "inc-where");
    where.append(el("span", "district-label", s.district || "—"));
    if (s.grid) where.append(document.createTextNode(` · ${s.grid}`));
    where.append(document.createTextNode(` · reported 报警 ${clockTime(Date.parse(s.reported_at))}`));
    if (s.needs_met_s !== null && s.needs_met_s !== undefined) {
      where.append(document.createTextNode(" · "));
      const met = el("span", "needs-met", `✓ needs met 力量到齐 ${duration(s.needs_met_s)}`);
      if (s.needs_met_at) met.title = `needs met on scene at ${clockTime(Date.parse(s.needs_met_at))}`;
      where.append(met);
    }
    card.append(where);

    if (rec.description) card.append(el("p", "desc", rec.description));

    const rings = el("div", "rings");
    for (const ring of s.rings || []) {
      const clock = el("div", "clock");
      clock.dataset.ring = ring.ring;
      clock.dataset.incident = s.incident_id;
      const label = el("span", "clock-label");
      label.append(el("span", "clock-name", `R${ring.ring} ${ring.name}`), el("span", "clock-flag", ""));
      clock.title = `ring ${ring.ring} ${ring.name}: target ${ring.target_s} s`;
      clock.append(label, el("span", "clock-value", ""));
      rings.append(clock);
    }
    card.append(rings);

    const units = el("ul", "unit-chips");
    // The units still coming first (released ones go last, so the cap never hides a live one).
    const list = [...(s.units || [])].sort((a, b) => RELEASED.has(a.status) - RELEASED.has(b.status));
    for (const u of list.slice(0, 12)) units.append(buildUnitChip(u));
    if (list.length > 12) units.append(el("li", "unit-chip", `+${list.length - 12} more`));
    if (!list.length) units.append(el("li", "no-units", "no unit assigned 未派单元"));
    card.append(units);
    card.addEventListener("click", () => highlight(s.incident_id, false));
    return card;
  }

  // One unit of an incident: ring, id and status; an assigned unit's acknowledgement countdown
  // (its text kept by tick()), a released unit struck through with why, a stuck unit flagged.
  function buildUnitChip(u) {
    const chip = el("li", "unit-chip");
    chip.dataset.status = u.status;
    chip.dataset.unit = u.unit_id;
    chip.append(el("span", "unit-id", `R${u.ring} ${u.unit_id}`), document.createTextNode(" · "));
    if (RELEASED.has(u.status)) {
      chip.classList.add("unit-released");
      const why = u.status === "declined"
        ? `✕ declined 拒绝${u.decline_reason ? ` (${DECLINE_REASON[u.decline_reason] || u.decline_reason})` : ""}`
        : "✕ no-show 未响应";
      const mark = el("span", "unit-status unit-mark", why);
      if (u.released_at) mark.title = `released 已释放 ${clockTime(Date.parse(u.released_at))}`;
      chip.append(mark);
      return chip;
    }
    chip.append(el("span", "unit-status", `${STATUS_ZH[u.status] || ""} ${u.status}`.trim()));
    if (u.status === "assigned" && u.ack_due_at) {
      const ack = el("span", "unit-ack", "");
      ack.dataset.due = u.ack_due_at;
      ack.title = `no answer by ${clockTime(Date.parse(u.ack_due_at))} = no-show 逾时未确认即视为未响应`;
      chip.append(document.createTextNode(" "), ack);
      ackText(ack, now());
    }
    if (u.stuck) {
      chip.classList.add("unit-stuck");
      chip.append(document.createTextNode(" "), el("span", "unit-mark stuck-mark", "⚠ stuck 滞留"));
      chip.title = `en route far beyond its ETA${u.eta_s ? ` (${Math.round(u.eta_s)} s)` : ""} 在途远超预计`;
    }
    return chip;
  }

  // The seconds left of an assigned unit's acknowledgement window, on the server's clock.
  function ackText(node, t) {
    const left = Math.ceil((Date.parse(node.dataset.due) - t) / 1000);
    const overdue = !(left > 0);
    setText(node, overdue ? "ack overdue 确认超时" : `ack ${left} s 确认 ${left} 秒`);
    if (node.classList.contains("overdue") !== overdue) node.classList.toggle("overdue", overdue);
    const soon = !overdue && left <= 5;
    if (node.classList.contains("soon") !== soon) node.classList.toggle("soon", soon);
  }

  function renderIncidents(list) {
    reconcile($("incidents"), incidentNodes, list.map((rec) => ({
      key: rec.state.incident_id,
      sig: `${rec.state.version}|${rec.description || ""}`,
      build: () => buildIncident(rec),
    })));
    $("inc-empty").hidden = list.length > 0;
    $("inc-count").textContent = list.length ? `(${list.length})` : "";
    tick();
  }

  function escalationContext(e) {
    const rec = S.incidents.get(e.incident_id);
    const st = (rec && rec.state) || e.incident || {};
    return { district: e.district || st.district, grid: e.grid || st.grid, state: st };
  }

  // "ring 2 mutual aid 互救": the ring's configured name from the incident's state when known.
  function ringLabel(number, state) {
    const ring = ((state && state.rings) || []).find((r) => r.ring === number);
    if (!ring) return `ring ${number} 第${number}圈`;
    const zh = RING_ZH[ring.name];
    return `ring ${number} ${String(ring.name).replace(/_/g, " ")}${zh ? ` ${zh}` : ""}`;
  }

  function buildEscalation(e) {
    const { district, grid, state } = escalationContext(e);
    const li = el("li", `escalation level-${e.level}`);
    li.dataset.escalation = e.escalation_id;
    if (e.exercise) li.classList.add("exercise");
    if (e.acked_at) li.classList.add("acked");
    const head = el("div", "esc-head");
    head.append(el("span", "level", `${LEVEL_ZH[e.level] || ""} ${e.level}`));
    head.append(el("span", "esc-ring", ringLabel(e.ring, state)));
    head.append(el("span", "esc-reason", REASON[e.reason] || e.reason));
    if (e.exercise) head.append(el("span", "badge-exercise", "EXERCISE 演练"));
    li.append(head);
    const what = [state.category, state.severity ? `S${state.severity}` : null, district, grid].filter(Boolean);
    li.append(el("div", "esc-inc", `${e.incident_id} · ${what.join(" · ")}`));
    const meta = [`raised 升级 ${clockTime(Date.parse(e.raised_at))}`];
    if (e.notifications) meta.push(`re-notified ${e.notifications}× 重复通知`);
    if (e.acked_at) meta.push(`acknowledged ${clockTime(Date.parse(e.acked_at))} by ${e.acked_by || "?"}`);
    li.append(el("div", "esc-meta", meta.join(" · ")));
    // Who was told (the seats file's routing); "up from" when no seat of its level covered it.
    if (e.seats && e.seats.length) {
      const up = e.seat_level && e.seat_level !== e.level ? ` (up from ${e.level})` : "";
      li.append(el("div", "esc-seats", `told 通知: ${e.seats.join(", ")}${up}`));
    }
    const button = el("button", "ack", e.acked_at ? "Acknowledged 已确认" : "Acknowledge 确认");
    button.type = "button";
    button.dataset.state = e.acked_at ? "acked" : "open";
    // A signed-in viewer may not acknowledge; anybody else may try (an anonymous click asks to sign in).
    const viewer = Boolean(S.session && S.session.signed_in && !S.session.writes);
    button.disabled = Boolean(e.acked_at) || viewer;
    if (viewer && !e.acked_at) button.title = "viewers cannot acknowledge 只读席位";
    button.addEventListener("click", (ev) => { ev.stopPropagation(); acknowledge(e.escalation_id, button); });
    li.append(button);
    li.addEventListener("click", () => highlight(e.incident_id, true));
    return li;
  }

  function renderEscalations() {
    const all = [...S.escalations.values()].filter((e) => {
      const c = escalationContext(e);
      return matches(c.district, c.grid);
    });
    const open = all.filter((e) => !e.acked_at).sort((a, b) =>
      (LEVEL_RANK[b.level] - LEVEL_RANK[a.level]) || (Date.parse(a.raised_at) - Date.parse(b.raised_at)));
    const acked = all.filter((e) => e.acked_at)
      .sort((a, b) => Date.parse(b.acked_at) - Date.parse(a.acked_at)).slice(0, ACKED_SHOWN);
    const list = [...open, ...acked];
    reconcile($("escalations"), escalationNodes, list.map((e) => ({
      key: e.escalation_id,
      sig: `${e.acked_at}|${e.notifications}|${e.sending ? 1 : 0}|${escalationContext(e).state.severity}|`
        + ringLabel(e.ring, escalationContext(e).state),
      build: () => buildEscalation(e),
    })));
    $("esc-empty").hidden = list.length > 0;
    $("esc-count").textContent = open.length ? `(${open.length})` : "";
    return open.length;
  }

  function renderKpis(openEscalations) {
    let real = 0;
    let exercise = 0;
    for (const r of S.incidents.values()) {
      if (TERMINAL.has(r.state.status)) continue;
      if (r.state.exercise) exercise += 1; else real += 1;
    }
    $("k-real").textContent = real;
    $("k-exercise").textContent = exercise;
    $("k-esc").textContent = openEscalations;
    if (S.summary) {
      const avail = S.summary.units.available;
      const total = Object.entries(avail).filter(([d]) => !S.filter.district || d === S.filter.district)
        .reduce((n, [, v]) => n + v, 0);
      $("k-units").textContent = total;
    }
  }

  function renderUnits() {
    const tbody = $("units");
    const districts = (S.geo && S.geo.districts) || [];
    const avail = (S.summary && S.summary.units.available) || {};
    const max = Math.max(1, ...districts.map((d) => avail[d.name] || 0));
    const rows = districts.map((d) => {
      const n = avail[d.name] || 0;
      const tr = el("tr");
      tr.dataset.district = d.name;
      if (S.filter.district === d.name) tr.classList.add("selected");
      if (!n) tr.classList.add("zero");
      const name = el("td");
      name.append(el("span", "zh", d.name), el("span", "en", d.name_en));
      const bar = el("div", "bar");
      const fill = el("span");
      fill.style.width = `${(100 * n) / max}%`;
      bar.append(fill);
      const barCell = el("td");
      barCell.append(bar);
      tr.append(name, el("td", "num", n), barCell);
      tr.addEventListener("click", () => setDistrict(S.filter.district === d.name ? "" : d.name));
      return tr;
    });
    tbody.replaceChildren(...rows);
  }

  function renderDrills() {
    const d = S.summary && S.summary.drills;
    if (!d) return;
    $("drill-date").textContent = d.date;
    $("drill-rate").textContent = d.pass_rate === null ? "–" : `${Math.round(d.pass_rate * 100)}%`;
    const dl = $("drills");
    const items = [];
    for (const [key, label] of DRILL_OUTCOMES) items.push(el("dt", null, label), el("dd", null, d.outcomes[key] || 0));
    items.push(el("dt", null, "total 合计"), el("dd", null, d.total));
    dl.replaceChildren(...items);
  }

  // -- the map: district outlines from /api/geo, projected locally, scaled to fit ----------------
  function buildMap() {
    const host = $("map");
    const districts = S.geo.districts;
    // A district seat's map is framed on its districts (the others stay drawn around them).
    const framed = S.scope ? districts.filter((d) => S.scope.includes(d.name)) : [];
    const pts = (framed.length ? framed : districts).flatMap((d) => d.outline);
    const lat0 = pts.reduce((a, p) => a + p[0], 0) / pts.length;
    const k = Math.cos((lat0 * Math.PI) / 180);
    const lonMin = Math.min(...pts.map((p) => p[1]));
    const latMax = Math.max(...pts.map((p) => p[0]));
    const project = ([lat, lon]) => [(lon - lonMin) * k * 1000, (latMax - lat) * 1000];
    const xy = pts.map(project);
    const w = Math.max(...xy.map((p) => p[0]));
    const h = Math.max(...xy.map((p) => p[1]));
    const padding = 0.03 * Math.max(w, h);
    S.mapProjection = { project, size: Math.max(w, h) };
    const root = svg("svg", {
      viewBox: `${-padding} ${-padding} ${w + 2 * padding} ${h + 2 * padding}`,
      preserveAspectRatio: "xMidYMid meet", role: "img", "aria-label": "map of the districts 行政区地图",
    });
    const base = svg("g", { class: "districts" });
    const labels = svg("g", { class: "labels" });
    const fontSize = Math.max(w, h) / 32;
    for (const d of districts) {
      const poly = svg("polygon", { class: "district", points: d.outline.map((p) => project(p).join(",")).join(" ") });
      poly.dataset.district = d.name;
      poly.addEventListener("click", () => setDistrict(S.filter.district === d.name ? "" : d.name));
      const title = svg("title");
      title.textContent = `${d.name} ${d.name_en}`;
      poly.append(title);
      base.append(poly);
      const [cx, cy] = project(d.centre);
      const size = fontSize * Math.min(1, Math.max(0.55, d.radius_km / 9));
      const name = svg("text", { class: "district-name", x: cx, y: cy, "font-size": size });
      name.textContent = d.name;
      const units = svg("text", { class: "district-units", x: cx, y: cy + size, "font-size": size * 0.75 });
      units.dataset.district = d.name;
      labels.append(name, units);
    }
    const dots = svg("g", { class: "dots", id: "map-dots" });
    root.append(base, labels, dots);
    host.replaceChildren(root);
  }

  function renderMap(list) {
    if (!S.geo) return;
    if (!S.mapProjection) buildMap();
    const { project, size } = S.mapProjection;
    for (const poly of document.querySelectorAll(".district")) {
      poly.classList.toggle("selected", poly.dataset.district === S.filter.district);
    }
    const avail = (S.summary && S.summary.units.available) || {};
    for (const t of document.querySelectorAll(".district-units")) {
      t.textContent = `${avail[t.dataset.district] || 0} 可用`;
    }
    const t = now();
    const r = size / 90;
    const dots = [];
    // Oldest first, so the newest incident is drawn on top.
    for (const rec of [...list].reverse()) {
      const s = rec.state;
      if (!s.location) continue;
      const [x, y] = project([s.location.lat, s.location.lon]);
      const g = svg("g", { class: "incident-dot" });
      g.dataset.incident = s.incident_id;
      const tone = incidentTone(s, t);
      if (tone === "late" && !s.exercise) g.append(svg("circle", { class: "halo", cx: x, cy: y, r: r * 1.9 }));
      const dot = svg("circle", { class: `dot dot-${tone}`, cx: x, cy: y, r: s.severity <= 2 ? r * 1.35 : r });
      if (s.exercise) {
        dot.classList.add("exercise");
        dot.setAttribute("stroke-dasharray", "3 2");
      }
      const title = svg("title");
      title.textContent = `${s.incident_id} · ${s.category} S${s.severity}${s.exercise ? " · EXERCISE 演练" : ""}`;
      dot.append(title);
      dot.addEventListener("click", () => highlight(s.incident_id, true));
      g.append(dot);
      dots.push(g);
    }
    $("map-dots").replaceChildren(...dots);
  }

  function highlight(id, scroll) {
    const card = document.querySelector(`.incident[data-incident="${CSS.escape(id)}"]`);
    if (!card) return;
    if (scroll) card.scrollIntoView({ block: "nearest", behavior: "smooth" });
    card.classList.add("flash");
    setTimeout(() => card.classList.remove("flash"), 1500);
  }

  let lastTones = "";
  function render() {
    const list = visibleIncidents();
    renderIncidents(list);
    const openEscalations = renderEscalations();
    renderKpis(openEscalations);
    renderUnits();
    renderDrills();
    renderMap(list);
    lastTones = tones(list);
  }

  function tones(list) {
    const t = now();
    return list.map((r) => incidentTone(r.state, t)).join("");
  }

  // Four times a second (so a countdown flips within 250 ms of its true second, whatever the
  // phase of its deadline): every visible clock, the wall clock, the map when a ring turned late.
  // The DOM is only written when a text changed.
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function tick() {
    const t = now();
    setText($("now"), clockTime(t));
    for (const clock of document.querySelectorAll(".clock")) {
      const rec = S.incidents.get(clock.dataset.incident);
      if (!rec) continue;
      const ring = (rec.state.rings || []).find((r) => String(r.ring) === clock.dataset.ring);
      if (!ring) continue;
      const v = ringView(ring, t);
      if (clock.className !== `clock ${v.cls}`) clock.className = `clock ${v.cls}`;
      setText(clock.querySelector(".clock-value"), v.text);
      setText(clock.querySelector(".clock-flag"), v.flag);
    }
    for (const ack of document.querySelectorAll(".unit-ack")) ackText(ack, t);
    for (const card of document.querySelectorAll(".incident")) {
      const rec = S.incidents.get(card.dataset.incident);
      if (!rec) continue;
      const tone = incidentTone(rec.state, t);
      card.classList.toggle("state-late", tone === "late");
      card.classList.toggle("state-met", tone === "met");
    }
  }

  function onTick() {
    tick();
    const list = visibleIncidents();
    if (tones(list) !== lastTones) { renderMap(list); lastTones = tones(list); }
  }

  // -- filters ------------------------------------------------------------------------------------
  function setDistrict(name) {
    S.filter.district = name;
    $("f-district").value = name;
    scheduleRender();
  }

  function fillDistricts() {
    const select = $("f-district");
    const options = [el("option", null, "All 全部")];
    options[0].value = "";
    for (const d of S.geo.districts) {
      if (S.scope && !S.scope.includes(d.name)) continue; // a district seat: its districts only
      const o = el("option", null, `${d.name} ${d.name_en}`);
      o.value = d.name;
      options.push(o);
    }
    select.replaceChildren(...options);
    select.value = S.filter.district;
  }

  // -- loading and the live feed ------------------------------------------------------------------
  // `local` is the browser time the server's "now" corresponds to: the middle of the request.
  function applySummary(summary, local) {
    if (summary.now && local) {
      S.clockBase = { server: Date.parse(summary.now), local, scale: summary.time_scale || 1 };
    }
    S.summary = summary;
    scheduleRender();
  }

  async function loadSnapshot() {
    const started = Date.now();
    let summaryAt = null;
    const [summary, incidents, escalations] = await Promise.all([
      api("/api/summary").then((r) => { summaryAt = (started + Date.now()) / 2; return r; }),
      api("/api/incidents?limit=5000"), api("/api/escalations"),
    ]);
    if (summary.status === 401 || incidents.status === 401) {
      askSignIn("Sign in to see the picture 请先登录");
      return false;
    }
    if (summary.ok) applySummary(summary.body, summaryAt);
    if (incidents.ok) {
      const open = new Set();
      for (const state of incidents.body.incidents) {
        open.add(state.incident_id);
        const { description, ...rest } = state;
        upsertState(rest, { description: description || null });
      }
      // Closed while this page was not listening (and not heard of since): drop them.
      for (const [id, rec] of S.incidents) {
        if (!open.has(id) && rec.liveAt < started && !incidents.body.truncated) S.incidents.delete(id);
      }
    }
    if (escalations.ok) {
      for (const e of [...escalations.body.open, ...escalations.body.acknowledged]) upsertEscalation(e);
    }
    scheduleRender(true);
    return incidents.ok && escalations.ok;
  }

  function setConn(state, text) {
    const c = $("conn");
    c.className = `conn conn-${state}`;
    c.textContent = text;
  }

  // -- signing in: the token goes in a POST body and comes back as an HttpOnly cookie ---------------
  function askSignIn(text) {
    notice(text);
    const form = $("signin");
    if (form.hidden) return;
    $("signin-token").focus();
  }

  function renderSession() {
    const s = S.session || { signed_in: false, sign_in: true };
    $("who").hidden = !s.signed_in;
    $("signin").hidden = s.signed_in || !s.sign_in;
    if (s.signed_in) {
      const seat = s.name ? `${s.name} (${s.seat})` : s.seat;
      $("who-seat").textContent = s.seat ? seat : "service 服务令牌";
      $("who-role").textContent = `${s.role} · ${LEVEL_ZH[s.level] || ""} ${s.level}`;
    }
  }

  // A district seat opens on its districts: the map framed on them, the lists filtered to them
  // (the API answers within the seat's jurisdiction anyway).
  function applyScope() {
    const s = S.session;
    const districts = s && s.level === "district" ? (s.jurisdiction.districts || []) : [];
    S.scope = districts.length ? districts : null;
    S.mapProjection = null;
    if (S.geo) fillDistricts();
    setDistrict(S.scope && S.scope.length === 1 ? S.scope[0] : "");
  }

  async function loadSession() {
    const r = await api("/api/session");
    S.session = r.ok ? r.body : null;
    renderSession();
    applyScope();
  }

  // Everything seen so far belonged to the previous caller's scope: start again.
  function restart() {
    if (S.source) S.source.close();
    S.incidents.clear();
    S.escalations.clear();
    document.body.dataset.live = "0";
    setConn("connecting", "connecting 连接中");
    scheduleRender(true);
    connect();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const input = $("signin-token");
    const token = input.value.trim();
    if (!token) return;
    $("signin-error").textContent = "";
    const r = await api("/api/session", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }),
    });
    input.value = "";
    if (!r.ok) {
      $("signin-error").textContent = `${(r.body && r.body.message) || "refused"} 登录失败`;
      return;
    }
    await loadSession();
    restart();
  }

  async function signOut() {
    await api("/api/session", { method: "DELETE" });
    await loadSession();
    restart();
  }

  function connect() {
    const source = new EventSource("/api/stream");
    S.source = source;
    const json = (handler) => (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      handler(data);
    };
    source.addEventListener("ready", async () => {
      // Every (re)connection: the stream is positioned, so the snapshot taken now leaves no gap.
      const ok = await loadSnapshot();
      if (ok) {
        setConn("live", "LIVE 实时");
        document.body.dataset.live = "1";
      }
    });
    source.addEventListener("state", json((state) => upsertState(state, { live: true })));
    source.addEventListener("escalation", json((body) => {
      const { notification, ...rest } = body;
      upsertEscalation({ ...rest, acked_at: null, acked_by: null }, { notification });
    }));
    source.addEventListener("assignment", json(() => { /* the state event that follows carries the units */ }));
    source.addEventListener("ack", json((a) => markAcked(a.escalation_id, a.at, a.by)));
    source.addEventListener("summary", json((summary) => applySummary(summary)));
    source.addEventListener("error", () => {
      document.body.dataset.live = "0";
      setConn("reconnecting", "reconnecting 重连中");
    });
  }

  async function start() {
    scrubAddress();
    $("f-district").addEventListener("change", (ev) => setDistrict(ev.target.value));
    $("f-grid").addEventListener("input", (ev) => { S.filter.grid = ev.target.value.trim(); scheduleRender(); });
    $("filters").addEventListener("submit", (ev) => ev.preventDefault());
    $("signin").addEventListener("submit", signIn);
    $("signout").addEventListener("click", signOut);
    setInterval(onTick, 250);
    tick();
    await loadSession();
    connect();
    const geo = await api("/api/geo");
    if (geo.ok) {
      S.geo = geo.body;
      fillDistricts();
      scheduleRender();
    }
  }

  document.addEventListener("DOMContentLoaded", start);
})();
