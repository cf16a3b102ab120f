// The chat page: talks to this gateway's OpenAI-compatible API with the key typed in.
// Model output is untrusted: Markdown is rendered by marked, then sanitised by DOMPurify
// before it reaches the DOM; tool calls, JSON answers and errors are only ever text.

import { marked } from "/ui/vendor/marked/marked.esm.js";
import DOMPurify from "/ui/vendor/dompurify/purify.es.js";
import hljs from "/ui/vendor/highlight/highlight.min.js";

const KEY = "qg.key"; // sessionStorage: this tab only
const STORE = "qg.conversations"; // localStorage: conversations, never sent anywhere
const PREFS = "qg.prefs"; // localStorage: theme, language, model, settings

const TEXT = {
  en: {
    title: "Qwen chat", model: "Model", theme: "Theme", signOut: "Sign out",
    signInTitle: "Sign in",
    signInHelp: "Paste an API key. It is kept in this tab only (session storage) and sent to this gateway alone.",
    apiKey: "API key", signIn: "Sign in", newChat: "New chat", export: "Export", import: "Import",
    settings: "Settings", systemPrompt: "System prompt", temperature: "Temperature",
    maxTokens: "Max tokens", jsonMode: "JSON mode", tools: "Tools (JSON array of function definitions)",
    placeholder: "Message (Enter to send, Shift+Enter for a new line)", send: "Send", stop: "Stop",
    retry: "Retry", editLast: "Edit last", poweredBy: "Powered by Qwen", conversations: "Conversations",
    you: "You", assistant: "Qwen", untitled: "New conversation", delete: "Delete",
    route: "route", stopped: "stopped", toolCall: "Tool call", tokens: "tokens",
    prompt: "prompt", completion: "completion", ttft: "TTFT", tps: "tokens/s",
    badKey: "The API key was refused (401). Sign in again with a valid key.",
    rateLimited: "Rate limited (429)", filtered: "Blocked by the content policy",
    forbidden: "Not allowed (403)", error: "Error", noModels: "No model available for this key",
    badTools: "Tools must be a JSON array of function definitions.",
    importFailed: "That file is not a conversation export.", needKey: "Enter an API key.",
    light: "Light", dark: "Dark",
  },
  zh: {
    title: "Qwen 对话", model: "模型", theme: "主题", signOut: "退出",
    signInTitle: "登录",
    signInHelp: "粘贴 API 密钥。密钥只保存在此标签页（会话存储）中，只发送给本网关。",
    apiKey: "API 密钥", signIn: "登录", newChat: "新对话", export: "导出", import: "导入",
    settings: "设置", systemPrompt: "系统提示词", temperature: "温度",
    maxTokens: "最大令牌数", jsonMode: "JSON 模式", tools: "工具（函数定义的 JSON 数组）",
    placeholder: "输入消息（Enter 发送，Shift+Enter 换行）", send: "发送", stop: "停止",
    retry: "重试", editLast: "编辑上一条", poweredBy: "由 Qwen 提供支持", conversations: "对话",
    you: "你", assistant: "Qwen", untitled: "新对话", delete: "删除",
    route: "路由", stopped: "已停止", toolCall: "工具调用", tokens: "令牌",
    prompt: "提示", completion: "生成", ttft: "首令牌延迟", tps: "令牌/秒",
    badKey: "API 密钥被拒绝（401）。请使用有效的密钥重新登录。",
    rateLimited: "请求过于频繁（429）", filtered: "已被内容安全策略拦截",
    forbidden: "无权访问（403）", error: "错误", noModels: "此密钥没有可用的模型",
    badTools: "工具必须是函数定义的 JSON 数组。",
    importFailed: "该文件不是对话导出文件。", needKey: "请输入 API 密钥。",
    light: "浅色", dark: "深色",
  },
};

