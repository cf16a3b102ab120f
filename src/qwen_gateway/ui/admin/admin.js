// The admin console: keys, usage charts, live stats, audit trail, review queue, configuration.
// Every call sends the admin key as a Bearer header (kept in this tab's session storage only:
// no cookie, so no CSRF). Everything the server returns is shown as text (textContent), never
// parsed as HTML: key names, audit details and review contents are untrusted.

const KEY_STORE = "qwen-gateway.admin.key";
const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 3000;
const LIMIT_FIELDS = ["rpm", "tpm", "max_concurrency", "daily_tokens", "monthly_tokens", "default_max_tokens"];
const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];

const TEXT = {
  en: {
    title: "qwen-gateway admin", "tab.keys": "Keys", "tab.usage": "Usage", "tab.live": "Live",
    "tab.audit": "Audit", "tab.reviews": "Reviews", "tab.config": "Configuration",
    "theme.dark": "Dark", "theme.light": "Light", signout: "Sign out", cancel: "Cancel",
    refresh: "Refresh", powered: "Powered by Qwen", chat: "Chat",
    "signin.title": "Sign in with an admin key", "signin.key": "Admin API key",
    "signin.submit": "Sign in",
    "signin.hint": "The key stays in this tab only (session storage) and is sent as a Bearer header.",
    "signin.forbidden": "This key is not an admin key: the admin API answered 403 Forbidden.",
    "signin.unauthorized": "The key was not accepted (401): check it, or it may be revoked or expired.",
    "signin.failed": "Could not reach the gateway",
    "keys.secret": "Copy this key now: it is shown once and never again.", "keys.copy": "Copy",
    "keys.copied": "Copied", "keys.done": "I have saved it", "keys.create": "Create a key",
    "keys.edit": "Edit key", "keys.create_btn": "Create", "keys.save": "Save", "keys.name": "Name",
    "keys.role": "Role", "keys.inference": "inference", "keys.admin": "admin", "keys.tier": "Tier",
    "keys.concurrency": "Concurrency", "keys.daily": "Daily tokens", "keys.monthly": "Monthly tokens",
    "keys.default_max": "Default max_tokens", "keys.prefix": "Prefix", "keys.limits": "Limits",
    "keys.status": "Status", "keys.edit_btn": "Edit", "keys.rotate": "Rotate", "keys.revoke": "Revoke",
    "keys.confirm_revoke": "Confirm revoke", "keys.confirm_rotate": "Confirm rotate",
    "keys.none": "none", "keys.created": "Key created", "keys.updated": "Key updated",
    "keys.revoked": "Key revoked", "keys.rotated": "Key rotated: the old secret no longer works",
    "usage.by": "By", "usage.key": "key", "usage.model": "model", "usage.deployment": "deployment",
    "usage.arm": "split arm", "usage.bucket": "Bucket", "usage.hour": "hour", "usage.day": "day",
    "usage.since": "Since", "usage.all": "all", "usage.csv": "Export CSV", "usage.requests": "Requests",
    "usage.tokens": "Tokens", "usage.prompt": "Prompt tokens", "usage.completion": "Completion tokens",
    "usage.errors": "Errors", "usage.cancelled": "Cancelled", "usage.empty": "No usage in this period.",
    "live.hint": "Polled every 3 seconds from the same counters as /metrics; rates are over the last interval.",
    "live.models": "Models", "live.engines": "Engines", "live.replicas": "Replicas",
    "live.latency": "Latency (ms)", "live.tps": "Tokens/s", "live.engine": "Engine",
    "live.running": "Running", "live.queue": "Queue", "live.batch": "Batch", "live.max_batch": "Max batch",
    "live.steps": "Decode steps", "live.replica": "Replica", "live.health": "Health",
    "live.breaker": "Breaker", "live.outstanding": "Outstanding", "live.in_flight": "In flight",
    "live.rps": "Requests/s", "live.ttft": "TTFT (ms)", "live.queue_depth": "Queue depth",
    "live.healthy": "healthy", "live.down": "down", "breaker.closed": "closed",
    "breaker.half_open": "half-open", "breaker.open": "open",
    "audit.action": "Action", "audit.limit": "Rows", "audit.time": "Time", "audit.actor": "Actor",
    "audit.target": "Target", "audit.client": "Client", "audit.details": "Details",
    "reviews.status": "Status", "reviews.pending": "pending", "reviews.approved": "approved",
    "reviews.rejected": "rejected", "reviews.category": "Category", "reviews.direction": "Direction",
    "reviews.mode": "Mode", "reviews.created": "Created", "reviews.item": "Review",
    "reviews.untrusted": "Shown as plain text: the prompt and the answer are untrusted.",
    "reviews.prompt": "Prompt", "reviews.answer": "Answer", "reviews.reason": "Reason",
    "reviews.approve": "Approve", "reviews.reject": "Reject", "reviews.show": "Show",
    "reviews.none": "Nothing to review.", "reviews.approved_msg": "Approved",
    "reviews.rejected_msg": "Rejected",
    "config.hint": "The settings in force, secrets masked.",
    "error.forbidden": "This key is not an admin key (403).", "error.session": "Signed out: the key is no longer accepted.",
  },
  zh: {
    title: "qwen-gateway 管理控制台", "tab.keys": "密钥", "tab.usage": "用量", "tab.live": "实时",
    "tab.audit": "审计", "tab.reviews": "审核", "tab.config": "配置",
    "theme.dark": "深色", "theme.light": "浅色", signout: "退出", cancel: "取消",
    refresh: "刷新", powered: "由 Qwen 驱动", chat: "聊天",
    "signin.title": "使用管理员密钥登录", "signin.key": "管理员 API 密钥", "signin.submit": "登录",
    "signin.hint": "密钥只保存在此标签页（会话存储）中，并以 Bearer 请求头发送。",
    "signin.forbidden": "此密钥不是管理员密钥：管理 API 返回 403 Forbidden。",
    "signin.unauthorized": "密钥未被接受（401）：请检查，它可能已被吊销或过期。",
    "signin.failed": "无法连接网关",
    "keys.secret": "请立即复制此密钥：它只显示这一次。", "keys.copy": "复制", "keys.copied": "已复制",
    "keys.done": "我已保存", "keys.create": "创建密钥", "keys.edit": "编辑密钥", "keys.create_btn": "创建",
    "keys.save": "保存", "keys.name": "名称", "keys.role": "角色", "keys.inference": "推理",
    "keys.admin": "管理员", "keys.tier": "等级", "keys.concurrency": "并发数", "keys.daily": "每日令牌",
    "keys.monthly": "每月令牌", "keys.default_max": "默认 max_tokens", "keys.prefix": "前缀",
    "keys.limits": "限额", "keys.status": "状态", "keys.edit_btn": "编辑", "keys.rotate": "轮换",
    "keys.revoke": "吊销", "keys.confirm_revoke": "确认吊销", "keys.confirm_rotate": "确认轮换",
    "keys.none": "无", "keys.created": "密钥已创建", "keys.updated": "密钥已更新", "keys.revoked": "密钥已吊销",
    "keys.rotated": "密钥已轮换：旧密钥不再有效",
    "usage.by": "分组", "usage.key": "密钥", "usage.model": "模型", "usage.deployment": "部署",
    "usage.arm": "分流臂", "usage.bucket": "时间粒度", "usage.hour": "小时", "usage.day": "天",
    "usage.since": "起始", "usage.all": "全部", "usage.csv": "导出 CSV", "usage.requests": "请求数",
    "usage.tokens": "令牌数", "usage.prompt": "提示令牌", "usage.completion": "生成令牌",
    "usage.errors": "错误数", "usage.cancelled": "已取消", "usage.empty": "此时段没有用量。",
    "live.hint": "每 3 秒从与 /metrics 相同的计数器轮询；速率按最近一个间隔计算。",
    "live.models": "模型", "live.engines": "引擎", "live.replicas": "副本", "live.latency": "延迟（毫秒）",
    "live.tps": "令牌/秒", "live.engine": "引擎", "live.running": "运行中", "live.queue": "排队",
    "live.batch": "批大小", "live.max_batch": "最大批", "live.steps": "解码步数", "live.replica": "副本",
    "live.health": "健康", "live.breaker": "熔断器", "live.outstanding": "处理中",
    "live.in_flight": "进行中请求", "live.rps": "请求/秒", "live.ttft": "首令牌时间（毫秒）",
    "live.queue_depth": "队列深度", "live.healthy": "健康", "live.down": "故障",
    "breaker.closed": "闭合", "breaker.half_open": "半开", "breaker.open": "断开",
    "audit.action": "操作", "audit.limit": "行数", "audit.time": "时间", "audit.actor": "操作者",
    "audit.target": "对象", "audit.client": "客户端", "audit.details": "详情",
    "reviews.status": "状态", "reviews.pending": "待审核", "reviews.approved": "已批准",
    "reviews.rejected": "已拒绝", "reviews.category": "类别", "reviews.direction": "方向",
    "reviews.mode": "模式", "reviews.created": "创建时间", "reviews.item": "审核项",
    "reviews.untrusted": "以纯文本显示：提示和回答均不可信。", "reviews.prompt": "提示",
    "reviews.answer": "回答", "reviews.reason": "理由", "reviews.approve": "批准", "reviews.reject": "拒绝",
    "reviews.show": "查看", "reviews.none": "没有待审核项。", "reviews.approved_msg": "已批准",
    "reviews.rejected_msg": "已拒绝",
    "config.hint": "当前生效的配置，密钥已遮蔽。",
    "error.forbidden": "此密钥不是管理员密钥（403）。", "error.session": "已退出：密钥不再被接受。",
  },
};

