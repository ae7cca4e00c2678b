// Small DOM helpers. Untrusted text (answers, file names, passages, error messages) only
// ever goes in through textContent or text nodes, never innerHTML.

export const $ = (id) => document.getElementById(id);

/** el("button", {class: "x", type: "button", onclick: fn}, "text", child) */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A short polite announcement (screen readers read it; sighted users see it in the bar). */
export function announce(message) {
  $("status").textContent = message;
}

/** Show an error: the service's own message (its JSON `error` field) and the request id. */
export function showError(error) {
  const box = $("alert");
  box.replaceChildren();
  if (!error) {
    box.hidden = true;
    return;
  }
  const message = typeof error === "string" ? error : error.message;
  box.append(el("span", {}, message));
  if (error.requestId) box.append(el("span", { class: "request-id" }, ` (request ${error.requestId})`));
  box.append(el("button", { type: "button", class: "link-button", onclick: () => showError(null) }, "Dismiss"));
  box.hidden = false;
}

export function formatBytes(size) {
  if (size === null || size === undefined) return "";
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KB`;
  return `${(size / (1024 * 1024)).toFixed(1)} MB`;
}