const $ = (id) => document.getElementById(id);
const prefs = loadJSON(localStorage, PREFS, {});
let lang = prefs.lang || ((navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en");
let conversations = loadConversations();
let current = conversations[0] ? conversations[0].id : null;
let controller = null; // the AbortController of the answer streaming now

function t(key) {
  return (TEXT[lang] && TEXT[lang][key]) || TEXT.en[key] || key;
}

function loadJSON(storage, key, fallback) {
  try {
    const raw = storage.getItem(key);
    return raw ? JSON.parse(raw) : fallback;
  } catch {
    return fallback;
  }
}

function savePrefs() {
  localStorage.setItem(PREFS, JSON.stringify(prefs));
}

// ---------------------------------------------------------------- sanitising and rendering

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    const href = node.getAttribute("href") || "";
    if (!/^(https?:|mailto:|#)/i.test(href.trim())) node.removeAttribute("href");
    node.setAttribute("rel", "noopener noreferrer nofollow");
    node.setAttribute("target", "_blank");
  }
  // classes only as marked writes them on fenced code (the language); none from the model
  if (node.hasAttribute("class") && !(node.tagName === "CODE" && /^language-[\w+-]+$/.test(node.getAttribute("class")))) {
    node.removeAttribute("class");
  }
  if (node.tagName === "IMG") {
    // only inline images: anything else would be fetched from a third party (and the CSP
    // refuses it anyway)
    const src = node.getAttribute("src") || "";
    if (!/^data:image\/(png|gif|jpeg|webp);/i.test(src)) node.removeAttribute("src");
  }
});

const PURIFY = {
  USE_PROFILE: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "iframe"],
  FORBID_ATTR: ["style", "id", "name"],
  ALLOW_DATA_ATTR: false,
};

marked.setOptions({ gfm: true, breaks: false });

/** Untrusted Markdown → sanitised DOM inside ``target``, code blocks highlighted. */
function renderMarkdown(target, text) {
  target.innerHTML = DOMPurify.sanitize(marked.parse(text, { async: false }), PURIFY);
  for (const code of target.querySelectorAll("pre code")) {
    const match = /^language-([\w+-]+)$/.exec(code.getAttribute("class") || "");
    code.replaceWith(codeBlock(code.textContent || "", match ? match[1] : null).firstChild);
  }
}

/** A <pre><code> of ``text`` (only ever text), highlighted as ``language`` when highlight.js
 * knows it, else as the language it detects (its output escapes the text it wraps). */
function codeBlock(text, language) {
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  code.textContent = text;
  pre.append(code);
  try {
    const known = language && hljs.getLanguage(language);
    const result = known ? hljs.highlight(text, { language, ignoreIllegals: true }) : hljs.highlightAuto(text);
    code.innerHTML = result.value;
    code.className = "hljs";
    if (result.language) code.dataset.language = result.language;
  } catch {
    code.textContent = text;
  }
  return pre;
}

// ---------------------------------------------------------------- conversations

function newId() {
  return crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
}

function loadConversations() {
  const list = loadJSON(localStorage, STORE, []);
  return Array.isArray(list) ? list.filter(validConversation) : [];
}

function validConversation(c) {
  return (
    c && typeof c === "object" && typeof c.id === "string" && Array.isArray(c.messages) &&
    c.messages.every((m) => m && typeof m === "object" && ["user", "assistant", "system", "error"].includes(m.role) &&
      (typeof m.content === "string" || m.content === null))
  );
}

function saveConversations() {
  localStorage.setItem(STORE, JSON.stringify(conversations));
}

function conversation() {
  let c = conversations.find((x) => x.id === current);
  if (!c) {
    c = { id: newId(), title: "", created: Date.now(), messages: [] };
    conversations.unshift(c);
    current = c.id;
  }
  return c;
}

