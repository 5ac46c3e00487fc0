// fgsearch web page: plain JS, no build step. Every string from the server is put into the page
// with textContent or as an attribute value, never parsed as HTML.
"use strict";

const PAGE = 60;
const TOKEN_KEY = "fgsearch-token";
const $ = (id) => document.getElementById(id);

const state = {
  query: null,      // the body of the last search (without offset/k)
  upload: null,     // a File chosen with "Photo…"
  offset: 0,
  more: false,
  loading: false,
  maxResults: 1000,
  blobs: [],        // object URLs of the grid's thumbnails, revoked on a new search
};

// ---- talking to the server ------------------------------------------------------------------
let tokenWaiters = null;

function askToken() {
  if (!tokenWaiters) {
    tokenWaiters = [];
    $("token-dialog").hidden = false;
    $("token").value = "";
    $("token").focus();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token-dialog").hidden = true;
  const waiting = tokenWaiters || [];
  tokenWaiters = null;
  waiting.forEach((resolve) => resolve());
});

const BUSY_RETRIES = 3; // a 503 with Retry-After (the server's decoding budget is full) is tried again

async function request(url, options = {}) {
  for (let busy = 0; ; ) {
    const headers = new Headers(options.headers || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.set("Authorization", "Bearer " + token);
    const resp = await fetch(url, { ...options, headers });
    if (resp.status === 401) { await askToken(); continue; }
    const retryAfter = Number(resp.headers.get("Retry-After"));
    if (resp.status === 503 && retryAfter > 0 && busy < BUSY_RETRIES) {
      busy += 1;
      await new Promise((resolve) => setTimeout(resolve, 1000 * Math.min(retryAfter, 30)));
      continue;
    }
    if (!resp.ok) {
      let message = resp.status + " " + resp.statusText;
      try { message = (await resp.json()).error || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    return resp;
  }
}

const getJSON = async (url) => (await request(url)).json();

async function blobURL(url) {
  const resp = await request(url);
  return URL.createObjectURL(await resp.blob());
}

// ---- the query form and the URL -------------------------------------------------------------
const FIELDS = { q: "q", not: "not", by: "by", path: "path", under: "under", after: "after", before: "before" };

function formToQuery() {
  const text = $("q").value.trim();
  const body = { text: text || null, negative: $("not").value.trim() || null, by: $("by").value, filters: {} };
  const f = body.filters;
  if ($("path").value.trim()) f.path = $("path").value.trim();
  if ($("under").value.trim()) f.under = $("under").value.trim();
  if ($("after").value) f.taken_after = $("after").value;
  if ($("before").value) f.taken_before = $("before").value;
  const iq = imageQuery;
  if (iq) { body.image_id = iq.id; if (iq.box) body.box = iq.box; }
  return body;
}

function writeURL() {
  const p = new URLSearchParams();
  for (const [key, id] of Object.entries(FIELDS)) {
    const v = $(id).value.trim();
    if (v && !(key === "by" && v === "image")) p.set(key, v);
  }
  if (imageQuery) {
    p.set("image", String(imageQuery.id));
    if (imageQuery.box) p.set("box", imageQuery.box.map((v) => v.toFixed(4)).join(","));
  }
  const qs = p.toString();
  history.replaceState(null, "", qs ? "/?" + qs : "/");
}

function readURL() {
  const p = new URLSearchParams(location.search);
  for (const [key, id] of Object.entries(FIELDS)) if (p.has(key)) $(id).value = p.get(key);
  if (["path", "under", "after", "before"].some((k) => p.has(k))) $("filters").open = true;
  const id = parseInt(p.get("image") || "", 10);
  if (Number.isInteger(id) && id > 0) {
    const box = (p.get("box") || "").split(",").map(Number);
    setImageQuery(id, box.length === 4 && box.every(Number.isFinite) ? box : null);
  }
  return p.has("q") || p.has("image");
}

let imageQuery = null; // {id, box} of "more like this" or a drawn box

function setImageQuery(id, box, keepText = true) {
  imageQuery = id ? { id, box } : null;
  if (!keepText) $("q").value = ""; // the photo (or its region) is the new query
  state.upload = null;
  $("image-query").hidden = !imageQuery;
  $("image-query-label").textContent = imageQuery
    ? (box ? `Region of image #${id}: ${box.map((v) => v.toFixed(2)).join(", ")}` : `Like image #${id}`)
    : "";
}

$("image-query-clear").addEventListener("click", () => { setImageQuery(null); $("upload").value = ""; search(); });

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  setImageQuery(null);
  state.upload = file;
  $("image-query").hidden = false;
  $("image-query-label").textContent = "Photo: " + file.name;
  search();
});

$("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
$("q").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); search(); }
});

