// clipsearch page: talks only to the /api endpoints; builds every element with textContent (no HTML
// from the server is ever inserted), so file names cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const query = $("q");
const filters = $("filters");
const grid = $("grid");
const statusLine = $("status");
const errorBox = $("error");
const viewer = $("viewer");

let search = null; // what the results show: {kind: "text", q, refine} | {kind: "similar", id, moment, hit} | {kind: "upload", file}
let hits = [];
let marks = 0; // how many pictures are marked for the text query shown
let cutoffNote = ""; // what the fitted cutoff of the answer was, if one was used
let shown = -1; // index in hits of the result open in the viewer
let requestNo = 0; // answers to superseded requests are dropped
let maxUpload = Infinity; // bytes, from /api/info
let shownVersion = null; // index_version of the answer the results came from: their ids belong to it

// -- searching ----------------------------------------------------------------------------------

function filterParams() {
  const params = new URLSearchParams();
  for (const field of filters.elements) {
    if (!field.name) continue;
    if (field.type === "checkbox") {
      if (field.checked) params.set(field.name, field.value || "true");
    } else if (field.value.trim() !== "") params.set(field.name, field.value.trim());
  }
  return params;
}

async function run(next, { push = true } = {}) {
  search = next;
  const params = filterParams();
  let response;
  const mine = ++requestNo;
  const started = performance.now();
  showContext();
  statusLine.textContent = "Searching…";
  errorBox.hidden = true;
  try {
    if (next.kind === "text") {
      params.set("q", next.q);
      if (next.refine) params.set("refine", "true");
      response = await fetch(`/api/search?${params}`);
      params.delete("refine");
    } else if (next.kind === "similar") {
      if (next.v) params.set("v", next.v);
      if (next.moment != null) params.set("moment", next.moment);
      response = await fetch(`/api/similar/${next.id}?${params}`);
      params.delete("v");
      params.delete("moment");
    } else {
      const body = new FormData();
      body.append("file", next.file, next.file.name || "image");
      response = await fetch(`/api/search/image?${params}`, { method: "POST", body });
    }
  } catch (err) {
    return mine === requestNo && fail(`The server cannot be reached (${err.message}). Is clipsearch serve running?`);
  }
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (mine !== requestNo) return;
  remember(next, params, push);
  if (!response.ok) return fail(data.error || `HTTP ${response.status}`);
  hits = data.results;
  shownVersion = data.index_version;
  marks = data.marks ?? 0;
  cutoffNote = data.cutoff
    ? ` · cutoff ${data.cutoff.threshold.toFixed(3)}, fitted to ${data.cutoff.judgements} marks`
    : "";
  render();
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  const refined = data.refined ? " · refined by your marks" : "";
  statusLine.textContent = hits.length
    ? `${hits.length} result${hits.length === 1 ? "" : "s"} · ${seconds} s${refined}${cutoffNote}`
    : "No results match. Try other words, or clear the filters.";
}

function fail(message) {
  hits = [];
  marks = 0;
  render();
  statusLine.textContent = "";
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function rerun() {
  if (search) run(search, { push: false });
}

// The address bar keeps text and "more like this" searches, so reload and back/forward work.
function remember(next, params, push) {
  params.delete("q");
  params.delete("refine");
  if (next.kind === "text") params.set("q", next.q);
  if (next.kind === "text" && next.refine) params.set("refine", "1");
  if (next.kind === "similar") {
    params.set("similar", next.id);
    if (next.moment != null) params.set("moment", next.moment);
    if (next.v) params.set("v", next.v);
  }
  const hash = next.kind === "upload" ? "" : `#${params}`;
  if (location.hash === hash) return;
  if (push) history.pushState(null, "", hash || location.pathname);
  else history.replaceState(null, "", hash || location.pathname);
}

function restore() {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const field of filters.elements) {
    if (!field.name) continue;
    if (field.type === "checkbox") {
      field.checked = params.get(field.name) === (field.value || "true");
      continue;
    }
    const fallback =
      field.tagName === "SELECT"
        ? ([...field.options].find((o) => o.defaultSelected) ?? field.options[0]).value
        : field.defaultValue;
    field.value = params.get(field.name) ?? fallback;
  }
  if ([...params.keys()].some((k) => !["q", "similar", "moment", "v", "k", "sort", "refine"].includes(k))) openFilters(true);
  query.value = params.get("q") ?? "";
  if (params.has("q")) run({ kind: "text", q: params.get("q"), refine: params.has("refine") }, { push: false });
  else if (params.has("similar")) {
    run({ kind: "similar", id: params.get("similar"), moment: params.get("moment"), v: params.get("v") }, { push: false });
  }
  else {
    search = null;
    hits = [];
    marks = 0;
    render();
    showContext();
    statusLine.textContent = "";
    errorBox.hidden = true;
  }
}

