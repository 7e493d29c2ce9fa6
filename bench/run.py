"""``make bench`` / ``python -m bench``: every benchmark in one run, one report.

Writes ``bench/results.json`` (everything measured) and ``bench/results.md``
(a table: metric, value, target, met?) with the machine and its load average
at the start and the end. The targets are benchmark figures, not timed tests:
the run never fails because a target is missed. Figures hold for the machine
and the moment they were taken; on a shared machine, read them with the load
average beside them.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_JSON = ROOT / "bench" / "results.json"
OUT_MD = ROOT / "bench" / "results.md"

log = logging.getLogger("bench")


def _machine() -> dict:
    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _timed(name: str, fn, results: dict) -> None:
    started = time.perf_counter()
    log.info("bench: %s ...", name)
    results[name] = fn()
    results[name]["_seconds"] = round(time.perf_counter() - started, 1)
    results[name]["_load_after"] = _load()
    log.info("bench: %s done in %.0f s", name, results[name]["_seconds"])


def run() -> dict:
    from bench import ct, demo_workers, e2e, explain, inference, lungs, training

    results: dict = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_average_start": _load(),
    }
    parts: dict = {}
    _timed("inference", lambda: inference.measure(repeats=100), parts)
    _timed("lungs", lambda: lungs.measure(repeats=100), parts)
    from ml.ct.segmenter import BUNDLED_CT_MODEL

    if BUNDLED_CT_MODEL.is_file():  # `make train-ct` makes it
        _timed("ct", lambda: ct.measure(repeats=100), parts)
    else:
        log.warning("bench: no %s, CT segmentation not measured", BUNDLED_CT_MODEL)
    _timed("explain", lambda: explain.speed(max_images=6, occlusion_images=3), parts)
    _timed("e2e", lambda: e2e.measure(n_latency=12, n_burst=40), parts)
    _timed("training", training.measure, parts)
    _timed("demo_workers", demo_workers.measure, parts)
    results.update(parts)
    results["load_average_end"] = _load()
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


def _row(
    metric: str, value: str, target: str = "", met: bool | None = None, before: str = ""
) -> str:
    mark = "" if met is None else ("yes" if met else "**no**")
    return f"| {metric} | {value} | {before} | {target} | {mark} |"


# The figures before the lean inference workers and the read-path work: `make bench` of
# 2026-11-22T04:56 (docs/operations.md then; cxr-compact, one worker on inference and
# explain, the read load from Python threads in the bench's own process) and the target.
BEFORE = {
    "read_p95": "337.6 ms (list 408.0, detail 328.7; the target: 404 ms)",
    "rss": "1162 MB (Keras worker)",
    "burst": "260 images/min (uploads included, cxr-compact)",
    "upload": "82.2 ms (cxr-compact, before uploads were decoded in a child process)",
}


def _lean_rows(r: dict) -> list[str]:
    """LiteRT vs Keras, the inference worker, the read path against its floor."""
    rows = []
    lean = r["inference"].get("lean_vs_keras")
    if lean:
        for key, what in (
            ("predict_with_segmentation", "warm classification incl. lung segmentation "
             f"(Classifier.predict, {lean['model']})"),
            ("classifier_call", "classifier model call alone"),
            ("unet_call", "lung U-Net model call alone"),
        ):  # fmt: skip
            row = lean[key]
            lite = row["litert_1_thread"]
            speedup = lite["speedup_over_keras"]
            rows.append(
                _row(
                    f"{what}: Keras direct call vs LiteRT (1 thread), p50 (p95)",
                    f"{row['keras']['p50_ms']} ({row['keras']['p95_ms']}) vs {lite['p50_ms']} "
                    f"({lite['p95_ms']}) ms: **{speedup}x**",
                    "LiteRT >= 3x faster" if key != "unet_call" else "",
                    speedup >= lean["target_speedup"] if key != "unet_call" else None,
                )
            )
    e2e = r["e2e"]
    lite, keras = e2e["litert"], e2e["keras"]

    def total(run: dict) -> float:
        return max(v for k, v in run["peak_rss_mb"].items() if k.endswith("total"))

    rows.append(
        _row(
            "inference worker peak RSS (main + pool child), LiteRT vs Keras",
            f"{total(lite)} vs {total(keras)} MB",
            "<= 400 MB",
            total(lite) <= 400,
            BEFORE["rss"],
        )
    )
    b, kb = lite["burst"], keras["burst"]
    rows.append(
        _row(
            f"burst throughput of one inference worker ({b['images']} queued uploads), "
            "LiteRT vs Keras",
            f"{b['images_per_minute']} vs {kb['images_per_minute']} images/min",
            ">= 600 images/min",
            b["images_per_minute"] >= 600,
            BEFORE["burst"],
        )
    )
    rows.append(
        _row(
            "uploads accepted by the web server (4 clients, validation and decoding)",
            f"{b['uploads_per_minute']} per min",
        )
    )
    up, kup = lite["upload_to_prediction"], keras["upload_to_prediction"]
    rows.append(
        _row(
            f"API upload -> prediction, one worker, p50 / p95 (n={up['n']}), LiteRT; Keras",
            f"{up['p50_ms']} / {up['p95_ms']} ms; {kup['p50_ms']} / {kup['p95_ms']} ms "
            f"(the POST alone: p50 {up['post']['p50_ms']} ms)",
            "p50 <= 100 ms",
            up["p50_ms"] <= 100,
            BEFORE["upload"],
        )
    )
    read = e2e["read_api"]
    floor = read["floor"]
    rows.append(
        _row(
            f"framework floor: GET /api/v1/me/, {read['users']} clients, p95 (p50)",
            f"{floor['p95_ms']} ({floor['p50_ms']}) ms, {floor['requests_per_second']} req/s",
        )
    )
    for name, what in (("list", "case list"), ("detail", "case detail")):
        row = read[name]
        rows.append(
            _row(
                f"{what}, {read['users']} clients, p95 / the floor's p95",
                f"{row['p95_over_floor']}x",
                "<= 2x",
                row["p95_over_floor"] <= 2,
            )
        )
        rows.append(
            _row(
                f"{what}, {read['users']} clients, p95 (p50)",
                f"{row['p95_ms']} ({row['p50_ms']}) ms, {row['requests_per_second']} req/s",
                "<= 50 ms",
                row["p95_ms"] <= 50,
                BEFORE["read_p95"] if name == "list" else "",
            )
        )
    errors = sum(read[n]["errors"] for n in ("floor", "list", "detail"))
    rows.append(_row("read API errors", str(errors), "0", errors == 0))
    return rows


def _demo_workers_row(d: dict) -> str:
    """A prediction during a training run, make demo's workers vs one worker."""
    sep, one = d["separate_workers"], d["single_worker"]
    during = sep["during_training"]["while_running"] or {"p50_ms": "-", "p95_ms": "-", "n": 0}
    waited = one["during_training"]["all"] or {"p50_ms": "-"}
    return _row(
        "demo (SQLite, filesystem broker): API upload -> prediction during a training run, "
        f"p50 / p95 (n={during['n']}), make demo's workers; idle",
        f"{during['p50_ms']} / {during['p95_ms']} ms; idle {sep['idle']['p50_ms']} ms "
        f"(load {sep['during_training']['load_1min_during'][-1:]})",
        before=f"one worker on every queue: {waited['p50_ms']} ms during a "
        f"{one['during_training']['training_run']['seconds']} s run; idle "
        f"{one['idle']['p50_ms']} ms",
    )