// ---- searching and the paged grid -----------------------------------------------------------
function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function search() {
  const body = formToQuery();
  if (!body.text && !body.image_id && !state.upload) { setStatus("Type a description, or open a photo and draw a box."); return; }
  writeURL();
  state.query = body;
  state.offset = 0;
  state.blobs.forEach((u) => URL.revokeObjectURL(u));
  state.blobs = [];
  $("grid").replaceChildren();
  await loadPage();
}

async function loadPage() {
  if (state.loading || !state.query) return;
  state.loading = true;
  $("more").hidden = true;
  setStatus("Searching…");
  const k = Math.min(PAGE, state.maxResults - state.offset);
  const body = { ...state.query, k, offset: state.offset };
  const options = { method: "POST" };
  if (state.upload) {
    const form = new FormData();
    form.append("query", JSON.stringify(body));
    form.append("image", state.upload);
    options.body = form;
  } else {
    options.headers = { "Content-Type": "application/json" };
    options.body = JSON.stringify(body);
  }
  try {
    const data = await (await request("/api/search", options)).json();
    data.results.forEach((hit) => $("grid").appendChild(card(hit)));
    state.offset += data.results.length;
    state.more = data.more && state.offset < state.maxResults;
    $("more").hidden = !state.more;
    const shown = state.offset;
    let text = shown ? `${shown} result${shown === 1 ? "" : "s"}${state.more ? " so far" : ""}` : "No results.";
    text += ` · text ${data.timing_ms.encode} ms, search ${data.timing_ms.search} ms`;
    if (!state.more && shown >= state.maxResults) text += ` · the first ${state.maxResults} are shown: refine the query`;
    data.notices.forEach((n) => { text += " · " + n; });
    setStatus(text);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    state.loading = false;
  }
}

$("more").addEventListener("click", loadPage);
new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting) && state.more) loadPage();
}, { rootMargin: "600px" }).observe($("sentinel"));

const thumbLoader = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (!e.isIntersecting) continue;
    thumbLoader.unobserve(e.target);
    const img = e.target.querySelector("img");
    blobURL(`/api/images/${img.dataset.id}/thumb?size=256`)
      .then((u) => { state.blobs.push(u); img.src = u; })
      .catch((err) => { img.alt = err.message; });
  }
}, { rootMargin: "400px" });

function placeBox(el, box) {
  el.style.left = box[0] * 100 + "%";
  el.style.top = box[1] * 100 + "%";
  el.style.width = (box[2] - box[0]) * 100 + "%";
  el.style.height = (box[3] - box[1]) * 100 + "%";
}

function div(cls) { const d = document.createElement("div"); d.className = cls; return d; }

function card(hit) {
  const c = div("card");
  c.tabIndex = 0;
  c.dataset.imageId = String(hit.image_id);
  const name = hit.path.split(/[\\/]/).pop();
  c.title = `${hit.path}\nscore ${hit.score.toFixed(3)}`;
  const frame = div("frame");
  frame.style.aspectRatio = `${hit.width} / ${hit.height}`;
  const img = document.createElement("img");
  img.alt = name;
  img.dataset.id = String(hit.image_id);
  frame.appendChild(img);
  if (hit.box) { const b = div("box best"); placeBox(b, hit.box); frame.appendChild(b); }
  const score = div("score");
  score.textContent = hit.score.toFixed(3);
  frame.appendChild(score);
  const cap = div("caption");
  cap.textContent = name;
  c.append(frame, cap);
  c.addEventListener("click", () => openViewer(hit));
  c.addEventListener("keydown", (ev) => { if (ev.key === "Enter") openViewer(hit); });
  thumbLoader.observe(c);
  return c;
}