// -- results ------------------------------------------------------------------------------------

function baseName(path) {
  return path.slice(path.lastIndexOf("/") + 1);
}

// A video's moment: 83.4 -> "1:23", 3723 -> "1:02:03".
function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor(s / 60) % 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${mm.padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
}

function span(hit) {
  return `${clock(hit.t_start)}–${clock(hit.t_end)}`;
}

const isMoment = (hit) => hit.t_start != null;

function thumbImage(hit) {
  const img = document.createElement("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = baseName(hit.path);
  img.src = hit.thumb;
  img.srcset = `${hit.thumb} 1x, ${hit.thumb}&size=512 2x`;
  img.addEventListener(
    "error",
    () => {
      img.parentElement?.classList.add("broken");
      checkRebuilt();
    },
    { once: true },
  );
  return img;
}

// A picture that fails to load may mean the index was rebuilt under the page (its ids now name other
// pictures, and the server refuses them): then search again, once.
let checkingRebuilt = null;
function checkRebuilt() {
  checkingRebuilt ??= (async () => {
    const info = await fetch("/api/info")
      .then((r) => (r.ok ? r.json() : null))
      .catch(() => null);
    if (info && shownVersion && info.index_version !== shownVersion) {
      shownVersion = info.index_version;
      if (search?.kind === "similar") search.v = search.v ?? "stale"; // its id is the old index's
      closeViewer();
      rerun();
    }
    checkingRebuilt = null;
  })();
}

// Tiles keep their picture's shape: justified rows (style.css), each tile as wide as its aspect
// ratio allows at the row's height; very tall or wide pictures are cropped to these bounds.
const ASPECT_MIN = 0.5;
const ASPECT_MAX = 2.5;

function aspect(hit) {
  const ratio = hit.width > 0 && hit.height > 0 ? hit.width / hit.height : 1;
  return Math.min(ASPECT_MAX, Math.max(ASPECT_MIN, ratio));
}

function markButton(i, relevant) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = relevant ? "mark-yes" : "mark-no";
  button.textContent = relevant ? "✓" : "✗";
  button.title = relevant ? "Right for this query (y)" : "Wrong for this query (n)";
  button.setAttribute("aria-label", relevant ? "Mark right" : "Mark wrong");
  button.addEventListener("click", () => mark(i, relevant));
  return button;
}

