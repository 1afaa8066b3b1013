// The search page: reads ?q=, asks /api/search, draws the 3 x 3 grid; a click shows the image large.
"use strict";

const grid = document.getElementById("grid");
const statusLine = document.getElementById("status");
const lightbox = document.getElementById("lightbox");

function say(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", Boolean(isError));
}

function hitFigure(hit) {
  const fig = document.createElement("figure");
  fig.className = "hit";
  fig.dataset.id = String(hit.id);
  const img = document.createElement("img");
  img.src = hit.thumbnail;
  img.alt = hit.label || "image " + hit.id;
  img.loading = "lazy";
  const cap = document.createElement("figcaption");
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = "#" + hit.rank + " " + (hit.label || "(no label)");
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(4);
  cap.append(label, score);
  fig.append(img, cap);
  fig.addEventListener("click", () => openLarge(hit));
  return fig;
}

function openLarge(hit) {
  document.getElementById("large").src = hit.url;
  document.getElementById("large").alt = hit.label || "";
  document.getElementById("large-caption").textContent =
    (hit.label || "(no label)") + " - score " + hit.score.toFixed(4) + " - id " + hit.id;
  lightbox.hidden = false;
}

function closeLarge() {
  lightbox.hidden = true;
  document.getElementById("large").removeAttribute("src");
}

async function search(q) {
  say("searching...");
  const started = performance.now();
  const res = await fetch("/api/search?k=9&q=" + encodeURIComponent(q));
  const body = await res.json();
  if (!res.ok) {
    grid.replaceChildren();
    say(body.error || "the search failed (" + res.status + ")", true);
    return;
  }
  grid.replaceChildren(...body.results.map(hitFigure));
  const ms = Math.round(performance.now() - started);
  say(body.results.length + " results in " + ms + " ms" +
      (body.truncated ? " (the query is longer than the model reads: only its start counts)" : ""));
}

async function showInfo() {
  try {
    const res = await fetch("/api/info");
    const info = await res.json();
    document.getElementById("info").textContent =
      info.images.toLocaleString() + " images, " + info.model + " (" + info.backend + "), index generation " +
      info.generation + (info.built_by_profile ? ", built by profile " + info.built_by_profile : "");
  } catch (err) {
    document.getElementById("info").textContent = "";
  }
}

document.getElementById("close").addEventListener("click", closeLarge);
lightbox.addEventListener("click", (ev) => { if (ev.target === lightbox) closeLarge(); });
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeLarge(); });

const q = new URLSearchParams(window.location.search).get("q");
if (q !== null && q.trim() !== "") {
  document.getElementById("q").value = q;
  search(q).catch((err) => say("the search failed: " + err, true));
}
showInfo();
