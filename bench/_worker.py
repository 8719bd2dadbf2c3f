"""Run one engine over one corpus for several passes and write the timings as JSON.

    python _worker.py --engine datago --root DIR --count N --image-config JSON \
        --cores C --passes P --out result.json
    python _worker.py --engine datago --url 'http://127.0.0.1:PORT/set-{0..7}.tar' ...

compare.py starts this script in a fresh process pinned with `taskset`, with the interpreter
the engine needs (the reference wheel lives in its own venv). It imports only the standard
library and numpy at the top; each engine imports its own dependencies, so a missing one is
reported as "skipped" (torch, simplejpeg) or "error" (datago) instead of crashing the run.

Per pass the clock starts before the client (or DataLoader, or thread pool) is built, the
first sample ends the time-to-first-sample and opens the steady-state window, and the
`count`-th sample closes it: the window holds `count - 1` images. Every engine hands each
image to the clock as a numpy array, as a training loop would take it.

With `--url` the datago engine reads WebDataset shards (a local path pattern or http URLs)
instead of the folder; `--rank`/`--world-size` pass a rank split, and `--any-count` (for
those) accepts up to `count` samples and records the sample ids, which compare.py checks for
a disjoint, complete split.

With `--db-sources` the datago engine reads the Dataroom server named by DATAROOM_API_URL /
DATAROOM_API_KEY (`source_type: db`, `require_images: true`, `--page-size`). `--probe-page-waits`
adds one untimed pass (ours only: it needs `client.stats()`) that measures how long the
consumer waits on pages: see `PageWaitProbe`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _buckets import Buckets, CoverCrop

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


class Skip(Exception):
    """An optional dependency or input the engine needs is missing: skip, do not fail."""


@dataclass(frozen=True)
class Job:
    engine: str
    root: Path
    count: int
    image_config: dict | None
    cores: int
    passes: int
    loader_workers: int
    url: str | None = None  # WebDataset shards instead of the folder (datago engine only)
    image_type: str = "jpg"
    concurrent_downloads: int = 8
    rank: int = 0
    world_size: int = 1
    any_count: bool = False  # accept <= count samples and record their ids (rank runs)
    db_sources: str | None = None  # a Dataroom server's `sources` instead of the folder
    page_size: int = 100
    probe_page_waits: bool = False  # one more, untimed, pass with PageWaitProbe (db, ours)

    def paths(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class PassClock:
    """Times one pass and checks that exactly `expected` images arrive.

    Engines whose work runs in child processes (DataLoader workers) also report each
    worker's CPU clock with every image (`worker_cpu`); a worker's CPU between its first and
    last image covers its images after the first, so the window adds
    `sum(last - first) / (expected - workers)` per image to the main process's share.
    """

    def __init__(self, expected: int, exact: bool = True) -> None:
        self.expected = expected
        self.exact = exact
        self.ids: list[str] = []
        self.delivered = 0
        self.shapes: Counter[str] = Counter()
        self._worker_cpu: dict[int, tuple[float, float]] = {}
        self._first = self._last = (0.0, 0.0)
        self._start = (time.perf_counter(), _cpu_with_children())

    def sample(self, array: np.ndarray) -> None:
        now = (time.perf_counter(), time.process_time())
        self.delivered += 1
        if self.delivered > self.expected:
            return
        self.shapes["x".join(map(str, array.shape))] += 1
        if self.delivered == 1:
            self._first = now
        self._last = now

    def worker_cpu(self, worker: int, cpu_s: float) -> None:
        first, _ = self._worker_cpu.get(worker, (cpu_s, cpu_s))
        self._worker_cpu[worker] = (first, cpu_s)

    def result(self) -> dict[str, float]:
        if self.delivered > self.expected or (self.exact and self.delivered != self.expected) or self.delivered < 2:
            raise RuntimeError(
                f"delivered {self.delivered} images, expected {self.expected}"
                + (" (over-delivery, docs/compatibility.md §11.12)" if self.delivered > self.expected else "")
            )
        images = self.delivered - 1
        cpu_per_image = (self._last[1] - self._first[1]) / images
        if self._worker_cpu:
            worker_cpu_s = sum(last - first for first, last in self._worker_cpu.values())
            cpu_per_image += worker_cpu_s / (self.delivered - len(self._worker_cpu))
        return {
            "images": images,
            "wall_s": self._last[0] - self._first[0],
            "cpu_s": cpu_per_image * images,
            "ttfs_s": self._first[0] - self._start[0],
            "cpu_total_s": _cpu_with_children() - self._start[1],
        }


def _cpu_with_children() -> float:
    """CPU seconds of this process (all threads) plus its reaped children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass
