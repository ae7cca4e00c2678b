// The chat view: streamed answers with numbered citations, and the user's conversations.

import { ApiError, api, streamChat } from "./api.js";
import { $, announce, el, showError } from "./dom.js";

const MODE_LABELS = {
  extractive: "Offline answer built from your documents (no AI service is configured)",
  "extractive-fallback": "The AI service is unavailable: offline answer built from your documents",
};

let conversationId = null;
let busy = false;
let lastTrigger = null;

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
  $("passage").addEventListener("close", () => {
    if (lastTrigger && document.contains(lastTrigger)) lastTrigger.focus();
  });
}

export function resetChat() {
  conversationId = null;
  $("messages").replaceChildren();
  $("history-list").replaceChildren();
  $("question").value = "";
}

export async function showChat(isAdmin) {
  await Promise.all([loadHistory(), checkKnowledgeBase(isAdmin)]);
  $("question").focus();
}

function newChat() {
  conversationId = null;
  $("messages").replaceChildren();
  markCurrent();
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

async function openConversation(id) {
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
        finishAnswer(item, { answer: message.content, sources: message.sources || [], isRelevant: true });
        messages.append(item);
      }
    }
    markCurrent();
    announce(`Opened “${body.title}”`);
    $("question").focus();
  } catch (error) {
    showError(error);
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

/** Replace the streamed text with the final answer: [n] markers become buttons. */
function finishAnswer(item, body) {
  const answer = item.querySelector(".answer");
  const sources = Array.isArray(body.sources) ? body.sources : [];
  const byNumber = new Map(sources.map((source, index) => [Number(source.citation || index + 1), source]));
  const mode = body.metadata && body.metadata.mode;
  answer.replaceChildren();
  if (body.isRelevant === false || mode === "none") {
    answer.append(el("p", { class: "label label-none" }, "Nothing relevant found in your practice's documents"));
  } else if (MODE_LABELS[mode]) {
    answer.append(el("p", { class: "label label-offline" }, MODE_LABELS[mode]));
  }
  const paragraph = el("p", { class: "answer-text" });
  const text = body.answer || "";
  const marker = /\[(\d+)\]/g;
  let last = 0;
  for (const match of text.matchAll(marker)) {
    const source = byNumber.get(Number(match[1]));
    if (!source) continue;
    paragraph.append(text.slice(last, match.index), citationButton(Number(match[1]), source, "cite"));
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
  announce(sources.length ? `Answer ready, ${sources.length} source${sources.length > 1 ? "s" : ""}.` : "Answer ready.");
}

function citationButton(number, source, kind, label = `[${number}]`) {
  return el("button", {
    type: "button", class: kind, dataset: { citation: String(number) },
    "aria-label": `Source ${number}: ${source.filename || "document"}`, "aria-haspopup": "dialog",
    onclick: (event) => openPassage(number, source, event.currentTarget),
  }, label);
}

function openPassage(number, source, trigger) {
  lastTrigger = trigger;
  $("passage-title").textContent = `Source [${number}]`;
  $("passage-file").textContent = source.filename || "Document";
  $("passage-text").textContent = source.snippet || "";
  const similarity = Number(source.similarity);
  $("passage-score").textContent = Number.isFinite(similarity) ? `Match score ${similarity.toFixed(2)}` : "";
  $("passage").showModal();
  $("passage-close").focus();
}