const $ = (sel, root = document) => root.querySelector(sel);
const state = {
  lang: localStorage.getItem("qwen-gateway.lang") || (navigator.language.startsWith("zh") ? "zh" : "en"),
  tab: "keys",
  keys: [],
  editing: null,
  review: null,
  previous: null,
  history: [],
  timer: null,
  signedIn: false,
  loads: {},
};

// A table loaded twice at once (a tab opened, then a filter applied) shows the later answer
// only: each load takes a number, and a load that is no longer the latest drops its result.
function latest(name) {
  const n = (state.loads[name] || 0) + 1;
  state.loads[name] = n;
  return () => state.loads[name] === n;
}

function t(name) {
  return (TEXT[state.lang] && TEXT[state.lang][name]) || TEXT.en[name] || name;
}

function applyText() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  $("#lang").textContent = state.lang === "zh" ? "English" : "中文";
  const dark = document.documentElement.dataset.theme === "dark";
  $("#theme").textContent = t(dark ? "theme.light" : "theme.dark");
  $("#key-form-title").textContent = t(state.editing ? "keys.edit" : "keys.create");
  $("#key-submit").textContent = t(state.editing ? "keys.save" : "keys.create_btn");
  document.title = t("title");
}

// ---- elements, built from text only ----------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function fillTable(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(
    ...rows.map((cells) => el("tr", {}, ...cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))))),
  );
}

