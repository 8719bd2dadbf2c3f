#!/usr/bin/env python3
"""Peak memory of the loader on a hostile corpus: the seeded mutants of
tests/test_decode_fuzz.py (every seed file, --mutants each) plus two zlib
bombs (a 64x64 PNG inflating to 1 GiB) and a PNG whose IDAT length says
0x7FFFFFFF, read by a fresh process with 1 and 2 threads. Prints, per thread
count, the peak RSS (VmHWM) over the same process's warm baseline (the good
seed files alone) and the causes counted.

    PYTHONPATH=. python bench/fuzz_rss.py [--mutants 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hostile_files import chunk_length_bomb, zlib_bomb  # noqa: E402
from test_decode_fuzz import mutate, seeds  # noqa: E402

CHILD = """
import json, sys, datago
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
good, mixed, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
def run(root):
    c = {"source_type": "file", "source_config": {"root_path": root}, "num_threads": threads}
    with datago.DatagoClient(json.dumps(c)) as client:
        n = len(list(client))
        return n, {k: v for k, v in client.stats()["errors"].items() if v}
run(good)
before = hwm()
delivered, errors = run(mixed)
print(json.dumps({"threads": threads, "baseline_mib": before / 1024, "peak_mib": hwm() / 1024,
                  "delivered": delivered, "errors": errors}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=int, default=200, help="mutants per seed file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        good, mixed = Path(tmp, "good"), Path(tmp, "mixed")
        good.mkdir()
        mixed.mkdir()
        for name, (data, _) in seeds().items():
            (good / name).write_bytes(data)
            rng = np.random.default_rng([16, sum(name.encode())])
            for index in range(args.mutants):
                (mixed / f"{index:04d}_{name}").write_bytes(mutate(data, rng))
        bomb = zlib_bomb(inflated=1 << 30)
        (mixed / "bomb1.png").write_bytes(bomb)
        (mixed / "bomb2.png").write_bytes(bomb)
        (mixed / "length_bomb.png").write_bytes(chunk_length_bomb())
        files = sum(1 for _ in mixed.iterdir())
        print(f"{files} files ({args.mutants} mutants of each of {len(seeds())} seeds, 3 bombs)")
        for threads in (1, 2):
            done = subprocess.run([sys.executable, "-c", CHILD, str(good), str(mixed), str(threads)],
                                  capture_output=True, text=True, check=True)
            report = json.loads(done.stdout)
            grown = report["peak_mib"] - report["baseline_mib"]
            print(f"threads {threads}: baseline {report['baseline_mib']:.0f} MiB, peak {report['peak_mib']:.0f} MiB "
                  f"(+{grown:.1f} MiB, {grown / threads:.1f} per thread); delivered {report['delivered']}, "
                  f"refused {report['errors']}")


if __name__ == "__main__":
    main()
