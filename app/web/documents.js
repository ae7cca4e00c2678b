// The documents view (admins): list, upload with progress, status polling, (de)activate, delete.

import { api, uploadFiles } from "./api.js";
import { $, announce, el, formatBytes, showError } from "./dom.js";

const PAGE_SIZE = 50;
const POLL_MS = 1000;
const STATUS_TEXT = { queued: "Queued", indexing: "Indexing…", indexed: "Indexed", failed: "Failed" };

let page = 1;
let total = 0;
const polling = new Map(); // document id -> timeout id

export function initDocuments() {
  const zone = $("dropzone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      if (!event.dataTransfer || !Array.from(event.dataTransfer.types).includes("Files")) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const files = Array.from((event.dataTransfer && event.dataTransfer.files) || []);
    if (files.length) upload(files);
  });
  // Dropping a file anywhere else must not make the browser navigate away to it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("file-input").addEventListener("change", (event) => {
    const files = Array.from(event.target.files || []);
    event.target.value = "";
    if (files.length) upload(files);
  });
  $("docs-prev").addEventListener("click", () => loadDocuments(page - 1));
  $("docs-next").addEventListener("click", () => loadDocuments(page + 1));
}

export function stopPolling() {
  for (const timer of polling.values()) clearTimeout(timer);
  polling.clear();
}

export function resetDocuments() {
  stopPolling();
  $("documents-body").replaceChildren();
  $("upload-results").replaceChildren();
}

export async function loadDocuments(target = page) {
  try {
    const body = await api(`/api/documents?page=${target}&page_size=${PAGE_SIZE}`);
    page = body.page;
    total = body.total;
    $("documents-body").replaceChildren(...body.items.map(row));
    $("documents-empty").hidden = total > 0;
    $("documents-table").hidden = total === 0;
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    $("docs-page").textContent = pages > 1 ? `Page ${page} of ${pages}` : "";
    $("docs-prev").hidden = page <= 1;
    $("docs-next").hidden = page >= pages;
    for (const item of body.items) {
      if (item.status === "queued" || item.status === "indexing") poll(item.document_id);
      else updateResult(item);
    }
  } catch (error) {
    showError(error);
  }
}

function row(doc) {
  const status = el("td", { class: "status-cell" },
    el("span", { class: `badge badge-${doc.status}` }, STATUS_TEXT[doc.status] || doc.status));
  if (doc.status === "failed" && doc.error) status.append(el("span", { class: "reason" }, doc.error));
  const details = [doc.category, formatBytes(doc.size_bytes)].filter(Boolean).join(" · ");
  const busy = doc.status === "queued" || doc.status === "indexing";
  return el("tr", { dataset: { id: doc.document_id, status: doc.status }, class: doc.is_active ? "" : "inactive" },
    el("th", { scope: "row", class: "file-cell" }, el("span", { class: "filename" }, doc.filename),
      details ? el("span", { class: "details" }, details) : null),
    status,
    el("td", { class: "chunks-cell" }, String(doc.chunk_count)),
    el("td", { class: "active-cell" }, doc.is_active ? "Yes" : "No"),
    el("td", { class: "actions-cell" }, el("div", { class: "actions" },
      el("button", { type: "button", class: "secondary toggle", disabled: busy,
        "aria-label": `${doc.is_active ? "Deactivate" : "Activate"} ${doc.filename}`,
        onclick: () => setActive(doc, !doc.is_active) }, doc.is_active ? "Deactivate" : "Activate"),
      el("button", { type: "button", class: "danger delete", disabled: busy, "aria-label": `Delete ${doc.filename}`,
        onclick: () => remove(doc) }, "Delete"))));
}

function replaceRow(doc) {
  const current = $("documents-body").querySelector(`tr[data-id="${CSS.escape(doc.document_id)}"]`);
  if (current) current.replaceWith(row(doc));
}