function say(message, isError = false) {
  const status = $("#status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

// ---- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, raw = false, key } = {}) {
  const secret = key ?? sessionStorage.getItem(KEY_STORE);
  const headers = secret ? { Authorization: `Bearer ${secret}` } : {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store",
  });
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const data = await resp.json();
      if (data && data.error && data.error.message) message = data.error.message;
    } catch { /* not JSON */ }
    if ((resp.status === 401 || resp.status === 403) && key === undefined) {
      signOut(t(resp.status === 403 ? "error.forbidden" : "error.session"));
    }
    throw new ApiError(resp.status, message);
  }
  return raw ? resp : resp.json();
}

async function guarded(work) {
  try {
    await work();
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return;
    say(err.message || String(err), true);
  }
}

// ---- sign in ---------------------------------------------------------------------------

async function signIn(key) {
  const error = $("#signin-error");
  error.textContent = "";
  let stats;
  try {
    stats = await api("/admin/stats", { key });
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) error.textContent = t("signin.forbidden");
    else if (err instanceof ApiError && err.status === 401) error.textContent = t("signin.unauthorized");
    else error.textContent = `${t("signin.failed")}: ${err.message}`;
    error.dataset.status = err instanceof ApiError ? String(err.status) : "";
    sessionStorage.removeItem(KEY_STORE);
    return;
  }
  if (key) sessionStorage.setItem(KEY_STORE, key);
  state.signedIn = true;
  $("#signin").hidden = true;
  $("#tabs").hidden = false;
  $("#signout").hidden = false;
  document.body.dataset.signedIn = "true";
  // the review queue exists only with a safety: section (else its routes are 404s)
  $('[data-tab="reviews"]').hidden = !stats.reviews;
  if (state.tab === "reviews" && !stats.reviews) state.tab = "keys";
  show(state.tab);
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORE);
  state.signedIn = false;
  stopPolling();
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = true;
  $("#tabs").hidden = true;
  $("#signout").hidden = true;
  $("#signin").hidden = false;
  $("#secret-box").hidden = true;
  $("#secret-value").textContent = "";
  delete document.body.dataset.signedIn;
  $("#signin-error").textContent = message;
  say("");
}

