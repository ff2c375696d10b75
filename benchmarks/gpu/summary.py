"""Targets, the recommended CUDA default and ``summary.md``, from ``results.json`` alone.

Standard library only, so that run.sh can run it after Python was killed (it marks what was cut off) and
anyone can rerun it on a copy of the results: ``python benchmarks/gpu/summary.py OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGET_MULTIHEAD_IPS = 60_000
TARGET_E2E_IPS = 10_000
TARGET_OVER_EIGHT = 7.5
TARGET_OVER_TRUNK = 0.97
LOG_LIMIT = 15 * 2**20
STATUS_ORDER = ("error", "killed", "running", "partial", "skipped", "ok")


def ok_rows(data: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    rows = data.get("model_only", {}).get("rows", [])
    return [r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())]


def ratios(data: dict[str, Any]) -> list[dict[str, Any]]:
    """multihead's images/s over each baseline's, per setting where both ran (ResNet18, random weights)."""
    speeds: dict[tuple, dict[str, float]] = {}
    for r in ok_rows(data, model="resnet18"):
        key = (r["precision"], r["channels_last"], r["compile"], r["batch_size"])
        speeds.setdefault(key, {})[r["system"]] = r["images_per_second"]
    out = []
    for (precision, cl, mode, batch), s in sorted(speeds.items(), key=lambda kv: str(kv[0])):
        if "multihead" in s and len(s) > 1:
            out.append({"precision": precision, "channels_last": cl, "compile": mode, "batch_size": batch,
                        **{f"multihead_over_{o}": s["multihead"] / s[o] for o in ("eight_models", "cascade",
                                                                                  "trunk_only") if s.get(o)}})
    return out


def _verdict(measured: float | None, target: float, smoke: bool) -> str:
    if smoke:
        return "not applicable (smoke)"
    if measured is None:
        return "not measured"
    return "pass" if measured >= target else "fail"


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    smoke = data.get("mode") == "smoke"
    headline = data.get("config", {}).get("headline_batch", 512)
    best = max((r for r in ok_rows(data, model="resnet18", system="multihead", precision="bf16")
                if r["batch_size"] >= min(512, headline)), key=lambda r: r["images_per_second"], default=None)
    e2e = data.get("end_to_end", {})
    paths = {"gpu_decode": e2e.get("gpu_decode", {}).get("end_to_end", {}).get("images_per_second"),
             "cpu_loader": e2e.get("cpu_loader", {}).get("end_to_end", {}).get("images_per_second")}
    e2e_best = max((v, k) for k, v in paths.items() if v) if any(paths.values()) else None
    at = [r for r in ratios(data) if (r["precision"], r["channels_last"], r["batch_size"]) == ("bf16", True, headline)]
    eager = next((r for r in at if r["compile"] == "none"), {})
    where = f"bf16, channels_last, batch {headline}, eager"
    out = [
        {"name": "multihead model-only images/s, bf16, batch >= 512", "target": TARGET_MULTIHEAD_IPS,
         "measured": best and best["images_per_second"],
         "where": best and f"{best['precision']}, channels_last={best['channels_last']}, compile={best['compile']}, "
                           f"batch {best['batch_size']}"},
        {"name": "end to end from JPEG bytes, images/s", "target": TARGET_E2E_IPS,
         "measured": e2e_best and e2e_best[0], "where": e2e_best and e2e_best[1]},
        {"name": "multihead / eight_models", "target": TARGET_OVER_EIGHT,
         "measured": eager.get("multihead_over_eight_models"), "where": where,
         "compiled": next((r.get("multihead_over_eight_models") for r in at if r["compile"] == "default"), None)},
        {"name": "multihead / trunk_only", "target": TARGET_OVER_TRUNK,
         "measured": eager.get("multihead_over_trunk_only"), "where": where,
         "compiled": next((r.get("multihead_over_trunk_only") for r in at if r["compile"] == "default"), None)},
    ]
    for t in out:
        t["verdict"] = _verdict(t["measured"], t["target"], smoke)
    return out


def recommendation(data: dict[str, Any]) -> dict[str, Any]:
    """Per model: the fastest option (model-only multihead at the headline batch) that keeps >= 99.9 % of the
    reference's subtypes. The bundled model (trained heads) decides the CUDA default."""
    parity = data.get("parity", {})
    headline = data.get("config", {}).get("headline_batch", 512)
    per_model: dict[str, Any] = {}
    for model in ("bundled", "resnet18"):
        candidates = []
        for row in parity.get("rows", []):
            if row.get("model") != model or row.get("status") != "ok" or not row.get("passes"):
                continue
            speed = next((r["images_per_second"] for r in ok_rows(
                data, model=model, system="multihead", precision=row["precision"],
                channels_last=row["channels_last"], compile=row["compile"], batch_size=headline)), None)
            candidates.append({"candidate": row["candidate"], "images_per_second": speed,
                               "subtype_agreement": row["subtype_agreement"],
                               "max_abs_joint_prob_diff": row["max_abs_joint_prob_diff"]})
        timed = [c for c in candidates if c["images_per_second"]]
        fp32 = next((r["images_per_second"] for r in ok_rows(data, model=model, system="multihead", precision="fp32",
                                                              channels_last=False, compile="none",
                                                              batch_size=headline)), None)
        chosen = max(timed, key=lambda c: c["images_per_second"]) if timed else None
        if chosen and fp32:
            chosen = {**chosen, "over_fp32_contiguous_eager": chosen["images_per_second"] / fp32}
        per_model[model] = {"passing": candidates, "fastest_passing": chosen}
    decided = per_model.get("bundled", {}).get("fastest_passing")
    return {"rule": "fastest option with >= 99.9 % of fp32-eager (TF32 off) subtypes, timed at the headline batch",
            "recommended_cuda_default": decided and decided["candidate"],
            "decided_by": "bundled default model (trained heads)", "per_model": per_model,
            "applicable": data.get("mode") != "smoke"}


