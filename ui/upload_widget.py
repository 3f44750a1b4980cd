"""The Data page's upload box when ``ui.uploads``' route is mounted: the browser streams the file
to that route (with a progress bar) instead of Streamlit's in-memory uploader."""

from __future__ import annotations

import re

import streamlit as st

from ui import uploads

_HTML = """
<div class="scwb-upload">
  <label class="zone">
    <input type="file" />
    <span class="title">Drag and drop a file here, or click to choose one</span>
    <span class="hint"></span>
  </label>
  <progress max="1" value="0" hidden></progress>
  <div class="status" role="status"></div>
</div>
"""

_CSS = """
.scwb-upload { font-family: var(--st-font, sans-serif); font-size: 0.95rem; }
.zone { display: flex; flex-direction: column; gap: 0.2rem; padding: 1.1rem 1rem;
  border-radius: 0.5rem; cursor: pointer; color: var(--st-text-color);
  background: var(--st-secondary-background-color); border: 1px dashed transparent; }
.zone:hover, .zone.over { border-color: var(--st-primary-color); }
.zone input { position: absolute; width: 1px; height: 1px; opacity: 0; }
.title { font-weight: 600; }
.hint { opacity: 0.7; font-size: 0.85rem; }
progress { width: 100%; margin-top: 0.5rem; accent-color: var(--st-primary-color); }
.status { margin-top: 0.35rem; min-height: 1.2rem; overflow-wrap: anywhere; }
.status.error { color: var(--st-red-color, #d33); }
"""

_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const root = parentElement.querySelector(".scwb-upload");
  const input = root.querySelector("input");
  const zone = root.querySelector(".zone");
  const bar = root.querySelector("progress");
  const status = root.querySelector(".status");
  root.querySelector(".hint").textContent = data.hint;
  input.accept = data.accept;
  let xhr = null;

  const fmt = (n) => n >= 2 ** 30 ? (n / 2 ** 30).toFixed(2) + " GB"
    : n >= 2 ** 20 ? (n / 2 ** 20).toFixed(1) + " MB" : Math.max(1, Math.round(n / 1024)) + " KB";
  const say = (text, error) => { status.textContent = text; status.classList.toggle("error", !!error); };

  function send(file) {
    const lower = file.name.toLowerCase();
    if (!data.suffixes.some((s) => lower.endsWith(s))) {
      say(`${file.name} is not a file type the app reads: ${data.suffixes.join(", ")}.`, true);
      return;
    }
    if (file.size > data.max_bytes) {
      say(`${file.name} is ${fmt(file.size)}, over the upload limit of ${fmt(data.max_bytes)}: ` +
          "ask the operator to open it by its path on the server.", true);
      return;
    }
    if (xhr) xhr.abort();
    xhr = new XMLHttpRequest();
    const started = performance.now();
    xhr.open("PUT", data.url + "?name=" + encodeURIComponent(file.name));
    xhr.upload.onprogress = (e) => {
      bar.hidden = false;
      bar.value = e.total ? e.loaded / e.total : 0;
      say(`Uploading ${file.name}: ${fmt(e.loaded)} of ${fmt(file.size)}`);
    };
    xhr.onload = () => {
      bar.hidden = true;
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = {}; }
      if (xhr.status === 200) {
        const s = ((performance.now() - started) / 1000).toFixed(1);
        say(`Uploaded ${file.name} (${fmt(file.size)}) in ${s} s.`);
        setTriggerValue("uploaded", file.name);
      } else {
        say(body.error || `The upload failed (HTTP ${xhr.status}): try again.`, true);
      }
      xhr = null;
    };
    xhr.onerror = () => { bar.hidden = true; say("The upload failed: the connection to the app was lost.", true); xhr = null; };
    xhr.send(file);
    say(`Uploading ${file.name}...`);
  }

  input.onchange = () => { if (input.files.length) send(input.files[0]); input.value = ""; };
  zone.ondragover = (e) => { e.preventDefault(); zone.classList.add("over"); };
  zone.ondragleave = () => zone.classList.remove("over");
  zone.ondrop = (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
  };
  return () => { if (xhr) xhr.abort(); };
}
"""

_component = st.components.v2.component("scwb_upload", html=_HTML, css=_CSS, js=_JS)


def upload_box(token: str, key: str) -> None:
    """Mount the upload box for ``token`` (``uploads.ticket()``); a finished upload reruns the
    page, which then finds the file with ``uploads.received(token)``.

    Streamlit joins a component's key and its event names with ``__`` and refuses a key that
    holds one; tickets are url-safe base64, so a key made from one may hold it (about one ticket
    in 380 crashed the Data page): runs of ``_`` are folded here, for every caller."""
    key = re.sub("_{2,}", "_", key)
    limit = uploads.max_bytes()
    hint = (
        ".h5ad, 10x .h5, a zipped 10x .mtx folder, or .csv/.tsv, gzipped or not (cells x genes) · "
        f"up to {limit // 2**20:,} MB"
    )
    _component(
        key=key,
        data={
            "url": "/api/upload/" + token,
            "suffixes": list(uploads.SUFFIXES),
            # the file chooser filters by the last extension only (".gz", not ".csv.gz")
            "accept": ",".join(sorted({"." + x.rsplit(".", 1)[1] for x in uploads.SUFFIXES})),
            "max_bytes": limit,
            "hint": hint,
        },
        on_uploaded_change=lambda: None,
    )