function show(tab) {
  state.tab = tab;
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== tab;
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.setAttribute("aria-current", button.dataset.tab === tab ? "page" : "false");
  }
  stopPolling();
  say("");
  const load = { keys: loadKeys, usage: loadUsage, live: startPolling, audit: loadAudit, reviews: loadReviews, config: loadConfig }[tab];
  if (load) guarded(load);
}

// ---- keys ------------------------------------------------------------------------------

function limitsText(k) {
  const parts = LIMIT_FIELDS.filter((f) => k[f] !== null && k[f] !== undefined).map((f) => `${f}=${k[f]}`);
  return parts.length ? parts.join(", ") : t("keys.none");
}

function confirmButton(label, confirmLabel, action, danger = false) {
  const button = el("button", { type: "button", class: danger ? "danger" : "" }, t(label));
  let armed = false;
  button.addEventListener("click", () => {
    if (!armed) {
      armed = true;
      button.textContent = t(confirmLabel);
      button.classList.add("armed");
      return;
    }
    guarded(action);
  });
  return button;
}

async function loadKeys() {
  const current = latest("keys");
  const data = await api("/admin/keys");
  if (!current()) return;
  state.keys = data.data;
  fillTable($("#keys-table"), state.keys.map((k) => {
    const buttons = el("div", { class: "actions" });
    const actions = el("td", {}, buttons);
    if (k.status === "active") {
      buttons.append(
        el("button", { type: "button", onclick: () => editKey(k) }, t("keys.edit_btn")),
        confirmButton("keys.rotate", "keys.confirm_rotate", () => rotateKey(k)),
        confirmButton("keys.revoke", "keys.confirm_revoke", () => revokeKey(k), true),
      );
    }
    const status = el("td", {}, el("span", { class: `badge ${k.status}` }, k.status));
    const row = [k.id, k.name, k.prefix, k.role, k.tier ?? "", limitsText(k), status, actions];
    return row;
  }));
  for (const [i, tr] of [...$("#keys-table").tBodies[0].rows].entries()) tr.dataset.keyId = state.keys[i].id;
}

function showSecret(secret) {
  $("#secret-value").textContent = secret;
  $("#secret-box").hidden = false;
  $("#secret-copy").textContent = t("keys.copy");
}

function formLimits(form) {
  const out = {};
  for (const f of LIMIT_FIELDS) {
    const v = form.elements[f].value.trim();
    out[f] = v === "" ? null : Number(v);
  }
  const tier = form.elements.tier.value.trim();
  out.tier = tier === "" ? null : tier;
  return out;
}

function editKey(k) {
  const form = $("#key-form");
  state.editing = k.id;
  form.elements.name.value = k.name;
  form.elements.name.disabled = true;
  form.elements.role.value = k.role;
  form.elements.role.disabled = true;
  form.elements.tier.value = k.tier ?? "";
  for (const f of LIMIT_FIELDS) form.elements[f].value = k[f] ?? "";
  $("#key-cancel").hidden = false;
  applyText();
  form.scrollIntoView({ block: "nearest" });
}

