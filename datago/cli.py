"""``python -m datago``: command-line tools. ``bench`` measures the loader on a
folder, or on a synthetic corpus it generates when no folder is given."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from . import DatagoClient
from .errors import ConfigError, DatagoError, SourceError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datago", description="datago command-line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser(
        "bench",
        help="measure throughput on a folder of images",
        description=(
            "Reads a folder with datago and reports images/s, CPU ms per image, MB/s, time to first "
            "sample and the loader's stats. Without PATH, generates a synthetic corpus of JPEGs in a "
            "temporary folder (removed afterwards)."
        ),
    )
    bench.add_argument("path", nargs="?", help=(
        "folder (or single image) to read; default: a generated corpus. With --source webdataset: the shard "
        "URL pattern (paths, file:// or http(s):// URLs, braces expanded), required. With --source db: the "
        "Dataroom `sources` filter (default: all sources; the server from DATAROOM_API_URL and DATAROOM_API_KEY)"))
    bench.add_argument("--source", choices=["file", "webdataset", "db"], default="file", help="source type (default: file)")
    bench.add_argument("--page-size", type=int, default=500, help="--source db: records per page request (default: 500)")
    bench.add_argument("--limit", type=int, help="samples per pass (default: the whole folder)")
    bench.add_argument("--passes", type=int, default=2, help="passes over the data; the first warms caches (default: 2)")
    bench.add_argument("--threads", type=int, help="native decode threads (default: DATAGO_MAX_TASKS or the usable CPUs)")
    bench.add_argument("--buffer", type=int, default=64, help="samples_buffer_size: decoded samples kept ready (default: 64)")
    bench.add_argument("--count", type=int, default=300, help="images in the generated corpus (default: 300)")
    bench.add_argument("--crop-and-resize", action="store_true", help="bucket every image (cover-resize + centre crop)")
    bench.add_argument("--image-size", type=int, default=512, help="default_image_size of the buckets (default: 512)")
    bench.add_argument("--downsampling-ratio", type=int, default=16, help="bucket sides are multiples of this (default: 16)")
    bench.add_argument("--min-aspect-ratio", type=float, default=0.5, help="smallest bucket aspect ratio (default: 0.5)")
    bench.add_argument("--max-aspect-ratio", type=float, default=2.0, help="largest bucket aspect ratio (default: 2.0)")
    bench.add_argument("--rgb8", action="store_true", help="image_to_rgb8: convert every image to 8-bit RGB")
    bench.add_argument("--pre-encode", choices=["png", "jpeg"], help="re-encode each image in this format")
    bench.add_argument("--seed", type=int, help="shuffle with this seed (random_sampling)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar (default when stderr is not a terminal)")
    bench.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return parser


def make_corpus(folder: Path, count: int) -> None:
    """JPEGs of 0.1-1 MP at aspect ratios 1/3..3, smooth content with edges."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = int(rng.uniform(0.1e6, 1.0e6))
        ratio = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
        width = max(16, int((pixels * ratio) ** 0.5))
        height = max(16, int(pixels / width))
        coarse = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        image.save(folder / f"{i:06d}.jpg", quality=90)


def config_for(args: argparse.Namespace, root: str) -> dict[str, Any]:
    source: dict[str, Any]
    if args.source == "db":
        source = {"sources": root, "page_size": args.page_size, "require_images": True}
    elif args.source == "webdataset":
        source = {"url": root}
    else:
        source = {"root_path": root}
    if args.seed is not None:
        source |= {"random_sampling": True, "seed": args.seed}
    config: dict[str, Any] = {"source_type": args.source, "source_config": source, "samples_buffer_size": args.buffer}
    if args.limit is not None:
        config["limit"] = args.limit
    if args.threads is not None:
        config["num_threads"] = args.threads
    image: dict[str, Any] = {"crop_and_resize": args.crop_and_resize}
    if args.crop_and_resize:
        image |= {
            "default_image_size": args.image_size,
            "downsampling_ratio": args.downsampling_ratio,
            "min_aspect_ratio": args.min_aspect_ratio,
            "max_aspect_ratio": args.max_aspect_ratio,
        }
    if args.rgb8:
        image["image_to_rgb8"] = True
    if args.pre_encode:
        image |= {"pre_encode_images": True, "encode_format": args.pre_encode}
    if args.crop_and_resize or args.rgb8 or args.pre_encode:
        config["image_config"] = image
    return config


class Progress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, total: int | None, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.started = time.perf_counter()
        self.drawn = 0.0

    def update(self, count: int, megabytes: float, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.drawn < 0.1):
            return
        self.drawn = now
        elapsed = max(now - self.started, 1e-9)
        rate = f"{count / elapsed:8.1f} img/s {megabytes / elapsed:7.1f} MB/s"
        if self.total:
            width = 30
            filled = int(width * min(count, self.total) / self.total)
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {count}/{self.total}"
        else:
            bar = f"{count} samples"
        self.stream.write(f"\r{bar} {rate}" + ("\n" if final else ""))
        self.stream.flush()


