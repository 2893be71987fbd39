// medpipe serve page: upload an image to /predict and show the prediction. Plain JavaScript, no build step.
"use strict";
const $ = (id) => document.getElementById(id);
let modelInfo = null;

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function pct(p) { return (100 * p).toFixed(1) + " %"; }

async function loadModelInfo() {
  try {
    const res = await fetch("/model");
    modelInfo = await res.json();
    $("title").textContent = modelInfo.pipeline;
    const what = modelInfo.task === "classification"
      ? "classifier of " + modelInfo.classes.join(" / ")
      : "segmenter (" + modelInfo.num_classes + " classes)";
    $("model-summary").textContent = modelInfo.net + " " + what;
    $("explain-label").hidden = modelInfo.task !== "classification";
    $("run").textContent = modelInfo.run_id ? "MLflow run " + modelInfo.run_id : "model " + modelInfo.source;
  } catch (err) {
    $("model-summary").textContent = "model information unavailable: " + err;
  }
}

function renderClassification(r) {
  $("label").textContent = r.label;
  $("rule").textContent = "Decision: " + r.decision_rule;
  const ood = $("ood");
  ood.hidden = r.ood_score === undefined;
  if (!ood.hidden) {
    ood.className = r.out_of_distribution ? "flag" : "muted";
    ood.textContent = (r.out_of_distribution ? "Unusual input (out of distribution): " : "In distribution: ") +
      "score " + r.ood_score.toFixed(3) + (r.out_of_distribution ? " > " : " ≤ ") + "threshold " +
      r.ood_threshold.toFixed(3) + " (fitted on validation)";
  }
  const ex = $("explanation");
  ex.hidden = !r.explanation_png;
  if (r.explanation_png) ex.src = "data:image/png;base64," + r.explanation_png;
  const bars = $("bars");
  bars.innerHTML = "";
  for (const [name, p] of Object.entries(r.probabilities)) {
    const li = document.createElement("li");
    li.className = name === r.label ? "top" : "";
    li.dataset.cls = name;
    const label = document.createElement("span");
    label.textContent = name;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * p).toFixed(1) + "%";
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.className = "prob";
    value.textContent = pct(p);
    li.append(label, bar, value);
    bars.appendChild(li);
  }
}

function colouredMask(maskB64) {
  // Turn the 0/255 (or class index) mask into a translucent colour overlay on a canvas.
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.width; c.height = img.height;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height);
      for (let i = 0; i < d.data.length; i += 4) {
        const on = d.data[i] > 0;
        d.data[i] = 255; d.data[i + 1] = 40; d.data[i + 2] = 40; d.data[i + 3] = on ? 255 : 0;
      }
      ctx.putImageData(d, 0, 0);
      resolve(c.toDataURL("image/png"));
    };
    img.src = "data:image/png;base64," + maskB64;
  });
}

async function renderSegmentation(r) {
  const a = r.area;
  $("label").textContent = "Foreground: " + pct(a.foreground_fraction) + " of the image";
  $("rule").textContent = r.mask_encoding;
  const dl = $("area");
  dl.innerHTML = "";
  const rows = [["foreground pixels", a.foreground_pixels.toLocaleString()],
                ["foreground area", a.foreground_mm2 === null ? "unknown (no pixel spacing)"
                                                             : a.foreground_mm2.toFixed(1) + " mm²"]];
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  }
  $("overlay").src = await colouredMask(r.mask_png);
  $("overlay").hidden = !$("overlay-toggle").checked;
  $("overlay-toggle-label").hidden = false;
}

async function isDicom(file) {
  // DICOM Part 10: 128 bytes of preamble, then "DICM" (what the server checks too).
  if (file.size < 132) return false;
  const magic = new Uint8Array(await file.slice(128, 132).arrayBuffer());
  return String.fromCharCode(...magic) === "DICM";
}

function segFileName(name) {
  return name.replace(/\.(dcm|dicom)$/i, "") + ".seg.dcm";
}

function showDicomSeg(b64, fileName) {
  // The DICOM SEG from the JSON answer, offered as a file download.
  const link = $("dicom-seg");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  if (!b64) { link.hidden = true; link.removeAttribute("href"); return; }
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  link.href = URL.createObjectURL(new Blob([bytes], { type: "application/dicom" }));
  link.download = segFileName(fileName);
  link.hidden = false;
}

async function predict(file) {
  showError("");
  $("status").textContent = "predicting " + file.name + " …";
  const form = new FormData();
  form.append("file", file, file.name);
  // a segmentation of a DICOM upload also comes back as a DICOM SEG
  const wantSeg = modelInfo !== null && modelInfo.task === "segmentation" && await isDicom(file);
  let res, body;
  try {
    const explain = modelInfo !== null && modelInfo.task === "classification" && $("explain-toggle").checked;
    res = await fetch("/predict?preview=true" + (wantSeg ? "&dicom_seg=true" : "") + (explain ? "&explain=true" : ""),
                      { method: "POST", body: form });
    body = await res.json();
  } catch (err) {
    $("status").textContent = "";
    showError("request failed: " + err);
    return;
  }
  $("status").textContent = "";
  if (!res.ok) {
    showError("Error " + res.status + ": " + (body.detail || JSON.stringify(body)));
    return;
  }
  $("result-panel").hidden = false;
  $("image").src = "data:image/png;base64," + body.preview_png;
  $("overlay").hidden = true;
  $("overlay-toggle-label").hidden = true;
  $("bars").innerHTML = ""; $("area").innerHTML = "";
  $("explanation").hidden = true; $("ood").hidden = true;
  const warnings = body.warnings || [];
  $("warnings").textContent = warnings.map((w) => "Warning: " + w).join("\n");
  $("warnings").hidden = warnings.length === 0;
  const inp = body.input;
  $("input-facts").textContent = file.name + ": " + inp.format.toUpperCase() + " " + inp.width + " × " + inp.height +
    (inp.pixel_spacing_mm ? ", pixel " + inp.pixel_spacing_mm.map((v) => v.toFixed(3)).join(" × ") + " mm" : "") +
    ", " + body.seconds.toFixed(2) + " s";
  if (body.task === "classification") renderClassification(body);
  else await renderSegmentation(body);
  showDicomSeg(body.dicom_seg_b64, file.name);
  document.body.dataset.state = "done";
}

function setup() {
  const drop = $("drop"), input = $("file-input");
  input.addEventListener("change", () => { if (input.files.length) predict(input.files[0]); });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]); });
  $("overlay-toggle").addEventListener("change", (e) => { $("overlay").hidden = !e.target.checked; });
  loadModelInfo();
}
setup();