function renderConversationList() {
  const list = $("conversations");
  list.replaceChildren();
  for (const c of conversations) {
    const item = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "conversation" + (c.id === current ? " current" : "");
    open.textContent = c.title || t("untitled");
    open.addEventListener("click", () => {
      if (controller) return;
      current = c.id;
      renderAll();
      closeSidebarOnPhone();
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "icon small";
    remove.title = t("delete");
    remove.textContent = "×";
    remove.addEventListener("click", () => {
      if (controller) return;
      conversations = conversations.filter((x) => x.id !== c.id);
      if (current === c.id) current = conversations[0] ? conversations[0].id : null;
      saveConversations();
      renderAll();
    });
    item.append(open, remove);
    list.append(item);
  }
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  const c = conversations.find((x) => x.id === current);
  if (!c) return;
  for (const m of c.messages) box.append(messageView(m));
  box.scrollTop = box.scrollHeight;
}

function renderAll() {
  renderConversationList();
  renderMessages();
}

/** One message's element; its body is refreshed by ``fillBody`` while it streams. */
function messageView(m) {
  const el = document.createElement("article");
  el.className = "message " + m.role + (m.failed ? " failed" : "");
  el.dataset.role = m.role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = m.role === "user" ? t("you") : m.role === "error" ? t("error") : t("assistant");
  const body = document.createElement("div");
  body.className = "body";
  const meta = document.createElement("div");
  meta.className = "meta";
  el.append(who, body, meta);
  fillBody(el, m);
  return el;
}

function fillBody(el, m) {
  const body = el.querySelector(".body");
  const meta = el.querySelector(".meta");
  if (m.role === "user" || m.role === "error") {
    body.textContent = m.content || "";
    if (m.role === "error") el.setAttribute("role", "alert");
  } else if (m.json) {
    body.replaceChildren(codeBlock(prettyJSON(m.content || ""), "json"));
  } else {
    renderMarkdown(body, m.content || "");
  }
  for (const call of m.tool_calls || []) body.append(toolCallView(call));
  meta.textContent = metaText(m);
}

function toolCallView(call) {
  const box = document.createElement("details");
  box.className = "tool-call";
  box.open = true;
  const summary = document.createElement("summary");
  summary.textContent = `${t("toolCall")}: ${call.function.name || "?"}`;
  box.append(summary, codeBlock(prettyJSON(call.function.arguments || ""), "json"));
  return box;
}

function prettyJSON(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function metaText(m) {
  if (m.role !== "assistant") return "";
  const parts = [];
  if (m.model) parts.push(m.model);
  if (m.route) parts.push(`${t("route")}: ${m.route}`);
  const s = m.stats || {};
  if (s.prompt_tokens != null) {
    parts.push(`${s.prompt_tokens} ${t("prompt")} + ${s.completion_tokens} ${t("completion")} ${t("tokens")}`);
  }
  if (s.ttft_ms != null) parts.push(`${t("ttft")} ${Math.round(s.ttft_ms)} ms`);
  if (s.tokens_per_s != null) parts.push(`${s.tokens_per_s.toFixed(1)} ${t("tps")}`);
  if (m.stopped) parts.push(t("stopped"));
  else if (m.finish_reason && m.finish_reason !== "stop") parts.push(m.finish_reason);
  return parts.join(" · ");
}

// ---------------------------------------------------------------- the API

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorOf(response) {
  let code = "";
  let message = response.statusText;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = String(body.error.code || body.error.type || "");
      message = String(body.error.message || message);
    }
  } catch {
    /* not JSON */
  }
  return describeError(response.status, code, message);
}

function describeError(status, code, message) {
  let lead = `${t("error")} ${status || ""}`.trim();
  if (status === 401) lead = t("badKey");
  else if (status === 403) lead = t("forbidden");
  else if (status === 429) lead = t("rateLimited");
  else if (code === "content_filter") lead = t("filtered");
  return { status, code, text: `${lead}${code ? ` [${code}]` : ""}: ${message}` };
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) throw await errorOf(response);
  const body = await response.json();
  const select = $("model");
  // embedding models cannot chat: they are left out of the list
  const ids = (body.data || [])
    .filter((m) => !(m.capabilities && m.capabilities.embeddings))
    .map((m) => String(m.id));
  select.replaceChildren();
  for (const id of ids) {
    const option = document.createElement("option");
    option.value = id;
    option.textContent = id === "auto" ? "auto (routed by intent)" : id;
    select.append(option);
  }
  if (prefs.model && ids.includes(prefs.model)) select.value = prefs.model;
  if (!ids.length) throw describeError(0, "", t("noModels"));
  return ids;
}