function render() {
  const judging = search?.kind === "text";
  const cards = hits.map((hit, i) => {
    const card = document.createElement("li");
    card.className = "card";
    card.dataset.contentId = hit.content_id;
    card.style.setProperty("--ar", aspect(hit).toFixed(4));

    const open = document.createElement("button");
    open.type = "button";
    open.className = "thumb";
    open.title = hit.path;
    open.append(thumbImage(hit));
    if (isMoment(hit)) {
      card.classList.add("moment");
      card.dataset.moment = hit.moment;
      const time = document.createElement("span");
      time.className = "time";
      time.textContent = span(hit);
      open.title = `${hit.path} @ ${span(hit)}`;
      open.append(time);
    }
    open.addEventListener("click", () => openViewer(i));

    const info = document.createElement("div");
    info.className = "info";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    score.title = "cosine similarity to the query";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = baseName(hit.path);
    name.title = hit.path;
    info.append(name);
    if (!hit.available) {
      card.classList.add("unavailable");
      open.title = `${hit.path}\nNot on disk now (an unplugged drive?)`;
      const away = document.createElement("span");
      away.className = "away";
      away.textContent = "not on disk";
      info.append(away);
    }

    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.textContent = "≈";
    more.title = "More like this";
    more.setAttribute("aria-label", "More like this");
    more.addEventListener("click", () => similarTo(hit));
    info.append(more);
    if (judging) info.append(markButton(i, true), markButton(i, false));

    card.append(open, score, info);
    showMark(card, hit.judged);
    return card;
  });
  grid.replaceChildren(...cards);
  showRefine();
}

function showMark(card, judged) {
  card.classList.toggle("judged-yes", judged === true);
  card.classList.toggle("judged-no", judged === false);
  card.querySelector(".mark-yes")?.setAttribute("aria-pressed", String(judged === true));
  card.querySelector(".mark-no")?.setAttribute("aria-pressed", String(judged === false));
}

function showRefine() {
  const judging = search?.kind === "text" && hits.length > 0;
  $("refine").hidden = !judging;
  $("keys").hidden = !judging;
  $("refine").disabled = marks === 0;
  $("refine").textContent = marks ? `Refine (${marks} marked)` : "Refine";
  if (!viewer.hidden && hits[shown]) showViewerMark(hits[shown]);
}

// A tick or a cross: right or wrong for the text query shown; the same mark again takes it back.
async function mark(i, relevant) {
  const hit = hits[i];
  if (!hit || search?.kind !== "text") return;
  const value = hit.judged === relevant ? null : relevant;
  const body = { q: search.q, content_id: hit.content_id, relevant: value, v: shownVersion };
  let response;
  try {
    response = await fetch("/api/judge", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (err) {
    errorBox.textContent = `The mark was not saved: the server cannot be reached (${err.message}).`;
    errorBox.hidden = false;
    return;
  }
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    errorBox.textContent = `The mark was not saved: ${data.error || `HTTP ${response.status}`}`;
    errorBox.hidden = false;
    return;
  }
  errorBox.hidden = true;
  hit.judged = value;
  marks = data.marks;
  const card = grid.querySelector(`.card[data-content-id="${hit.content_id}"]`);
  if (card) showMark(card, value);
  showRefine();
}

function refine() {
  if (search?.kind === "text" && marks > 0) run({ kind: "text", q: search.q, refine: true });
}

function similarTo(hit) {
  closeViewer();
  query.value = "";
  run({ kind: "similar", id: String(hit.content_id), moment: hit.moment ?? null, v: shownVersion, hit });
  window.scrollTo({ top: 0 });
}

function searchFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    return fail(`${file.name} is not an image. Drop or choose a photo (JPEG, PNG, WebP…).`);
  }
  if (file.size > maxUpload) {
    return fail(`${file.name} is ${formatBytes(file.size)}; images up to ${formatBytes(maxUpload)} can be searched.`);
  }
  query.value = "";
  run({ kind: "upload", file });
}

// The strip above the results says what a picture search is anchored on.
function showContext() {
  const box = $("context");
  const img = $("context-img");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  if (!search || search.kind === "text") {
    box.hidden = true;
    img.removeAttribute("src");
    return;
  }
  box.hidden = false;
  if (search.kind === "upload") {
    img.src = URL.createObjectURL(search.file);
    $("context-text").textContent = `Similar to the uploaded image ${search.file.name || ""}`;
  } else {
    const query = new URLSearchParams();
    if (search.v) query.set("v", search.v);
    if (search.moment != null) query.set("moment", search.moment);
    img.src = search.hit ? search.hit.thumb : `/api/thumb/${search.id}?${query}`;
    const path = search.hit ? search.hit.path : `#${search.id}`;
    const when = search.hit && isMoment(search.hit) ? ` @ ${span(search.hit)}` : "";
    $("context-text").textContent = `More like ${path}${when}`;
  }
}

