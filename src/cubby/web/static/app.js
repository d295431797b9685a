// cubby's web app: one module, no build step, no dependencies.
//
// Rules this file keeps:
// - Data from the server (file, folder, user names) is only ever put on the page through
//   textContent or attributes set as properties: no innerHTML anywhere, so a file named
//   "<img src=x onerror=alert(1)>" is shown as those characters.
// - Every request that may change something carries the CSRF token of the page.
// - Uploads cut files into fixed 4 MiB chunks, hash them with WebCrypto SHA-256 and use the
//   API's commit -> need_chunks -> upload -> commit protocol, so a retry after a dropped
//   connection re-sends only the chunks the server does not have yet.

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const CHUNK = 4 * 1024 * 1024;
const BATCH_BYTES = 16 * 1024 * 1024;
const PAGE = 200;
const main = document.getElementById("main");
const live = document.getElementById("live");
const errorBanner = document.getElementById("error");

const state = {
  account: null,
  view: null,
  path: "/",
  entries: [],
  complete: false,
  sort: { key: "name", dir: 1 },
  page: 0,
  loadSeq: 0,
};

// ---------------------------------------------------------------------------------------
// small helpers
// ---------------------------------------------------------------------------------------
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k.startsWith("aria-") || k.startsWith("data-") || k === "role" || k === "for") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}

function say(message) {
  live.textContent = "";
  setTimeout(() => { live.textContent = message; }, 10);
}

function showError(message) {
  errorBanner.textContent = message;
  errorBanner.hidden = !message;
}