class Engine:
    run_pass: Callable[[PassClock], None]
    versions: dict[str, str] = field(default_factory=dict)
    child_processes: int = 0  # worker processes whose peak RSS adds to the engine's
    probe_pass: Callable[[int], dict[str, Any]] | None = None  # datago: the page-wait probe


# --------------------------------------------------------------------------
# Engines


def datago_engine(job: Job) -> Engine:
    """`datago.DatagoClient` over the file source, or WebDataset shards with `job.url`: ours or
    the reference, whichever imports."""
    import datago

    client_class = getattr(datago, "DatagoClient", None)
    if client_class is None:
        where = getattr(datago, "__file__", None) or list(getattr(datago, "__path__", []))
        raise RuntimeError(f"'datago' from {where} has no DatagoClient (not built or installed?)")
    source: dict[str, Any] = {"root_path": str(job.root)}
    source_type = "file" if job.url is None else "webdataset"
    if job.db_sources is not None:
        source_type, source = "db", {"sources": job.db_sources, "page_size": job.page_size, "require_images": True}
    elif job.url is not None:
        source = {"url": job.url, "reference_image_type": job.image_type, "concurrent_downloads": job.concurrent_downloads}
        if job.world_size > 1:
            source.update(rank=job.rank, world_size=job.world_size)
    config: dict[str, Any] = {
        "source_type": source_type,
        "source_config": source,
        "limit": job.count,
        "samples_buffer_size": 64,
    }
    if job.image_config is not None:
        config["image_config"] = job.image_config
    config_json = json.dumps(config)

    def run_pass(clock: PassClock) -> None:
        client = client_class(config_json)
        client.start()
        try:
            while (sample := client.get_sample()) is not None:
                clock.sample(sample.image.to_numpy_array())
                if job.any_count:
                    clock.ids.append(sample.id)
        finally:
            client.stop()

    def probe_pass(count: int) -> dict[str, Any]:
        client = client_class(config_json)
        if not hasattr(client, "stats"):
            raise Skip("this datago has no stats(): page waits cannot be told apart")
        probe = PageWaitProbe(client, count)
        return probe.run()

    # A checkout on PYTHONPATH has no distribution metadata: ask the module.
    version = _version("datago")
    if version == "unknown":
        version = str(getattr(datago, "__version__", "unknown"))
    return Engine(run_pass, {"datago": version, "datago_path": str(datago.__file__)}, probe_pass=probe_pass)


class PageWaitProbe:
    """The share of a Dataroom pass that the consumer spends waiting on a page.

    The main thread runs the pass as `run_pass` does and marks each `get_sample()` call as
    blocked; its exact blocked time is summed. A second thread wakes every `interval_s` and,
    while the main thread is blocked waiting for sample n (0-based: n samples received), reads
    `client.stats()["dataroom"]["records"]`, the records the page thread has received so far: when
    that is <= n, record n is on a page not yet answered, so the consumer waits on a page
    (otherwise on a blob download or a decode). Page-wait time = the blocked time x the share of
    blocked polls that found a page missing; as a share of the pass (client built to last sample).
    The polls cost CPU, so this runs as an extra pass, outside the timed ones."""

    def __init__(self, client: Any, count: int, interval_s: float = 0.002) -> None:
        self.client, self.count, self.interval_s = client, count, interval_s
        self.received = 0
        self.blocked = False
        self.done = False
        self.polls = self.blocked_polls = self.page_polls = 0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.polls += 1
            if not self.blocked:
                continue
            waiting_for = self.received
            records = self.client.stats()["dataroom"]["records"]
            if self.blocked and self.received == waiting_for:  # still the same wait
                self.blocked_polls += 1
                self.page_polls += records <= waiting_for

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        poller = threading.Thread(target=self._poll, daemon=True)
        poller.start()
        blocked_s = 0.0
        client = self.client
        client.start()
        try:
            while True:
                self.blocked = True
                before = time.perf_counter()
                sample = client.get_sample()
                blocked_s += time.perf_counter() - before
                self.blocked = False
                if sample is None:
                    break
                sample.image.to_numpy_array()
                self.received += 1
            end = time.perf_counter()
            stats = client.stats()
        finally:
            client.stop()
            self._stop.set()
            poller.join()
        wall_s = end - start
        page_fraction = self.page_polls / self.blocked_polls if self.blocked_polls else 0.0
        return {
            "samples": self.received,
            "wall_s": wall_s,
            "blocked_s": blocked_s,
            "blocked_share": blocked_s / wall_s,
            "page_wait_s": blocked_s * page_fraction,
            "page_wait_share": blocked_s * page_fraction / wall_s,
            "polls": self.polls,
            "blocked_polls": self.blocked_polls,
            "page_polls": self.page_polls,
            "interval_s": self.interval_s,
            "dataroom": stats.get("dataroom"),
            "consumer_wait": stats.get("consumer_wait"),
        }


