// Talking to the service. The access token lives only in this module's memory (never in
// localStorage or sessionStorage, where any injected script could read it); the refresh
// token is an HttpOnly cookie scoped to /api/auth that no script can read at all.
//
// Refreshes are single-flight: refresh tokens rotate and re-using a spent one revokes the
// whole sign-in, so two tabs' worth of parallel 401s must never both present the cookie.

let accessToken = null;
let refreshing = null;
let onSessionLost = () => {};

/**
 * Whether this browser holds a refresh cookie at all. The cookie is HttpOnly, so only the
 * server can tell; asking first spares a first visit the refresh the server must refuse
 * (a 401 in the console on every load). A network failure answers "yes": the refresh then
 * reports it.
 */
export async function maySignInSilently() {
  try {
    const response = await fetch("/api/auth/session", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) return true;
    return Boolean((await response.json()).signed_in);
  } catch {
    return true;
  }
}

export class ApiError extends Error {
  constructor(message, { status = 0, code = "NETWORK_ERROR", requestId = "" } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

/** Called when the session cannot be restored (refresh refused): the page shows sign-in. */
export function setSessionLostHandler(handler) {
  onSessionLost = handler;
}

export function hasSession() {
  return accessToken !== null;
}

function remember(body) {
  accessToken = body.token;
  return body;
}

/** The service's JSON error ({error, code, request_id}) as an ApiError. */
async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const message = body && typeof body.error === "string"
    ? body.error
    : `The server answered ${response.status} ${response.statusText || ""}`.trim();
  return new ApiError(message, {
    status: response.status, code: (body && body.code) || `HTTP_${response.status}`,
    requestId: (body && body.request_id) || response.headers.get("x-request-id") || "",
  });
}

async function send(path, init) {
  try {
    return await fetch(path, init);
  } catch {
    throw new ApiError("Cannot reach the service: check your connection and try again.");
  }
}

export async function signIn(email, password, company) {
  const body = { email, password };
  if (company) body.company = company;
  const response = await send("/api/auth/login", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!response.ok) throw await errorFrom(response);
  return remember(await response.json());
}

async function doRefresh() {
  // No body: the service takes the refresh token from the HttpOnly cookie.
  const response = await send("/api/auth/refresh", { method: "POST", credentials: "same-origin" });
  if (!response.ok) {
    accessToken = null;
    throw await errorFrom(response);
  }
  return remember(await response.json());
}

/** Trade the refresh cookie for a new access token; concurrent callers share one request. */
export function refreshSession() {
  if (!refreshing) {
    refreshing = doRefresh().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

export async function signOut() {
  accessToken = null;
  try {
    await send("/api/auth/logout", { method: "POST", credentials: "same-origin" });
  } catch {
    // Signing out locally always works; the cookie is cleared by the server when it is reachable.
  }
}

function authorised(init = {}) {
  const headers = new Headers(init.headers || {});
  if (accessToken) headers.set("Authorization", `Bearer ${accessToken}`);
  return { ...init, headers, credentials: "same-origin" };
}

/** After a 401: TOKEN_EXPIRED gets one refresh (true = retry); anything else ends the session. */
async function recover(error, alreadyRetried) {
  if (error.status !== 401) return false;
  if (error.code === "TOKEN_EXPIRED" && !alreadyRetried) {
    try {
      await refreshSession();
      return true;
    } catch {
      // fall through: the refresh cookie is gone or refused
    }
  }
  accessToken = null;
  onSessionLost("Your session has ended; please sign in again.");
  return false;
}

/** fetch with the access token; on TOKEN_EXPIRED refresh once and retry. Returns the Response. */
export async function authFetch(path, init = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const response = await send(path, authorised(init));
    if (response.ok) return response;
    const error = await errorFrom(response);
    if (!(await recover(error, attempt > 0))) throw error;
  }
}

/** JSON API call: returns the parsed body (null for 204). */
export async function api(path, { method = "GET", body } = {}) {
  const init = { method };
  if (body !== undefined) {
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(body);
  }
  const response = await authFetch(path, init);
  if (response.status === 204) return null;
  return response.json();
}

/**
 * Server-Sent Events over fetch: EventSource can neither POST nor send Authorization.
 * Calls onEvent(name, data) for every event of the stream (token, sources, error).
 */
export async function streamChat(message, conversationId, onEvent) {
  const body = { message };
  if (conversationId) body.conversation_id = conversationId;
  const response = await authFetch("/api/chat", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify(body),
  });
  const type = response.headers.get("content-type") || "";
  if (!type.includes("text/event-stream")) {
    // A server without streaming answered with the JSON body: hand it over as one sources event.
    onEvent("sources", await response.json());
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch {
      throw new ApiError("The connection dropped while the answer was streaming; try again.");
    }
    if (chunk.done) break;
    buffer += chunk.value.replace(/\r\n?/g, "\n");
    let end = buffer.indexOf("\n\n");
    while (end !== -1) {
      dispatch(buffer.slice(0, end), onEvent);
      buffer = buffer.slice(end + 2);
      end = buffer.indexOf("\n\n");
    }
  }
  if (buffer.trim()) dispatch(buffer, onEvent);
}

/** One SSE block: `event:` names it, `data:` lines (joined by newlines) carry JSON. */
function dispatch(block, onEvent) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // comments are keep-alives
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  let payload;
  try {
    payload = JSON.parse(data.join("\n"));
  } catch {
    payload = data.join("\n");
  }
  onEvent(name, payload);
}

/**
 * Upload files with XMLHttpRequest, the one browser API that reports upload progress.
 * onProgress(fraction) runs as bytes leave; TOKEN_EXPIRED gets one refresh and a retry.
 */
export async function uploadFiles(files, onProgress) {
  for (let attempt = 0; ; attempt += 1) {
    const result = await new Promise((resolve) => {
      const form = new FormData();
      for (const file of files) form.append("files", file, file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/documents");
      if (accessToken) xhr.setRequestHeader("Authorization", `Bearer ${accessToken}`);
      xhr.responseType = "json";
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      });
      xhr.addEventListener("load", () => resolve({ status: xhr.status, body: xhr.response, xhr }));
      xhr.addEventListener("error", () => resolve({ status: 0, body: null, xhr }));
      xhr.send(form);
    });
    if (result.status === 0) throw new ApiError("Cannot reach the service: the upload did not go through.");
    const body = result.body || {};
    // 422 with per-file results means "every file failed": the results carry each reason.
    if (result.status < 300 || (Array.isArray(body.results) && result.status === 422)) return body;
    const error = new ApiError(typeof body.error === "string" ? body.error : `Upload failed (${result.status})`, {
      status: result.status, code: body.code || `HTTP_${result.status}`, requestId: body.request_id || "",
    });
    if (!(await recover(error, attempt > 0))) throw error;
  }
}
