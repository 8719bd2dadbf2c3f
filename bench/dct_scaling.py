"""How far DCT-scaled, crop-window JPEG decoding drifts from the full-size
path, and what it saves, per rule: picks the default of
`image_config.dct_scale_margin` (issue: the fastest rule whose mean deviation
is <= 1 level and p99 <= 8).

For each corpus and bucket config it runs our loader once with
`dct_scaling: false` (decode at full size, resample: Pillow-exact) and once
per margin (decode at the smallest power-of-two DCT scale whose crop is still
`margin` times the output, only the crop window, then resample), on one core,
and compares every output pixel with the full-size path's.

    python bench/dct_scaling.py                        # jpeg1mp, jpeg4mp, jpegvar; 512 and 1024 buckets
    python bench/dct_scaling.py --sets jpeg1mp --count 100 --margins 1,2

Writes bench/results/dct_scaling.{md,json}. Corpora come from
../shared/bench/make_corpus.py into the bench cache (never the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import datago  # noqa: E402

BUCKETS = {
    "bucket512": {"crop_and_resize": True, "default_image_size": 512, "downsampling_ratio": 16, "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0},
    "bucket1024": {"crop_and_resize": True, "default_image_size": 1024, "downsampling_ratio": 32, "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0},
}


def corpus(cache: Path, shared: Path, name: str, count: int) -> Path:
    out = cache / "corpora" / f"n{count}"
    root = out / name
    if not (root.is_dir() and sum(1 for _ in root.iterdir()) == count):
        subprocess.run([sys.executable, str(shared / "bench" / "make_corpus.py"), "--out", str(out), "--set", name,
                        "--count", str(count), "--seed", "0", "--force"], check=True, stdout=sys.stderr)
    return root


def run(root: Path, image_config: dict, passes: int) -> tuple[dict[str, np.ndarray], float]:
    """One pass that keeps a copy of every output (for the deviation), then
    `passes` passes that only take each sample as an array and drop it, as a
    training loop would: their median CPU per image is the figure."""
    config = {"source_type": "file", "source_config": {"root_path": str(root)}, "num_threads": 1, "image_config": image_config}
    config_json = json.dumps(config)
    arrays: dict[str, np.ndarray] = {}
    with datago.DatagoClient(config_json) as client:
        for sample in client:
            arrays[sample.path] = sample.image.to_numpy_array().copy()
    cpu_ms = []
    for _ in range(passes):
        with datago.DatagoClient(config_json) as client:
            started, count = time.process_time(), 0
            for sample in client:
                sample.image.to_numpy_array()
                count += 1
            cpu_ms.append(1000 * (time.process_time() - started) / max(1, count))
    return arrays, statistics.median(cpu_ms)


def deviation(full: dict[str, np.ndarray], scaled: dict[str, np.ndarray]) -> dict[str, float]:
    diffs = np.concatenate([np.abs(scaled[p].astype(np.int16) - full[p].astype(np.int16)).ravel() for p in full])
    return {"mean": float(diffs.mean()), "p99": float(np.percentile(diffs, 99)), "max": int(diffs.max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="jpeg1mp,jpeg4mp,jpegvar")
    parser.add_argument("--workloads", default="bucket512,bucket1024")
    parser.add_argument("--margins", default="1,1.5,2,3")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--passes", type=int, default=3, help="timed passes per rule (median)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("DATAGO_BENCH_CACHE", Path.home() / ".cache" / "datago-bench")))
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DATAGO_SHARED", REPO.parent / "shared")))
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core: CPU ms are comparable

    margins = [float(m) for m in args.margins.split(",")]
    rows = []
    for set_name in args.sets.split(","):
        root = corpus(args.cache, args.shared, set_name, args.count)
        for workload in args.workloads.split(","):
            full, full_ms = run(root, {**BUCKETS[workload], "dct_scaling": False}, args.passes)
            rows.append({"set": set_name, "workload": workload, "rule": "full size", "cpu_ms": full_ms, "mean": 0.0, "p99": 0.0, "max": 0})
            for margin in margins:
                scaled, ms = run(root, {**BUCKETS[workload], "dct_scaling": True, "dct_scale_margin": margin}, args.passes)
                rows.append({"set": set_name, "workload": workload, "rule": f"margin {margin:g}", "cpu_ms": ms, **deviation(full, scaled)})
                print(json.dumps(rows[-1]), file=sys.stderr)

    lines = [
        "# DCT-scaled decode: deviation from the full-size path and CPU per image",
        "",
        f"{args.count} images per set, one core, CPU ms per image (decode + resample + handoff; median of "
        f"{args.passes} passes), "
        "absolute differences in levels over every output sample. Bounds: mean <= 1, p99 <= 8.",
        "",
        "| set | workload | rule | CPU ms/img | speed-up | mean | p99 | max | within bounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        base = next(r for r in rows if r["set"] == row["set"] and r["workload"] == row["workload"] and r["rule"] == "full size")
        ok = row["mean"] <= 1 and row["p99"] <= 8
        lines.append(f"| {row['set']} | {row['workload']} | {row['rule']} | {row['cpu_ms']:.2f} | {base['cpu_ms'] / row['cpu_ms']:.2f}x | "
                     f"{row['mean']:.3f} | {row['p99']:.0f} | {row['max']} | {'yes' if ok else 'no'} |")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "dct_scaling.md").write_text("\n".join(lines) + "\n")
    (args.results / "dct_scaling.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