function resetKeyForm() {
  const form = $("#key-form");
  form.reset();
  form.elements.name.disabled = false;
  form.elements.role.disabled = false;
  state.editing = null;
  $("#key-cancel").hidden = true;
  applyText();
}

async function submitKey(event) {
  event.preventDefault();
  const form = $("#key-form");
  const limits = formLimits(form);
  if (state.editing) {
    await api(`/admin/keys/${state.editing}`, { method: "PATCH", body: limits });
    say(t("keys.updated"));
  } else {
    const body = { name: form.elements.name.value.trim(), role: form.elements.role.value };
    for (const [f, v] of Object.entries(limits)) if (v !== null) body[f] = v;
    const created = await api("/admin/keys", { method: "POST", body });
    showSecret(created.key);
    say(t("keys.created"));
  }
  resetKeyForm();
  await loadKeys();
}

async function revokeKey(k) {
  await api(`/admin/keys/${k.id}/revoke`, { method: "POST" });
  say(t("keys.revoked"));
  await loadKeys();
}

async function rotateKey(k) {
  const rotated = await api(`/admin/keys/${k.id}/rotate`, { method: "POST" });
  showSecret(rotated.key);
  say(t("keys.rotated"));
  await loadKeys();
}

async function copySecret() {
  const secret = $("#secret-value").textContent;
  try {
    await navigator.clipboard.writeText(secret);
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("#secret-value"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    document.execCommand("copy");
  }
  $("#secret-copy").textContent = t("keys.copied");
}

// ---- usage -----------------------------------------------------------------------------

function usageQuery(format = "json") {
  const form = $("#usage-form");
  const group = form.elements.group.value;
  const bucket = form.elements.bucket.value;
  const params = new URLSearchParams({ group_by: `${bucket},${group}`, format });
  const hours = form.elements.since.value;
  if (hours) {
    const since = new Date(Date.now() - Number(hours) * 3600 * 1000);
    since.setUTCMinutes(0, 0, 0);
    params.set("since", since.toISOString());
  }
  return { group, bucket, path: `/admin/usage?${params}` };
}

function groupLabel(group, value) {
  if (value === null || value === undefined) return "—";
  if (group === "key") {
    const found = state.keys.find((k) => `key:${k.id}` === value);
    if (found) return `${found.name} (${value})`;
  }
  return String(value);
}

async function loadUsage() {
  if (!state.keys.length) {
    try { state.keys = (await api("/admin/keys")).data; } catch { /* names are a nicety */ }
  }
  const current = latest("usage");
  const { group, bucket, path } = usageQuery();
  const rows = (await api(path)).data;
  if (!current()) return;
  const series = [...new Set(rows.map((r) => groupLabel(group, r[group])))].sort();
  const buckets = [...new Set(rows.map((r) => r[bucket]))].sort();
  const charts = $("#charts");
  charts.replaceChildren();
  if (!rows.length) charts.append(el("p", { class: "hint" }, t("usage.empty")));
  const metrics = [
    ["requests", "usage.requests", (r) => r.requests],
    ["tokens", "usage.tokens", (r) => r.prompt_tokens + r.completion_tokens],
    ["errors", "usage.errors", (r) => r.errors],
  ];
  for (const [name, label, value] of metrics) {
    const cells = new Map();
    for (const r of rows) {
      const k = `${r[bucket]}\u0000${groupLabel(group, r[group])}`;
      cells.set(k, (cells.get(k) || 0) + value(r));
    }
    if (rows.length) charts.append(barChart(name, t(label), buckets, series, (b, s) => cells.get(`${b}\u0000${s}`) || 0));
  }
  const totals = new Map();
  for (const r of rows) {
    const name = groupLabel(group, r[group]);
    const sum = totals.get(name) || { requests: 0, prompt_tokens: 0, completion_tokens: 0, errors: 0, cancelled: 0 };
    for (const f of Object.keys(sum)) sum[f] += r[f];
    totals.set(name, sum);
  }
  $("#usage-group-head").textContent = t(`usage.${group}`);
  fillTable($("#usage-table"), [...totals.entries()].sort().map(([name, s]) => [
    name, s.requests, s.prompt_tokens, s.completion_tokens, s.errors, s.cancelled,
  ]));
  for (const tr of $("#usage-table").tBodies[0].rows) tr.dataset.series = tr.cells[0].textContent;
}

// Stacked bars: one column per time bucket, one colour per series; a legend below.
function barChart(name, title, buckets, series, valueOf) {
  const width = 400, height = 180, left = 40, bottom = 24, top = 10;
  const totals = buckets.map((b) => series.reduce((sum, s) => sum + valueOf(b, s), 0));
  const max = Math.max(1, ...totals);
  const plotW = width - left - 8, plotH = height - top - bottom;
  const step = plotW / Math.max(1, buckets.length);
  const barW = Math.max(2, Math.min(48, step * 0.7));
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title, class: "chart" });
  chart.dataset.chart = name;
  for (const frac of max >= 4 ? [0, 0.5, 1] : [0, 1]) {
    const y = top + plotH * (1 - frac);
    chart.append(svg("line", { x1: left, x2: width - 8, y1: y, y2: y, class: "grid" }));
    const tick = svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "tick" });
    tick.textContent = String(Math.round(max * frac));
    chart.append(tick);
  }
  buckets.forEach((b, i) => {
    const x = left + step * i + (step - barW) / 2;
    let y = top + plotH;
    series.forEach((s, j) => {
      const v = valueOf(b, s);
      if (!v) return;
      const h = (v / max) * plotH;
      y -= h;
      const rect = svg("rect", { x, y, width: barW, height: Math.max(h, 1), fill: PALETTE[j % PALETTE.length] });
      rect.dataset.series = s;
      rect.dataset.bucket = b;
      rect.dataset.value = String(v);
      const tip = svg("title");
      tip.textContent = `${s} · ${b}: ${v}`;
      rect.append(tip);
      chart.append(rect);
    });
    if (buckets.length <= 12 || i % Math.ceil(buckets.length / 12) === 0) {
      const label = svg("text", { x: x + barW / 2, y: height - 10, "text-anchor": "middle", class: "tick" });
      label.textContent = b.length > 10 ? b.slice(5).replace("T", " ") : b.slice(5);
      chart.append(label);
    }
  });
  const legend = el("ul", { class: "legend" }, ...series.map((s, j) => {
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = PALETTE[j % PALETTE.length];
    return el("li", {}, swatch, s);
  }));
  return el("figure", { class: "card" }, el("figcaption", {}, title), chart, legend);
}

