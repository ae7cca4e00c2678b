// The chat view: streamed answers with numbered citations, and the user's conversations.

import { ApiError, api, streamChat } from "./api.js";
import { $, announce, el, showError } from "./dom.js";

const MODE_LABELS = {
  extractive: "Offline answer built from your documents (no AI service is configured)",
  "extractive-fallback": "The AI service is unavailable: offline answer built from your documents",
};

const NARROW = window.matchMedia("(max-width: 720px)");

let conversationId = null;
let busy = false;
let lastTrigger = null;

/** The open conversation lives in the address (#chat/<id>), so a reload or a shared tab reopens it. */
export function conversationFromHash(hash = location.hash) {
  const match = /^#chat\/([A-Za-z0-9_-]{1,64})$/.exec(hash);
  return match ? match[1] : null;
}

function rememberConversation() {
  const target = conversationId ? `#chat/${conversationId}` : "#chat";
  if (location.hash !== target) history.replaceState(null, "", target);
}

export function currentConversation() {
  return conversationId;
}

export function initChat() {
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    ask();
  });
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ask();
    }
  });
  $("new-chat").addEventListener("click", () => newChat());
  $("history-toggle").addEventListener("click", () => (drawerOpen() ? closeDrawer() : openDrawer()));
  $("history-close").addEventListener("click", () => closeDrawer());
  $("drawer-backdrop").addEventListener("click", () => closeDrawer());
  $("history").addEventListener("keydown", (event) => {
    if (event.key === "Escape" && drawerOpen()) {
      event.preventDefault();
      closeDrawer();
    }
  });
  NARROW.addEventListener("change", () => closeDrawer({ restoreFocus: false }));
  $("passage").addEventListener("close", () => {
    if (lastTrigger && document.contains(lastTrigger)) lastTrigger.focus();
  });
}

// --- the conversation list as a drawer on narrow screens -------------------------------------

function drawerOpen() {
  return $("history").classList.contains("open");
}

function openDrawer() {
  if (!NARROW.matches) return;
  $("history").classList.add("open");
  $("drawer-backdrop").hidden = false;
  $("history-toggle").setAttribute("aria-expanded", "true");
  // What lies behind the open drawer can be neither tapped nor tabbed to.
  $("view-chat").querySelector(".conversation").inert = true;
  $("new-chat").focus();
}

function closeDrawer({ restoreFocus = true } = {}) {
  const wasOpen = drawerOpen();
  $("history").classList.remove("open");
  $("drawer-backdrop").hidden = true;
  $("history-toggle").setAttribute("aria-expanded", "false");
  $("view-chat").querySelector(".conversation").inert = false;
  if (wasOpen && restoreFocus) $("history-toggle").focus();
}

export function resetChat() {
  closeDrawer({ restoreFocus: false });
  conversationId = null;
  $("messages").replaceChildren();
  $("history-list").replaceChildren();
  $("question").value = "";
}

/** Show the chat; `reopen` is a conversation id from the address to open again (after a reload). */
export async function showChat(isAdmin, reopen = null) {
  const opening = reopen && reopen !== conversationId ? openConversation(reopen, { quiet: true }) : null;
  await Promise.all([loadHistory(), checkKnowledgeBase(isAdmin), opening]);
  rememberConversation();
  $("question").focus();
}

function newChat() {
  conversationId = null;
  $("messages").replaceChildren();
  markCurrent();
  rememberConversation();
  closeDrawer({ restoreFocus: false });
  announce("New conversation");
  $("question").focus();
}

async function checkKnowledgeBase(isAdmin) {
  try {
    const page = await api("/api/documents?page=1&page_size=1");
    const empty = page.total === 0;
    $("kb-empty").hidden = !empty;
    $("kb-empty-admin").hidden = !isAdmin;
    $("kb-empty-staff").hidden = isAdmin;
  } catch {
    $("kb-empty").hidden = true; // not knowing is no reason to warn
  }
}

// --- conversations -----------------------------------------------------------------------

export async function loadHistory() {
  let body;
  try {
    body = await api("/api/conversations");
  } catch (error) {
    if (error instanceof ApiError) showError(error);
    return;
  }
  const list = $("history-list");
  list.replaceChildren(...body.conversations.map((item) => el("li", { dataset: { id: item.id } },
    el("button", { type: "button", class: "history-open", onclick: () => openConversation(item.id) },
      item.title || "Untitled conversation"),
    el("button", { type: "button", class: "icon-button", "aria-label": `Delete conversation: ${item.title}`,
      title: "Delete conversation", onclick: () => deleteConversation(item) }, "✕"))));
  $("history-empty").hidden = body.conversations.length > 0;
  markCurrent();
}

function markCurrent() {
  for (const item of $("history-list").children) {
    const open = item.querySelector(".history-open");
    if (item.dataset.id === conversationId) open.setAttribute("aria-current", "true");
    else open.removeAttribute("aria-current");
  }
}