def pil_loop_engine(job: Job) -> Engine:
    """Pillow in a plain loop on the main thread: the per-core figure of the baseline."""
    load, versions = _pil_loader(job.image_config)
    paths = job.paths()

    def run_pass(clock: PassClock) -> None:
        for path in paths:
            clock.sample(load(path))

    return Engine(run_pass, versions)


def pil_dataloader_engine(job: Job) -> Engine:
    """Pillow in `torch.utils.data.DataLoader` worker processes, one image per item."""
    try:
        import torch
        from torch.utils.data import DataLoader
    except ImportError as error:
        raise Skip(f"torch is not installed ({error}); pip install torch==2.13.0") from error
    load, versions = _pil_loader(job.image_config)
    items = _TimedItems(job.paths(), load)
    # np.asarray(PIL image) is read-only; the tensor only travels to the main process.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    def run_pass(clock: PassClock) -> None:
        # "fork" so the closure in `items` needs no pickling, whatever the platform default.
        loader = DataLoader(
            items, batch_size=None, num_workers=job.loader_workers, multiprocessing_context="fork"
        )
        for tensor, worker, cpu_s in loader:
            clock.sample(np.asarray(tensor))
            clock.worker_cpu(worker, cpu_s)

    return Engine(run_pass, {**versions, "torch": torch.__version__}, job.loader_workers)


class _TimedItems:
    """Map-style dataset: item i is (image i, worker id, the worker's CPU clock after it)."""

    def __init__(self, paths: list[Path], load: Callable[[Path], np.ndarray]) -> None:
        self.paths = paths
        self.load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, float]:
        from torch.utils.data import get_worker_info

        array = self.load(self.paths[index])
        return array, get_worker_info().id, time.process_time()


def _pil_loader(image_config: dict | None) -> tuple[Callable[[Path], np.ndarray], dict[str, str]]:
    """Decode with Pillow, convert to RGB, cover-crop into the bucket (docs/compatibility.md §5.3), to numpy."""
    from PIL import Image

    buckets = Buckets.from_image_config(image_config) if image_config else None

    def load(path: Path) -> np.ndarray:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        if buckets is not None:
            image = _cover_crop(image, buckets.choose(*image.size))
        return np.asarray(image)

    return load, {"pillow": Image.__version__, "numpy": np.__version__}


def _cover_crop(image: Any, bucket: tuple[int, int]) -> Any:
    from PIL import Image

    if image.size == bucket:
        return image
    plan = CoverCrop.plan(*image.size, bucket)
    resized = image.resize(plan.resized, Image.Resampling.LANCZOS)
    if plan.is_pixel_aligned(bucket):
        left, top = int(plan.left), int(plan.top)
        return resized.crop((left, top, left + bucket[0], top + bucket[1]))
    return resized.resize(bucket, Image.Resampling.LANCZOS, box=plan.box)


def ceiling_engine(job: Job) -> Engine:
    """libjpeg-turbo through simplejpeg, `cores` threads, decode only.

    For bucket workloads the decode is DCT-scaled by the smallest of 1/8, 1/4, 1/2 that still
    covers the bucket (else full size), with no resize or crop: no real loader can do less
    work per image. Only those scales have SIMD IDCTs; 5/8-7/8 decode slower than full size
    (jpeg1mp, 1 core: 1/1 2.7 ms, 7/8 5.9, 6/8 4.5, 5/8 3.8, 4/8 2.0, 2/8 1.8, 1/8 1.5).
    """
    try:
        import simplejpeg
    except ImportError as error:
        raise Skip(f"simplejpeg is not installed ({error}); pip install simplejpeg") from error
    paths = job.paths()
    if any(path.suffix.lower() not in {".jpg", ".jpeg"} for path in paths):
        raise Skip("the libjpeg-turbo ceiling decodes JPEG only")
    buckets = Buckets.from_image_config(job.image_config) if job.image_config else None

    def decode(path: Path) -> np.ndarray:
        data = path.read_bytes()
        if buckets is None:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        divisor = _fast_dct_divisor(width, height, buckets.choose(width, height))
        # libjpeg-turbo picks the smallest scale whose output reaches these minimums.
        min_width, min_height = _ceil_div(width, divisor), _ceil_div(height, divisor)
        return simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_width=min_width, min_height=min_height
        )

    def run_pass(clock: PassClock) -> None:
        with ThreadPoolExecutor(job.cores) as pool:
            for array in pool.map(decode, paths):
                clock.sample(array)

    return Engine(run_pass, {"simplejpeg": simplejpeg.__version__, "numpy": np.__version__})