def run_pass(client: DatagoClient, progress: Progress) -> dict[str, float]:
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    first = None
    count, nbytes = 0, 0
    client.start()
    while (sample := client.get_sample()) is not None:
        if first is None:
            first = time.perf_counter() - started_wall
        array = sample.image.to_numpy_array()  # touch the pixels as a training loop would
        nbytes += array.nbytes if array is not None else 0
        count += 1
        progress.update(count, nbytes / 1e6)
    progress.update(count, nbytes / 1e6, final=True)
    return {
        "samples": count,
        "wall_s": time.perf_counter() - started_wall,
        "cpu_s": time.process_time() - started_cpu,
        "first_sample_s": first if first is not None else float("nan"),
        "megabytes": nbytes / 1e6,
    }


def summarise(passes: list[dict[str, float]], stats: dict[str, Any]) -> dict[str, Any]:
    steady = passes[1:] or passes
    samples = sum(p["samples"] for p in steady)
    wall = sum(p["wall_s"] for p in steady)
    cpu = sum(p["cpu_s"] for p in steady)
    return {
        "samples_per_pass": passes[0]["samples"],
        "passes": len(passes),
        "img_per_s": samples / wall if wall else 0.0,
        "cpu_ms_per_img": 1000 * cpu / samples if samples else 0.0,
        "mb_per_s": sum(p["megabytes"] for p in steady) / wall if wall else 0.0,
        "first_sample_ms": 1000 * passes[0]["first_sample_s"],
        "threads": stats.get("threads"),
        "failed": stats.get("failed", 0),
        "errors": {k: v for k, v in stats.get("errors", {}).items() if v},
        "stages": stats.get("stages", {}),
        "consumer_wait": stats.get("consumer_wait", {}),
    }


def print_table(result: dict[str, Any], out: TextIO) -> None:
    rows = [
        ("samples per pass", f"{result['samples_per_pass']}"),
        ("passes (first = warm-up)", f"{result['passes']}"),
        ("images / s", f"{result['img_per_s']:.1f}"),
        ("CPU ms / image", f"{result['cpu_ms_per_img']:.2f}"),
        ("MB / s delivered", f"{result['mb_per_s']:.1f}"),
        ("time to first sample", f"{result['first_sample_ms']:.1f} ms"),
        ("native threads", f"{result['threads']}"),
        ("failed files", f"{result['failed']}" + (f" {result['errors']}" if result["errors"] else "")),
    ]
    for stage, h in result["stages"].items():
        if h.get("count"):
            rows.append((f"stage {stage} (p50 / p99)", f"{h['p50_ms']:.2f} / {h['p99_ms']:.2f} ms over {h['count']}"))
    wait = result["consumer_wait"]
    if wait.get("count"):
        rows.append(("reader wait (p50 / p99)", f"{wait['p50_ms']:.3f} / {wait['p99_ms']:.3f} ms"))
    width = max(len(name) for name, _ in rows)
    out.write("\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n")


def bench(args: argparse.Namespace) -> int:
    temporary = None
    if args.source == "webdataset" and args.path is None:
        print("datago bench: --source webdataset needs the shard URL pattern", file=sys.stderr)
        return EXIT_USAGE
    if args.source in ("webdataset", "db"):
        root = args.path or ""
    elif args.path is None:
        temporary = tempfile.mkdtemp(prefix="datago-bench-")
        print(f"generating {args.count} JPEGs in {temporary} ...", file=sys.stderr)
        make_corpus(Path(temporary), args.count)
        root = temporary
    else:
        root = args.path
        if not os.path.exists(root):
            print(f"datago bench: {root}: no such file or folder", file=sys.stderr)
            return EXIT_FAILED
    try:
        config = config_for(args, root)
        try:
            client = DatagoClient(json.dumps(config))
        except ConfigError as error:
            print(f"datago bench: bad configuration: {error}", file=sys.stderr)
            return EXIT_USAGE
        progress_enabled = not args.no_progress and sys.stderr.isatty()
        total = args.limit or (args.count if temporary else None)
        passes = []
        with client:
            try:
                for _ in range(max(1, args.passes)):
                    passes.append(run_pass(client, Progress(total, sys.stderr, progress_enabled)))
            except SourceError as error:
                print(f"datago bench: the source failed: {error}", file=sys.stderr)
                return EXIT_FAILED
            result = summarise(passes, client.stats())
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print_table(result, sys.stdout)
        return EXIT_OK
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench":
            return bench(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except DatagoError as error:
        print(f"datago: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE
