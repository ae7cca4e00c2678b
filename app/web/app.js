// The page's entry point: restore the session from the refresh cookie, sign in and out,
// and switch between the chat and (for admins) the documents view.

import { ApiError, api, maySignInSilently, refreshSession, setSessionLostHandler, signIn, signOut } from "./api.js";
import { conversationFromHash, currentConversation, initChat, openConversation, resetChat, showChat } from "./chat.js";
import { $, announce, showError } from "./dom.js";
import { initDocuments, loadDocuments, resetDocuments, stopPolling } from "./documents.js";

let me = null;

const isAdmin = () => Boolean(me && (me.role === "admin" || me.permissions.includes("knowledge:write")));

function showView(name) {
  for (const view of ["signin", "chat", "documents"]) $(`view-${view}`).hidden = view !== name;
  announce(""); // the last view's news ("Answer ready, 5 sources.") is not this one's
  const signedIn = name !== "signin";
  $("nav").hidden = !signedIn;
  $("account").hidden = !signedIn;
  for (const tab of document.querySelectorAll(".tab")) {
    if (tab.dataset.view === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
}

async function enter() {
  me = await api("/api/auth/me");
  $("who").textContent = me.full_name ? `${me.full_name} (${me.role})` : `${me.email} (${me.role})`;
  $("tab-documents").hidden = !isAdmin();
  await openView(location.hash === "#documents" && isAdmin() ? "documents" : "chat", conversationFromHash());
}

/** `reopen`: the conversation named in the address (#chat/<id>), opened again after a reload. */
async function openView(name, reopen = null) {
  if (name === "documents" && !isAdmin()) name = "chat";
  const view = $(`view-${name}`);
  view.setAttribute("aria-busy", "true"); // until its lists have loaded
  showView(name);
  if (name === "documents" && location.hash !== "#documents") history.replaceState(null, "", "#documents");
  try {
    if (name === "documents") {
      await loadDocuments(1);
      $("documents-title").focus();
    } else {
      stopPolling();
      await showChat(isAdmin(), reopen || currentConversation());
    }
  } finally {
    view.setAttribute("aria-busy", "false");
  }
}

function toSignIn(message) {
  me = null;
  stopPolling();
  resetChat();
  resetDocuments();
  showView("signin");
  if (location.hash) history.replaceState(null, "", location.pathname);
  $("signin-error").textContent = message || "";
  $("password").value = "";
  $("email").focus();
}

async function onSignIn(event) {
  event.preventDefault();
  const email = $("email").value.trim();
  const password = $("password").value;
  const company = $("company").value.trim();
  const error = $("signin-error");
  if (!email || !password) {
    error.textContent = "Enter your email and password.";
    (email ? $("password") : $("email")).focus();
    return;
  }
  $("signin-button").disabled = true;
  error.textContent = "";
  try {
    await signIn(email, password, company || undefined);
    $("password").value = "";
    showError(null);
    await enter();
    announce("Signed in.");
  } catch (caught) {
    if (caught instanceof ApiError && caught.code === "COMPANY_REQUIRED") {
      $("company-row").hidden = false;
      $("company").focus();
    }
    error.textContent = caught.message;
  } finally {
    $("signin-button").disabled = false;
  }
}

async function onSignOut() {
  await signOut();
  toSignIn("");
  announce("Signed out.");
}

async function start() {
  $("documents-title").setAttribute("tabindex", "-1");
  setSessionLostHandler((message) => toSignIn(message));
  initChat();
  initDocuments();
  $("signin-form").addEventListener("submit", onSignIn);
  $("sign-out").addEventListener("click", onSignOut);
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => openView(tab.dataset.view));
  }
  // A typed #documents or #chat (or Back) switches view; openView still refuses staff the admin one.
  window.addEventListener("hashchange", () => {
    if (!me) return;
    const name = location.hash === "#documents" ? "documents" : "chat";
    const wanted = conversationFromHash();
    if ($(`view-${name}`).hidden) openView(name, wanted);
    else if (wanted && wanted !== currentConversation()) openConversation(wanted);
  });
  if (!(await maySignInSilently())) {
    toSignIn("");
    return;
  }
  try {
    await refreshSession(); // the HttpOnly cookie, if this browser signed in before
  } catch (error) {
    toSignIn(error.code === "NETWORK_ERROR" ? error.message : "");
    return;
  }
  try {
    await enter();
  } catch (error) {
    toSignIn(error.message);
  }
}

start();