// -- the full-size viewer -----------------------------------------------------------------------

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function openViewer(i) {
  shown = i;
  const hit = hits[i];
  const img = $("viewer-img");
  const video = $("viewer-video");
  img.removeAttribute("src");
  video.pause();
  video.removeAttribute("src");
  const moment = isMoment(hit);
  img.hidden = moment;
  video.hidden = !moment;
  if (moment) {
    // plays from the moment: the server answers range requests, so the player seeks without the whole file
    video.src = `${hit.video}#t=${hit.t_start}`;
    video.poster = hit.image;
  } else {
    img.src = hit.image;
  }
  img.alt = baseName(hit.path);
  $("viewer-name").textContent = baseName(hit.path);
  $("viewer-path").textContent = hit.path;
  $("viewer-open").href = moment ? `${hit.video}#t=${hit.t_start}` : hit.image;
  const rows = [
    ["Score", hit.score.toFixed(4)],
    ["Rank", `${hit.rank} of ${hits.length}`],
    ...(moment ? [["Moment", span(hit)]] : []),
    ["Size", `${hit.width} × ${hit.height} px · ${formatBytes(hit.size)}`],
    ["Date", hit.date.slice(0, 10)],
    ["On disk", hit.available ? "yes" : "no (an unplugged drive, or deleted since indexed)"],
    ["Id", String(hit.content_id)],
  ];
  $("viewer-meta").replaceChildren(
    ...rows.flatMap(([label, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
  showViewerMark(hit);
  $("viewer-prev").disabled = i === 0;
  $("viewer-next").disabled = i === hits.length - 1;
  viewer.hidden = false;
  document.body.classList.add("noscroll");
  $("viewer-close").focus();
}

function showViewerMark(hit) {
  const judging = search?.kind === "text";
  for (const [id, relevant] of [["viewer-yes", true], ["viewer-no", false]]) {
    $(id).hidden = !judging;
    $(id).setAttribute("aria-pressed", String(hit.judged === relevant));
  }
}

function closeViewer() {
  if (viewer.hidden) return;
  $("viewer-video").pause();
  viewer.hidden = true;
  document.body.classList.remove("noscroll");
  grid.children[shown]?.querySelector(".thumb")?.focus();
}

function step(delta) {
  const next = shown + delta;
  if (!viewer.hidden && next >= 0 && next < hits.length) openViewer(next);
}

// -- wiring -------------------------------------------------------------------------------------

function openFilters(open) {
  filters.hidden = !open;
  $("toggle-filters").setAttribute("aria-expanded", String(open));
  $("toggle-filters").classList.toggle("on", open);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = query.value.trim();
  if (text) run({ kind: "text", q: text });
});
$("refine").addEventListener("click", refine);
$("viewer-yes").addEventListener("click", () => mark(shown, true));
$("viewer-no").addEventListener("click", () => mark(shown, false));
$("pick").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", (event) => {
  searchFile(event.target.files[0]);
  event.target.value = ""; // choosing the same file again searches again
});
$("toggle-filters").addEventListener("click", () => openFilters(filters.hidden));
filters.addEventListener("change", rerun);
filters.addEventListener("submit", (event) => {
  event.preventDefault();
  rerun();
});
filters.addEventListener("reset", () => setTimeout(rerun));
$("context-clear").addEventListener("click", () => {
  history.pushState(null, "", location.pathname);
  restore();
  query.focus();
});

$("viewer-close").addEventListener("click", closeViewer);
$("viewer-img").addEventListener("error", checkRebuilt);
$("viewer-video").addEventListener("error", checkRebuilt);
$("viewer-prev").addEventListener("click", () => step(-1));
$("viewer-next").addEventListener("click", () => step(1));
$("viewer-similar").addEventListener("click", () => similarTo(hits[shown]));
viewer.addEventListener("click", (event) => {
  if (event.target === viewer || event.target.classList.contains("stage")) closeViewer();
});
// Keys: in the viewer, ← → step and Esc closes; y / n / c mark the result open in the viewer, else the
// one that has the keyboard focus (Tab, ← →) or the mouse; r refines.
let hovered = -1;
grid.addEventListener("mouseover", (event) => {
  const card = event.target.closest?.(".card");
  hovered = card ? [...grid.children].indexOf(card) : -1;
});
grid.addEventListener("mouseleave", () => {
  hovered = -1;
});

function current() {
  if (!viewer.hidden) return shown;
  const card = document.activeElement?.closest?.(".card");
  return card ? [...grid.children].indexOf(card) : hovered;
}

function focusCard(delta) {
  const at = current();
  const next = Math.max(0, Math.min(hits.length - 1, at < 0 ? 0 : at + delta));
  grid.children[next]?.querySelector(".thumb")?.focus();
}

const MARK_KEYS = { y: true, n: false, c: null };

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (!viewer.hidden) {
    if (event.key === "Escape") return closeViewer();
    if (event.key === "ArrowLeft") return step(-1);
    if (event.key === "ArrowRight") return step(1);
  }
  if (event.target.closest?.("input, select, textarea")) return;
  const key = event.key.toLowerCase();
  if (key in MARK_KEYS && search?.kind === "text") {
    const i = current();
    if (i < 0 || !hits[i]) return;
    event.preventDefault();
    const wanted = MARK_KEYS[key];
    if (wanted === null) {
      if (hits[i].judged !== null && hits[i].judged !== undefined) mark(i, hits[i].judged); // the same mark again
    } else if (hits[i].judged !== wanted) mark(i, wanted);
  } else if (key === "r" && viewer.hidden) {
    event.preventDefault();
    refine();
  } else if (viewer.hidden && (event.key === "ArrowLeft" || event.key === "ArrowRight")) {
    if (!document.activeElement?.closest?.(".card")) return;
    event.preventDefault();
    focusCard(event.key === "ArrowLeft" ? -1 : 1);
  }
});

