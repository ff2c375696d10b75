"""``summary.md``: the results as Markdown tables, for reading first and for docs/benchmarks.md later."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _header(data: dict[str, Any]) -> list[str]:
    device, flags = data.get("device", {}), data.get("flags", {})
    smi = (device.get("nvidia_smi") or {}).get("cards") or [{}]
    lines = [f"# GPU run: {device.get('hardware', 'unknown hardware')} ({data.get('mode')})", "",
             f"- Run status: **{data.get('status')}**, {data.get('elapsed_s', 0):.0f} s of Python "
             f"(own deadline {data.get('deadline_s')} s), started {data.get('started_utc')}",
             f"- Card (nvidia-smi): {smi[0].get('name', '-')}, driver {smi[0].get('driver_version', '-')}, "
             f"{smi[0].get('memory_total', '-')}; torch {device.get('torch')}, CUDA {device.get('torch_cuda')}, "
             f"cuDNN {device.get('cudnn')}",
             f"- CPU: {device.get('cpu_model')}, {device.get('cpu_count')} cores; Python {device.get('python')}",
             f"- Flags: cudnn.benchmark={flags.get('cudnn_benchmark')}, cudnn TF32={flags.get('cudnn_allow_tf32')}, "
             f"matmul TF32={flags.get('cuda_matmul_allow_tf32')} (float32_matmul_precision="
             f"{flags.get('float32_matmul_precision')})",
             f"- Data: {data.get('preflight', {}).get('data_source', '-')}", ""]
    preflight = data.get("preflight", {})
    if preflight.get("reason"):
        lines += [f"**Nothing could be measured: {preflight['reason']}**", ""]
    if preflight.get("missing_required"):
        lines += [f"Missing packages: {', '.join(preflight['missing_required'])}", ""]
    if data.get("mode") == "smoke":
        lines += ["Smoke run on the CPU at tiny sizes: it checks the code paths; its numbers mean nothing.", ""]
    return lines


def _sections(data: dict[str, Any]) -> list[str]:
    rows = [[s["name"], s["status"], _fmt(s.get("budget_s")), _fmt(s.get("wall_s"), 1), _fmt(s.get("skipped_items")),
             s.get("error", "")] for s in data.get("sections", [])]
    return ["## Sections", "", *_table(["section", "status", "budget s", "wall s", "skipped", "error"], rows)]


def _targets(data: dict[str, Any]) -> list[str]:
    rows = [[t["name"], _fmt(t["target"], 2 if t["target"] < 100 else 0),
             _fmt(t["measured"], 2 if t["target"] < 100 else 0), t.get("where") or "-",
             _fmt(t.get("compiled"), 2), f"**{t['verdict']}**"] for t in data.get("targets", [])]
    return ["## Targets", "", *_table(["target", "needs", "measured", "where", "compiled", "verdict"], rows)]


def _model_only(data: dict[str, Any]) -> list[str]:
    rows = data.get("model_only", {}).get("rows", [])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = ["## Model-only throughput", "",
             "uint8 batches already on the device; CUDA events, median of the timed batches; `first s` is the "
             "first call (compilation, cuDNN's search). Rows: " + ", ".join(f"{v} {k}" for k, v in counts.items()), ""]
    table = [[r.get("phase"), r["model"], r["system"], r["precision"], _fmt(r["channels_last"]), r["compile"],
              r["batch_size"], _fmt(r.get("images_per_second")), _fmt(r.get("ms_p50"), 2),
              _fmt(r.get("first_call_s"), 1), _fmt(r.get("peak_memory_gib"), 1),
              r["status"] if r["status"] != "error" else f"error: {r.get('error', '')[:80]}"]
             for r in rows if r["status"] != "skipped"]
    lines += _table(["phase", "model", "system", "precision", "channels_last", "compile", "batch", "images/s",
                     "ms p50", "first s", "peak GiB", "status"], table)
    ratio_rows = [[r["precision"], _fmt(r["channels_last"]), r["compile"], r["batch_size"],
                   _fmt(r.get("multihead_over_eight_models"), 2), _fmt(r.get("multihead_over_cascade"), 2),
                   _fmt(r.get("multihead_over_trunk_only"), 3)] for r in data.get("ratios", [])]
    lines += ["Ratios of images/s, ResNet18 (random weights), same settings:", "",
              *_table(["precision", "channels_last", "compile", "batch", "/ eight_models", "/ cascade",
                       "/ trunk_only"], ratio_rows)]
    return lines


def _end_to_end(data: dict[str, Any]) -> list[str]:
    e2e = data.get("end_to_end", {})
    lines = ["## End to end from JPEG bytes in memory", "",
             f"{e2e.get('items')} items ({e2e.get('distinct_files')} distinct files, {e2e.get('megabytes')} MB), "
             f"batch {e2e.get('batch_size')}, {e2e.get('image_size')} px; model: {e2e.get('model')}. "
             f"Status: {e2e.get('status')}.", ""]
    gpu, cpu = e2e.get("gpu_decode", {}), e2e.get("cpu_loader", {})
    rows = [[f"(a) device decode: {k}", _fmt(gpu.get(k, {}).get("images_per_second")),
             _fmt(gpu.get(k, {}).get("seconds"), 3)] for k in ("decode", "resize_normalise", "model", "end_to_end")]
    rows += [[f"(b) CPU DataLoader ({cpu.get('num_workers')} workers): {k}",
              _fmt(cpu.get(k, {}).get("images_per_second")), _fmt(cpu.get(k, {}).get("seconds"), 3)]
             for k in ("loader_alone", "end_to_end", "end_to_end_after_first_batch")]
    lines += _table(["stage", "images/s", "seconds"], rows)
    lines += [f"(a) bound by: **{gpu.get('bound_by', gpu.get('error', '-'))}**; "
              f"(b) bound by: **{cpu.get('bound_by', cpu.get('error', '-'))}**", ""]
    return lines


def _features(data: dict[str, Any]) -> list[str]:
    f = data.get("features", {})
    rows = [[r["option"], _fmt(r.get("images_per_second")), _fmt(r.get("seconds"), 2), _fmt(r.get("feature_dim")),
             r["status"]] for r in f.get("rows", [])]
    return ["## Feature extraction, bundled model", "",
            f"{f.get('images')} images ({f.get('jpeg')} JPEG, {f.get('other')} other) at {f.get('image_size')} px, "
            f"batch {f.get('batch_size')}: {f.get('pipeline')}. Status: {f.get('status')}.", "",
            *_table(["option", "images/s", "seconds", "features", "status"], rows)]


def _parity(data: dict[str, Any]) -> list[str]:
    p, rec = data.get("parity", {}), data.get("recommendation", {})
    rows = [[r["model"], r["candidate"], _fmt(r.get("images")), _fmt(r.get("subtype_agreement"), 4),
             _fmt(r.get("organ_agreement"), 4), f"{r['max_abs_joint_prob_diff']:.1e}" if "max_abs_joint_prob_diff"
             in r else "-", _fmt(r.get("passes")), r["status"]] for r in p.get("rows", [])]
    lines = ["## Parity against fp32 eager (TF32 off)", "",
             f"Real images, up to {p.get('images_per_subtype')} per subtype ({p.get('data_source')}); "
             f"status: {p.get('status')}.", "",
             *_table(["model", "option", "images", "same subtype", "same organ", "max abs diff", "passes", "status"],
                     rows)]
    for model, entry in rec.get("per_model", {}).items():
        best = entry.get("fastest_passing") or {}
        lines.append(f"- {model}: fastest passing option **{best.get('candidate', 'none measured')}** "
                     f"({_fmt(best.get('images_per_second'))} images/s, "
                     f"x{_fmt(best.get('over_fp32_contiguous_eager'), 2)} over fp32 contiguous eager)")
    lines += ["", f"**Recommended CUDA default: {rec.get('recommended_cuda_default') or 'none'}** "
                  f"({rec.get('decided_by')}; {rec.get('rule')})"
              + ("" if rec.get("applicable", True) else " — not applicable (smoke)"), ""]
    return lines


def _weights(data: dict[str, Any]) -> list[str]:
    w = data.get("weights_cache", {})
    lines = ["## ResNet18 ImageNet weights in this machine's caches", "", f"- {w.get('verdict', w.get('status'))}"]
    for f in w.get("torchvision", []) + w.get("timm", []):
        lines.append(f"- {f['path']}: {f['bytes']} bytes, sha256 {f['sha256'][:16]}..., "
                     f"name's hash prefix matches: {_fmt(f.get('hash_matches_name'))}")
    if w.get("copied"):
        lines.append(f"- copied back in {len(w['copied']['parts'])} parts: `{w['copied']['join']}`")
    return [*lines, ""]


def markdown(data: dict[str, Any]) -> str:
    parts = [_header(data), _targets(data), _sections(data), _model_only(data), _end_to_end(data), _features(data),
             _parity(data), _weights(data)]
    return "\n".join(line for part in parts for line in part)