async function exportCsv() {
  const { path } = usageQuery("csv");
  const resp = await api(path, { raw: true });
  const blob = new Blob([await resp.text()], { type: "text/csv" });
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: `usage-${new Date().toISOString().slice(0, 10)}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---- live ------------------------------------------------------------------------------

function startPolling() {
  stopPolling();
  state.previous = null;
  state.history = [];
  const tick = async () => {
    if (state.tab !== "live") return;
    if (!document.hidden) await guarded(pollStats);
    if (state.tab === "live" && state.signedIn) state.timer = setTimeout(tick, POLL_MS);
  };
  return tick();
}

function stopPolling() {
  if (state.timer !== null) clearTimeout(state.timer);
  state.timer = null;
}

const fmt = (v, digits = 0) => (v === null || v === undefined || Number.isNaN(v) ? "—" : Number(v).toFixed(digits));

async function pollStats() {
  const now = await api("/admin/stats");
  const before = state.previous;
  state.previous = now;
  const key = (r) => `${r.model}\u0000${r.deployment}`;
  const was = new Map((before ? before.models : []).map((r) => [key(r), r]));
  const dt = before ? Math.max(0.001, now.time - before.time) : null;
  let tokens = 0, requests = 0, ttftSum = 0, ttftCount = 0;
  // requests no model was asked for (the admin API, these pages) are not model traffic
  const rows = now.models.filter((r) => r.model !== "-").map((r) => {
    const p = was.get(key(r));
    const dTokens = p ? r.completion_tokens - p.completion_tokens : null;
    const dTtft = p ? r.ttft_sum - p.ttft_sum : r.ttft_sum;
    const nTtft = p ? r.ttft_count - p.ttft_count : r.ttft_count;
    if (dt !== null && p) { tokens += dTokens; requests += r.requests - p.requests; }
    ttftSum += dTtft; ttftCount += nTtft;
    const ttft = r.ttft_count ? (1000 * r.ttft_sum) / r.ttft_count : null;
    const latency = r.latency_count ? (1000 * r.latency_sum) / r.latency_count : null;
    return [r.model, r.deployment, r.requests, r.errors, fmt(ttft), fmt(latency), dt !== null && p ? fmt(dTokens / dt, 1) : "—"];
  });
  fillTable($("#live-models"), rows);
  const queue = now.engines.reduce((s, e) => s + (e.queue_depth || 0), 0);
  fillTable($("#live-engines"), now.engines.map((e) => [e.engine, e.running ?? "—", e.queue_depth ?? "—", e.batch_size ?? "—", e.max_batch_size ?? "—", e.decode_steps ?? "—"]));
  fillTable($("#live-replicas"), now.replicas.map((r) => [
    r.deployment, r.replica,
    el("td", {}, el("span", { class: `badge ${r.healthy ? "active" : "revoked"}` }, t(r.healthy ? "live.healthy" : "live.down"))),
    el("td", {}, el("span", { class: `badge breaker-${r.breaker}` }, t(`breaker.${r.breaker}`))),
    r.outstanding,
  ]));
  const tps = dt !== null ? tokens / dt : null;
  const rps = dt !== null ? requests / dt : null;
  const ttftMs = ttftCount > 0 ? (1000 * ttftSum) / ttftCount : null;
  const cards = [
    ["in_flight", "live.in_flight", now.in_flight],
    ["rps", "live.rps", fmt(rps, 2)],
    ["tps", "live.tps", fmt(tps, 1)],
    ["ttft", "live.ttft", fmt(ttftMs)],
    ["queue", "live.queue_depth", queue],
  ];
  $("#live-cards").replaceChildren(...cards.map(([id, label, value]) =>
    el("div", { class: "card stat", dataset: { stat: id } }, el("span", { class: "label" }, t(label)), el("strong", {}, value))));
  state.history.push({ tps: tps ?? 0, queue });
  if (state.history.length > 40) state.history.shift();
  $("#live-spark").replaceChildren(
    spark(t("live.tps"), state.history.map((h) => h.tps), PALETTE[0]),
    spark(t("live.queue_depth"), state.history.map((h) => h.queue), PALETTE[2]),
  );
}

function spark(title, values, colour) {
  const width = 300, height = 60;
  const max = Math.max(1, ...values);
  const step = width / Math.max(1, values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 4 - (v / max) * (height - 8)).toFixed(1)}`).join(" ");
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img", "aria-label": title });
  chart.append(svg("polyline", { points, fill: "none", stroke: colour, "stroke-width": 2 }));
  return el("figure", { class: "card" }, el("figcaption", {}, `${title} (max ${fmt(max, 1)})`), chart);
}