def _fast_dct_divisor(width: int, height: int, bucket: tuple[int, int]) -> int:
    """The largest of 8, 4, 2 whose scaled decode still covers `bucket`, else 1."""
    for divisor in (8, 4, 2):
        if _ceil_div(width, divisor) >= bucket[0] and _ceil_div(height, divisor) >= bucket[1]:
            return divisor
    return 1


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


ENGINES: dict[str, Callable[[Job], Engine]] = {
    "datago": datago_engine,
    "pil": pil_dataloader_engine,
    "pil-loop": pil_loop_engine,
    "ceiling": ceiling_engine,
}


# --------------------------------------------------------------------------
# Driver


def run(job: Job) -> dict[str, Any]:
    engine = ENGINES[job.engine](job)
    passes: list[dict[str, float]] = []
    shapes: Counter[str] = Counter()
    ids: list[str] = []
    for index in range(job.passes):
        clock = PassClock(job.count, exact=not job.any_count)
        engine.run_pass(clock)
        try:
            passes.append(clock.result())
        except RuntimeError as error:
            raise RuntimeError(f"pass {index + 1}: {error}") from None
        shapes, ids = clock.shapes, clock.ids
    probe = None
    if job.probe_page_waits and engine.probe_pass is not None:
        probe = engine.probe_pass(job.count)
        if probe["samples"] != job.count:
            raise RuntimeError(f"page-wait pass: delivered {probe['samples']} images, expected {job.count}")
    own_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child
    return {
        "status": "ok",
        "passes": passes,
        "peak_rss_mb": own_mb + engine.child_processes * child_mb,
        "own_peak_rss_mb": own_mb,
        "child_peak_rss_mb": child_mb,
        "shapes": dict(shapes),
        "versions": engine.versions,
        **({"ids": ids} if job.any_count else {}),
        **({"page_waits": probe} if probe is not None else {}),
    }


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def parse_job(argv: list[str] | None) -> tuple[Job, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=sorted(ENGINES), required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--image-config", type=json.loads, default=None)
    parser.add_argument("--cores", type=int, required=True)
    parser.add_argument("--passes", type=int, required=True)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--url", help="WebDataset shard pattern: read it instead of --root")
    parser.add_argument("--image-type", default="jpg", help="reference_image_type with --url")
    parser.add_argument("--concurrent-downloads", type=int, default=8)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--any-count", action="store_true", help="accept <= --count samples, record ids")
    parser.add_argument("--db-sources", help="read the Dataroom server of DATAROOM_API_URL (these `sources`)")
    parser.add_argument("--page-size", type=int, default=100, help="page_size with --db-sources")
    parser.add_argument("--probe-page-waits", action="store_true", help="one more pass: time waiting on pages")
    args = parser.parse_args(argv)
    job = Job(
        engine=args.engine,
        root=args.root,
        count=args.count,
        image_config=args.image_config,
        cores=args.cores,
        passes=args.passes,
        loader_workers=args.loader_workers,
        url=args.url,
        image_type=args.image_type,
        concurrent_downloads=args.concurrent_downloads,
        rank=args.rank,
        world_size=args.world_size,
        any_count=args.any_count,
        db_sources=args.db_sources,
        page_size=args.page_size,
        probe_page_waits=args.probe_page_waits,
    )
    return job, args.out


def main(argv: list[str] | None = None) -> int:
    job, out = parse_job(argv)
    try:
        result = run(job)
    except Skip as skip:
        result = {"status": "skipped", "reason": str(skip)}
    except Exception as error:  # Reported as an error row; the comparison goes on.
        traceback.print_exc()
        result = {"status": "error", "reason": f"{type(error).__name__}: {error}"}
    result["python"] = sys.version.split()[0]
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