export async function openConversation(id, { quiet = false } = {}) {
  if (busy) return;
  showError(null);
  try {
    const body = await api(`/api/conversations/${encodeURIComponent(id)}`);
    conversationId = body.id;
    const messages = $("messages");
    messages.replaceChildren();
    for (const message of body.messages) {
      if (message.role === "user") messages.append(userMessage(message.content));
      else {
        const item = assistantMessage();
        const sources = message.sources || [];
        // Answers stored before the mode was kept: an answer without sources found nothing.
        const mode = message.mode || (sources.length ? null : "none");
        finishAnswer(item, { answer: message.content, sources, metadata: { mode }, isRelevant: mode !== "none" },
          { quiet: true });
        messages.append(item);
      }
    }
    markCurrent();
    rememberConversation();
    closeDrawer({ restoreFocus: false });
    announce(`Opened “${body.title}”`);
    if (!quiet) $("question").focus();
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      conversationId = null; // deleted meanwhile (or never this user's): start afresh
      rememberConversation();
      announce("That conversation no longer exists; this is a new one.");
    } else {
      showError(error);
    }
  }
}

async function deleteConversation(item) {
  if (!window.confirm(`Delete the conversation “${item.title}”? This cannot be undone.`)) return;
  try {
    await api(`/api/conversations/${encodeURIComponent(item.id)}`, { method: "DELETE" });
    if (item.id === conversationId) newChat();
    announce("Conversation deleted");
    await loadHistory();
    $("new-chat").focus();
  } catch (error) {
    showError(error);
  }
}

// --- one question ------------------------------------------------------------------------

function userMessage(text) {
  return el("li", { class: "message user" }, el("span", { class: "visually-hidden" }, "You asked: "),
    el("p", { class: "bubble" }, text));
}

function assistantMessage() {
  const answer = el("div", { class: "answer", "aria-live": "polite", "aria-busy": "true" });
  return el("li", { class: "message assistant" }, el("span", { class: "visually-hidden" }, "Assistant: "),
    el("div", { class: "bubble" }, answer));
}

async function ask() {
  const input = $("question");
  const question = input.value.trim();
  if (busy) return;
  if (!question) {
    announce("Type a question first.");
    input.focus();
    return;
  }
  busy = true;
  showError(null);
  $("ask-button").disabled = true;
  input.value = "";
  const messages = $("messages");
  const item = assistantMessage();
  messages.append(userMessage(question), item);
  const answer = item.querySelector(".answer");
  answer.append(el("span", { class: "typing" }, "Searching your documents…"));
  item.scrollIntoView({ block: "end" });
  announce("Answering…");
  let text = "";
  let finished = false;
  try {
    await streamChat(question, conversationId, (name, data) => {
      if (name === "token") {
        if (!text) answer.replaceChildren();
        text += data.delta || "";
        answer.textContent = text;
        item.dataset.streaming = "true";
      } else if (name === "sources") {
        finished = true;
        conversationId = data.conversationId || conversationId;
        rememberConversation();
        finishAnswer(item, data);
      } else if (name === "error") {
        finished = true;
        failAnswer(item, text, new ApiError(data.error || "The answer stream failed; try again.",
          { code: data.code || "STREAM_FAILED" }));
      }
    });
    if (!finished) failAnswer(item, text, new ApiError("The answer stopped before it was complete; try again."));
  } catch (error) {
    failAnswer(item, text, error);
  } finally {
    busy = false;
    $("ask-button").disabled = false;
    input.focus();
  }
  if (finished) await loadHistory();
}

function failAnswer(item, partial, error) {
  const answer = item.querySelector(".answer");
  answer.replaceChildren();
  if (partial) answer.append(el("p", {}, partial));
  answer.append(el("p", { class: "answer-error" }, error.message || String(error)));
  answer.setAttribute("aria-busy", "false");
  item.classList.add("failed");
  delete item.dataset.streaming;
  showError(error);
  announce("The answer failed.");
}

/** The text a citation marker stands after: its line (list bullet and other markers removed),
 * or, in running text, the sentence it ends. */
function citedSentence(text, markerIndex) {
  const lineStart = text.lastIndexOf("\n", markerIndex - 1) + 1;
  let before = text.slice(lineStart, markerIndex).replace(/\[\d+\]/g, "");
  const sentenceEnd = /[.!?]["'”’)]*\s+(?=\S)/g;
  let from = 0;
  for (const match of before.trimEnd().matchAll(sentenceEnd)) from = match.index + match[0].length;
  before = before.slice(from).replace(/^\s*(?:[-*•]|\d+[.)])\s+/, "");
  return before.replace(/\s+/g, " ").trim();
}

/** The answer without a first line that only repeats what the label above it says. */
function withoutRepeatedLabel(text, labelled) {
  if (!labelled) return text;
  const newline = text.indexOf("\n");
  const first = newline === -1 ? text : text.slice(0, newline);
  const repeats = /no language model|offline answer|AI service is unavailable/i.test(first) && !/\[\d+\]/.test(first);
  return repeats && newline !== -1 ? text.slice(newline + 1) : text;
}