def overall(statuses: list[str]) -> str:
    if not statuses:
        return "skipped"
    if set(statuses) == {"skipped"}:
        return "skipped"
    worst = min(statuses, key=lambda s: STATUS_ORDER.index(s) if s in STATUS_ORDER else 0)
    return "partial" if worst == "skipped" else worst


def finalize(out_dir: Path) -> dict[str, Any]:
    """Mark what was cut off, add targets and the recommendation, write results.json and summary.md."""
    path = out_dir / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # Python died before its first save: say so, run.log has the rest
        data = {"schema": 1, "mode": "unknown", "status": "failed_to_start", "sections": [],
                "error": f"no readable results.json: {type(err).__name__}: {err}"[:300]}
    for tmp in out_dir.glob("*.tmp"):
        tmp.unlink()
    if data.get("status") == "running":
        data["status"] = "killed"
    for entry in data.get("sections", []):
        if entry.get("status") == "running":
            entry["status"] = "killed"
    started = {entry["name"] for entry in data.get("sections", [])}
    data.setdefault("sections", []).extend({"name": name, "status": "not reached"}
                                           for name in data.get("planned_sections", []) if name not in started)
    for payload in (v for v in data.values() if isinstance(v, dict)):
        for phase in payload.get("phases", {}).values():
            if phase.get("status") == "running":
                phase["status"] = "killed"
        if payload.get("status") == "running":
            payload["status"] = "killed"
    model_only = data.get("model_only", {})
    if "phases" in model_only:
        model_only["status"] = overall([p["status"] for p in model_only["phases"].values()])
    for key, make in (("ratios", ratios), ("targets", targets), ("recommendation", recommendation)):
        try:
            data[key] = make(data)
        except Exception as err:  # a summary bug must not cost the measurements
            data[key] = {"error": f"{type(err).__name__}: {err}"}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    try:
        from summary_md import markdown

        text = markdown(data)
    except Exception as err:
        text = f"# GPU run\n\nsummary.md could not be written ({type(err).__name__}: {err}); see results.json.\n"
    (out_dir / "summary.md").write_text(text)
    _cap_log(out_dir / "run.log")
    return data


def _cap_log(log: Path) -> None:
    """Keep run.log under the 16 MiB a returned file may have: its head and its tail."""
    if log.is_file() and log.stat().st_size > LOG_LIMIT:
        raw = log.read_bytes()
        keep = LOG_LIMIT // 2 - 1024
        log.write_bytes(raw[:keep] + b"\n\n[... run.log cut to stay under 16 MiB ...]\n\n" + raw[-keep:])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/gpu/summary.py OUT_DIR")
    result = finalize(Path(sys.argv[1]))
    print(f"summary: run {result.get('status')}; {Path(sys.argv[1]) / 'summary.md'}")
