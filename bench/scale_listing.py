"""How listing, memory and time to first sample grow with the tree: folders of
1,000 entries each, 10k / 100k / 1M files (hard links to one tiny JPEG, so a
million files cost a few seconds and no disk), read by our file source and
by the reference wheel.

    python bench/scale_listing.py [--sizes 10000,100000,1000000] [--no-reference]

Each measurement runs in a fresh process (page cache warm: the tree is walked
once first): time to construct the client and get the first sample, the
listing time and files listed (stats), and the RSS growth after the first
sample. Writes bench/results/scale_listing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PER_FOLDER = 1000

PROBE = r"""
import json, os, sys, time
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * page
import datago
root, ours = sys.argv[1], sys.argv[2] == "ours"
config = {"source_type": "file", "source_config": {"root_path": root}, "limit": 100, "samples_buffer_size": 8}
before = rss()
started = time.perf_counter()
client = datago.DatagoClient(json.dumps(config))
sample = client.get_sample()
first = time.perf_counter() - started
result = {"first_s": first, "rss_mb": (rss() - before) / 2**20, "ok": sample is not None}
if ours:
    stats = client.stats()
    result |= {"listing_s": stats["listing_s"], "listed": stats["listed"]}
client.stop()
print(json.dumps(result))
"""


LINKS_PER_SEED = 50_000  # ext4 allows 65,000 links to one inode


def build_tree(root: Path, count: int, seed_file: Path) -> None:
    """`count` hard links to copies of `seed_file` in folders of
    PER_FOLDER; idempotent."""
    done = root / ".complete"
    if done.exists():
        return
    for i in range(count):
        folder = root / f"d{i // PER_FOLDER:05d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        seed = seed_file.with_name(f"seed-{root.name}-{i // LINKS_PER_SEED}.jpg")
        if i % LINKS_PER_SEED == 0 and not seed.exists():
            seed.write_bytes(seed_file.read_bytes())
        target = folder / f"{i:07d}.jpg"
        if not target.exists():
            os.link(seed, target)
    done.touch()


def probe(python: str, root: Path, ours: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)} if ours else dict(os.environ, PYTHONPATH="")
    out = subprocess.run([python, "-c", PROBE, str(root), "ours" if ours else "ref"], capture_output=True, text=True,
                         env=env, cwd=tempfile.gettempdir(), timeout=1800)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("DATAGO_BENCH_CACHE", Path.home() / ".cache" / "datago-bench")))
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    base = args.cache / "trees"
    base.mkdir(parents=True, exist_ok=True)
    seed_file = base / "seed.jpg"
    if not seed_file.exists():
        Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(seed_file, quality=90)
    reference = args.cache / "ref-venv" / "bin" / "python"
    lines = ["# Listing, memory and time to first sample against tree size", "",
             f"Folders of {PER_FOLDER} files; limit 100; page cache warm; fresh process per row.", "",
             "| files | engine | time to first sample (s) | listing (s) | listed | RSS growth (MB) |",
             "|---|---|---|---|---|---|"]
    for size in (int(s) for s in args.sizes.split(",")):
        root = base / f"n{size}"
        build_tree(root, size, seed_file)
        sum(1 for _ in os.walk(root))  # warm the dentry cache
        engines = [("ours", sys.executable, True)]
        if not args.no_reference and reference.exists():
            engines.append(("reference", str(reference), False))
        for name, python, ours in engines:
            r = probe(python, root, ours)
            if "error" in r:
                lines.append(f"| {size} | {name} | error: {r['error']} | | | |")
            else:
                lines.append(f"| {size} | {name} | {r['first_s']:.3f} | {r.get('listing_s', float('nan')):.3f} | "
                             f"{r.get('listed', '')} | {r['rss_mb']:.1f} |")
            print(lines[-1], file=sys.stderr)
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / "scale_listing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