def markdown(r: dict) -> str:
    inf, ex, e2e, tr = r["inference"], r["explain"], r["e2e"], r["training"]
    occ = ex["occlusion_fast_vs_tf_explain"]
    rows = [
        "| metric | value | before (the lean workers) | target | met? |",
        "|---|---|---|---|---|",
        *_lean_rows(r),
        _row(
            "warm single-image classification (Classifier.predict), p50 / p95",
            f"{inf['end_to_end_predict']['p50_ms']} / {inf['end_to_end_predict']['p95_ms']} ms",
        ),
        _row(
            "direct model call vs `model.predict`, p50",
            f"{inf['direct_call']['p50_ms']} vs {inf['keras_model_predict']['p50_ms']} ms "
            f"({inf['predict_over_direct_ratio']}x)",
        ),
    ]
    if "lungs" in r:
        lu = r["lungs"]
        rows.append(
            _row(
                f"warm lung segmentation at {lu['model']['input_size']} px "
                "(LungSegmenter.segment_gray), p50 / p95",
                f"{lu['segment_at_input_size']['p50_ms']} / "
                f"{lu['segment_at_input_size']['p95_ms']} ms (model alone "
                f"{lu['model_call']['p50_ms']} ms; {lu['film_pixels']} film "
                f"{lu['segment_original_resolution']['p50_ms']} ms)",
                f"p50 <= {lu['target_ms']:.0f} ms",
                lu["target_met"],
            )
        )
    if "ct" in r:
        c = r["ct"]
        rows.append(
            _row(
                f"warm CT slice segmentation at {c['model']['input_size']} px "
                "(CTSegmenter.segment), p50 / p95",
                f"{c['segment']['p50_ms']} / {c['segment']['p95_ms']} ms (model alone "
                f"{c['model_call']['p50_ms']} ms; Grad-CAM {c['gradcam']['p50_ms']} ms)",
                f"p50 <= {c['target_ms']:.0f} ms",
                c["target_met"],
            )
        )
    for method, row in ex["seconds_per_image"].items():
        rows.append(_row(f"explanation `{method}`, p50 per image", f"{row['p50_s']} s"))
    rows += [
        _row(
            f"fast occlusion vs tf-explain's (patch {occ['patch_size']}, {occ['patches']} "
            "patches), p50",
            f"{occ['fast_p50_s']} vs {occ['tf_explain_p50_s']} s ({occ['speedup']}x)",
        ),
    ]
    rows += [
        _row(
            f"training time per epoch ({tr['architecture']}, {tr['train_images']} training "
            f"images, {tr['epochs']} epochs)",
            f"{tr['seconds_per_epoch']} s",
        ),
    ]
    if "demo_workers" in r:
        rows.append(_demo_workers_row(r["demo_workers"]))
    m = r["machine"]
    read = e2e["read_api"]
    lines = [
        "# Benchmark results",
        "",
        f"Run {r['started']} - {r['finished']} on {m['cpus']} CPUs, {m['memory_gb']} GB "
        f"({m['platform']}, Python {m['python']}).",
        f"Load average (1, 5, 15 min) at the start {r['load_average_start']}, at the end "
        f"{r['load_average_end']}. The machine may be shared with other work: figures hold "
        "for this run only.",
        "",
        *rows,
        "",
        "Setup of the end-to-end part: "
        + ", ".join(f"{k}: {v}" for k, v in e2e["setup"].items())
        + f". Read load: {read['generator']}, {read['seconds_each']} s per endpoint, on the "
        "same machine as the server (load average after each: "
        + ", ".join(f"{n} {read[n]['load_after']}" for n in ("floor", "list", "detail"))
        + ").",
        "",
        "Inference worker peak RSS: "
        + "; ".join(
            f"{rt}: " + ", ".join(f"{k} {v} MB" for k, v in e2e[rt]["peak_rss_mb"].items())
            for rt in ("litert", "keras")
        )
        + ".",
        f"Training: {tr['data']}; fit {tr['fit_seconds']} s, process peak RSS "
        f"{tr['peak_rss_mb']} MB.",
        f"Explanations: {ex['model']} on {ex['images']}.",
        "",
        "All figures: `bench/results.json`. Produced by `make bench`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    results = run()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    OUT_JSON.write_text(json.dumps(results, indent=2) + "\n")
    OUT_MD.write_text(markdown(results))
    print(OUT_MD.read_text())
    print(f"wrote {OUT_JSON.relative_to(ROOT)} and {OUT_MD.relative_to(ROOT)} "
          f"in {results['total_seconds']} s")  # fmt: skip


if __name__ == "__main__":
    main()
