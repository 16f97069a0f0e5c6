// The histoseek search page: plain JavaScript, no libraries, nothing loaded from elsewhere.
// Text from the server (labels, paths, errors) only ever goes into textContent or attributes,
// never into HTML, so nothing in an index can inject markup.
"use strict";

(() => {
  const byId = (id) => document.getElementById(id);
  let maxK = 1000;
  let latest = 0; // only the newest search may draw its answer

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function itemUrl(id, what) {
    if (!Number.isInteger(id) || id < 0) throw new Error(`bad item id ${id}`);
    return `/api/items/${id}/${what}`;
  }

  async function api(path, options) {
    const response = await fetch(path, options);
    let body;
    try {
      body = await response.json();
    } catch {
      body = { error: `${response.status} ${response.statusText}` };
    }
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  function setStatus(text, isError) {
    const status = byId("status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  async function loadInfo() {
    try {
      const info = await api("/api/info");
      maxK = info.limits.max_k;
      byId("k").max = String(maxK);
      const labels = Object.keys(info.labels).length;
      byId("served-by").textContent =
        `index ${info.index}: ${info.items.toLocaleString()} items, ${labels} labels · ` +
        `model ${info.model} · ${info.backend}`;
    } catch (error) {
      byId("served-by").textContent = `cannot reach the service: ${error.message}`;
    }
  }

  function wantedK() {
    const k = Math.round(Number(byId("k").value));
    const clamped = Number.isFinite(k) ? Math.min(Math.max(k, 1), maxK) : 10;
    byId("k").value = String(clamped);
    return clamped;
  }

  function showQuery(src, caption) {
    const image = byId("query-image");
    image.hidden = false;
    image.src = src;
    byId("query-caption").textContent = caption;
    byId("query-view").hidden = false;
  }

  async function search(form) {
    const ticket = ++latest;
    form.append("k", String(wantedK()));
    form.append("exact", byId("exact").checked ? "true" : "false");
    setStatus("searching…");
    byId("answer").dataset.state = "searching";
    const started = performance.now();
    try {
      const answer = await api("/api/search", { method: "POST", body: form });
      if (ticket !== latest) return;
      render(answer, performance.now() - started);
    } catch (error) {
      if (ticket !== latest) return;
      byId("results").replaceChildren();
      byId("majority").textContent = "";
      byId("answer").dataset.state = "error";
      setStatus(error.message, true);
    }
  }

  function searchFile(file) {
    if (!file) return;
    showQuery(URL.createObjectURL(file), `uploaded: ${file.name}`);
    const form = new FormData();
    form.append("image", file, file.name);
    search(form);
  }

  // Where a hit comes from: its slide, patient and place for a tile, else its file.
  function origin(hit) {
    if (hit.slide === null || hit.slide === undefined) return hit.path;
    return `slide ${hit.slide} · patient ${hit.group} · x ${hit.x}, y ${hit.y}`;
  }

  function searchItem(hit) {
    showQuery(itemUrl(hit.item, "thumbnail"), `item #${hit.item}: ${hit.label} · ${origin(hit)}`);
    const form = new FormData();
    form.append("item", String(hit.item));
    const exclude = byId("exclude").value;
    // An image file has no slide to leave out; its patient only when the index knows it.
    const applies =
      exclude === "same-group" ? hit.group !== null : exclude === "same-slide" && hit.slide !== null;
    if (applies) form.append("exclude", exclude);
    search(form);
  }

  function hitCard(hit) {
    const card = element("li", hit.matches_majority ? "hit" : "hit mismatch");
    card.dataset.item = String(hit.item);
    const view = element("button", "view");
    view.type = "button";
    view.title = "Show full size";
    const image = element("img");
    image.src = itemUrl(hit.item, "thumbnail");
    image.alt = hit.label;
    image.loading = "lazy";
    view.append(image);
    view.addEventListener("click", () => openViewer(hit));
    const meta = element("div", "meta");
    meta.append(element("span", "rank", `#${hit.rank}`));
    meta.append(element("span", "similarity", hit.similarity.toFixed(4)));
    const label = element("div", "label", hit.label || "-");
    if (!hit.matches_majority) label.append(element("span", "flag", "≠ majority"));
    const path = element("div", "path", origin(hit));
    path.title = hit.path;
    const more = element("button", "more", "More like this");
    more.type = "button";
    more.addEventListener("click", () => searchItem(hit));
    card.append(view, meta, label, path, more);
    return card;
  }

  function render(answer, roundTripMs) {
    byId("results").replaceChildren(...answer.hits.map(hitCard));
    const majority = answer.majority;
    byId("majority").textContent = majority
      ? `Majority label among the ${majority.of} results: ${majority.label} ` +
        `(${majority.count}/${majority.of}). A hint, not a diagnosis.`
      : "No results.";
    const mode = answer.mode === "exact" ? "exact search" : "Annoy search";
    // An upload that is itself in the index is left out of its results, as `query` does.
    const copies = answer.query.copies || [];
    const itself = copies.length
      ? ` · the index holds this very image (${copies.map((id) => `#${id}`).join(", ")}), left out`
      : "";
    setStatus(
      `${answer.hits.length} results from ${answer.index} · model ${answer.model} · ` +
        `${answer.backend} · ${mode} · ${Math.round(roundTripMs)} ms ` +
        `(server ${answer.timings.total_ms.toFixed(1)} ms)${itself}`,
    );
    const state = byId("answer").dataset;
    state.query = answer.query.kind === "item" ? `item:${answer.query.item}` : "upload";
    state.state = "done";
  }

  function openViewer(hit) {
    const viewer = byId("viewer");
    byId("viewer-image").src = itemUrl(hit.item, "image");
    byId("viewer-open").href = itemUrl(hit.item, "image");
    byId("viewer-caption").textContent =
      `#${hit.rank} · similarity ${hit.similarity.toFixed(4)} · ${hit.label} · ${hit.path}`;
    const onSlide = hit.slide !== null && hit.slide !== undefined;
    byId("viewer-slide").hidden = !onSlide;
    if (onSlide) {
      byId("viewer-slide-image").src = itemUrl(hit.item, "slide");
      byId("viewer-slide-caption").textContent =
        `${origin(hit)} · ${hit.size} px at level 0 (${hit.mpp} µm/px)`;
    }
    byId("viewer-more").onclick = () => {
      viewer.close();
      searchItem(hit);
    };
    viewer.showModal();
  }

  const drop = byId("drop-zone");
  byId("file-input").addEventListener("change", (event) => {
    searchFile(event.target.files[0]);
    event.target.value = ""; // so that choosing the same file again searches again
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    searchFile(event.dataTransfer.files[0]);
  });
  byId("viewer-close").addEventListener("click", () => byId("viewer").close());
  // Browsers show no TIFF: the query is still searched, only its preview is left out.
  byId("query-image").addEventListener("error", (event) => {
    event.target.hidden = true;
    byId("query-caption").textContent += " (no preview of this file type in the browser)";
  });
  loadInfo();
})();
