"""What checkpointing costs on the 1 MP -> 512 workload, 2 cores: CPU and wall
time per image with a state taken every 100 samples against none,
interleaved, and what delivering in plan order costs (the time the consumer
waited for the item due while a later one was already decoded: completion
order would have handed that one out; `stats()["ordered_wait_s"]`).

    python bench/resume_cost.py [--passes 7] [--count 600]

Writes bench/results/resume_cost.md. Target: <= 3% for each.
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


def one_pass(root: Path, every: int | None, batch_size: int | None) -> dict[str, float]:
    config = {"source_type": "file", "source_config": {"root_path": str(root), "random_sampling": True, "seed": 1},
              "num_threads": 2, "image_config": BUCKET512, "log_interval_s": 0}
    if batch_size:
        config["batch_size"] = batch_size
    states = 0
    state_bytes = 0
    with datago.DatagoClient(json.dumps(config)) as client:
        first = client.get_batch() if batch_size else client.get_sample()
        assert first is not None
        wall, cpu, count = time.perf_counter(), time.process_time(), 0
        for item in client:
            n = len(item.samples) if batch_size else 1
            count += n
            if every and count // every != (count - n) // every:
                state_bytes = max(state_bytes, len(json.dumps(client.state_dict())))
                states += 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        ordered_wait = client.stats()["ordered_wait_s"]
    return {"cpu_ms": 1e3 * cpu / count, "wall_ms": 1e3 * wall / count, "ordered": ordered_wait / wall,
            "states": states, "state_bytes": state_bytes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("DATAGO_BENCH_CACHE", Path.home() / ".cache" / "datago-bench")))
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DATAGO_SHARED", REPO.parent / "shared")))
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, set(cpus))
    root = corpus(args.cache, args.shared, "jpeg1mp", args.count)
    lines = ["# Cost of checkpointing and of deterministic order", "",
             f"jpeg1mp ({args.count} images, 1 MP) -> 512 buckets, 2 native threads pinned to CPUs {cpus}, "
             f"seeded shuffle; medians over {args.passes} interleaved passes (the first sample of each pass is "
             "not timed). \"state every 100\" calls `client.state_dict()` (native state + JSON parse) each "
             "time 100 more samples were handed out. \"plan-order wait\" is the consumer's time waiting for "
             "the sample due while a later one was ready, as a share of the pass's wall time.", "",
             "| mode | no state: CPU ms/img | state every 100: CPU ms/img | CPU cost | no state: wall ms/img | state every 100: wall ms/img | wall cost | plan-order wait | largest state |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, batch_size in [("samples", None), ("batches of 16", 16)]:
        off, on = [], []
        for _ in range(args.passes):
            off.append(one_pass(root, None, batch_size))
            on.append(one_pass(root, 100, batch_size))
        med = {key: (statistics.median(r[key] for r in off), statistics.median(r[key] for r in on)) for key in ("cpu_ms", "wall_ms", "ordered")}
        cpu_cost = 100 * (med["cpu_ms"][1] - med["cpu_ms"][0]) / med["cpu_ms"][0]
        wall_cost = 100 * (med["wall_ms"][1] - med["wall_ms"][0]) / med["wall_ms"][0]
        ordered = 100 * statistics.median(r["ordered"] for r in off + on)
        largest = max(r["state_bytes"] for r in on)
        lines.append(f"| {label} | {med['cpu_ms'][0]:.2f} | {med['cpu_ms'][1]:.2f} | {cpu_cost:+.1f}% | {med['wall_ms'][0]:.2f} | "
                     f"{med['wall_ms'][1]:.2f} | {wall_cost:+.1f}% | {ordered:.1f}% | {largest} B |")
        print(lines[-1], file=sys.stderr)
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.2f}."]
    out = REPO / "bench" / "results" / "resume_cost.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
