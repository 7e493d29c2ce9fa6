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
RSS_TARGET_MB = 1.5 * 1024

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
    from bench import e2e, explain, inference, lungs, training

    results: dict = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_average_start": _load(),
    }
    parts: dict = {}
    _timed("inference", lambda: inference.measure(repeats=100), parts)
    _timed("lungs", lambda: lungs.measure(repeats=100), parts)
    _timed("explain", lambda: explain.speed(max_images=6, occlusion_images=3), parts)
    _timed("e2e", lambda: e2e.measure(n_latency=12, n_burst=16), parts)
    _timed("training", training.measure, parts)
    results.update(parts)
    results["load_average_end"] = _load()
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


def _row(metric: str, value: str, target: str = "", met: bool | None = None) -> str:
    mark = "" if met is None else ("yes" if met else "**no**")
    return f"| {metric} | {value} | {target} | {mark} |"


def markdown(r: dict) -> str:
    inf, ex, e2e, tr = r["inference"], r["explain"], r["e2e"], r["training"]
    w1, w2, read = e2e["workers_1"], e2e["workers_2"], e2e["read_api"]
    occ = ex["occlusion_fast_vs_tf_explain"]
    rss = e2e["worker_peak_rss_mb"]
    worker_totals = {k: v for k, v in rss.items() if k.endswith("total")}
    peak_total = max(worker_totals.values())
    rows = [
        "| metric | value | target | met? |",
        "|---|---|---|---|",
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
    for method, row in ex["seconds_per_image"].items():
        rows.append(_row(f"explanation `{method}`, p50 per image", f"{row['p50_s']} s"))
    rows += [
        _row(
            f"fast occlusion vs tf-explain's (patch {occ['patch_size']}, {occ['patches']} "
            "patches), p50",
            f"{occ['fast_p50_s']} vs {occ['tf_explain_p50_s']} s ({occ['speedup']}x)",
        ),
    ]
    for n, w in ((1, w1), (2, w2)):
        lat = w["upload_to_prediction"]
        rows.append(
            _row(
                f"API upload -> prediction, {n} worker{'s' if n > 1 else ''}, p50 / p95 "
                f"(n={lat['n']})",
                f"{lat['p50_ms']} / {lat['p95_ms']} ms",
                "p50 <= 1000 ms" if n == 1 else "",
                lat["p50_ms"] <= 1000 if n == 1 else None,
            )
        )
    for n, w in ((1, w1), (2, w2)):
        t = w["throughput"]
        rows.append(
            _row(
                f"throughput, {n} worker{'s' if n > 1 else ''} ({t['images']} uploads in a burst)",
                f"{t['images_per_minute']} images/min",
            )
        )
    rows += [
        _row(
            f"read API p95, {read['users']} concurrent clients, {read['seconds']} s "
            f"({read['n']} requests)",
            f"{read['p95_ms']} ms (p50 {read['p50_ms']} ms)",
            "<= 100 ms",
            read["p95_ms"] <= 100,
        ),
        _row("read API errors", str(read["errors"]), "0", read["errors"] == 0),
        _row(
            f"training time per epoch ({tr['architecture']}, {tr['train_images']} training "
            f"images, {tr['epochs']} epochs)",
            f"{tr['seconds_per_epoch']} s",
        ),
        _row(
            "worker peak RSS (main + pool child, highest worker)",
            f"{peak_total} MB",
            f"<= {RSS_TARGET_MB:.0f} MB",
            peak_total <= RSS_TARGET_MB,
        ),
    ]
    m = r["machine"]
    by_path = read.get("by_path", {})
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
        + ". The read-API load generator runs on the same machine as the server.",
        "",
        "Read API by path: "
        + "; ".join(f"{k} p50 {v['p50_ms']} / p95 {v['p95_ms']} ms" for k, v in by_path.items())
        + ".",
        "Worker peak RSS: " + ", ".join(f"{k} {v} MB" for k, v in rss.items()) + ".",
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