function requestBody(messages) {
  const body = {
    model: $("model").value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  };
  const num = (id, parse) => {
    const v = $(id).value.trim();
    return v === "" ? undefined : parse(v);
  };
  const temperature = num("temperature", Number.parseFloat);
  const topP = num("top-p", Number.parseFloat);
  const maxTokens = num("max-tokens", (v) => Number.parseInt(v, 10));
  if (temperature !== undefined && !Number.isNaN(temperature)) body.temperature = temperature;
  if (topP !== undefined && !Number.isNaN(topP)) body.top_p = topP;
  if (maxTokens !== undefined && !Number.isNaN(maxTokens)) body.max_tokens = maxTokens;
  if ($("json-mode").checked) body.response_format = { type: "json_object" };
  const tools = $("tools").value.trim();
  if (tools) {
    let parsed;
    try {
      parsed = JSON.parse(tools);
    } catch {
      parsed = null;
    }
    if (!Array.isArray(parsed)) throw describeError(0, "", t("badTools"));
    body.tools = parsed;
  }
  return body;
}

function wireMessages(c) {
  const out = [];
  const system = $("system").value.trim();
  if (system) out.push({ role: "system", content: system });
  for (const m of c.messages) {
    if (m.failed) continue; // refused (an error before any answer): not part of the history
    if (m.role === "user") out.push({ role: "user", content: m.content });
    else if (m.role === "assistant" && !m.stopped) {
      const msg = { role: "assistant", content: m.content || "" };
      if (m.tool_calls && m.tool_calls.length) msg.tool_calls = m.tool_calls;
      out.push(msg);
    }
  }
  return out;
}

/** Server-sent events from a fetch body: each ``data:`` payload, in order. */
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const data = frame
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) yield data;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

