"""How long a source build takes for a new user: `pip install .` from a fresh
clone of this repository's HEAD into a fresh venv, with empty Zig and pip
caches (pip downloads its build dependencies, ziglang included), as the
README's set-up command does on a fresh machine. With `--zig-build` it also
times what the old route cost: a cold `zig build` of the same library (Zig's
build runner compiled first), for the before/after figure.

    python bench/source_build.py [--runs 1] [--variants] [--zig-build]

Writes bench/results/source_build.md. Target: <= 3 min on 2 cores, with the
JPEG SIMD (nasm on PATH).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cold_env(scratch: Path) -> dict[str, str]:
    """This environment without a shared Zig cache or pip cache: a new user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZIG_", "DATAGO_", "PIP_"))}
    env.update(HOME=str(scratch / "home"), XDG_CACHE_HOME=str(scratch / "cache"), PIP_NO_CACHE_DIR="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    (scratch / "home").mkdir()
    return env


def pip_install(variants: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="datago-source-build-") as tmp:
        scratch = Path(tmp)
        subprocess.run(["git", "clone", "-q", str(REPO), str(scratch / "datago")], check=True)
        subprocess.run([sys.executable, "-m", "venv", str(scratch / "venv")], check=True)
        env = cold_env(scratch)
        if variants:
            env["DATAGO_CPU_VARIANTS"] = "1"
        started = time.monotonic()
        result = subprocess.run([str(scratch / "venv" / "bin" / "pip"), "install", "-v", "."], cwd=scratch / "datago",
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        took = time.monotonic() - started
        if result.returncode != 0:
            sys.exit(result.stdout[-8000:])
        figures = {"pip install .": took}
        for what, at in re.findall(r"datago: compiled the (.+?) at (\d+) s", result.stdout):
            figures[f"  {what} done at"] = float(at)
        built = re.search(r"datago: libdatago built in (\d+) s", result.stdout)
        assert built, "build.py printed no build time"
        figures["  libdatago built in"] = float(built.group(1))
        info = subprocess.run([str(scratch / "venv" / "bin" / "python"), "-c",
                               "import datago; print(datago.build_info()['jpeg_simd_built'])"],
                              cwd=scratch, capture_output=True, text=True, check=True)
        assert info.stdout.strip() == "True", "the source build has no JPEG SIMD (is nasm on PATH?)"
        return figures


def zig_build() -> dict[str, float]:
    """The old route: `zig build` on empty caches, same target and CPU as
    build.py's manylinux x86-64 library."""
    with tempfile.TemporaryDirectory(prefix="datago-zig-build-") as tmp:
        scratch = Path(tmp)
        shutil.copytree(REPO / "native", scratch / "native", ignore=shutil.ignore_patterns(".zig-cache", "zig-out"))
        env = cold_env(scratch)
        env["ZIG_GLOBAL_CACHE_DIR"] = str(scratch / "zig-cache")
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "ziglang", "build", "--help"], cwd=scratch / "native", env=env,
                       check=True, capture_output=True)
        runner = time.monotonic() - started
        subprocess.run([sys.executable, "-m", "ziglang", "build", "-Doptimize=ReleaseSafe", "-Dtarget=x86_64-linux-gnu.2.17",
                        "-Dcpu=x86_64_v2", "--prefix", str(scratch / "out")], cwd=scratch / "native", env=env,
                       check=True, capture_output=True)
        return {"zig build (library only)": time.monotonic() - started, "  of which the build runner": runner}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--variants", action="store_true", help="also time DATAGO_CPU_VARIANTS=1 (the x86_64_v3 library)")
    parser.add_argument("--zig-build", action="store_true", help="also time the old route, a cold `zig build`")
    args = parser.parse_args()
    if shutil.which("nasm") is None:
        sys.exit("nasm is not on PATH: the target is a SIMD build")
    load = os.getloadavg()[0]
    rows: list[tuple[str, list[float]]] = []

    def record(label: str, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            name = f"{label}: {key.strip()}" if not key.startswith("  ") else f"{label}:   {key.strip()}"
            for row_name, values in rows:
                if row_name == name:
                    values.append(value)
                    break
            else:
                rows.append((name, [value]))

    for _ in range(args.runs):
        record("default", pip_install(variants=False))
        if args.variants:
            record("DATAGO_CPU_VARIANTS=1", pip_install(variants=True))
        if args.zig_build:
            record("before", zig_build())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    lines = [
        "# Source build time (bench/source_build.py)",
        "",
        f"Commit {commit}; {platform.machine()}, {os.cpu_count()} cores, load {load:.2f} at the start; "
        f"{args.runs} run(s), seconds (each run's figures, in order).",
        "Fresh clone, fresh venv, empty Zig and pip caches: pip downloads its build dependencies.",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {name} | {' / '.join(f'{v:.0f}' for v in values)} |" for name, values in rows],
        "",
    ]
    out = REPO / "bench" / "results" / "source_build.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