// ---- audit -----------------------------------------------------------------------------

async function loadAudit(event) {
  if (event) event.preventDefault();
  const form = $("#audit-form");
  const params = new URLSearchParams({ limit: form.elements.limit.value || "100" });
  const action = form.elements.action.value.trim();
  if (action) params.set("action", action);
  const current = latest("audit");
  const rows = (await api(`/admin/audit?${params}`)).data;
  if (!current()) return;
  fillTable($("#audit-table"), rows.map((r) => [
    r.ts.replace("T", " ").slice(0, 19), r.action, r.actor, r.target ?? "", r.client ?? "",
    el("td", {}, el("code", {}, r.details ? JSON.stringify(r.details) : "")),
  ]));
}

// ---- reviews ---------------------------------------------------------------------------

async function loadReviews(event) {
  if (event) event.preventDefault();
  const status = $("#reviews-form").elements.status.value;
  const current = latest("reviews");
  const items = (await api(`/admin/reviews?status=${encodeURIComponent(status)}`)).data;
  if (!current()) return;
  fillTable($("#reviews-table"), items.map((r) => [
    r.id, r.category, r.direction, r.mode, r.key_id ?? r.principal ?? "", r.created_at.replace("T", " ").slice(0, 19),
    el("td", {}, el("button", { type: "button", onclick: () => guarded(() => showReview(r.id)) }, t("reviews.show"))),
  ]));
  for (const [i, tr] of [...$("#reviews-table").tBodies[0].rows].entries()) tr.dataset.reviewId = items[i].id;
  if (!items.length) say(t("reviews.none"));
}