function humanSize(n) {
  if (n === null || n === undefined) return "";
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} ${n === 1 ? "byte" : "bytes"}` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function when(seconds) {
  if (!seconds) return "";
  return new Date(seconds * 1000).toLocaleString();
}

function joinPath(folder, name) {
  return (folder === "/" ? "" : folder) + "/" + name;
}

function parentOf(path) {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

function baseName(path) {
  return path.slice(path.lastIndexOf("/") + 1);
}

function encodePath(path) {
  return path.split("/").map(encodeURIComponent).join("/");
}

function folderHash(path) {
  return "#/files" + (path === "/" ? "/" : encodePath(path));
}

function contentUrl(path) {
  return "/api/v1/content" + encodePath(path);
}

const CONFLICT = /\(conflicted copy\b/i;

// ---------------------------------------------------------------------------------------
// the API
// ---------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message, retryable, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryable = retryable;
    this.details = details || {};
  }
}

const SENTENCES = {
  0: "The server cannot be reached. Check your connection; nothing was changed.",
  413: "That is too large for the server to accept in one request.",
  500: "The server failed to do this. Try again; if it keeps failing, tell the server's administrator.",
  502: "The server is not answering right now. Try again in a moment.",
  503: "The server is busy or restarting. Try again in a moment.",
  504: "The server took too long to answer. Try again in a moment.",
};

function sentence(status, body) {
  if (status === 401) return "Your session ended. Log in again to continue.";
  if (body && typeof body.message === "string" && status < 500) {
    const m = body.message;
    return m.charAt(0).toUpperCase() + m.slice(1) + (/[.!?]$/.test(m) ? "" : ".");
  }
  return SENTENCES[status] || `The server answered ${status}. Try again.`;
}

async function api(method, url, body, extra = {}) {
  const headers = { "X-CSRF-Token": CSRF, ...(extra.headers || {}) };
  const opts = { method, credentials: "same-origin", headers, signal: extra.signal };
  if (body !== undefined) {
    if (body instanceof Blob) {
      opts.body = body;
    } else {
      headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
  }
  let res;
  try {
    res = await fetch(url, opts);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "offline", SENTENCES[0], true);
  }
  if (res.status === 204) return null;
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (!res.ok) {
    if (res.status === 401) loggedOut();
    const retryable = res.status >= 502 || (data && data.code === "namespace_moved");
    throw new ApiError(res.status, data && data.code, sentence(res.status, data), retryable, data && data.details);
  }
  return data;
}

function loggedOut() {
  showError("Your session ended. Reload the page to log in again.");
}

// ---------------------------------------------------------------------------------------
// dialogs
// ---------------------------------------------------------------------------------------
const dlg = document.getElementById("dialog");
const dlgForm = document.getElementById("dialog-form");
const dlgTitle = document.getElementById("dialog-title");
const dlgBody = document.getElementById("dialog-body");
const dlgError = document.getElementById("dialog-error");
const dlgButtons = document.getElementById("dialog-buttons");
let dlgResolve = null;
let dlgReturnFocus = null;

function closeDialog(value) {
  if (dlg.open) dlg.close();
  const r = dlgResolve;
  dlgResolve = null;
  if (dlgReturnFocus && document.contains(dlgReturnFocus)) dlgReturnFocus.focus();
  if (r) r(value);
}

dlg.addEventListener("cancel", (ev) => { ev.preventDefault(); closeDialog(null); });

// Open the dialog: ``action`` runs on submit and may throw (its message is shown, the
// dialog stays open); it resolves with the action's answer, or null when cancelled.
function dialog({ title, body = [], submit = "OK", action = null, cancel = "Cancel", wide = false }) {
  if (dlgResolve) closeDialog(null);
  dlgReturnFocus = document.activeElement;
  dlgTitle.textContent = title;
  dlgBody.replaceChildren(...body);
  dlgError.textContent = "";
  dlgButtons.replaceChildren();
  dlg.classList.toggle("wide", wide);
  let submitButton = null;
  if (submit) {
    submitButton = el("button", { type: "submit", class: "primary", text: submit });
    dlgButtons.append(submitButton);
  }
  dlgButtons.append(el("button", { type: "button", text: cancel, onclick: () => closeDialog(null) }));
  dlgForm.onsubmit = async (ev) => {
    ev.preventDefault();
    if (!action) { closeDialog(true); return; }
    dlgError.textContent = "";
    submitButton.disabled = true;
    try {
      const out = await action();
      closeDialog(out === undefined ? true : out);
    } catch (e) {
      dlgError.textContent = e.message || String(e);
    } finally {
      submitButton.disabled = false;
    }
  };
  return new Promise((resolve) => {
    dlgResolve = resolve;
    dlg.showModal();
    const first = dlgBody.querySelector("input, select, button, textarea, a[href]") || submitButton;
    if (first) first.focus();
  });
}

function field(label, input, hint) {
  const id = "f-" + Math.random().toString(36).slice(2);
  input.id = id;
  const parts = [el("label", { for: id, text: label }), input];
  if (hint) {
    const hid = id + "-hint";
    input.setAttribute("aria-describedby", hid);
    parts.push(el("p", { class: "hint", id: hid, text: hint }));
  }
  return el("div", { class: "field" }, ...parts);
}

function choose(title, options) {
  // A list of buttons; resolves with the chosen option's value.
  const list = el("ul", { class: "choices", role: "list" });
  for (const o of options) {
    if (o.href) {
      list.append(el("li", {}, el("a", { href: o.href, download: o.download ? "" : undefined, class: "button", text: o.label, onclick: () => closeDialog(null) })));
    } else {
      list.append(el("li", {}, el("button", { type: "button", text: o.label, onclick: () => closeDialog(o.value) })));
    }
  }
  return dialog({ title, body: [list], submit: null, cancel: "Close" });
}

// ---------------------------------------------------------------------------------------
// routing
// ---------------------------------------------------------------------------------------
function route() {
  const hash = location.hash || "#/files/";
  showError("");
  const [, view, ...rest] = hash.slice(1).split("/");
  const path = "/" + rest.map((s) => decodeURIComponent(s)).filter((s) => s !== "").join("/");
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === (view === "deleted" || view === "versions" ? "files" : view)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  state.view = view;
  if (view === "shares") return showShares();
  if (view === "links") return showLinks();
  if (view === "sessions") return showSessions();
  if (view === "deleted") return showDeleted(path);
  if (view === "versions") return showVersions(path);
  return showFolder(path);
}

window.addEventListener("hashchange", route);

function heading(text) {
  return el("h1", { id: "view-title", tabindex: "-1", text });
}

function focusTitle() {
  const h = document.getElementById("view-title");
  if (h) h.focus({ preventScroll: true });
}

// ---------------------------------------------------------------------------------------
// the folder view
// ---------------------------------------------------------------------------------------
function breadcrumbs(path) {
  const nav = el("nav", { class: "crumbs", "aria-label": "Folder path" });
  const ol = el("ol");
  ol.append(el("li", {}, el("a", { href: folderHash("/"), text: "All files" })));
  let acc = "";
  const parts = path === "/" ? [] : path.slice(1).split("/");
  parts.forEach((name, i) => {
    acc += "/" + name;
    const last = i === parts.length - 1;
    ol.append(el("li", {}, el("a", { href: folderHash(acc), text: name, "aria-current": last ? "page" : undefined })));
  });
  nav.append(ol);
  return nav;
}

function isMount(e) {
  return e.target_ns !== null && e.target_ns !== undefined;
}

function sorted(entries) {
  const { key, dir } = state.sort;
  const out = entries.slice();
  const byName = (a, b) => a.name.localeCompare(b.name, undefined, { sensitivity: "base", numeric: true });
  out.sort((a, b) => {
    if ((a.kind === "folder") !== (b.kind === "folder")) return a.kind === "folder" ? -1 : 1;
    let c = 0;
    if (key === "size") c = (a.size || 0) - (b.size || 0);
    else if (key === "mtime") c = (a.mtime || 0) - (b.mtime || 0);
    if (c === 0) c = byName(a, b);
    return c * dir;
  });
  return out;
}

async function showFolder(path) {
  const seq = ++state.loadSeq;
  const samePlace = state.path === path && main.querySelector("#listing");
  state.path = path;
  if (!samePlace) {
    state.page = 0;
    state.entries = [];
    renderFolderShell(path);
    focusTitle();
  }
  await loadEntries(path, seq);
}

async function loadEntries(path, seq) {
  let cursor = null;
  let all = [];
  let first = true;
  try {
    for (;;) {
      // A small first page puts rows on screen at once; the rest comes in big pages.
      const q = new URLSearchParams({ path, limit: first ? String(PAGE) : "5000" });
      if (cursor) q.set("cursor", cursor);
      const page = await api("GET", "/api/v1/files/list?" + q);
      if (seq !== state.loadSeq) return;
      all = all.concat(page.entries);
      cursor = page.cursor;
      if (first || !page.has_more) {
        state.entries = all;
        state.complete = !page.has_more;
        renderRows();
        first = false;
      }
      if (!page.has_more) break;
    }
  } catch (e) {
    if (seq !== state.loadSeq) return;
    if (e.status === 404) showError(`The folder ${path} does not exist (any more). Go back to All files.`);
    else showError(e.message);
  }
}

function renderFolderShell(path) {
  const fileInput = el("input", { type: "file", multiple: true, id: "pick-files", class: "visually-hidden", onchange: (ev) => { queueFiles([...ev.target.files].map((f) => ({ file: f, rel: f.name })), path); ev.target.value = ""; } });
  const folderInput = el("input", { type: "file", multiple: true, id: "pick-folder", class: "visually-hidden", onchange: (ev) => { queueFiles([...ev.target.files].map((f) => ({ file: f, rel: f.webkitRelativePath || f.name })), path); ev.target.value = ""; } });
  folderInput.webkitdirectory = true;
  const toolbar = el("div", { class: "toolbar", role: "toolbar", "aria-label": "Folder actions" },
    el("label", { class: "button", for: "pick-files", text: "Upload files" }), fileInput,
    el("label", { class: "button", for: "pick-folder", text: "Upload folder" }), folderInput,
    el("button", { type: "button", text: "New folder", onclick: () => newFolder(path) }),
    el("a", { class: "button", href: "/web/zip?path=" + encodeURIComponent(path), text: "Download as zip" }),
    el("a", { class: "button", href: "#/deleted" + (path === "/" ? "/" : encodePath(path)), text: "Deleted files" }),
  );
  const table = el("table", { id: "listing", class: "listing" },
    el("caption", { class: "visually-hidden", text: `Contents of ${path === "/" ? "All files" : path}` }),
    el("thead", {}, el("tr", {},
      sortHeader("Name", "name"), sortHeader("Size", "size"), sortHeader("Modified", "mtime", "col-mtime"),
      el("th", { scope: "col" }, el("span", { class: "visually-hidden", text: "Actions" })),
    )),
    el("tbody", { id: "rows" }),
  );
  main.replaceChildren(
    heading(path === "/" ? "All files" : baseName(path)),
    breadcrumbs(path),
    toolbar,
    el("p", { id: "count", class: "count", role: "status" }),
    table,
    el("nav", { id: "pager", class: "pager", "aria-label": "Pages" }),
  );
}

function sortHeader(label, key, cls) {
  const active = state.sort.key === key;
  const sortState = active ? (state.sort.dir > 0 ? "ascending" : "descending") : "none";
  return el("th", { scope: "col", class: cls, "aria-sort": sortState },
    el("button", { type: "button", class: "sort", "data-sort": key, text: label + (active ? (state.sort.dir > 0 ? " ▲" : " ▼") : ""),
      onclick: () => {
        state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
        state.page = 0;
        const thead = main.querySelector("#listing thead tr");
        thead.replaceChildren(sortHeader("Name", "name"), sortHeader("Size", "size"), sortHeader("Modified", "mtime", "col-mtime"),
          el("th", { scope: "col" }, el("span", { class: "visually-hidden", text: "Actions" })));
        renderRows();
        const b = thead.querySelector(`[data-sort="${key}"]`);
        if (b) b.focus();
      } }));
}

function renderRows() {
  const tbody = document.getElementById("rows");
  if (!tbody) return;
  const focused = document.activeElement && document.activeElement.closest("tr") ? document.activeElement.closest("tr").dataset.path : null;
  const list = sorted(state.entries);
  const pages = Math.max(1, Math.ceil(list.length / PAGE));
  state.page = Math.min(state.page, pages - 1);
  const slice = list.slice(state.page * PAGE, (state.page + 1) * PAGE);
  const rows = slice.map(row);
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colSpan: 4, class: "empty", text: "This folder is empty. Upload files with the buttons above or drop them here." })));
  }
  tbody.replaceChildren(...rows);
  const count = document.getElementById("count");
  count.textContent = `${list.length.toLocaleString()} ${list.length === 1 ? "item" : "items"}${state.complete ? "" : " so far (loading the rest)"}`;
  renderPager(pages);
  if (focused) {
    const tr = [...tbody.querySelectorAll("tr")].find((t) => t.dataset.path === focused);
    const target = tr && tr.querySelector("a, button");
    if (target) target.focus({ preventScroll: true });
  }
}

function renderPager(pages) {
  const pager = document.getElementById("pager");
  if (pages <= 1) { pager.replaceChildren(); return; }
  const go = (p) => { state.page = p; renderRows(); document.getElementById("listing").scrollIntoView(); };
  pager.replaceChildren(
    el("button", { type: "button", text: "Previous page", disabled: state.page === 0, onclick: () => go(state.page - 1) }),
    el("span", { text: ` Page ${state.page + 1} of ${pages} ` }),
    el("button", { type: "button", text: "Next page", disabled: state.page >= pages - 1, onclick: () => go(state.page + 1) }),
  );
}

function row(e) {
  const folder = e.kind === "folder";
  const label = folder ? "Folder" : "File";
  const nameCell = el("td", { class: "name" });
  nameCell.append(el("span", { class: folder ? "icon folder" : "icon file", "aria-hidden": "true" }));
  if (folder) nameCell.append(el("a", { href: folderHash(e.path), text: e.name, "data-name": e.name, "aria-label": undefined }));
  else nameCell.append(el("button", { type: "button", class: "link", text: e.name, "data-name": e.name, onclick: () => preview(e) }));
  nameCell.append(el("span", { class: "visually-hidden", text: `, ${label}` }));
  if (isMount(e)) nameCell.append(el("span", { class: "badge shared", text: "Shared folder" }));
  if (CONFLICT.test(e.name)) nameCell.append(el("span", { class: "badge conflict", text: "Conflicted copy" }));
  return el("tr", { "data-path": e.path, "data-kind": e.kind },
    nameCell,
    el("td", { class: "size", text: folder ? "" : humanSize(e.size) }),
    el("td", { class: "col-mtime", text: folder ? "" : when(e.mtime) }),
    el("td", { class: "actions" }, el("button", { type: "button", class: "more", "aria-label": `Actions for ${e.name}`, text: "⋯", onclick: () => actions(e) })),
  );
}

async function actions(e) {
  const folder = e.kind === "folder";
  const options = [];
  if (!folder) {
    options.push({ label: "Preview", value: "preview" });
    options.push({ label: "Download", href: contentUrl(e.path), download: true });
  } else {
    options.push({ label: "Open", value: "open" });
    options.push({ label: "Download as zip", href: "/web/zip?path=" + encodeURIComponent(e.path) });
  }
  options.push({ label: "Rename", value: "rename" }, { label: "Move", value: "move" }, { label: "Delete", value: "delete" });
  if (!folder) options.push({ label: "Versions", value: "versions" });
  if (folder && !isMount(e)) options.push({ label: "Share", value: "share" });
  options.push({ label: "Create link", value: "link" });
  const choice = await choose(e.name, options);
  if (choice === "preview") preview(e);
  else if (choice === "open") location.hash = folderHash(e.path);
  else if (choice === "rename") rename(e);
  else if (choice === "move") move(e);
  else if (choice === "delete") remove(e);
  else if (choice === "versions") location.hash = "#/versions" + encodePath(e.path);
  else if (choice === "share") share(e.path);
  else if (choice === "link") createLink(e.path);
}

function refreshSoon() {
  clearTimeout(refreshSoon.timer);
  refreshSoon.timer = setTimeout(() => {
    if (state.view === "files" || state.view === undefined || state.view === "") loadEntries(state.path, ++state.loadSeq);
    else if (state.view === "deleted") showDeleted(state.path, true);
    else if (state.view === "shares") showShares(true);
  }, 150);
}

async function newFolder(path) {
  const input = el("input", { type: "text", required: true, autocomplete: "off" });
  const done = await dialog({
    title: "New folder", body: [field("Folder name", input)], submit: "Create",
    action: async () => {
      const name = input.value.trim();
      if (!name) throw new Error("Give the new folder a name.");
      if (name.includes("/")) throw new Error("A folder name cannot contain '/'.");
      return api("POST", "/api/v1/files/mkdir", { path: joinPath(path, name) });
    },
  });
  if (done) { say(`Folder ${baseName(done.entry.path)} created.`); refreshSoon(); }
}

async function rename(e) {
  const input = el("input", { type: "text", required: true, value: e.name, autocomplete: "off" });
  const done = await dialog({
    title: `Rename ${e.name}`, body: [field("New name", input)], submit: "Rename",
    action: async () => {
      const name = input.value.trim();
      if (!name) throw new Error("Give a name.");
      if (name.includes("/")) throw new Error("A name cannot contain '/'. To put it in another folder, use Move.");
      return api("POST", "/api/v1/files/move", { from_path: e.path, to_path: joinPath(parentOf(e.path), name) });
    },
  });
  if (done) { say(`Renamed to ${baseName(done.entry.path)}.`); refreshSoon(); }
}

async function move(e) {
  const input = el("input", { type: "text", required: true, value: parentOf(e.path), autocomplete: "off" });
  const done = await dialog({
    title: `Move ${e.name}`, body: [field("Move into folder", input, "A folder path such as /Projects/2024. It must exist.")], submit: "Move",
    action: async () => {
      let dest = input.value.trim() || "/";
      if (!dest.startsWith("/")) dest = "/" + dest;
      dest = dest.replace(/\/+$/, "") || "/";
      return api("POST", "/api/v1/files/move", { from_path: e.path, to_path: joinPath(dest, e.name) });
    },
  });
  if (done) { say(`Moved to ${parentOf(done.entry.path)}.`); refreshSoon(); }
}

async function remove(e) {
  const done = await dialog({
    title: `Delete ${e.name}?`,
    body: [el("p", { text: e.kind === "folder" ? "The folder and everything in it will be deleted. Deleted files can be brought back from Deleted files." : "You can bring it back later from Deleted files." })],
    submit: "Delete",
    action: () => api("POST", "/api/v1/files/delete", { path: e.path }),
  });
  if (done) { say(`${e.name} deleted.`); refreshSoon(); }
}

// ---------------------------------------------------------------------------------------
// previews
// ---------------------------------------------------------------------------------------
const IMAGE = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", webp: "image/webp", bmp: "image/bmp", avif: "image/avif" };
const TEXT = new Set(["txt", "md", "csv", "json", "log", "py", "js", "ts", "html", "css", "xml", "yaml", "yml", "toml", "ini", "sh", "c", "h", "rs", "go", "java", "sql", "svg"]);
const PREVIEW_LIMIT = 64 * 1024 * 1024;
const TEXT_LIMIT = 1024 * 1024;

async function preview(e) {
  const ext = (e.name.includes(".") ? e.name.split(".").pop() : "").toLowerCase();
  const download = el("a", { href: contentUrl(e.path), download: "", class: "button", text: "Download" });
  let body;
  let objectUrl = null;
  try {
    if (IMAGE[ext] || ext === "pdf") {
      if (e.size > PREVIEW_LIMIT) throw new ApiError(413, "too_large", `This file is larger than ${humanSize(PREVIEW_LIMIT)}; download it to look at it.`);
      const res = await fetch(contentUrl(e.path), { credentials: "same-origin" });
      if (!res.ok) throw new ApiError(res.status, "", sentence(res.status, null));
      // The type is chosen here from the extension (never HTML or SVG), so the blob cannot run script.
      const blob = new Blob([await res.arrayBuffer()], { type: IMAGE[ext] || "application/pdf" });
      objectUrl = URL.createObjectURL(blob);
      body = IMAGE[ext]
        ? el("img", { src: objectUrl, alt: `Preview of ${e.name}`, class: "preview-image" })
        : el("iframe", { src: objectUrl, title: `Preview of ${e.name}`, class: "preview-pdf" });
    } else if (TEXT.has(ext) || e.size <= 64 * 1024) {
      const res = await fetch(contentUrl(e.path), { credentials: "same-origin", headers: { Range: `bytes=0-${TEXT_LIMIT - 1}` } });
      if (!res.ok && res.status !== 416) throw new ApiError(res.status, "", sentence(res.status, null));
      const text = res.status === 416 ? "" : await res.text();
      body = el("pre", { class: "preview-text", tabindex: "0", text: text + (e.size > TEXT_LIMIT ? "\n\n[… only the first 1 MB is shown; download the file for the rest]" : "") });
    } else {
      body = el("p", { text: "There is no preview for this kind of file. Download it to open it." });
    }
  } catch (err) {
    body = el("p", { class: "error", text: err.message });
  }
  await dialog({ title: e.name, body: [body, el("p", {}, download)], submit: null, cancel: "Close", wide: true });
  if (objectUrl) URL.revokeObjectURL(objectUrl);
}

// ---------------------------------------------------------------------------------------
// deleted files and versions
// ---------------------------------------------------------------------------------------
async function showDeleted(path, quiet) {
  state.path = path;
  if (!quiet) {
    main.replaceChildren(heading(`Deleted files in ${path === "/" ? "All files" : baseName(path)}`), breadcrumbs(path),
      el("p", {}, el("a", { href: folderHash(path), text: "Back to the folder" })), el("p", { id: "deleted-status", text: "Loading…" }));
    focusTitle();
  }
  let data;
  try {
    data = await api("GET", "/api/v1/web/deleted?path=" + encodeURIComponent(path));
  } catch (e) {
    showError(e.message);
    return;
  }
  const status = document.getElementById("deleted-status");
  if (!status) return;
  const old = main.querySelector("table.deleted");
  if (old) old.remove();
  if (!data.deleted.length) { status.textContent = "Nothing was deleted in this folder."; return; }
  status.textContent = `${data.deleted.length} deleted ${data.deleted.length === 1 ? "file" : "files"}.`;
  const tbody = el("tbody");
  for (const d of data.deleted) {
    tbody.append(el("tr", { "data-path": d.path },
      el("td", { class: "name", text: d.name }),
      el("td", { class: "size", text: humanSize(d.size) }),
      el("td", {}, el("button", { type: "button", text: "Undelete", "aria-label": `Undelete ${d.name}`, onclick: () => undelete(d) })),
    ));
  }
  main.append(el("table", { class: "listing deleted" },
    el("caption", { class: "visually-hidden", text: "Deleted files" }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Name" }), el("th", { scope: "col", text: "Size" }), el("th", { scope: "col", text: "" }))),
    tbody));
}

async function undelete(d) {
  try {
    const h = await api("GET", "/api/v1/files/history?limit=1&path=" + encodeURIComponent(d.path));
    if (!h.revisions.length) throw new Error(`${d.name} has no stored version left to bring back.`);
    await api("POST", "/api/v1/files/restore", { path: d.path, rev: h.revisions[0].rev });
    say(`${d.name} is back.`);
    showDeleted(state.path, true);
  } catch (e) {
    showError(e.message);
  }
}

async function showVersions(path) {
  state.path = path;
  main.replaceChildren(heading(`Versions of ${baseName(path)}`), breadcrumbs(parentOf(path)),
    el("p", {}, el("a", { href: folderHash(parentOf(path)), text: "Back to the folder" })));
  focusTitle();
  let data;
  try {
    data = await api("GET", "/api/v1/files/history?limit=200&path=" + encodeURIComponent(path));
  } catch (e) { showError(e.message); return; }
  const tbody = el("tbody");
  data.revisions.forEach((r, i) => {
    tbody.append(el("tr", { "data-rev": String(r.rev) },
      el("td", { text: when(r.created_at) + (i === 0 ? " (current)" : "") }),
      el("td", { class: "size", text: humanSize(r.size) }),
      el("td", {}, i === 0 ? null : el("button", { type: "button", text: "Restore", "aria-label": `Restore the version of ${when(r.created_at)}`,
        onclick: async () => {
          try {
            await api("POST", "/api/v1/files/restore", { path, rev: r.rev });
            say("That version is now the current one.");
            showVersions(path);
          } catch (e) { showError(e.message); }
        } })),
    ));
  });
  main.append(el("table", { class: "listing versions" },
    el("caption", { class: "visually-hidden", text: "Versions, newest first" }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Saved" }), el("th", { scope: "col", text: "Size" }), el("th", { scope: "col", text: "" }))),
    tbody));
}

// ---------------------------------------------------------------------------------------
// sharing
// ---------------------------------------------------------------------------------------
async function share(path) {
  const user = el("input", { type: "text", required: true, autocomplete: "off", autocapitalize: "none" });
  const role = el("select", {}, el("option", { value: "editor", text: "Can edit" }), el("option", { value: "viewer", text: "Can view" }));
  const done = await dialog({
    title: `Share ${baseName(path)}`, body: [field("User name", user), field("Access", role)], submit: "Invite",
    action: async () => {
      if (!user.value.trim()) throw new Error("Give the user name of the person to invite.");
      return api("POST", "/api/v1/shares", { path, user: user.value.trim(), role: role.value });
    },
  });
  if (done) { say(`Invited ${user.value.trim()}.`); refreshSoon(); }
}

async function showShares(quiet) {
  if (!quiet) {
    main.replaceChildren(heading("Sharing"), el("p", { id: "shares-status", text: "Loading…" }));
    focusTitle();
  }
  let data;
  try { data = await api("GET", "/api/v1/shares"); } catch (e) { showError(e.message); return; }
  const status = document.getElementById("shares-status");
  if (!status) return;
  for (const old of main.querySelectorAll("section.share")) old.remove();
  if (!data.shares.length) { status.textContent = "No shared folders yet. To share one, open its actions (⋯) and choose Share."; return; }
  status.textContent = "";
  for (const s of data.shares) {
    const section = el("section", { class: "share", "aria-label": s.name || s.path || "shared folder" });
    section.append(el("h2", { text: s.name || baseName(s.path || "") }));
    const roleText = { owner: "You own this folder", editor: "You can edit", viewer: "You can view" }[s.role] || s.role;
    section.append(el("p", { text: `${roleText}${s.path ? " · in your files at " + s.path : ""}${s.state === "invited" ? " · invitation waiting" : ""}` }));
    if (s.state === "invited") {
      section.append(el("button", { type: "button", class: "primary", text: "Accept invitation", "aria-label": `Accept the invitation to ${s.name}`,
        onclick: () => act(() => api("POST", `/api/v1/shares/${s.ns_id}/accept`), `You joined ${s.name}.`) }));
    } else if (s.path) {
      section.append(el("a", { class: "button", href: folderHash(s.path), text: "Open" }));
    }
    if (s.members && s.members.length) {
      const ul = el("ul", { class: "members", "aria-label": "Members" });
      for (const m of s.members) {
        const li = el("li", {}, el("span", { text: m.user }), el("span", { class: "muted", text: ` · ${m.role}${m.state === "invited" ? " (invited)" : ""}` }));
        if (s.role === "owner" && m.role !== "owner") {
          li.append(el("button", { type: "button", text: "Remove", "aria-label": `Remove ${m.user}`,
            onclick: () => act(() => api("POST", "/api/v1/shares/remove", { path: s.path, user: m.user }), `${m.user} was removed.`) }));
        }
        ul.append(li);
      }
      section.append(ul);
    }
    if (s.state !== "invited" && s.path) {
      if (s.role === "owner") {
        section.append(el("button", { type: "button", text: "Invite someone", onclick: () => share(s.path) }));
        section.append(el("button", { type: "button", text: "Stop sharing", onclick: () => act(() => api("POST", "/api/v1/shares/unshare", { path: s.path }), "The folder is no longer shared.") }));
      } else {
        section.append(el("button", { type: "button", text: "Leave", "aria-label": `Leave ${s.name}`, onclick: () => act(() => api("POST", "/api/v1/shares/leave", { path: s.path }), `You left ${s.name}.`) }));
      }
    }
    main.append(section);
  }
}

async function act(fn, message) {
  try {
    await fn();
    say(message);
    refreshSoon();
  } catch (e) {
    showError(e.message);
  }
}

// ---------------------------------------------------------------------------------------
// links
// ---------------------------------------------------------------------------------------
async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    say("Link copied.");
  } catch (_) {
    input.select();
    say("Select the link and copy it (Ctrl+C or ⌘C).");
  }
}

async function createLink(path) {
  const expires = el("input", { type: "date" });
  const password = el("input", { type: "password", autocomplete: "new-password" });
  const done = await dialog({
    title: `Create a link to ${baseName(path) || "All files"}`,
    body: [field("Expires on (optional)", expires, "The link stops working at the start of this day (UTC)."),
      field("Password (optional)", password, "People who open the link will be asked for it.")],
    submit: "Create link",
    action: () => {
      const body = { path };
      if (expires.value) body.expires = expires.value + "T00:00:00Z";
      if (password.value) body.password = password.value;
      return api("POST", "/api/v1/links", body);
    },
  });
  if (!done) return;
  const out = el("input", { type: "text", readOnly: true, value: done.url, class: "link-url" });
  const copy = el("button", { type: "button", text: "Copy link", onclick: () => copyText(done.url, out) });
  await dialog({
    title: "Link created",
    body: [field("Anyone with this link can download it", out), copy, el("p", { class: "hint", text: "Copy it now: the link is shown only once." })],
    submit: null, cancel: "Close",
  });
}

async function showLinks() {
  main.replaceChildren(heading("Links"), el("p", { id: "links-status", text: "Loading…" }));
  focusTitle();
  let data;
  try { data = await api("GET", "/api/v1/links"); } catch (e) { showError(e.message); return; }
  const status = document.getElementById("links-status");
  const active = data.links.filter((l) => l.state === "active");
  if (!active.length) { status.textContent = "No links. To make one, open a file's actions (⋯) and choose Create link."; return; }
  status.textContent = "";
  const tbody = el("tbody");
  for (const l of active) {
    tbody.append(el("tr", { "data-link": l.id },
      el("td", { class: "name", text: l.path || "(deleted)" }),
      el("td", { text: l.expires_at ? "until " + when(l.expires_at) : "no expiry" }),
      el("td", { text: l.has_password ? "password" : "" }),
      el("td", {}, el("button", { type: "button", text: "Revoke", "aria-label": `Revoke the link to ${l.path}`,
        onclick: async () => { try { await api("DELETE", `/api/v1/links/${l.id}`); say("Link revoked."); showLinks(); } catch (e) { showError(e.message); } } })),
    ));
  }
  main.append(el("table", { class: "listing" },
    el("caption", { class: "visually-hidden", text: "Your links" }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "To" }), el("th", { scope: "col", text: "Expiry" }), el("th", { scope: "col", text: "Protection" }), el("th", { scope: "col", text: "" }))),
    tbody));
}

// ---------------------------------------------------------------------------------------
// sessions
// ---------------------------------------------------------------------------------------
async function showSessions() {
  main.replaceChildren(heading("Sessions"), el("p", { text: "Every browser where you are logged in. End any you do not recognise." }));
  focusTitle();
  let data;
  try { data = await api("GET", "/api/v1/sessions"); } catch (e) { showError(e.message); return; }
  const tbody = el("tbody");
  for (const s of data.sessions) {
    tbody.append(el("tr", { "data-session": String(s.id) },
      el("td", { text: (s.agent || "unknown browser").slice(0, 80) + (s.current ? " (this browser)" : "") }),
      el("td", { text: s.address }),
      el("td", { text: when(s.last_seen) }),
      el("td", {}, el("button", { type: "button", text: s.current ? "Log out" : "End", "aria-label": s.current ? "Log out of this browser" : `End the session from ${s.address}`,
        onclick: async () => {
          try {
            await api("DELETE", `/api/v1/sessions/${s.id}`);
            if (s.current) location.reload(); else { say("Session ended."); showSessions(); }
          } catch (e) { showError(e.message); }
        } })),
    ));
  }
  main.append(el("table", { class: "listing" },
    el("caption", { class: "visually-hidden", text: "Your sessions" }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Browser" }), el("th", { scope: "col", text: "Address" }), el("th", { scope: "col", text: "Last active" }), el("th", { scope: "col", text: "" }))),
    tbody));
}

// ---------------------------------------------------------------------------------------
// uploads
// ---------------------------------------------------------------------------------------
const uploadList = document.getElementById("upload-list");
const uploadQueue = [];
let uploadsRunning = 0;
const UPLOAD_PARALLEL = 2;

function hex(buffer) {
  const bytes = new Uint8Array(buffer);
  let out = "";
  for (let i = 0; i < bytes.length; i++) out += bytes[i].toString(16).padStart(2, "0");
  return out;
}

function unhex(s) {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(i * 2, 2), 16);
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Upload {
  constructor(file, path) {
    this.file = file;
    this.path = path;
    this.cancelled = false;
    this.progress = el("progress", { max: 100, value: 0 });
    this.status = el("span", { class: "upload-status", text: "Waiting" });
    const name = el("span", { class: "upload-name", text: path });
    this.progress.setAttribute("aria-label", `Upload of ${path}`);
    this.cancelButton = el("button", { type: "button", text: "Cancel", "aria-label": `Cancel the upload of ${path}`, onclick: () => { this.cancelled = true; } });
    this.item = el("li", { "data-upload": path }, name, this.progress, this.status, this.cancelButton);
    uploadList.prepend(this.item);
    document.getElementById("uploads").hidden = false;
  }

  show(text, fraction) {
    this.status.textContent = text;
    if (fraction !== undefined) this.progress.value = Math.round(fraction * 100);
  }

  check() {
    if (this.cancelled) throw new ApiError(-1, "cancelled", "Cancelled.");
  }

  // Run ``fn`` until it works: a dropped connection or a busy server is waited out and the
  // step tried again (the protocol makes every step safe to repeat).
  async retrying(fn, what) {
    let delay = 500;
    for (;;) {
      this.check();
      try {
        return await fn();
      } catch (e) {
        if (!(e instanceof ApiError) || !e.retryable) throw e;
        this.item.dataset.interrupted = "yes";
        this.show(`Connection lost while ${what}; trying again in ${Math.ceil(delay / 1000)} s…`);
        await sleep(delay);
        delay = Math.min(delay * 2, 8000);
      }
    }
  }

  async run() {
    const f = this.file;
    const chunks = [];
    for (let off = 0; off < f.size; off += CHUNK) {
      this.check();
      const buf = await f.slice(off, off + CHUNK).arrayBuffer();
      chunks.push({ hash: hex(await crypto.subtle.digest("SHA-256", buf)), size: buf.byteLength, offset: off });
      this.show("Checking the file…", 0.1 * (off + buf.byteLength) / f.size);
    }
    // An upload replaces a file of the same name (its old version stays in its history): the
    // commit names the revision it replaces, and a file that changed meanwhile is read again.
    let expected = null;
    try {
      const st = await this.retrying(() => api("GET", "/api/v1/files/stat?path=" + encodeURIComponent(this.path)), "checking");
      if (st.entry.kind === "file") expected = st.entry.rev;
    } catch (e) {
      if (e.status !== 404) throw e;
    }
    const body = { path: this.path, size: f.size, chunks: chunks.map((c) => ({ hash: c.hash, size: c.size })), expected_rev: expected, mtime: f.lastModified / 1000 };
    for (let round = 0; round < 6; round++) {
      let answer;
      try {
        answer = await this.retrying(() => api("POST", "/api/v1/files/commit", body), "saving");
      } catch (e) {
        if (e.status === 409 && e.code === "conflict" && round < 5) {
          body.expected_rev = typeof e.details.current_rev === "number" ? e.details.current_rev : null;
          continue;
        }
        throw e;
      }
      if (answer.status === "committed") {
        this.show("Done", 1);
        this.item.dataset.done = "yes";
        return answer.entry;
      }
      await this.send(chunks, answer.needed.map((n) => n.hash), answer.ns_id);
    }
    throw new ApiError(500, "stuck", "The server keeps asking for the same parts of this file. Try again later.");
  }

  async send(chunks, needed, nsId) {
    const byHash = new Map();
    for (const c of chunks) if (!byHash.has(c.hash)) byHash.set(c.hash, c);
    const todo = [...new Set(needed)].map((h) => byHash.get(h)).filter(Boolean);
    const total = this.file.size || 1;
    let sent = total - todo.reduce((n, c) => n + c.size, 0);
    const batches = [];
    let cur = [];
    let curBytes = 0;
    for (const c of todo) {
      if (cur.length && curBytes + c.size > BATCH_BYTES) { batches.push(cur); cur = []; curBytes = 0; }
      cur.push(c);
      curBytes += c.size;
    }
    if (cur.length) batches.push(cur);
    const worker = async () => {
      while (batches.length) {
        const batch = batches.shift();
        const parts = [];
        for (const c of batch) {
          this.check();
          const data = await this.file.slice(c.offset, c.offset + c.size).arrayBuffer();
          const head = new Uint8Array(36);
          head.set(unhex(c.hash), 0);
          new DataView(head.buffer).setUint32(32, c.size);
          parts.push(head, data);
        }
        const blob = new Blob(parts, { type: "application/x-cubby-chunks" });
        await this.retrying(() => api("POST", `/api/v1/blocks/upload?ns_id=${nsId}`, blob, { headers: { "Content-Type": "application/x-cubby-chunks" } }), "uploading");
        sent += batch.reduce((n, c) => n + c.size, 0);
        this.show(`Uploading… ${humanSize(sent)} of ${humanSize(this.file.size)}`, 0.1 + 0.9 * sent / total);
      }
    };
    await Promise.all([worker(), worker()]);
  }
}

function queueFiles(items, folder) {
  for (const { file, rel } of items) {
    const parts = rel.split("/").filter((p) => p && p !== "." && p !== "..");
    if (!parts.length) continue;
    uploadQueue.push(new Upload(file, joinPath(folder, parts.join("/"))));
  }
  say(`${items.length} ${items.length === 1 ? "file" : "files"} queued for upload.`);
  pump();
}

function pump() {
  while (uploadsRunning < UPLOAD_PARALLEL && uploadQueue.length) {
    const up = uploadQueue.shift();
    uploadsRunning++;
    up.run().then(
      () => { refreshSoon(); },
      (e) => { up.item.dataset.failed = "yes"; up.show(e.code === "cancelled" ? "Cancelled" : `Failed: ${e.message}`); },
    ).finally(() => { up.cancelButton.remove(); uploadsRunning--; pump(); if (!uploadQueue.length && !uploadsRunning) say("Uploads finished."); });
  }
}

// Drag and drop, with folders walked through the File System entries API when the browser
// gives entries, and plain files otherwise.
async function readEntry(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((res, rej) => entry.file(res, rej));
    out.push({ file, rel: prefix + entry.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
      if (!batch.length) break;
      for (const child of batch) await readEntry(child, prefix + entry.name + "/", out);
    }
  }
}

const dropHint = document.getElementById("drop-hint");
let dragDepth = 0;
document.addEventListener("dragenter", (ev) => {
  if (state.view !== "files" && state.view !== undefined && state.view !== "") return;
  if (ev.dataTransfer && [...ev.dataTransfer.types].includes("Files")) { dragDepth++; dropHint.hidden = false; }
});
document.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) dropHint.hidden = true; });
document.addEventListener("dragover", (ev) => { ev.preventDefault(); });
document.addEventListener("drop", async (ev) => {
  ev.preventDefault();
  dragDepth = 0;
  dropHint.hidden = true;
  if (state.view !== "files" && state.view !== undefined && state.view !== "") return;
  const dt = ev.dataTransfer;
  if (!dt) return;
  const folder = state.path;
  const out = [];
  const entries = [...dt.items].filter((i) => i.kind === "file").map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (entries.length && entries.every(Boolean)) {
    for (const entry of entries) await readEntry(entry, "", out);
  } else {
    for (const f of dt.files) out.push({ file: f, rel: f.name });
  }
  if (out.length) queueFiles(out, folder);
});

// ---------------------------------------------------------------------------------------
// live updates through the notification role's WebSocket
// ---------------------------------------------------------------------------------------
let socketDelay = 1000;

async function subscribe(ws) {
  const account = await api("GET", "/api/v1/account");
  state.account = account;
  const cursor = {};
  for (const n of account.namespaces) cursor[n.ns_id] = n.head;
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ cursor }));
}

function connectNotify() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  let ws;
  try {
    ws = new WebSocket(`${proto}//${location.host}/api/v1/notify/ws`);
  } catch (_) {
    return;
  }
  ws.onopen = () => { subscribe(ws).catch(() => ws.close()); };
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (_) { return; }
    if (msg.type === "subscribed") {
      socketDelay = 1000;
      document.body.dataset.live = "yes";
      if (msg.changed) refreshSoon();
    } else if (msg.type === "changed") {
      refreshSoon();
    } else if (msg.type === "account_changed") {
      subscribe(ws).catch(() => ws.close());
      refreshSoon();
    }
  };
  ws.onclose = (ev) => {
    document.body.dataset.live = "no";
    if (ev.code === 4401) { loggedOut(); return; }
    setTimeout(connectNotify, socketDelay);
    socketDelay = Math.min(socketDelay * 2, 60000);
  };
}

// ---------------------------------------------------------------------------------------
// start
// ---------------------------------------------------------------------------------------
document.getElementById("uploads-clear").addEventListener("click", () => {
  for (const li of uploadList.querySelectorAll("li[data-done], li[data-failed]")) li.remove();
  if (!uploadList.children.length) document.getElementById("uploads").hidden = true;
});

document.getElementById("logout").addEventListener("click", async () => {
  try { await api("DELETE", "/api/v1/session"); } catch (_) { /* logged out either way */ }
  location.replace("/");
});

route();
connectNotify();
