// pysdcpp-server's page: the native async API (/sdcpp/v1/...), no framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const DONE = ["completed", "failed", "cancelled"];
let currentJob = null;
const history = [];

async function api(method, path, body) {
  const init = { method };
  if (body !== undefined) {
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (e) { /* not JSON */ }
  if (!res.ok) {
    const msg = data && data.error ? data.error + (data.message ? ": " + data.message : "") : res.statusText;
    throw new Error(`${res.status}: ${msg}`);
  }
  return data;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("cancel").disabled = !busy;
  $("progress").hidden = !busy;
  if (busy) $("progress").removeAttribute("value");
}

async function init() {
  try {
    const caps = await api("GET", "/sdcpp/v1/capabilities");
    $("model").textContent = caps.model.name;
    for (const name of caps.samplers) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = name;
      $("sampler").appendChild(opt);
    }
    const d = caps.defaults;
    $("width").value = d.width;
    $("height").value = d.height;
    $("steps").value = d.sample_params.sample_steps;
    $("cfg").value = d.sample_params.guidance.txt_cfg;
    $("seed").value = d.seed;
    $("sampler").value = d.sample_params.sample_method;
    $("width").max = caps.limits.max_width;
    $("height").max = caps.limits.max_height;
  } catch (e) {
    setStatus("could not read the server's capabilities: " + e.message, true);
  }
  try {
    for (const item of JSON.parse(sessionStorage.getItem("pysdcpp-history") || "[]")) addToHistory(item, false);
  } catch (e) { /* nothing kept */ }
}

function readForm() {
  const req = {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    width: parseInt($("width").value, 10),
    height: parseInt($("height").value, 10),
    seed: parseInt($("seed").value, 10),
    sample_params: {
      sample_steps: parseInt($("steps").value, 10),
      guidance: { txt_cfg: parseFloat($("cfg").value) },
    },
  };
  if ($("sampler").value !== "default") req.sample_params.sample_method = $("sampler").value;
  return req;
}

async function poll(id) {
  for (;;) {
    const job = await api("GET", "/sdcpp/v1/jobs/" + encodeURIComponent(id));
    if (DONE.includes(job.status)) return job;
    const p = job.progress || {};
    if (job.status === "queued") {
      setStatus(`queued (position ${job.queue_position})`);
    } else if (p.steps > 0) {
      $("progress").max = p.steps;
      $("progress").value = p.step;
      setStatus(`generating: step ${p.step}/${p.steps}, ${p.elapsed.toFixed(1)} s`);
    } else {
      setStatus(`generating, ${(p.elapsed || 0).toFixed(1)} s`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

function show(item) {
  $("result").hidden = false;
  $("image").src = item.src;
  $("image").dataset.seed = item.seed;
  $("download").href = item.src;
  $("download").download = item.name;
  $("params").textContent = JSON.stringify(item.params, null, 2);
}

function addToHistory(item, keep = true) {
  history.unshift(item);
  const li = document.createElement("li");
  const img = document.createElement("img");
  img.src = item.src;
  img.alt = item.params.prompt;
  img.title = `${item.params.prompt} (seed ${item.seed})`;
  img.addEventListener("click", () => show(item));
  li.appendChild(img);
  $("history").prepend(li);
  if (keep) {
    try {
      sessionStorage.setItem("pysdcpp-history", JSON.stringify(history.slice().reverse()));
    } catch (e) { /* storage full: the page keeps them until it is closed */ }
  }
}

async function generate(ev) {
  ev.preventDefault();
  const req = readForm();
  setBusy(true);
  setStatus("submitting");
  const t0 = performance.now();
  try {
    const job = await api("POST", "/sdcpp/v1/img_gen", req);
    currentJob = job.id;
    const done = await poll(job.id);
    if (done.status === "completed") {
      const fmt = done.result.output_format;
      for (const image of done.result.images) {
        const params = { ...req, seed: image.seed };
        const item = { src: `data:image/${fmt};base64,${image.b64_json}`, seed: image.seed, params,
                       name: `pysdcpp-${image.seed}.${fmt === "jpeg" ? "jpg" : fmt}` };
        addToHistory(item);
        show(item);
      }
      setStatus(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    } else if (done.status === "cancelled") {
      setStatus("cancelled");
    } else {
      setStatus("failed: " + (done.error ? done.error.message : "unknown error"), true);
    }
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    currentJob = null;
    setBusy(false);
  }
}

async function cancel() {
  if (!currentJob) return;
  $("cancel").disabled = true;
  setStatus("cancelling");
  try {
    await api("POST", `/sdcpp/v1/jobs/${encodeURIComponent(currentJob)}/cancel`);
  } catch (e) {
    setStatus(e.message, true);
  }
}

$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", cancel);
init();