// Drag and drop an image anywhere on the page; pasting an image works too.
let dragDepth = 0;
const carriesFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes("Files");
window.addEventListener("dragenter", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  dragDepth += 1;
  $("drop").hidden = false;
});
window.addEventListener("dragover", (event) => {
  if (carriesFiles(event)) event.preventDefault();
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) $("drop").hidden = true;
});
window.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  $("drop").hidden = true;
  searchFile(event.dataTransfer?.files?.[0]);
});
window.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData?.files ?? [])].find((f) => f.type.startsWith("image/"));
  if (file) searchFile(file);
});
window.addEventListener("popstate", restore);

async function loadInfo() {
  const response = await fetch("/api/info").catch(() => null);
  if (!response?.ok) return;
  const info = await response.json();
  maxUpload = info.max_upload_bytes;
  const footer = $("footer");
  const model = info.pretrained ? `${info.model} (${info.pretrained})` : info.model;
  const videos = info.videos ? ` (${info.videos.toLocaleString()} videos, ${info.moments.toLocaleString()} moments)` : "";
  footer.textContent = `${info.count.toLocaleString()} images indexed${videos} · model ${model} · ${info.index}`;
  $("roots").replaceChildren(
    ...info.roots.map((root) => {
      const option = document.createElement("option");
      option.value = root;
      return option;
    }),
  );
  if (info.count === 0) {
    statusLine.textContent = "The index is empty. Add photos with: clipsearch index FOLDER";
  }
}

loadInfo();
restore();
