"""Builds libdatago with the pinned Zig from PyPI's `ziglang` and packages it.

`pip install .` / `pip wheel .` run this through setup.py: the native library
is compiled (ReleaseSafe, a manylinux glibc baseline, a portable CPU level) and
placed inside the `datago` package with its header and the vendored codecs'
licences, and the wheel is tagged `py3-none-<platform>`: cffi's ABI mode does
not depend on the CPython ABI, so one wheel serves every Python 3.

`python build.py` builds the same library into the source tree (datago/), so
that `PYTHONPATH=. python -m pytest` works in a checkout without installing.

On x86-64 a second library built for x86_64_v3 (AVX2, FMA, BMI2) ships
beside the baseline one; the package loads it when the CPU has those
features.

Environment: ZIG_GLOBAL_CACHE_DIR (shared Zig cache), DATAGO_OPTIMIZE
(ReleaseSafe by default), DATAGO_NATIVE_CPU=1 (one library tuned for this
machine; never for wheels you ship), DATAGO_REQUIRE_SIMD=1 (fail without
nasm).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NATIVE = ROOT / "native"
LIBRARY = "libdatago.so"
# Licence files of vendored code, shipped with the binary that contains it.
LICENSES = {
    "libdeflate": ["COPYING"],
    "libjpeg-turbo": ["LICENSE.md", "README.ijg"],
    "libwebp": ["COPYING", "PATENTS"],
    "wuffs": ["LICENSE"],
}

_TARGETS = {
    "x86_64": ("x86_64-linux-gnu.2.17", "x86_64_v2", "manylinux_2_17_x86_64"),
    "aarch64": ("aarch64-linux-gnu.2.17", "baseline", "manylinux_2_17_aarch64"),
}
# Extra builds for newer CPUs, loaded at run time when the CPU has the
# features (datago/_native.py): AVX2 makes the resize kernels ~1.3x faster.
_VARIANTS = {"x86_64": [("x86_64_v3", "libdatago_x86_64_v3.so")]}


def _target() -> tuple[str, str, str]:
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if sys.platform != "linux" or machine not in _TARGETS:
        raise RuntimeError(f"datago builds on Linux x86_64 and aarch64; this is {sys.platform} {machine}")
    return _TARGETS[machine]


def _zig_build(zig_target: str | None, cpu: str | None, optimize: str, out: Path) -> None:
    command = [sys.executable, "-m", "ziglang", "build", f"-Doptimize={optimize}"]
    if zig_target:
        command += [f"-Dtarget={zig_target}", f"-Dcpu={cpu}"]
    with tempfile.TemporaryDirectory(prefix="datago-zig-") as prefix:
        command += ["--prefix", prefix]
        print(f"datago: building libdatago: {' '.join(command[2:])}", flush=True)
        started = time.monotonic()
        subprocess.run(command, cwd=NATIVE, check=True)
        print(f"datago: libdatago built in {time.monotonic() - started:.0f} s", flush=True)
        shutil.copy2(Path(prefix) / "lib" / LIBRARY, out)


def build_native(package_dir: Path) -> None:
    """Compiles libdatago (and its CPU variants) and copies them, the header
    and the licences into `package_dir` (a `datago/` folder)."""
    zig_target, cpu, _ = _target()
    optimize = os.environ.get("DATAGO_OPTIMIZE", "ReleaseSafe")
    package_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("DATAGO_NATIVE_CPU") == "1":
        _zig_build(None, None, optimize, package_dir / LIBRARY)
    else:
        _zig_build(zig_target, cpu, optimize, package_dir / LIBRARY)
        machine = platform.machine().lower()
        for variant_cpu, name in _VARIANTS.get({"amd64": "x86_64"}.get(machine, machine), []):
            _zig_build(zig_target, variant_cpu, optimize, package_dir / name)
    shutil.copy2(NATIVE / "include" / "datago.h", package_dir / "datago.h")
    for vendor, names in LICENSES.items():
        target = package_dir / "_licenses" / vendor
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            source = NATIVE / "vendor" / vendor / name
            if source.is_file():
                shutil.copy2(source, target / name)


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
            return "py3", "none", _target()[2]

    setup(
        distclass=BinaryDistribution,
        cmdclass={"build_py": BuildPyWithNative, "bdist_wheel": PlatformWheel},
    )


if __name__ == "__main__":
    build_native(ROOT / "datago")