async function showReview(id) {
  const item = await api(`/admin/reviews/${encodeURIComponent(id)}`);
  state.review = item.id;
  $("#review-id").textContent = item.id;
  $("#review-prompt").textContent = item.prompt ?? "";
  $("#review-answer").textContent = item.answer ?? "";
  $("#review-reason").value = "";
  const pending = item.status === "pending";
  $("#review-approve").disabled = !pending;
  $("#review-reject").disabled = !pending;
  $("#review-detail").hidden = false;
}

async function decide(approve) {
  if (!state.review) return;
  const reason = $("#review-reason").value.trim();
  const body = reason ? { reason } : {};
  await api(`/admin/reviews/${encodeURIComponent(state.review)}/${approve ? "approve" : "reject"}`, { method: "POST", body });
  $("#review-detail").hidden = true;
  $("#review-prompt").textContent = "";
  $("#review-answer").textContent = "";
  state.review = null;
  await loadReviews();
  say(t(approve ? "reviews.approved_msg" : "reviews.rejected_msg"));
}

// ---- configuration ---------------------------------------------------------------------

async function loadConfig() {
  $("#config-text").textContent = JSON.stringify(await api("/admin/config"), null, 2);
}

// ---- wiring ----------------------------------------------------------------------------

function setTheme(theme) {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem("qwen-gateway.theme", theme);
  applyText();
}

function init() {
  const saved = localStorage.getItem("qwen-gateway.theme");
  const prefersDark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  document.documentElement.dataset.theme = saved || (prefersDark ? "dark" : "light");
  applyText();
  $("#lang").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem("qwen-gateway.lang", state.lang);
    applyText();
    if (state.signedIn) show(state.tab);
  });
  $("#theme").addEventListener("click", () => setTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark"));
  $("#signout").addEventListener("click", () => signOut());
  $("#signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#signin-key").value.trim();
    $("#signin-key").value = "";
    signIn(key);  // empty: a gateway started with --no-auth needs no key
  });
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  $("#key-form").addEventListener("submit", (event) => guarded(() => submitKey(event)));
  $("#key-cancel").addEventListener("click", resetKeyForm);
  $("#secret-copy").addEventListener("click", () => guarded(copySecret));
  $("#secret-done").addEventListener("click", () => {
    $("#secret-box").hidden = true;
    $("#secret-value").textContent = "";
  });
  $("#usage-form").addEventListener("submit", (event) => { event.preventDefault(); guarded(loadUsage); });
  $("#usage-csv").addEventListener("click", () => guarded(exportCsv));
  $("#audit-form").addEventListener("submit", (event) => guarded(() => loadAudit(event)));
  $("#reviews-form").addEventListener("submit", (event) => guarded(() => loadReviews(event)));
  $("#review-approve").addEventListener("click", () => guarded(() => decide(true)));
  $("#review-reject").addEventListener("click", () => guarded(() => decide(false)));
  $("#config-refresh").addEventListener("click", () => guarded(loadConfig));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.tab === "live" && state.signedIn) startPolling();
  });
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) {
    signIn(key);
  } else {
    // a gateway started with --no-auth says so here, and needs no key
    fetch("/ui/config.json", { credentials: "omit" })
      .then((resp) => (resp.ok ? resp.json() : null))
      .then((config) => { if (config && config.auth === false) signIn(""); })
      .catch(() => {});
  }
}

init();