async function answer() {
  const c = conversation();
  let body;
  try {
    body = requestBody(wireMessages(c));
  } catch (e) {
    pushError(c, e.text || String(e));
    return;
  }
  prefs.model = body.model;
  savePrefs();
  const m = { role: "assistant", content: "", model: body.model, json: Boolean(body.response_format), tool_calls: [], stats: {} };
  c.messages.push(m);
  const view = messageView(m);
  view.classList.add("streaming");
  $("messages").append(view);
  setBusy(true);
  controller = new AbortController();
  const started = performance.now();
  let first = null;
  let pending = false;
  const refresh = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      fillBody(view, m);
      $("messages").scrollTop = $("messages").scrollHeight;
    });
  };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    m.route = response.headers.get("x-qwen-gateway-route") || undefined;
    $("route").textContent = m.route ? `${t("route")}: ${m.route}` : "";
    if (!response.ok) {
      const error = await errorOf(response);
      c.messages.pop();
      view.remove();
      const asked = c.messages[c.messages.length - 1];
      if (asked && asked.role === "user") asked.failed = true;
      pushError(c, error.text);
      if (error.status === 401) showSignIn(error.text);
      return;
    }
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        continue;
      }
      if (chunk.error) {
        const e = chunk.error;
        pushError(c, describeError(0, String(e.code || e.type || ""), String(e.message || "")).text);
        break;
      }
      if (chunk.usage) {
        m.stats.prompt_tokens = chunk.usage.prompt_tokens;
        m.stats.completion_tokens = chunk.usage.completion_tokens;
      }
      for (const choice of chunk.choices || []) {
        if (choice.index !== 0 && choice.index !== undefined) continue;
        const delta = choice.delta || {};
        if (typeof delta.content === "string" && delta.content) {
          first = first ?? performance.now();
          m.content += delta.content;
        }
        for (const call of delta.tool_calls || []) {
          first = first ?? performance.now();
          const i = call.index ?? 0;
          m.tool_calls[i] = m.tool_calls[i] || { id: "", type: "function", function: { name: "", arguments: "" } };
          const slot = m.tool_calls[i];
          if (call.id) slot.id = call.id;
          if (call.function && call.function.name) slot.function.name += call.function.name;
          if (call.function && call.function.arguments) slot.function.arguments += call.function.arguments;
        }
        if (choice.finish_reason) m.finish_reason = choice.finish_reason;
      }
      refresh();
    }
  } catch (e) {
    if (e && e.name === "AbortError") m.stopped = true;
    else pushError(c, `${t("error")}: ${e && e.message ? e.message : e}`);
  } finally {
    const ended = performance.now();
    if (first !== null) {
      m.stats.ttft_ms = first - started;
      // the decoding rate after the first token; over the whole request when the answer came
      // in one burst (a cached or scripted answer), where that rate would mean nothing
      const tokens = m.stats.completion_tokens;
      const decoding = (ended - first) / 1000;
      const total = (ended - started) / 1000;
      if (tokens > 1 && decoding >= 0.05) m.stats.tokens_per_s = (tokens - 1) / decoding;
      else if (tokens && total > 0) m.stats.tokens_per_s = tokens / total;
    }
    m.tool_calls = m.tool_calls.filter(Boolean);
    controller = null;
    setBusy(false);
    view.classList.remove("streaming");
    if (c.messages.includes(m)) fillBody(view, m);
    saveConversations();
    renderConversationList();
  }
}

function pushError(c, text) {
  const e = { role: "error", content: text };
  c.messages.push(e);
  $("messages").append(messageView(e));
  saveConversations();
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("retry").disabled = busy;
  $("edit").disabled = busy;
  document.body.dataset.busy = busy ? "true" : "false";
}

function send() {
  if (controller) return;
  const text = $("prompt").value;
  if (!text.trim()) return;
  const c = conversation();
  c.messages.push({ role: "user", content: text });
  if (!c.title) c.title = text.trim().slice(0, 48);
  $("prompt").value = "";
  saveConversations();
  renderAll();
  answer();
}

/** Drop what follows the last user message (answers, errors); returns that message. */
function rewindToLastUser(c) {
  let i = c.messages.length - 1;
  while (i >= 0 && c.messages[i].role !== "user") i -= 1;
  if (i < 0) return null;
  c.messages.length = i + 1;
  return c.messages[i];
}

function retry() {
  if (controller) return;
  const c = conversations.find((x) => x.id === current);
  const last = c && rewindToLastUser(c);
  if (!last) return;
  delete last.failed;
  saveConversations();
  renderMessages();
  answer();
}

function editLast() {
  if (controller) return;
  const c = conversations.find((x) => x.id === current);
  if (!c) return;
  const last = rewindToLastUser(c);
  if (!last) return;
  c.messages.pop();
  $("prompt").value = last.content;
  $("prompt").focus();
  saveConversations();
  renderMessages();
}

// ---------------------------------------------------------------- export / import

function exportConversations() {
  const blob = new Blob([JSON.stringify({ format: "qwen-gateway-chat", version: 1, conversations }, null, 2)], {
    type: "application/json",
  });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `qwen-chat-${new Date().toISOString().slice(0, 10)}.json`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 0);
}

