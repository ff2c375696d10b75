// The page at /: send each image to /v1/classify, draw its answer, then fetch its Grad-CAM from /v1/explain.
// Plain browser JavaScript, no build step and nothing loaded from elsewhere.
"use strict";

(() => {
  const STATUS = {
    organ_and_subtype: { label: "organ and subtype", tone: "good" },
    organ_only: { label: "organ only", tone: "warn" },
    uncertain: { label: "uncertain", tone: "bad" },
    out_of_distribution: { label: "out of distribution", tone: "bad" },
  };
  const names = new Map(); // organ or subtype code -> display name, from the model card
  const subtypesOf = new Map(); // organ code -> its subtype codes, in head order
  let card = null;
  let cardLoaded = Promise.resolve();

  const $ = (selector, root = document) => root.querySelector(selector);
  const percent = (p) => (p > 0 && p < 0.001 ? "<0.1 %" : `${(100 * p).toFixed(1)} %`);
  const displayName = (code) => names.get(code) || code;

  function announce(text) {
    $("#announcer").textContent = text;
  }

  async function loadCard() {
    const info = $("#model-info");
    try {
      const response = await fetch("/v1/model");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      card = await response.json();
    } catch (error) {
      info.textContent = `The model card could not be loaded (${error.message}); predictions still work.`;
      return;
    }
    for (const organ of card.taxonomy.organs) {
      names.set(organ.name, organ.display_name);
      subtypesOf.set(organ.name, organ.subtypes.map((s) => s.name));
      for (const subtype of organ.subtypes) names.set(subtype.name, subtype.display_name);
    }
    const parts = [`Model: ${card.file || "in memory"}`, `${card.trunk.name} trunk`,
      `${card.preprocessing.image_size} px`];
    if (card.test) {
      parts.push(`test accuracy: organ ${percent(card.test.router_accuracy)}, subtype ${percent(card.test.accuracy)}` +
        ` (${card.test.n_images} images)`);
    }
    const covered = card.covered_organs || card.available_organs;
    const notClaimed = card.available_organs.filter((organ) => !covered.includes(organ));
    info.textContent = `${parts.join(" · ")}. Covers: ${covered.map(displayName).join(", ")}` +
      (notClaimed.length ? ` (too few training images to claim: ${notClaimed.map(displayName).join(", ")})` : "") + ".";
  }

  async function post(url, file) {
    const body = new FormData();
    body.append("files", file, file.name);
    const response = await fetch(url, { method: "POST", body });
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      // not JSON: the status says enough
    }
    if (!response.ok) throw new Error(payload && payload.detail ? payload.detail : `HTTP ${response.status}`);
    return payload.results[0];
  }

  function barList(list, entries, chosen) {
    list.replaceChildren();
    for (const entry of entries) {
      const item = document.createElement("li");
      item.className = "bar" + (entry.code === chosen ? " chosen" : "") + (entry.untrained ? " untrained" : "");
      const label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = displayName(entry.code);
      label.title = entry.code;
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = `${Math.max(0, Math.min(1, entry.p)) * 100}%`;
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = entry.untrained ? "not trained" : percent(entry.p);
      item.append(label, track, value);
      list.append(item);
    }
  }

  function statusOf(record) {
    return record.out_of_distribution ? "out_of_distribution" : record.status;
  }

  function statusNote(record) {
    const trust = (card && card.trust) || {};
    if (record.out_of_distribution) {
      const limit = trust.ood && trust.ood.threshold && record.ood_score !== null ? ` (distance ${record.ood_score.toFixed(3)}, threshold ` +
        `${trust.ood.threshold.toFixed(3)})` : "";
      return `The image looks like none of the images the model was trained on${limit}: not one of its kinds; the answers are guesses.`;
    }
    if (record.status === "organ_only") {
      const thresholds = (trust.selective && trust.selective.subtype_thresholds) || {};
      const own = thresholds[record.organ];
      const limit = own === null ? " (too few validation images to trust its subtypes)" :
        own !== undefined ? `, below its organ's threshold of ${percent(own)}` : "";
      return `The subtype is uncertain: P(subtype | organ) is ${percent(record.subtype_confidence)}${limit}.`;
    }
    if (record.status === "uncertain" && record.covered_organs && !record.covered_organs.includes(record.organ)) {
      return `The model was trained on too few ${displayName(record.organ)} images to claim that organ: treat both answers as guesses.`;
    }
    if (record.status === "uncertain") return "The router is unsure of the organ: treat both answers as guesses.";
    return `P(subtype | organ) ${percent(record.subtype_confidence)}.`;
  }

  function showPrediction(article, record) {
    const status = statusOf(record);
    Object.assign(article.dataset, { organ: record.organ, subtype: record.subtype, status });
    $(".organ", article).textContent = displayName(record.organ);
    $(".organ", article).title = record.organ;
    $(".subtype", article).textContent = `${displayName(record.subtype)} · joint P = ${percent(record.subtype_probability)}`;
    const badge = $(".badge", article);
    badge.textContent = STATUS[status].label;
    badge.className = `badge ${STATUS[status].tone}`;
    $(".status-note", article).textContent = statusNote(record);

    const untrained = new Set(record.untrained_organs);
    const organs = Object.entries(record.organ_probabilities)
      .map(([code, p]) => ({ code, p, untrained: untrained.has(code) }))
      .sort((a, b) => a.untrained - b.untrained || b.p - a.p);
    barList($(".organ-chart .bars", article), organs, record.organ);

    const organP = record.organ_probability;
    const codes = subtypesOf.get(record.organ) ||
      Object.keys(record.probabilities).filter((code) => code.startsWith(`${record.organ}_`));
    const subtypes = codes.map((code) => ({ code, p: organP > 0 ? record.probabilities[code] / organP : 0 }))
      .sort((a, b) => b.p - a.p);
    barList($(".subtype-chart .bars", article), subtypes, record.subtype);
    $(".subtype-caption", article).textContent = `Subtype: the ${displayName(record.organ)} head's P(subtype | organ)`;
    $(".charts", article).hidden = false;
  }

  function showGradcam(article, record) {
    const cams = record.gradcam;
    $(".cam-input", article).src = cams.input;
    $(".cam-input", article).alt = `${article.dataset.file} resized to the model's input`;
    $(".cam-organ", article).src = cams.organ;
    $(".cam-organ", article).alt = `Grad-CAM heat map for the organ ${displayName(record.organ)}`;
    $(".cam-organ-caption", article).textContent = `Organ: ${displayName(record.organ)}`;
    $(".cam-subtype", article).src = cams.subtype;
    $(".cam-subtype", article).alt = `Grad-CAM heat map for the subtype ${displayName(record.subtype)}`;
    $(".cam-subtype-caption", article).textContent = `Subtype: ${displayName(record.subtype)}`;
    $(".gradcam-note", article).textContent = `Red: what raised the score most (trunk stage ${cams.layer}).`;
    article.dataset.gradcam = "done";
  }

  async function handle(file) {
    const article = $("#result-template").content.firstElementChild.cloneNode(true);
    article.dataset.file = file.name;
    $(".file-name", article).textContent = file.name;
    const thumb = $(".thumb", article);
    thumb.src = URL.createObjectURL(file);
    thumb.alt = `Uploaded image ${file.name}`;
    thumb.addEventListener("error", () => { thumb.hidden = true; }, { once: true }); // e.g. TIFF in most browsers
    $("#results").prepend(article);

    let record;
    try {
      record = await post("/v1/classify", file);
    } catch (error) {
      article.dataset.state = "error";
      $(".pending-note", article).hidden = true;
      const message = $(".error", article);
      message.textContent = error.message;
      message.hidden = false;
      announce(`${file.name}: ${error.message}`);
      return;
    }
    await cardLoaded; // display names come from the model card
    $(".pending-note", article).hidden = true;
    showPrediction(article, record);
    article.dataset.state = "done";
    announce(`${file.name}: ${displayName(record.organ)}, ${displayName(record.subtype)}, ` +
      `${STATUS[statusOf(record)].label}.`);

    const gradcam = $(".gradcam", article);
    gradcam.hidden = false;
    try {
      showGradcam(article, await post("/v1/explain", file));
    } catch (error) {
      article.dataset.gradcam = "error";
      $(".gradcam-note", article).textContent = `Grad-CAM failed: ${error.message}`;
      $(".cams", article).hidden = true;
    }
  }

  function handleAll(files) {
    for (const file of files) handle(file);
  }

  function setUp() {
    const zone = $("#drop-zone");
    const input = $("#file-input");
    input.addEventListener("change", () => {
      handleAll([...input.files]);
      input.value = ""; // choosing the same file again should work
    });
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "drop"]) {
      zone.addEventListener(type, () => zone.classList.remove("dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      handleAll([...event.dataTransfer.files]);
    });
    // A file dropped beside the zone must not make the browser navigate away to it.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
    cardLoaded = loadCard();
  }

  setUp();
})();
