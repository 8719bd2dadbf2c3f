#!/usr/bin/env python3
"""Compare datago (ours) with the reference wheel and with Pillow / libjpeg-turbo baselines.

    python bench/compare.py                       # default sets, workloads, engines, 1 and 2 cores
    python bench/compare.py --quick               # small corpora: a smoke run of a few minutes
    python bench/compare.py --engines reference,pil,pil-loop,ceiling \
        --sets jpeg1mp --workloads decode,bucket512 --cores 1,2
    python bench/compare.py --suite wds           # WebDataset shards: local and over loopback HTTP
    python bench/compare.py --suite db            # a Dataroom test server with 20 ms per response

Engines (each in a fresh process, `_worker.py`):
  ours       `import datago` with this interpreter (or --ours-python) and the repository root
             first on PYTHONPATH: this checkout's package
  reference  datago==2026.10.1 (Photoroom's Rust wheel) in a venv under the cache dir
  pil        Pillow + torch.utils.data.DataLoader(num_workers=2), one image per item
  pil-loop   Pillow in a plain loop on one thread (1-core runs only)
  ceiling    libjpeg-turbo via simplejpeg, decode only, `cores` threads; JPEG sets only
Every engine decodes, converts what it must and hands over a numpy array per image. The bucket
workloads cover-resize and centre-crop into the docs/compatibility.md §5.1 bucket with Lanczos (datago:
`crop_and_resize`; pil: Pillow, same geometry, _buckets.py); the ceiling only DCT-scales its
decode to the smallest size that still covers the bucket.

Method:
- Corpora come from ../shared/bench/make_corpus.py (seed 0), built on demand under the cache
  dir, one folder per image count, read once before the runs so they sit in the page cache.
- Each (set, workload, cores, engine) is one process pinned with `taskset -c` to the first
  `cores` CPUs; datago engines get DATAGO_MAX_TASKS=cores and limit = corpus size.
- A process makes `--passes` passes. In each, time to first sample (TTFS) runs from building
  the client (DataLoader, thread pool) to the first image; the first image is then dropped and
  the steady-state window runs to the last one. Each pass must deliver exactly the corpus
  size: more (the reference's over-delivery, docs/compatibility.md §11.12) or fewer is an error.
- CPU is process CPU over the window, all threads; for `pil` each DataLoader worker reports
  its own CPU clock with every image and the workers' share is added (see _worker.PassClock).
- Figures are medians over passes: img/s; CPU ms per image (the steadier figure; "±" is half
  the range over passes); MP/s/core = source megapixels per CPU second; TTFS; peak RSS (for
  pil: main process + workers x the largest worker). Ratios compare with `--ratio-to` (ours):
  "speed-up CPU" = engine CPU ms/img / ours, "speed-up wall" = ours img/s / engine img/s.
  "load" is the 1-minute load average when the run started (it includes earlier runs);
  "others" is the share of the pinned CPUs' time that other processes used during the run
  (OthersMeter); a run above --max-others (10%) is rerun up to --retries (2) times after a
  pause and the least disturbed attempt is kept.
- Image sizes (H x W) are compared with the reference's; a difference is noted in the row.
- Output: markdown on stdout and in bench/results/NAME.md, raw numbers in NAME.json, a bar
  chart in NAME.png (needs matplotlib).

Sources (--sources, or --suite wds):
  file       the corpus folder (`source_type: file`)
  wds-local  WebDataset shards of the same images on local disk: ours only (the reference
             reads only http(s) URLs, docs/compatibility.md §7.2)
  wds-http   the same shards from a loopback HTTP/1.1 server (_shard_server.py: keep-alive,
             Range, sendfile) that runs in its own process, pinned with `taskset -a` to the CPUs
             outside the measured set when there are any (none for a 2-core run on a 2-CPU
             machine). Its CPU is never part of an engine's process CPU, and it is not counted
             in "others" when it shares the measured CPUs; the note gives it per image.
- Shards: `<set>-{0..7}.tar` built on demand with `tarfile` next to the corpus
  (`corpora/n<count>/<set>-wds/`), deterministic: sorted files in 8 contiguous runs, members
  `<stem>.<ext>` with fixed metadata. Both datago engines get `concurrent_downloads`
  (--concurrent-downloads, 8: the reference's default) and limit = corpus size, so the
  reference's `limit + 1` over-delivery (§7.2) cannot happen, as with the file source; a pass
  must still deliver exactly the corpus size. The server's log checks that each run moved
  passes x the shard bytes (a retried or resumed shard shows as a note).
- Bytes per rank: with wds-http, each datago engine also reads the shards once as rank 0 and
  rank 1 of world_size 2 (--world-size), pinned like the largest --cores; the report gives
  the body bytes the server sent each rank as a share of all shard bytes, and checks that
  the ranks' sample ids are disjoint and complete.

Dataroom (--sources db, or --suite db: jpeg1mp decode and bucket512, ours and the reference):
  db         tests/dataroom_server.py (the protocol-faithful test server) in its own process
             (_dataroom_server.py), one record per corpus image (id = file stem, the JPEG as its
             blob, source "BENCH"), --db-latency (20 ms) added to every response: pages and blobs.
             Pinned like the shard server (outside the measured CPUs when there are any), its CPU
             never counted in an engine's. Both engines get DATAROOM_API_URL / DATAROOM_API_KEY,
             `{"sources": "BENCH", "page_size": --page-size (100), "require_images": true}`,
             limit = corpus size (= the records: no `limit + 1` over-delivery, as with files;
             each pass must still deliver exactly the corpus size), and their own blob concurrency
             (the reference has no setting for it; ours' default concurrent_downloads, 16).
- Page waits (ours): one more, untimed, pass in the same process (_worker.PageWaitProbe) times
  each get_sample() and, from a thread polling every 2 ms while it blocks, reads
  stats()["dataroom"]["records"]: when that is <= the index of the sample awaited, the record is
  on a page not yet answered. Page-wait share = blocked time x the share of blocked polls that
  found the page missing, over the pass (client built to last sample, first page included).
- The server's log gives pages and blobs per pass and any status other than 200.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORKER = BENCH_DIR / "_worker.py"
REFERENCE_REQUIREMENT = "datago==2026.10.1"
RETRY_WAIT_S = 30

WORKLOADS: dict[str, dict[str, Any] | None] = {
    "decode": None,
    "bucket512": {
        "crop_and_resize": True,
        "default_image_size": 512,
        "downsampling_ratio": 16,
        "min_aspect_ratio": 0.5,
        "max_aspect_ratio": 2.0,
    },
    "bucket1024": {
        "crop_and_resize": True,
        "default_image_size": 1024,
        "downsampling_ratio": 32,
        "min_aspect_ratio": 0.5,
        "max_aspect_ratio": 2.0,
    },
}
COUNTS = {"jpeg1mp": 600, "jpeg4mp": 600, "jpegvar": 600, "png1mp": 600, "pngreal": 120, "tiny64": 5000}
QUICK_COUNTS = {"jpeg1mp": 48, "jpeg4mp": 24, "jpegvar": 48, "png1mp": 48, "pngreal": 24, "tiny64": 400}
# Sets built by this repository's scripts rather than shared/bench/make_corpus.py.
LOCAL_SETS = {"pngreal": Path(__file__).resolve().parent / "make_png_set.py"}
ENGINE_WORKERS = {  # compare.py engine -> _worker.py engine
    "ours": "datago",
    "reference": "datago",
    "pil": "pil",
    "pil-loop": "pil-loop",
    "ceiling": "ceiling",
}
SINGLE_THREADED = {"pil-loop"}  # more cores only leave room for other processes
DEFAULT_SETS = "jpeg1mp,jpegvar,png1mp,tiny64"
# The (set, workload) rows of the fast-path issue's target table; `--suite
# targets` runs exactly these, and the report checks each target.
TARGET_PAIRS = [
    ("jpeg1mp", "decode"), ("jpeg1mp", "bucket512"), ("jpeg1mp", "bucket1024"),
    ("jpeg4mp", "bucket1024"), ("jpegvar", "bucket512"), ("png1mp", "decode"), ("tiny64", "decode"),
]
DEFAULT_WORKLOADS = "decode,bucket512"
SOURCES = ["file", "wds-local", "wds-http", "db"]
WDS_SOURCES = {"wds-local", "wds-http"}
WDS_SOURCES_ORDER = ["file", "wds-local", "wds-http"]  # --suite wds
# `--suite wds`: the WebDataset rows, ours against its file source and the reference over HTTP.
WDS_PAIRS = [("jpeg1mp", "decode"), ("jpeg1mp", "bucket512"), ("tiny64", "decode")]
WDS_SHARDS = 8
SHARD_SERVER = BENCH_DIR / "_shard_server.py"
# `--suite db`: a Dataroom test server whose records' blobs are the corpus images.
DB_PAIRS = [("jpeg1mp", "decode"), ("jpeg1mp", "bucket512")]
DATAROOM_SERVER = BENCH_DIR / "_dataroom_server.py"
DB_SOURCES = "BENCH"  # the records' `source`, and the engines' `sources`


@dataclasses.dataclass(frozen=True)
class Settings:
    engines: list[str]
    sets: list[str]
    workloads: list[str]
    pairs: list[tuple[str, str]]  # (set, workload) to run, in order
    cores: list[int]
    passes: int
    counts: dict[str, int]
    loader_workers: int
    ratio_to: str
    max_others: float
    retries: int
    timeout_s: float
    ours_python: Path
    cache: Path
    shared: Path
    results: Path
    name: str
    sources: list[str] = dataclasses.field(default_factory=lambda: ["file"])
    suite: str | None = None
    concurrent_downloads: int = 8
    world_size: int = 2  # rank runs with wds-http; 0: none
    page_size: int = 100  # db: both engines
    db_latency_s: float = 0.02  # db: added to every response of the test server


@dataclasses.dataclass(frozen=True)
class Shards:
    """A corpus as WebDataset shards, `<set>-{0..n-1}.tar` in `folder`."""

    name: str
    folder: Path
    paths: list[Path]
    image_type: str
    total_bytes: int

    def pattern(self, base: str) -> str:
        return f"{base}/{self.name}-{{0..{len(self.paths) - 1}}}.tar"


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    root: Path
    count: int
    megapixels: float
    encoded_mb: float

    @property
    def mean_megapixels(self) -> float:
        return self.megapixels / self.count


@dataclasses.dataclass(frozen=True)
class Run:
    set: str
    workload: str
    cores: int
    engine: str
    load_1m: float
    others_share: float | None  # see OthersMeter; None when no worker ran
    result: dict[str, Any]
    attempts: int = 1
    source: str = "file"
    server: dict[str, Any] | None = None  # wds-http: what the shard server did during the run

    @property
    def ok(self) -> bool:
        return self.result["status"] == "ok"

    @property
    def key(self) -> tuple[str, str, int, str]:
        return self.set, self.workload, self.cores, self.source

    @property
    def label(self) -> str:
        return self.engine if self.source == "file" else f"{self.engine} {self.source}"


@dataclasses.dataclass(frozen=True)
class RankRun:
    """One datago engine reading the shards over HTTP as `rank` of `world_size`."""

    set: str
    engine: str
    rank: int
    world_size: int
    result: dict[str, Any]
    bytes_sent: int = 0
    requests: int = 0


@dataclasses.dataclass(frozen=True)
class Figures:
    images_per_s: float
    cpu_ms: float
    cpu_spread: float  # half the range of CPU ms/img over passes, relative to the median
    megapixels_per_cpu_s: float
    ttfs_ms: float
    rss_mb: float


# --------------------------------------------------------------------------
# Setup: corpora and interpreters


def ensure_corpus(settings: Settings, set_name: str) -> Corpus:
    """Build `set_name` with `count` images under the cache dir unless it is already there."""
    count = settings.counts[set_name]
    out = settings.cache / "corpora" / f"n{count}"
    root, manifest_path = out / set_name, out / f"{set_name}.manifest.json"
    if not _corpus_complete(root, manifest_path, count):
        print(f"building corpus {set_name} ({count} images) in {out}", file=sys.stderr)
        if set_name in LOCAL_SETS:
            photos = settings.shared / "bench" / "photos"
            options = {"out": out, "count": count, "photos": photos}
            command = [sys.executable, str(LOCAL_SETS[set_name]), *_flags(options)]
        else:
            script = settings.shared / "bench" / "make_corpus.py"
            options = {"out": out, "set": set_name, "count": count, "seed": 0}
            command = [sys.executable, str(script), *_flags(options), "--force"]
        subprocess.run(command, check=True, stdout=sys.stderr)
    images = json.loads(manifest_path.read_text())["images"]
    return Corpus(
        name=set_name,
        root=root,
        count=count,
        megapixels=sum(w * h for w, h in (image["size"] for image in images)) / 1e6,
        encoded_mb=sum(image["bytes"] for image in images) / 1e6,
    )


def _corpus_complete(root: Path, manifest_path: Path, count: int) -> bool:
    if not manifest_path.is_file() or not root.is_dir():
        return False
    manifest = json.loads(manifest_path.read_text())
    return manifest["count"] == count and sum(1 for _ in root.iterdir()) == count


def warm_page_cache(corpus: Corpus, shards: Shards | None = None) -> None:
    for path in [*corpus.root.iterdir(), *(shards.paths if shards else [])]:
        path.read_bytes()


def ensure_shards(corpus: Corpus) -> Shards:
    """`corpus` as WDS_SHARDS tar shards next to it, built unless the manifest matches.

    Deterministic: the sorted files in contiguous runs, members named as the files
    (`<key>.<ext>`), fixed metadata, USTAR headers."""
    files = sorted(path for path in corpus.root.iterdir() if path.is_file())
    suffixes = {path.suffix for path in files}
    if len(suffixes) != 1:
        raise SystemExit(f"{corpus.name}: WebDataset shards need one image suffix, found {sorted(suffixes)}")
    folder = corpus.root.parent / f"{corpus.name}-wds"
    per_shard = -(-len(files) // WDS_SHARDS)
    groups = [files[start:start + per_shard] for start in range(0, len(files), per_shard)]
    paths = [folder / f"{corpus.name}-{index}.tar" for index in range(len(groups))]
    plan = {"shards": [path.name for path in paths], "members": [[f.name for f in group] for group in groups]}
    manifest = folder / "shards.json"
    built = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if built.get("plan") != plan or any(
        not path.is_file() or path.stat().st_size != size for path, size in zip(paths, built.get("sizes", []), strict=False)
    ) or len(built.get("sizes", [])) != len(paths):
        print(f"building {len(paths)} WebDataset shards of {corpus.name} in {folder}", file=sys.stderr)
        folder.mkdir(parents=True, exist_ok=True)
        for path, group in zip(paths, groups, strict=True):
            _write_shard(path, group)
        manifest.write_text(json.dumps({"plan": plan, "sizes": [path.stat().st_size for path in paths]}))
    return Shards(
        name=corpus.name,
        folder=folder,
        paths=paths,
        image_type=suffixes.pop().lstrip("."),
        total_bytes=sum(path.stat().st_size for path in paths),
    )


def _write_shard(path: Path, files: list[Path]) -> None:
    part = path.with_name(path.name + ".part")
    with tarfile.open(part, "w", format=tarfile.USTAR_FORMAT) as archive:
        for file in files:
            info = tarfile.TarInfo(file.name)
            info.size = file.stat().st_size
            info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 1_700_000_000, 0o644, 0, 0, "", ""
            with file.open("rb") as data:
                archive.addfile(info, data)
    part.replace(path)


class ShardHost:
    """_shard_server.py in its own process, serving the shard folders on 127.0.0.1."""

    def __init__(self, folders: list[Path], log: Path) -> None:
        roots = [part for folder in folders for part in ("--root", str(folder))]
        command = [sys.executable, str(SHARD_SERVER), *roots, "--log", str(log)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        port = self.process.stdout.readline().strip()
        if not port.isdigit():
            self.process.kill()
            raise RuntimeError(f"the shard server did not start: {port!r}")
        self.base = f"http://127.0.0.1:{port}"
        self.cpus = sorted(os.sched_getaffinity(0))

    def pin_away_from(self, measured: list[int]) -> None:
        """Pins every server thread to the CPUs outside `measured`, or to all when none is."""
        usable = sorted(os.sched_getaffinity(0))
        self.cpus = [cpu for cpu in usable if cpu not in measured] or usable
        cpus = ",".join(map(str, self.cpus))
        subprocess.run(["taskset", "-a", "-pc", cpus, str(self.process.pid)], check=True, capture_output=True)

    def stats(self, settle_s: float = 5.0) -> dict[str, Any]:
        """Bytes and requests per path so far, once no response is in flight (or after settle_s)."""
        deadline = time.monotonic() + settle_s
        while True:
            with urllib.request.urlopen(f"{self.base}/_stats", timeout=10) as response:
                stats = json.loads(response.read())
            if stats["in_flight"] == 0 or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)

    def cpu_s(self) -> float:
        """User + system CPU of the server process (all threads), from /proc."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class DataroomHost:
    """_dataroom_server.py (tests/dataroom_server.py) in its own process, one record per image."""

    def __init__(self, corpus: Corpus, latency_s: float, log: Path) -> None:
        command = [sys.executable, str(DATAROOM_SERVER), "--root", str(corpus.root), "--source", DB_SOURCES,
                   "--latency", str(latency_s), "--log", str(log)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        try:
            hello = json.loads(line)
        except json.JSONDecodeError:
            self.process.kill()
            raise RuntimeError(f"the Dataroom server did not start: {line!r}") from None
        if hello["records"] != corpus.count:
            raise RuntimeError(f"the Dataroom server holds {hello['records']} records, not {corpus.count}")
        self.env = {"DATAROOM_API_URL": hello["api_url"], "DATAROOM_API_KEY": hello["token"]}
        self.cpus = sorted(os.sched_getaffinity(0))

    pin_away_from = ShardHost.pin_away_from
    cpu_s = ShardHost.cpu_s

    def stats(self) -> dict[str, Any]:
        """Requests, statuses and body bytes per endpoint so far (see _dataroom_server.py)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for what in ("requests", "statuses", "bytes", "incomplete"):
            keys = set(before[what]) | set(after[what])
            out[what] = {k: after[what].get(k, 0) - before[what].get(k, 0) for k in sorted(keys)}
            out[what] = {k: v for k, v in out[what].items() if v}
        out["page_queries"] = after["page_queries"][-3:]
        return out

    def stop(self) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write("stop\n")
            self.process.stdin.close()
            self.process.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


def server_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """What the server did between two /_stats answers, summed over paths."""

    def total(stats: dict[str, Any], what: str) -> int:
        value = stats[what]
        return sum(value.values()) if isinstance(value, dict) else value

    return {what: total(after, what) - total(before, what) for what in ("bytes", "requests", "ranged", "incomplete")}


def ensure_reference_python(cache: Path) -> Path:
    """The reference wheel's interpreter: a venv under the cache dir, created on demand."""
    venv = cache / "ref-venv"
    python = venv / "bin" / "python"
    wanted = REFERENCE_REQUIREMENT.split("==")[1]
    if _distribution_version(python, "datago") != wanted:
        print(f"creating {venv} with {REFERENCE_REQUIREMENT}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        install = ["-m", "pip", "install", "--quiet", REFERENCE_REQUIREMENT, "numpy", "pillow"]
        subprocess.run([str(python), *install], check=True, stdout=sys.stderr)
    return python


def _distribution_version(python: Path, distribution: str) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({distribution!r}))"],
        capture_output=True,
        text=True,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def interpreters(settings: Settings) -> dict[str, Path | str]:
    """Engine -> interpreter path, or the reason it has none (an error row)."""
    found: dict[str, Path | str] = {
        engine: Path(sys.executable) for engine in settings.engines if engine != "reference"
    }
    if "ours" in settings.engines:
        found["ours"] = settings.ours_python
    if "reference" in settings.engines:
        try:
            found["reference"] = ensure_reference_python(settings.cache)
        except (OSError, subprocess.CalledProcessError) as error:
            found["reference"] = f"cannot set up the reference venv: {error}"
    return found


# --------------------------------------------------------------------------
# Running


@dataclasses.dataclass(frozen=True)
class Where:
    """The source a run reads: the folder, or its shards on disk or from the server."""

    source: str = "file"
    shards: Shards | None = None
    host: ShardHost | DataroomHost | None = None

    def worker_options(self, settings: Settings) -> dict[str, Any]:
        if self.source == "file":
            return {}
        if self.source == "db":
            return {"db-sources": DB_SOURCES, "page-size": settings.page_size}
        assert self.shards is not None
        base = str(self.shards.folder) if self.source == "wds-local" else self.host.base  # type: ignore[union-attr]
        return {
            "url": self.shards.pattern(base),
            "image-type": self.shards.image_type,
            "concurrent-downloads": settings.concurrent_downloads,
        }


def run_engine(
    settings: Settings, engine: str, python: Path | str, corpus: Corpus, workload: str, cores: int,
    where: Where = Where(),
) -> Run:
    load_1m = os.getloadavg()[0]
    head = (corpus.name, workload, cores, engine, load_1m)
    if isinstance(python, str):
        return Run(*head, None, _error(python), source=where.source)
    if engine in SINGLE_THREADED and cores > 1:
        skip = {"status": "skipped", "reason": "single-threaded: its 1-core row is its figure"}
        return Run(*head, None, skip, source=where.source)
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    host = where.host if where.source in ("wds-http", "db") else None
    if host is not None:
        host.pin_away_from(cpus)
        before, server_cpu_s = host.stats(), host.cpu_s()
    # The server's CPU on the measured CPUs is known: it is not "others".
    meter = OthersMeter(cpus, host.process.pid if host is not None and set(host.cpus) & set(cpus) else None)
    options = {
        "image-config": json.dumps(WORKLOADS[workload]),
        "cores": cores,
        "passes": settings.passes,
        "loader-workers": settings.loader_workers,
        **where.worker_options(settings),
        **({"probe-page-waits": ""} if where.source == "db" and engine == "ours" else {}),
    }
    result = run_worker(engine, python, corpus, cpus, options, settings.timeout_s)
    others = meter.others_share()
    server = None
    if isinstance(host, DataroomHost):
        server = host.delta(before, host.stats())
        server.update(cpu_s=host.cpu_s() - server_cpu_s, cpus=host.cpus)
    elif host is not None:
        server = server_delta(before, host.stats())
        shard_bytes = where.shards.total_bytes  # type: ignore[union-attr]
        server.update(cpu_s=host.cpu_s() - server_cpu_s, cpus=host.cpus, shard_bytes=shard_bytes)
    return Run(*head, others, result, source=where.source, server=server)


def run_worker(
    engine: str, python: Path, corpus: Corpus, cpus: list[int], options: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """One _worker.py process for `engine`, pinned to `cpus`, over `corpus`."""
    env = dict(os.environ)
    if ENGINE_WORKERS[engine] == "datago":
        env["DATAGO_MAX_TASKS"] = str(len(cpus))
    if engine == "ours":  # this checkout's package, built in place or installed editable
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="datago-bench-") as scratch:
        out = Path(scratch) / "result.json"
        options = {"engine": ENGINE_WORKERS[engine], "root": corpus.root, "count": corpus.count, **options, "out": out}
        pinned = ["taskset", "-c", ",".join(map(str, cpus)), str(python), str(WORKER)]
        return _run_worker([*pinned, *_flags(options)], env, out, timeout_s)


def run_ranks(
    settings: Settings, engine: str, python: Path | str, corpus: Corpus, where: Where
) -> list[RankRun]:
    """Each rank of world_size reads the shards over HTTP once; the server counts its bytes."""
    host, ranks = where.host, []
    assert host is not None
    cpus = sorted(os.sched_getaffinity(0))[: max(settings.cores)]
    for rank in range(settings.world_size):
        head = (corpus.name, engine, rank, settings.world_size)
        if isinstance(python, str):
            ranks.append(RankRun(*head, _error(python)))
            continue
        host.pin_away_from(cpus)
        before = host.stats()
        options = {
            "cores": len(cpus), "passes": 1, **where.worker_options(settings),
            "rank": rank, "world-size": settings.world_size, "any-count": "",
        }
        result = run_worker(engine, python, corpus, cpus, options, settings.timeout_s)
        sent = server_delta(before, host.stats())
        ranks.append(RankRun(*head, result, bytes_sent=sent["bytes"], requests=sent["requests"]))
    done = [rank for rank in ranks if rank.result["status"] == "ok"]
    if len(done) == settings.world_size:  # kept in the last rank's result, which the JSON keeps
        ranks[-1].result["split"] = split_check(done, corpus)
    return ranks


def _flags(options: dict[str, Any]) -> list[str]:
    """`--key value` per option; an empty string value is a bare `--key` switch."""
    return [part for key, value in options.items() for part in (f"--{key}", str(value)) if part != ""]


def _run_worker(
    command: list[str], env: dict[str, str], out: Path, timeout_s: float
) -> dict[str, Any]:
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return _error(f"timed out after {timeout_s:g} s")
    if out.exists():
        result = json.loads(out.read_text())
    elif done.returncode < 0:
        result = _error(f"worker killed by {signal.Signals(-done.returncode).name}")
    else:
        result = _error(f"worker exited with status {done.returncode}")
    result["stderr_tail"] = done.stderr[-2000:]
    return result


class OthersMeter:
    """Share of the pinned CPUs' time used by anything but our worker, from /proc/stat.

    Busy time of those CPUs minus the CPU of our reaped children (the worker and its
    DataLoader processes) and of `also_ours` (the shard server when it shares those CPUs),
    over wall time x CPUs. High values mean a contaminated row.
    """

    def __init__(self, cpus: list[int], also_ours: int | None = None) -> None:
        self.cpus = {f"cpu{cpu}" for cpu in cpus}
        self.also_ours = also_ours  # a process (the shard server) whose CPU is not "others"
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        busy_ticks = 0
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name in self.cpus:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
                busy_ticks += user + nice + system + irq + softirq + steal
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        ticks_per_s = os.sysconf("SC_CLK_TCK")
        ours_s = children.ru_utime + children.ru_stime
        if self.also_ours is not None:
            fields = Path(f"/proc/{self.also_ours}/stat").read_text().rsplit(")", 1)[1].split()
            ours_s += (int(fields[11]) + int(fields[12])) / ticks_per_s
        return time.monotonic(), busy_ticks / ticks_per_s, ours_s

    def others_share(self) -> float:
        wall_s, busy_s, ours_s = (
            end - start for end, start in zip(self._sample(), self._start, strict=True)
        )
        return max(0.0, (busy_s - ours_s) / (wall_s * len(self.cpus)))


def _error(reason: str) -> dict[str, Any]:
    return {"status": "error", "reason": reason}


def run_settled(
    settings: Settings, engine: str, python: Path | str, corpus: Corpus, workload: str, cores: int,
    where: Where = Where(),
) -> Run:
    """Run, and rerun up to `retries` times while other processes took over `max_others` of
    the pinned CPUs; keep the least disturbed attempt."""
    best = run_engine(settings, engine, python, corpus, workload, cores, where)
    for attempt in range(2, settings.retries + 2):
        if not best.ok or best.others_share is None or best.others_share <= settings.max_others:
            break
        print(
            f"{corpus.name} {workload} {cores}c {engine} {where.source}: others used "
            f"{100 * best.others_share:.0f}% of the CPUs; rerunning in {RETRY_WAIT_S} s",
            file=sys.stderr,
        )
        time.sleep(RETRY_WAIT_S)  # let a passing build or test run finish
        again = run_engine(settings, engine, python, corpus, workload, cores, where)
        if again.ok and again.others_share is not None and again.others_share < best.others_share:
            best = again
        best = dataclasses.replace(best, attempts=attempt)
    return best


def engines_for(settings: Settings, source: str) -> list[str]:
    """The engines that read `source`: the datago engines read shards (the reference only
    over HTTP); in the wds suite the file source is ours' baseline only."""
    if source == "file":
        return ["ours"] if settings.suite == "wds" and "ours" in settings.engines else settings.engines
    if source == "db":
        return [engine for engine in settings.engines if engine in {"ours", "reference"}]
    readers = {"ours"} if source == "wds-local" else {"ours", "reference"}
    return [engine for engine in settings.engines if engine in readers]


@dataclasses.dataclass
class Results:
    corpora: list[Corpus]
    runs: list[Run]
    ranks: list[RankRun] = dataclasses.field(default_factory=list)
    shards: dict[str, Shards] = dataclasses.field(default_factory=dict)


def run_all(settings: Settings) -> Results:
    pythons = interpreters(settings)
    corpora = [ensure_corpus(settings, set_name) for set_name in settings.sets]
    wds = WDS_SOURCES & set(settings.sources)
    shards = {corpus.name: ensure_shards(corpus) for corpus in corpora} if wds else {}
    out = Results(corpora, [], [], shards)
    plan = [
        (corpus, workload, cores, source, engine)
        for corpus in corpora
        for workload in [w for s, w in settings.pairs if s == corpus.name]
        for cores in settings.cores
        for source in settings.sources
        for engine in engines_for(settings, source)
    ]
    host = None
    if "wds-http" in settings.sources:
        log = settings.cache / "shard-server.log"
        log.unlink(missing_ok=True)
        host = ShardHost(sorted({s.folder for s in shards.values()}), log)
    db_host = None
    try:
        for corpus in corpora:
            warm_page_cache(corpus, shards.get(corpus.name))
            if "db" in settings.sources:
                db_host = DataroomHost(corpus, settings.db_latency_s, settings.cache / "dataroom-server.log")
                os.environ.update(db_host.env)  # run_worker passes os.environ on
            for _, workload, cores, source, engine in [p for p in plan if p[0] is corpus]:
                where = Where(source, shards.get(corpus.name), db_host if source == "db" else host)
                run = run_settled(settings, engine, pythons[engine], corpus, workload, cores, where)
                out.runs.append(run)
                print(f"[{len(out.runs)}/{len(plan)}] {_progress(run, corpus)}", file=sys.stderr)
            if host is not None and settings.world_size > 1:
                for engine in engines_for(settings, "wds-http"):
                    ranks = run_ranks(settings, engine, pythons[engine], corpus, Where("wds-http", shards[corpus.name], host))
                    out.ranks += ranks
                    for rank in ranks:
                        share = rank.result.get("reason") or f"{rank_share(rank, shards):.0%} of the shard bytes"
                        print(f"{corpus.name} {engine} rank {rank.rank}/{rank.world_size}: {share}", file=sys.stderr)
            if db_host is not None:
                db_host.stop()
                db_host = None
    finally:
        if host is not None:
            host.stop()
        if db_host is not None:
            db_host.stop()
    return out


def rank_share(rank: RankRun, shards: dict[str, Shards]) -> float:
    return rank.bytes_sent / shards[rank.set].total_bytes


def _progress(run: Run, corpus: Corpus) -> str:
    head = f"{run.set} {run.workload} {run.cores}c {run.label}:"
    if not run.ok:
        return f"{head} {run.result['status']}: {run.result['reason']}"
    figures = compute_figures(run, corpus)
    waits = run.result.get("page_waits")
    tail = f", page wait {100 * waits['page_wait_share']:.1f}% of the pass" if waits else ""
    return f"{head} {figures.images_per_s:.1f} img/s, {figures.cpu_ms:.2f} CPU ms/img{tail}"


# --------------------------------------------------------------------------
# Figures and report


def compute_figures(run: Run, corpus: Corpus) -> Figures:
    passes = run.result["passes"]
    cpu_ms = [1000 * p["cpu_s"] / p["images"] for p in passes]
    median_cpu_ms = statistics.median(cpu_ms)
    return Figures(
        images_per_s=statistics.median(p["images"] / p["wall_s"] for p in passes),
        cpu_ms=median_cpu_ms,
        cpu_spread=(max(cpu_ms) - min(cpu_ms)) / 2 / median_cpu_ms,
        megapixels_per_cpu_s=corpus.mean_megapixels * 1000 / median_cpu_ms,
        ttfs_ms=1000 * statistics.median(p["ttfs_s"] for p in passes),
        rss_mb=run.result["peak_rss_mb"],
    )


def size_mismatches(runs: list[Run]) -> dict[int, str]:
    """id(run) -> note, for runs whose image sizes (H x W) differ from the reference's.

    The base is the reference when it ran, else the first engine of the group; the ceiling's
    DCT-scaled sizes are not bucket sizes, so it is only compared on `decode`.
    """
    notes = {}
    for key in dict.fromkeys(run.key[:3] for run in runs):  # every source of (set, workload, cores)
        group = [run for run in runs if run.key[:3] == key and run.ok]
        if key[1] != "decode":
            group = [run for run in group if run.engine != "ceiling"]
        group.sort(key=lambda run: run.engine != "reference")
        for run in group[1:]:
            differing = sum((_sizes(run) - _sizes(group[0])).values())
            if differing:
                notes[id(run)] = f"sizes differ from {group[0].label} for {differing} images"
    return notes


def failure_notes(runs: list[Run]) -> list[str]:
    """One line per distinct error or skip, naming every run it hit."""
    places: dict[tuple[str, str, str], list[str]] = {}
    for run in runs:
        if not run.ok:
            what = (run.engine, run.result["status"], run.result["reason"])
            where = "" if run.source == "file" else f"/{run.source}"
            places.setdefault(what, []).append(f"{run.set}/{run.workload}/{run.cores}c{where}")
    return [
        f"{engine} {status} in {', '.join(where)}: {reason}"
        for (engine, status, reason), where in places.items()
    ]


def _sizes(run: Run) -> Counter[str]:
    sizes: Counter[str] = Counter()
    for shape, count in run.result["shapes"].items():
        sizes["x".join(shape.split("x")[:2])] += count
    return sizes


def table(runs: list[Run], corpora: dict[str, Corpus], ratio_to: str) -> list[str]:
    """One row per run; a `source` column when some run read shards."""
    sourced = any(run.source != "file" for run in runs)
    columns = (
        f"set | workload | cores | {'source | ' if sourced else ''}engine | img/s | CPU ms/img | MP/s/core | TTFS ms"
        f" | peak RSS MB | {ratio_to} speed-up CPU | {ratio_to} speed-up wall | load | others | note"
    )
    lines = [f"| {columns} |", "|" + "---|" * (columns.count("|") + 1)]
    figures = {id(run): compute_figures(run, corpora[run.set]) for run in runs if run.ok}
    bases = {run.key: figures[id(run)] for run in runs if run.ok and run.engine == ratio_to}
    mismatches = size_mismatches(runs)
    for run in runs:
        source = f" {run.source} |" if sourced else ""
        head = f"| {run.set} | {run.workload} | {run.cores} |{source} {run.engine} |"
        others = "" if run.others_share is None else f"{100 * run.others_share:.0f}%"
        tail = f"{run.load_1m:.2f} | {others} |"
        if not run.ok:
            reason = run.result["reason"].replace("|", "/")
            lines.append(f"{head} | | | | | | | {tail} {run.result['status']}: {reason} |")
            continue
        mine, base = figures[id(run)], bases.get(run.key)
        cpu_ratio = f"{mine.cpu_ms / base.cpu_ms:.2f}x" if base else "–"
        wall_ratio = f"{base.images_per_s / mine.images_per_s:.2f}x" if base else "–"
        file_base = bases.get((*run.key[:3], "file")) if run.source != "file" and run.engine == ratio_to else None
        note = "; ".join(filter(None, [
            f"CPU {mine.cpu_ms / file_base.cpu_ms:.2f}x {ratio_to} file" if file_base else "",
            _server_note(run, corpora[run.set]),
            mismatches.get(id(run)),
            _attempts_note(run),
        ]))
        lines.append(
            f"{head} {mine.images_per_s:.1f} | {mine.cpu_ms:.{3 if mine.cpu_ms < 1 else 2}f} ±{100 * mine.cpu_spread:.0f}% "
            f"| {mine.megapixels_per_cpu_s:.1f} | {mine.ttfs_ms:.0f} | {mine.rss_mb:.0f} "
            f"| {cpu_ratio} | {wall_ratio} | {tail} {note} |"
        )
    return lines


def target_checks(runs: list[Run], corpora: dict[str, Corpus]) -> list[str]:
    """The fast-path issue's targets, as ratios of CPU ms per image (1 core
    unless stated), from the runs present."""
    figures = {(r.set, r.workload, r.cores, r.engine): compute_figures(r, corpora[r.set]) for r in runs if r.ok}

    def ratio(key: tuple[str, str, int], engine: str) -> float | None:
        ours, other = figures.get((*key, "ours")), figures.get((*key, engine))
        return other.cpu_ms / ours.cpu_ms if ours and other else None

    rows = []

    def check(label: str, value: float | None, goal: float, unit: str = "x") -> None:
        if value is not None:
            rows.append(f"| {label} | {value:.2f}{unit} | {'yes' if value >= goal else 'no'} |")

    check("jpeg1mp decode >= 1.25x the reference", ratio(("jpeg1mp", "decode", 1), "reference"), 1.25)
    ceiling = ratio(("jpeg1mp", "decode", 1), "ceiling")
    if ceiling is not None:
        rows.append(f"| jpeg1mp decode <= 1.1x the libjpeg-turbo ceiling's CPU | {1 / ceiling:.2f}x | {'yes' if 1 / ceiling <= 1.1 else 'no'} |")
    check("jpeg1mp -> 512 >= 1.5x the reference", ratio(("jpeg1mp", "bucket512", 1), "reference"), 1.5)
    check("jpeg1mp -> 512 >= 5x PIL + DataLoader (2 cores)", ratio(("jpeg1mp", "bucket512", 2), "pil"), 5.0)
    check("jpeg1mp -> 1024 >= 2x the reference", ratio(("jpeg1mp", "bucket1024", 1), "reference"), 2.0)
    check("jpeg4mp -> 1024 >= 1.5x the reference", ratio(("jpeg4mp", "bucket1024", 1), "reference"), 1.5)
    check("jpegvar -> 512 >= 1.5x the reference", ratio(("jpegvar", "bucket512", 1), "reference"), 1.5)
    for set_name, workload in TARGET_PAIRS:
        ours = [figures.get((set_name, workload, c, "ours")) for c in (1, 2)]
        ceil = [figures.get((set_name, workload, c, "ceiling")) for c in (1, 2)]
        if all(ours) and all(ceil):
            scaling = (ours[1].images_per_s / ours[0].images_per_s) / (ceil[1].images_per_s / ceil[0].images_per_s)
            check(f"{set_name} {workload}: 1 -> 2 core scaling >= 0.9x the ceiling's", scaling, 0.9)
    tiny = [figures.get(("tiny64", "decode", 1, e)) for e in ("ours", "reference")]
    if all(tiny):
        check("tiny64 >= 1.5x the reference's samples/s (1 core)", tiny[0].images_per_s / tiny[1].images_per_s, 1.5)
    tiny2 = figures.get(("tiny64", "decode", 2, "ours"))
    if tiny2:
        check("tiny64 >= 40k samples/s (2 cores)", tiny2.images_per_s / 1000, 40, "k/s")
    png = [figures.get(("png1mp", "decode", 1, e)) for e in ("ours", "pil-loop")]
    if all(png):
        check("png1mp >= Pillow's MP/s (1 core)", png[0].megapixels_per_cpu_s / png[1].megapixels_per_cpu_s, 1.0)
    first = [figures.get(("jpeg1mp", "decode", 1, e)) for e in ("ours", "reference")]
    if all(first):
        check("time to first sample <= the reference's", first[1].ttfs_ms / max(first[0].ttfs_ms, 1e-9), 1.0)
    return rows


def _server_note(run: Run, corpus: Corpus) -> str:
    """The shard server's CPU per image, and what it sent when that was not passes x the shards."""
    if run.server is None:
        return ""
    if run.source == "db":
        return _db_note(run, corpus)
    server, passes = run.server, len(run.result["passes"])
    where = "outside the measured CPUs" if run.cores < len(os.sched_getaffinity(0)) else "sharing the measured CPUs"
    per_image_ms = 1000 * server["cpu_s"] / (passes * corpus.count)
    notes = [f"server {per_image_ms:.{3 if per_image_ms < 0.1 else 2}f} CPU ms/img, {where}"]
    sent = server["bytes"] / (passes * server["shard_bytes"])
    if abs(sent - 1) > 0.001 or server["ranged"] or server["incomplete"]:
        notes.append(
            f"server sent {100 * sent:.1f}% of passes x shard bytes in {server['requests']} requests"
            f" ({server['ranged']} ranged, {server['incomplete']} cut)"
        )
    return "; ".join(notes)


def _db_note(run: Run, corpus: Corpus) -> str:
    """Page waits (ours), the Dataroom server's CPU per image and requests per pass."""
    server = run.server
    assert server is not None
    passes = len(run.result["passes"]) + ("page_waits" in run.result)  # the probe pass is a pass too
    notes = []
    waits = run.result.get("page_waits")
    if waits:
        notes.append(f"page wait {100 * waits['page_wait_share']:.1f}% of the pass (blocked in get_sample"
                     f" {100 * waits['blocked_share']:.0f}%)")
    where = "outside the measured CPUs" if run.cores < len(os.sched_getaffinity(0)) else "sharing the measured CPUs"
    per_image_ms = 1000 * server["cpu_s"] / (passes * corpus.count)
    notes.append(f"server {per_image_ms:.2f} CPU ms/img, {where}")
    requests = server["requests"]
    notes.append(f"per pass {requests.get('list', 0) / passes:g} pages, {requests.get('blob', 0) / passes:g} blobs")
    odd = {k: v for k, v in server["statuses"].items() if not k.endswith(" 200")}
    other = {k: v for k, v in requests.items() if k not in ("list", "blob")}
    if odd or other or any(server["incomplete"].values()):
        notes.append(f"server: statuses {odd}, other requests {other}, cut {server['incomplete']}")
    return "; ".join(notes)


def db_target_checks(runs: list[Run], corpora: dict[str, Corpus]) -> list[str]:
    """The Dataroom targets: ours >= 1.5x the reference's samples/s; page waits <= 5% of the run."""
    figures = {(*r.key, r.engine): compute_figures(r, corpora[r.set]) for r in runs if r.ok}
    rows = []
    for run in runs:
        if run.source != "db" or run.engine != "ours" or not run.ok:
            continue
        plural = "s" * (run.cores > 1)
        ours, ref = figures[(*run.key, "ours")], figures.get((*run.key, "reference"))
        if ref:
            value = ours.images_per_s / ref.images_per_s
            rows.append(f"| {run.set} {run.workload}, samples/s: ours / reference >= 1.5 ({run.cores} core{plural})"
                        f" | {value:.2f}x | {'yes' if value >= 1.5 else 'no'} |")
        waits = run.result.get("page_waits")
        if waits:
            share = 100 * waits["page_wait_share"]
            rows.append(f"| {run.set} {run.workload}, ours waiting on pages <= 5% of the pass ({run.cores} core{plural})"
                        f" | {share:.1f}% | {'yes' if share <= 5 else 'no'} |")
    return rows


def wds_target_checks(runs: list[Run], corpora: dict[str, Corpus], ranks: list[RankRun], shards: dict[str, Shards]) -> list[str]:
    """The WebDataset targets, from the runs present: CPU per image against the reference over
    HTTP, samples/s on tiny64, ours on local shards against ours on the folder, bytes per rank."""
    figures = {(*r.key, r.engine): compute_figures(r, corpora[r.set]) for r in runs if r.ok}
    rows = []

    def row(label: str, value: float | None, met: bool | None, unit: str = "x") -> None:
        if value is not None:
            rows.append(f"| {label} | {value:.2f}{unit} | {'–' if met is None else 'yes' if met else 'no'} |")

    cores_list = sorted({r.cores for r in runs})
    for cores in cores_list:
        plural = "s" * (cores > 1)
        for set_name, workload in [("jpeg1mp", "decode"), ("jpeg1mp", "bucket512")]:
            ours = figures.get((set_name, workload, cores, "wds-http", "ours"))
            ref = figures.get((set_name, workload, cores, "wds-http", "reference"))
            if ours and ref:
                value = ref.cpu_ms / ours.cpu_ms
                label = f"{set_name} {workload} over HTTP, CPU/img: reference / ours >= 1.8 ({cores} core{plural})"
                row(label, value, value >= 1.8)
        ours = figures.get(("tiny64", "decode", cores, "wds-http", "ours"))
        ref = figures.get(("tiny64", "decode", cores, "wds-http", "reference"))
        if ours and ref:
            value = ours.images_per_s / ref.images_per_s
            row(f"tiny64 over HTTP, samples/s: ours / reference >= 1.5 ({cores} core{plural})", value, value >= 1.5)
        for set_name, workload in WDS_PAIRS:
            local = figures.get((set_name, workload, cores, "wds-local", "ours"))
            folder = figures.get((set_name, workload, cores, "file", "ours"))
            if local and folder:
                value = local.cpu_ms / folder.cpu_ms
                label = f"{set_name} {workload}, CPU/img: ours local shards / ours folder <= 1.1 ({cores} core{plural})"
                row(label, value, value <= 1.1)
    for engine in dict.fromkeys(rank.engine for rank in ranks):
        mine = [rank for rank in ranks if rank.engine == engine and rank.result["status"] == "ok"]
        for set_name in dict.fromkeys(rank.set for rank in mine):
            shares = [rank_share(rank, shards) for rank in mine if rank.set == set_name]
            world = mine[0].world_size
            goal = 1 / world + 0.1
            label = f"{set_name} bytes per rank (world_size {world}, largest rank), {engine}"
            label += f": <= {100 * goal:.0f}% of the shard bytes" if engine == "ours" else " (the reference reads every shard)"
            row(label, 100 * max(shares), max(shares) <= goal if engine == "ours" else None, "%")
    return rows


def rank_table(ranks: list[RankRun], shards: dict[str, Shards]) -> list[str]:
    """Bytes the server sent each rank, as a share of the shard bytes, and the split's check."""
    lines = [
        "| set | engine | rank / world_size | samples | bytes sent | % of shard bytes | requests | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rank in ranks:
        head = f"| {rank.set} | {rank.engine} | {rank.rank} / {rank.world_size} |"
        if rank.result["status"] != "ok":
            reason = rank.result["reason"].replace("|", "/")
            lines.append(f"{head} | | | | | {rank.result['status']}: {reason} |")
            continue
        lines.append(
            f"{head} {len(rank.result['ids'])} | {rank.bytes_sent / 1e6:.1f} MB | {100 * rank_share(rank, shards):.1f}%"
            f" | {rank.requests} | {rank.result.get('split', '')} |"
        )
    return lines


def split_check(group: list[RankRun], corpus: Corpus) -> str:
    """Whether the ranks' sample ids are disjoint and make up the corpus."""
    ids = [sample_id for rank in group for sample_id in rank.result["ids"]]
    expected = {path.stem for path in corpus.root.iterdir()}
    duplicates, missing = len(ids) - len(set(ids)), len(expected - set(ids))
    if duplicates or missing or set(ids) - expected:
        return f"ranks: {duplicates} duplicate ids, {missing} missing, {len(set(ids) - expected)} unknown"
    return f"ranks disjoint, union = the {corpus.count} samples"


def _attempts_note(run: Run) -> str:
    return f"least disturbed of {run.attempts} tries" if run.attempts > 1 else ""


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    git = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    return {
        "cpu": model,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": git.stdout.strip() or "no commit",
    }


def versions(runs: list[Run]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for run in runs:
        if run.ok:
            found.setdefault(run.engine, run.result["versions"])
    return found


def markdown(settings: Settings, results: Results, meta: dict[str, Any], chart_note: str) -> str:
    corpora, runs = results.corpora, results.runs
    by_name = {corpus.name: corpus for corpus in corpora}
    lines = [
        f"# datago benchmark {settings.name}",
        "",
        f"Machine: {meta['cpu']}, {meta['cpus_usable']} usable CPUs, {meta['memory_gb']} GB, "
        f"Linux {meta['kernel']}, Python {meta['python']}, repo {meta['git']}.",
        f"Passes: {settings.passes} per run, medians shown; first sample of each pass dropped; "
        f"pil uses DataLoader(num_workers={settings.loader_workers}). Method: bench/compare.py.",
        "",
        "| corpus | images | source MP/image | encoded MB |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c.name} | {c.count} | {c.mean_megapixels:.3f} | {c.encoded_mb:.1f} |" for c in corpora
    ]
    if results.shards:
        lines += ["", "WebDataset shards (`tarfile`, `<key>.<ext>` members): " + ", ".join(
            f"{s.name} {len(s.paths)} x {s.total_bytes / len(s.paths) / 1e6:.1f} MB" for s in results.shards.values()
        ) + f"; concurrent_downloads {settings.concurrent_downloads} for both engines."]
    if "wds-http" in settings.sources:
        lines += [
            "wds-http: a loopback HTTP/1.1 server (bench/_shard_server.py, sendfile) in its own process, pinned"
            " to the CPUs outside the measured ones when there are any; with as many cores as the machine has, it"
            " shares them. Its CPU is never in an engine's CPU ms/img, and not in \"others\"; the note gives it.",
        ]
    if "db" in settings.sources:
        lines += [
            "",
            f"db: tests/dataroom_server.py in its own process (bench/_dataroom_server.py), one record per image,"
            f" {1000 * settings.db_latency_s:g} ms added to every response (pages and blobs), listen backlog 128;"
            f" both engines: `sources` \"{DB_SOURCES}\", page_size {settings.page_size}, require_images, limit ="
            " the record count, their default blob concurrency (ours 16; the reference has no setting). The server"
            " is pinned outside the measured CPUs when there are any (1 core), else shares them (2 cores); its CPU is"
            " never in an engine's CPU ms/img, nor in \"others\"; the note gives it. Page wait (ours): an extra,"
            " untimed pass (bench/_worker.py PageWaitProbe): time blocked in get_sample() while"
            " stats()[\"dataroom\"][\"records\"] shows the awaited record's page not yet answered, over the pass.",
        ]
    lines += ["", *table(runs, by_name, settings.ratio_to), ""]
    if results.ranks:
        lines += ["## Bytes per rank (HTTP)", "", *rank_table(results.ranks, results.shards), ""]
    checks = [] if settings.suite in ("wds", "db") else target_checks([r for r in runs if r.source == "file"], by_name)
    checks += wds_target_checks(runs, by_name, results.ranks, results.shards)
    checks += db_target_checks(runs, by_name)
    if checks:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|", *checks, ""]
    lines += [f"- {engine}: {info}" for engine, info in versions(runs).items()]
    notes = [*failure_notes(runs), *not_run_notes(settings), busy_note(settings, runs, meta), chart_note]
    lines += [f"- {note}" for note in notes if note]
    return "\n".join(lines) + "\n"


def busy_note(settings: Settings, runs: list[Run], meta: dict[str, Any]) -> str:
    """A warning when runs stayed above --max-others after their retries."""
    busy = [run.others_share for run in runs if run.others_share is not None and run.others_share > settings.max_others]
    if not busy:
        return ""
    return (
        f"{len(busy)} of {len(runs)} runs stayed above --max-others {100 * settings.max_others:.0f}% after their retries"
        f" (up to {100 * max(busy):.0f}%): other processes shared these {meta['cpus_usable']} CPUs; trust CPU ms/img"
        " (and 1-core rows) over img/s"
    )


def not_run_notes(settings: Settings) -> list[str]:
    notes = []
    for source in settings.sources:
        missing = [engine for engine in settings.engines if engine not in engines_for(settings, source)]
        if missing and source == "file":
            notes.append(f"{', '.join(missing)} not run on the folder: the wds suite's file rows are ours' baseline")
        elif missing and source == "db":
            notes.append(f"{', '.join(missing)} not run on db: only the datago engines read a Dataroom server")
        elif missing:
            why = "the reference reads only http(s) URLs; " if source == "wds-local" and "reference" in missing else ""
            notes.append(f"{', '.join(missing)} not run on {source}: {why}only the datago engines read shards")
    return notes


def write_chart(runs: list[Run], corpora: dict[str, Corpus], path: Path) -> str:
    """Bar chart per (set, workload): img/s on top, CPU ms/img below. Returns a note."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install matplotlib)"
    groups = list(dict.fromkeys((run.set, run.workload) for run in runs))
    engines = list(dict.fromkeys(run.label for run in runs))
    figure, axes = plt.subplots(2, len(groups), figsize=(4 * len(groups), 6), squeeze=False)
    width = 0.8 / len(engines)
    cores = sorted({run.cores for run in runs})
    for column, (set_name, workload) in enumerate(groups):
        group = [run for run in runs if (run.set, run.workload) == (set_name, workload) and run.ok]
        for row, metric in enumerate(("images_per_s", "cpu_ms")):
            axis = axes[row][column]
            for index, engine in enumerate(engines):
                values = {
                    run.cores: getattr(compute_figures(run, corpora[set_name]), metric)
                    for run in group
                    if run.label == engine
                }
                positions = [
                    c + (index - (len(engines) - 1) / 2) * width for c in range(len(cores))
                ]
                axis.bar(positions, [values.get(c, 0) for c in cores], width, label=engine)
            axis.set_xticks(range(len(cores)), [f"{c} core{'s' * (c > 1)}" for c in cores])
            axis.set_title(f"{set_name} {workload}", fontsize=9)
            axis.set_ylabel(
                "img/s (higher is better)" if row == 0 else "CPU ms/img (lower is better)"
            )
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return ""


def write_outputs(settings: Settings, results: Results) -> str:
    corpora, runs = results.corpora, results.runs
    settings.results.mkdir(parents=True, exist_ok=True)
    stem = settings.results / settings.name
    meta = machine()
    chart_note = write_chart(runs, {c.name: c for c in corpora}, stem.with_suffix(".png"))
    report = markdown(settings, results, meta, chart_note)
    stem.with_suffix(".md").write_text(portable_paths(report, settings))
    raw = {
        "machine": meta,
        "settings": vars(settings),
        "workloads": {name: WORKLOADS[name] for name in settings.workloads},
        "corpora": [vars(corpus) for corpus in corpora],
        "runs": [vars(run) for run in runs],
        "shards": [vars(shards) for shards in results.shards.values()],
        "ranks": [{**vars(rank), "result": {k: v for k, v in rank.result.items() if k != "ids"},
                   "samples": len(rank.result.get("ids", []))} for rank in results.ranks],
    }
    stem.with_suffix(".json").write_text(portable_paths(json.dumps(raw, indent=1, default=str), settings))
    return report


def portable_paths(text: str, settings: Settings) -> str:
    """This machine's paths as placeholders, so that committed results name no home or checkout."""
    for path, name in [(settings.results, "<results>"), (settings.cache, "<cache>"), (settings.shared, "<shared>"),
                       (REPO_DIR, "<repo>"), (Path(sys.prefix), "<python-prefix>"), (Path.home(), "~")]:
        text = text.replace(json.dumps(str(path))[1:-1], name)
    return text


# --------------------------------------------------------------------------
# Command line


def _names(text: str, choices: list[str] | dict[str, Any], what: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in choices]
    if unknown or not names:
        raise SystemExit(f"unknown {what} {unknown}; choose from {', '.join(choices)}")
    return names


def parse_settings(argv: list[str] | None) -> Settings:
    cache_default = Path(
        os.environ.get("DATAGO_BENCH_CACHE", Path.home() / ".cache" / "datago-bench")
    )
    shared_default = Path(os.environ.get("DATAGO_SHARED", REPO_DIR.parent / "shared"))
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--engines", help=f"comma-separated (default: {','.join(ENGINE_WORKERS)}; --suite wds: ours,reference)"
    )
    parser.add_argument("--sets", default=DEFAULT_SETS, help=f"from {', '.join(COUNTS)}")
    parser.add_argument(
        "--workloads", default=DEFAULT_WORKLOADS, help=f"from {', '.join(WORKLOADS)}"
    )
    parser.add_argument("--cores", default="1,2", help="CPU counts to pin each run to")
    parser.add_argument(
        "--suite",
        choices=["targets", "wds", "db"],
        help="targets: the fast-path issue's rows (jpeg1mp decode/512/1024, jpeg4mp 1024, jpegvar 512,"
        " png1mp decode, tiny64 decode) instead of --sets x --workloads, with a target check; wds: jpeg1mp"
        " decode/512 and tiny64 decode from the folder, local shards and HTTP, bytes per rank, WDS targets;"
        " db: jpeg1mp decode/512 from a Dataroom test server, ours and the reference, Dataroom targets",
    )
    parser.add_argument("--page-size", type=int, default=100, help="db: page_size, both engines")
    parser.add_argument(
        "--db-latency", type=float, default=20, help="db: milliseconds the test server adds to every response"
    )
    parser.add_argument(
        "--sources", help=f"from {', '.join(SOURCES)} (default: file; --suite wds: all three)"
    )
    parser.add_argument(
        "--concurrent-downloads", type=int, default=8, help="WebDataset shards in flight, both engines"
    )
    parser.add_argument(
        "--world-size", type=int, default=2, help="ranks for the bytes-per-rank runs with wds-http (0: none)"
    )
    parser.add_argument("--passes", type=int, default=3, help="passes per run (>= 2)")
    parser.add_argument("--count", type=int, help="images per set (default: 600, tiny64 5000)")
    parser.add_argument("--quick", action="store_true", help="small corpora for a smoke run")
    parser.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers for pil")
    parser.add_argument(
        "--max-others",
        type=float,
        default=10,
        help="rerun a run when other processes used more"
        " than this percentage of its CPUs (see the 'others' column)",
    )
    parser.add_argument("--retries", type=int, default=2, help="reruns of a disturbed run")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run, all passes")
    parser.add_argument("--ratio-to", default="ours", help="engine the ratio columns compare with")
    parser.add_argument(
        "--ours-python",
        type=Path,
        default=Path(sys.executable),
        help="interpreter that imports our datago (default: this one)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=cache_default,
        help="corpora and the reference venv ($DATAGO_BENCH_CACHE)",
    )
    parser.add_argument(
        "--shared",
        type=Path,
        default=shared_default,
        help="the shared/ folder with bench/make_corpus.py ($DATAGO_SHARED)",
    )
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--name", default=time.strftime("%Y%m%d-%H%M%S"), help="output file stem")
    args = parser.parse_args(argv)

    if args.suite == "targets":
        pairs = TARGET_PAIRS
    elif args.suite == "wds":
        pairs = WDS_PAIRS
    elif args.suite == "db":
        pairs = DB_PAIRS
    else:
        pairs = [(s, w) for s in _names(args.sets, COUNTS, "sets") for w in _names(args.workloads, WORKLOADS, "workloads")]
    sets = list(dict.fromkeys(s for s, _ in pairs))
    counts = QUICK_COUNTS if args.quick else COUNTS
    min_count = args.loader_workers + 2  # each DataLoader worker drops its first image
    if args.passes < 2 or (args.count is not None and args.count < min_count):
        parser.error(f"--passes must be >= 2 and --count >= {min_count}")
    cores = [int(c) for c in args.cores.split(",")]
    usable = len(os.sched_getaffinity(0))
    if not all(1 <= c <= usable for c in cores):
        parser.error(f"--cores: each value must be in 1..{usable} (the CPUs this process may use)")
    _names(args.ratio_to, ENGINE_WORKERS, "--ratio-to engine")
    engines = args.engines or ("ours,reference" if args.suite in ("wds", "db") else ",".join(ENGINE_WORKERS))
    sources = args.sources or {"wds": ",".join(WDS_SOURCES_ORDER), "db": "db"}.get(args.suite, "file")
    return Settings(
        engines=_names(engines, ENGINE_WORKERS, "engines"),
        sets=sets,
        workloads=list(dict.fromkeys(w for _, w in pairs)),
        pairs=pairs,
        cores=cores,
        passes=args.passes,
        counts={s: args.count if args.count is not None else counts[s] for s in sets},
        loader_workers=args.loader_workers,
        ratio_to=args.ratio_to,
        max_others=args.max_others / 100,
        retries=args.retries,
        timeout_s=args.timeout,
        ours_python=args.ours_python,
        cache=args.cache,
        shared=args.shared,
        results=args.results,
        name=args.name,
        sources=_names(sources, SOURCES, "sources"),
        suite=args.suite,
        concurrent_downloads=args.concurrent_downloads,
        world_size=args.world_size,
        page_size=args.page_size,
        db_latency_s=args.db_latency / 1000,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    print(write_outputs(settings, run_all(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