async function importConversations(file) {
  try {
    const parsed = JSON.parse(await file.text());
    const list = Array.isArray(parsed) ? parsed : parsed && parsed.conversations;
    if (!Array.isArray(list) || !list.every(validConversation)) throw new Error("format");
    const taken = new Set(conversations.map((c) => c.id));
    for (const c of list) {
      const copy = {
        id: taken.has(c.id) ? newId() : c.id,
        title: String(c.title || ""),
        created: Number(c.created) || Date.now(),
        messages: c.messages,
      };
      conversations.push(copy);
    }
    current = list.length ? conversations[conversations.length - list.length].id : current;
    saveConversations();
    renderAll();
  } catch {
    const c = conversation();
    pushError(c, t("importFailed"));
  }
}

// ---------------------------------------------------------------- sign-in, theme, language

function showSignIn(message) {
  $("app").hidden = true;
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  const error = $("sign-in-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("api-key").focus();
}

function showApp(keyless) {
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = keyless;
  renderAll();
  $("prompt").focus();
}

async function signIn(key) {
  if (key) sessionStorage.setItem(KEY, key);
  try {
    await loadModels();
    showApp(!key);
  } catch (e) {
    if (key) sessionStorage.removeItem(KEY);
    showSignIn(e.text || String(e));
  }
}

async function start() {
  let auth = true;
  try {
    auth = (await (await fetch("/ui/config.json")).json()).auth !== false;
  } catch {
    /* assume a key is needed */
  }
  const key = sessionStorage.getItem(KEY);
  if (auth && !key) {
    showSignIn("");
    return;
  }
  try {
    await loadModels();
    showApp(!key);
  } catch (e) {
    if (key) sessionStorage.removeItem(KEY);
    showSignIn(e.text || String(e));
  }
}

function applyTheme() {
  const theme = prefs.theme || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  document.documentElement.dataset.theme = theme;
  $("theme").textContent = theme === "dark" ? t("light") : t("dark");
}

function applyLanguage() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of document.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  $("lang").textContent = lang === "zh" ? "English" : "中文";
  document.title = t("title");
  applyTheme();
  if (!$("app").hidden) renderAll();
}

function closeSidebarOnPhone() {
  document.body.classList.remove("sidebar-open");
}

function bind() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) {
      showSignIn(t("needKey"));
      return;
    }
    $("api-key").value = "";
    signIn(key);
  });
  $("sign-out").addEventListener("click", () => {
    if (controller) controller.abort();
    sessionStorage.removeItem(KEY);
    showSignIn("");
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("retry").addEventListener("click", retry);
  $("edit").addEventListener("click", editLast);
  $("new-chat").addEventListener("click", () => {
    if (controller) return;
    current = null;
    conversation();
    saveConversations();
    renderAll();
    closeSidebarOnPhone();
  });
  $("export").addEventListener("click", exportConversations);
  $("import-file").addEventListener("change", (event) => {
    const file = event.target.files && event.target.files[0];
    if (file) importConversations(file);
    event.target.value = "";
  });
  $("model").addEventListener("change", () => {
    prefs.model = $("model").value;
    savePrefs();
  });
  $("theme").addEventListener("click", () => {
    prefs.theme = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    savePrefs();
    applyTheme();
  });
  $("lang").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    prefs.lang = lang;
    savePrefs();
    applyLanguage();
  });
  $("toggle-sidebar").addEventListener("click", (event) => {
    event.stopPropagation();
    document.body.classList.toggle("sidebar-open");
  });
  document.querySelector("main.chat").addEventListener("click", closeSidebarOnPhone);
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
  const settings = prefs.settings || {};
  for (const id of ["system", "temperature", "top-p", "max-tokens", "tools"]) {
    if (typeof settings[id] === "string") $(id).value = settings[id];
    $(id).addEventListener("change", () => {
      prefs.settings = { ...(prefs.settings || {}), [id]: $(id).value };
      savePrefs();
    });
  }
  if (typeof settings["json-mode"] === "boolean") $("json-mode").checked = settings["json-mode"];
  $("json-mode").addEventListener("change", () => {
    prefs.settings = { ...(prefs.settings || {}), "json-mode": $("json-mode").checked };
    savePrefs();
  });
}

bind();
applyLanguage();
setBusy(false);
start();