/** Replace the streamed text with the final answer: [n] markers become buttons. */
function finishAnswer(item, body, { quiet = false } = {}) {
  const answer = item.querySelector(".answer");
  const sources = Array.isArray(body.sources) ? body.sources : [];
  const byNumber = new Map(sources.map((source, index) => [Number(source.citation || index + 1), source]));
  const mode = body.metadata && body.metadata.mode;
  answer.replaceChildren();
  let labelled = true;
  if (body.isRelevant === false || mode === "none") {
    answer.append(el("p", { class: "label label-none" }, "Nothing relevant found in your practice's documents"));
  } else if (MODE_LABELS[mode]) {
    answer.append(el("p", { class: "label label-offline" }, MODE_LABELS[mode]));
  } else {
    labelled = false;
  }
  item.dataset.mode = mode || "";
  const paragraph = el("p", { class: "answer-text" });
  const text = withoutRepeatedLabel(body.answer || "", labelled);
  const marker = /\[(\d+)\]/g;
  let last = 0;
  for (const match of text.matchAll(marker)) {
    const source = byNumber.get(Number(match[1]));
    if (!source) continue;
    const sentence = citedSentence(text, match.index);
    paragraph.append(text.slice(last, match.index), citationButton(Number(match[1]), source, "cite", undefined,
      sentence));
    last = match.index + match[0].length;
  }
  paragraph.append(text.slice(last));
  answer.append(paragraph);
  if (sources.length) {
    answer.append(el("p", { class: "sources-title" }, "Sources"),
      el("ol", { class: "sources" }, ...[...byNumber.entries()].map(([number, source]) => el("li", {},
        citationButton(number, source, "source", `[${number}] ${source.filename || "document"}`)))));
  }
  answer.setAttribute("aria-busy", "false");
  delete item.dataset.streaming;
  item.dataset.done = "true";
  if (!quiet) {
    announce(sources.length ? `Answer ready, ${sources.length} source${sources.length > 1 ? "s" : ""}.`
      : "Answer ready.");
  }
}

function citationButton(number, source, kind, label = `[${number}]`, sentence = "") {
  return el("button", {
    type: "button", class: kind, dataset: { citation: String(number) },
    "aria-label": `Source ${number}: ${source.filename || "document"}`, "aria-haspopup": "dialog",
    onclick: (event) => openPassage(number, source, event.currentTarget, sentence),
  }, label);
}

const normalise = (text) => text.replace(/\s+/g, " ").trim();

/**
 * The passage with the quoted sentences in <mark>. Offsets count Unicode code points (as the
 * service's Python strings do), not UTF-16 units, so a character outside the BMP cannot shift them.
 */
function renderPassage(box, source) {
  const passage = typeof source.passage === "string" && source.passage ? source.passage : null;
  if (!passage) {
    box.textContent = source.snippet || "";
    return [];
  }
  const chars = Array.from(passage);
  const quotes = (Array.isArray(source.quotes) ? source.quotes : [])
    .map((quote) => [Number(quote && quote.start), Number(quote && quote.end)])
    .filter(([start, end]) => Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start < end
      && end <= chars.length)
    .sort((a, b) => a[0] - b[0]);
  box.replaceChildren();
  const marks = [];
  let last = 0;
  for (const [start, end] of quotes) {
    const from = Math.max(start, last); // overlapping quotes: highlight the union once
    if (from >= end) continue;
    const mark = el("mark", {}, chars.slice(from, end).join(""));
    box.append(chars.slice(last, from).join(""), mark);
    marks.push(mark);
    last = end;
  }
  box.append(chars.slice(last).join(""));
  return marks;
}

const words = (text) => new Set(text.toLowerCase().match(/[\p{L}\p{N}£]+/gu) || []);

/** The mark sharing most words with the sentence: a line that merges the same fact from
 * several passages quotes each in its own words. */
function closest(marks, sentence) {
  if (!sentence || !marks.length) return null;
  const wanted = words(sentence);
  const shared = (mark) => [...words(mark.textContent)].filter((word) => wanted.has(word)).length;
  return marks.reduce((best, mark) => (shared(mark) > shared(best) ? mark : best));
}

function openPassage(number, source, trigger, sentence = "") {
  lastTrigger = trigger;
  $("passage-title").textContent = `Source [${number}]`;
  $("passage-file").textContent = source.filename || "Document";
  const box = $("passage-text");
  const marks = renderPassage(box, source);
  // The clicked citation's own sentence, when the passage quotes several of this answer's sentences.
  const wanted = normalise(sentence);
  const current = marks.find((mark) => wanted && normalise(mark.textContent) === wanted)
    || closest(marks, wanted) || marks[0];
  for (const mark of marks) mark.classList.toggle("current", mark === current);
  const similarity = Number(source.similarity);
  $("passage-score").textContent = Number.isFinite(similarity) ? `Match score ${similarity.toFixed(2)}` : "";
  box.scrollTop = 0;
  $("passage").showModal();
  if (current) current.scrollIntoView({ block: "center", inline: "nearest" });
  $("passage-close").focus();
}