function poll(id) {
  if (polling.has(id)) return;
  const tick = async () => {
    try {
      const doc = await api(`/api/documents/${encodeURIComponent(id)}`);
      replaceRow(doc);
      updateResult(doc);
      if (doc.status === "indexed") {
        polling.delete(id);
        announce(`${doc.filename} is indexed (${plural(doc.chunk_count, "chunk")}).`);
        return;
      }
      if (doc.status === "failed") {
        polling.delete(id);
        announce(`${doc.filename} failed: ${doc.error || "no reason given"}`);
        return;
      }
      polling.set(id, setTimeout(tick, POLL_MS));
    } catch (error) {
      polling.delete(id);
      showError(error);
    }
  };
  polling.set(id, setTimeout(tick, POLL_MS));
}

const plural = (count, noun) => `${count} ${noun}${count === 1 ? "" : "s"}`;

function resultLine(result) {
  const name = el("span", { class: "filename" }, result.filename);
  const id = result.document ? result.document.document_id : null;
  const attributes = (status) => ({ class: `result ${status}`, dataset: id ? { id } : {} });
  if (result.status === "failed") {
    const reason = result.error || (result.document && result.document.error) || "unknown reason";
    const code = result.code ? el("span", { class: "code" }, ` (${result.code})`) : null;
    return el("li", attributes("failed"), name, `: ${result.document ? "indexing" : "upload"} failed: ${reason}`, code);
  }
  if (result.status === "queued") return el("li", attributes("queued"), name, ": uploaded, indexing…");
  const chunks = result.document ? result.document.chunk_count : 0;
  return el("li", attributes("indexed"), name, `: indexed (${plural(chunks, "chunk")})`);
}

/** A queued upload's line in the results follows its document to indexed or failed. */
function updateResult(doc) {
  if (doc.status !== "indexed" && doc.status !== "failed") return;
  const line = $("upload-results").querySelector(`li[data-id="${CSS.escape(doc.document_id)}"]`);
  if (line) line.replaceWith(resultLine({ filename: doc.filename, status: doc.status, document: doc }));
}

async function upload(files) {
  showError(null);
  const progressRow = $("upload-progress-row");
  const bar = $("upload-progress");
  bar.value = 0;
  progressRow.hidden = false;
  const names = files.map((file) => file.name).join(", ");
  announce(`Uploading ${names}…`);
  const results = $("upload-results");
  try {
    const body = await uploadFiles(files, (fraction) => {
      bar.value = Math.round(fraction * 100);
    });
    bar.value = 100;
    results.prepend(...body.results.map(resultLine)); // newest first; earlier uploads' results stay
    const failed = body.results.filter((result) => result.status === "failed").length;
    announce(failed ? `${failed} of ${body.results.length} files failed to upload.`
      : `Uploaded ${plural(body.results.length, "file")}.`);
  } catch (error) {
    results.prepend(...files.map((file) => resultLine({
      filename: file.name, status: "failed", error: error.message, code: error.code })));
    announce(`Upload failed: ${error.message}`);
  } finally {
    progressRow.hidden = true;
  }
  await loadDocuments(1);
}

async function setActive(doc, active) {
  try {
    const updated = await api(`/api/documents/${encodeURIComponent(doc.document_id)}`,
      { method: "PATCH", body: { is_active: active } });
    replaceRow(updated);
    announce(`${updated.filename} ${active ? "activated: answers use it again" : "deactivated: answers ignore it"}.`);
    const button = $("documents-body").querySelector(`tr[data-id="${CSS.escape(doc.document_id)}"] .toggle`);
    if (button) button.focus();
  } catch (error) {
    showError(error);
  }
}

async function remove(doc) {
  if (!window.confirm(`Delete ${doc.filename}? Its passages are removed from the knowledge base.`)) return;
  try {
    await api(`/api/documents/${encodeURIComponent(doc.document_id)}`, { method: "DELETE" });
    announce(`${doc.filename} deleted.`);
    await loadDocuments(total - 1 <= (page - 1) * PAGE_SIZE && page > 1 ? page - 1 : page);
    $("file-input").focus();
  } catch (error) {
    showError(error);
  }
}
