"""What leaving the stats on costs: CPU per sample with `collect_stats` on and
off, interleaved, on the per-sample-overhead corpus (tiny64, where the
per-sample timings weigh the most) and on jpeg1mp -> 512.

    python bench/stats_cost.py [--passes 7]

Writes bench/results/stats_cost.md. Target: <= 2% throughput cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from dct_scaling import corpus  # noqa: E402

import datago  # noqa: E402

BUCKET512 = {"crop_and_resize": True, "default_image_size": 512, "downsampling_ratio": 16, "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0}


def cpu_us_per_sample(root: Path, collect: bool, image_config: dict | None) -> float:
    config = {"source_type": "file", "source_config": {"root_path": str(root)}, "num_threads": 1,
              "samples_buffer_size": 256, "collect_stats": collect, "image_config": image_config}
    with datago.DatagoClient(json.dumps(config)) as client:
        started, count = time.process_time(), 0
        for sample in client:
            sample.image.to_numpy_array()
            count += 1
    return 1e6 * (time.process_time() - started) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("DATAGO_BENCH_CACHE", Path.home() / ".cache" / "datago-bench")))
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DATAGO_SHARED", REPO.parent / "shared")))
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    lines = ["# Cost of the stats (collect_stats on vs off)", "",
             f"One core, one native thread, median CPU per sample over {args.passes} interleaved passes.", "",
             "| workload | stats on (us/sample) | stats off (us/sample) | cost |", "|---|---|---|---|"]
    for name, set_name, count, image_config in [("tiny64 decode", "tiny64", 5000, None), ("jpeg1mp -> 512", "jpeg1mp", 200, BUCKET512)]:
        root = corpus(args.cache, args.shared, set_name, count)
        on, off = [], []
        for _ in range(args.passes):
            on.append(cpu_us_per_sample(root, True, image_config))
            off.append(cpu_us_per_sample(root, False, image_config))
        a, b = statistics.median(on), statistics.median(off)
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {100 * (a - b) / b:+.1f}% |")
        print(lines[-1], file=sys.stderr)
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / "stats_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