// ---- the photo viewer: all regions, more like this, draw a box ------------------------------
let current = null; // {hit, info, url}

async function openViewer(hit) {
  closeViewer();
  current = { hit, info: null, url: null };
  const stage = $("stage");
  const maxW = Math.min(window.innerWidth * 0.92, 1076);
  const maxH = window.innerHeight * 0.96 - 110;
  const w = Math.max(120, Math.min(maxW, maxH * hit.width / hit.height));
  stage.style.width = w + "px";
  stage.style.aspectRatio = `${hit.width} / ${hit.height}`;
  $("viewer-title").textContent = `#${hit.image_id} · ${hit.path} · ${hit.width}×${hit.height}`;
  $("regions").replaceChildren();
  $("drawn").hidden = true;
  $("viewer-img").removeAttribute("src");
  $("viewer").hidden = false;
  $("close").focus();
  const mine = current;
  try {
    const [info, url] = await Promise.all([
      getJSON(`/api/images/${hit.image_id}`),
      blobURL(`/api/images/${hit.image_id}/thumb?size=1024`),
    ]);
    if (current !== mine) { URL.revokeObjectURL(url); return; }
    mine.info = info;
    mine.url = url;
    $("viewer-img").src = url;
    for (const r of info.regions) {
      const b = div("box region");
      placeBox(b, r.box);
      b.title = `region ${r.region_id}`;
      $("regions").appendChild(b);
    }
    if (hit.box) { const b = div("box best"); placeBox(b, hit.box); $("regions").appendChild(b); }
  } catch (err) {
    setStatus(err.message, true);
  }
}

function closeViewer() {
  if (current && current.url) URL.revokeObjectURL(current.url);
  current = null;
  $("viewer").hidden = true;
}

$("close").addEventListener("click", closeViewer);
$("viewer").addEventListener("click", (ev) => { if (ev.target === $("viewer")) closeViewer(); });
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && !$("viewer").hidden) { ev.preventDefault(); closeViewer(); }
});

$("like").addEventListener("click", () => {
  if (!current) return;
  const id = current.hit.image_id;
  closeViewer();
  setImageQuery(id, null, false);
  search();
});

$("original").addEventListener("click", async () => {
  if (!current) return;
  try {
    const url = await blobURL(`/api/images/${current.hit.image_id}/file`);
    window.open(url, "_blank", "noopener");
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) { setStatus(err.message, true); }
});

let drag = null;

function stagePoint(ev) {
  const r = $("stage").getBoundingClientRect();
  return [Math.min(Math.max((ev.clientX - r.left) / r.width, 0), 1), Math.min(Math.max((ev.clientY - r.top) / r.height, 0), 1)];
}

function dragBox(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}

$("stage").addEventListener("pointerdown", (ev) => {
  if (!current || ev.button !== 0) return;
  ev.preventDefault();
  $("stage").setPointerCapture(ev.pointerId);
  drag = { start: stagePoint(ev) };
  $("drawn").hidden = false;
  placeBox($("drawn"), [...drag.start, ...drag.start]);
});

$("stage").addEventListener("pointermove", (ev) => {
  if (drag) placeBox($("drawn"), dragBox(drag.start, stagePoint(ev)));
});

$("stage").addEventListener("pointerup", (ev) => {
  if (!drag || !current) return;
  const box = dragBox(drag.start, stagePoint(ev));
  drag = null;
  if (box[2] - box[0] < 0.02 || box[3] - box[1] < 0.02) { $("drawn").hidden = true; return; } // a click, not a box
  const id = current.hit.image_id;
  closeViewer();
  setImageQuery(id, box, false);
  search();
});

// ---- start ----------------------------------------------------------------------------------
(async () => {
  const wanted = readURL();
  try {
    const st = await getJSON("/api/status");
    state.maxResults = st.server.max_results;
    if (!wanted) setStatus(`${st.counts.images} images in ${st.library} · model ${st.model}`);
  } catch (err) {
    setStatus(err.message, true);
  }
  if (wanted) search();
  $("q").focus();
})();
