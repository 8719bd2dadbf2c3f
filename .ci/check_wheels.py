"""Checks the release wheels and the sdist that `python build.py wheels --out DIST`
made, as far as this Linux x86-64 machine allows:

- every wheel: its tags (py3-none-<platform>), its files (libraries, header,
  the vendored codecs' licences), that the libraries are for the right
  architecture, export the same datago_* symbols and nothing else, and hold
  libjpeg-turbo's SIMD kernels (AVX2 on x86-64, Neon on aarch64);
- Linux wheels: `auditwheel show` confirms the manylinux / musllinux tag (so
  nothing outside the policy is linked);
- macOS wheels (inspected only): load commands (libSystem only, macOS
  minimum 11.0), via llvm-objdump;
- executed: the manylinux x86-64 wheel in a fresh venv without Zig
  (`python -m datago bench --count 40`); the C example and a decode digest
  (.ci/decode_digest.c) against the manylinux x86-64 library, the musllinux
  x86-64 library (Debian's musl loader) and the manylinux aarch64 library
  (qemu-aarch64 with Debian's arm64 glibc), with the digests pixel-exact to
  the x86-64 build's;
- the sdist: its files, and (--sdist-install) a fresh venv installs from it.

Usage: python .ci/check_wheels.py DIST [--sdist-install]
Needs: auditwheel, Pillow, ziglang (to compile the C programs), llvm-objdump
and llvm-nm, qemu-aarch64 with /usr/aarch64-linux-gnu, /lib/ld-musl-x86_64.so.1.
"""

from __future__ import annotations

import argparse
import json
import re
import runpy
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = runpy.run_path(str(ROOT / "build.py"), run_name="datago_build")
WHEELS = BUILD["WHEELS"]
LICENSES = BUILD["LICENSES"]
EXAMPLE = ROOT / "examples" / "c" / "list_samples.c"
DIGEST = ROOT / ".ci" / "decode_digest.c"
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")
MUSL_LOADER = Path("/lib/ld-musl-x86_64.so.1")
# Which Zig target compiles the C programs that run against each library.
RUN_TARGETS = {
    "manylinux_x86_64": ("x86_64-linux-gnu.2.17", []),
    "musllinux_x86_64": ("x86_64-linux-musl", []),
    "manylinux_aarch64": ("aarch64-linux-gnu.2.17", ["qemu-aarch64", "-L", str(AARCH64_SYSROOT)]),
}
# A kernel that only the SIMD build of libjpeg-turbo contains.
SIMD_SYMBOL = {"x86_64": "jsimd_idct_islow_avx2", "aarch64": "jsimd_idct_islow_neon"}


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    result = subprocess.run(command, **kwargs)
    if result.returncode != 0:
        raise CheckFailed(f"{' '.join(map(str, command))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def arch_of(name: str) -> str:
    return "aarch64" if "aarch64" in name or "arm64" in name else "x86_64"


def libraries(target) -> list[str]:
    suffix = Path(target.library).suffix
    return [target.library, *[f"libdatago_{cpu}{suffix}" for cpu in target.variants]]


def find_wheels(dist: Path) -> dict[str, Path]:
    found = {}
    for name, target in WHEELS.items():
        matches = list(dist.glob(f"datago-*-py3-none-{target.platform_tag}.whl"))
        check(len(matches) == 1, f"{name}: expected one wheel tagged py3-none-{target.platform_tag}, found {matches}")
        found[name] = matches[0]
    extra = set(dist.glob("*.whl")) - set(found.values())
    check(not extra, f"wheels that no platform asks for: {sorted(p.name for p in extra)}")
    return found


def check_contents(name: str, wheel: Path, unpacked: Path) -> None:
    target = WHEELS[name]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(unpacked)
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/WHEEL"))
    meta = (unpacked / dist_info / "WHEEL").read_text()
    tags = sorted(re.findall(r"^Tag: (.+)$", meta, flags=re.M))
    check(tags == sorted(f"py3-none-{p}" for p in target.platform_tag.split(".")), f"{name}: WHEEL tags {tags}")
    check("Root-Is-Purelib: false" in meta, f"{name}: the wheel must install into platlib")
    needed = {"datago/__init__.py", "datago/_native.py", "datago/datago.h", f"{dist_info}/licenses/LICENSE"}
    needed |= {f"datago/{lib}" for lib in libraries(target)}
    needed |= {f"datago/_licenses/{vendor}/{file}" for vendor, files in LICENSES.items() for file in files}
    needed.add("datago/_licenses/zig/LICENSE")
    check(needed <= names, f"{name}: missing {sorted(needed - names)}")
    binaries = {n for n in names if n.endswith((".so", ".dylib"))}
    check(binaries == {f"datago/{lib}" for lib in libraries(target)}, f"{name}: unexpected binaries {sorted(binaries)}")


def defined_symbols(library: Path, dynamic: bool) -> list[str]:
    command = ["llvm-nm", "--defined-only", "--just-symbol-name"]
    command += ["-D"] if dynamic else []
    return run([*command, str(library)]).stdout.split()


def exported_api(name: str, library: Path) -> set[str]:
    """The exported symbols (datago_* only, checked) and, statically, that the
    SIMD kernels are linked in."""
    macho = library.suffix == ".dylib"
    if macho:
        exported = run(["llvm-nm", "--defined-only", "--extern-only", "--just-symbol-name", str(library)]).stdout.split()
        exported = [s[1:] if s.startswith("_") else s for s in exported]
    else:
        exported = defined_symbols(library, dynamic=True)
    # Zig's Mach-O linker also exports the two symbols every dylib defines.
    stray = [s for s in exported if not s.startswith("datago_") and not (macho and s in ("__dso_handle", "_mh_dylib_header"))]
    check(not stray, f"{name}: {library.name} exports more than datago_*: {stray[:10]}")
    local = defined_symbols(library, dynamic=False)
    kernel = SIMD_SYMBOL[arch_of(name)]
    check(any(s.lstrip("_") == kernel for s in local), f"{name}: {library.name} has no {kernel}: SIMD missing")
    return {s for s in exported if s.startswith("datago_")}


def check_elf(name: str, library: Path) -> None:
    header = run(["llvm-readelf", "--file-header", str(library)]).stdout
    expect = {"x86_64": "X86-64", "aarch64": "AArch64"}[arch_of(name)]
    check(re.search(rf"Machine:.*\b{expect}$", header, flags=re.M) is not None, f"{name}: {library.name} is not {expect}")


def check_macho(name: str, library: Path) -> str:
    headers = run(["llvm-objdump", "--macho", "--private-headers", str(library)]).stdout
    cputype = {"x86_64": "X86_64", "aarch64": "ARM64"}[arch_of(name)]
    # The Mach header line: magic, cputype, cpusubtype, caps, filetype.
    check(re.search(rf"MH_MAGIC_64\s+{cputype}\s+\S+\s+\S+\s+DYLIB\s", headers) is not None,
          f"{name}: {library.name} is not a {cputype} dylib")
    build = re.search(r"cmd LC_BUILD_VERSION\n.*?platform (\S+)\n.*?minos (\S+)", headers, flags=re.S)
    check(build is not None, f"{name}: {library.name} has no LC_BUILD_VERSION")
    check(build.group(1) in ("1", "MACOS", "macos"), f"{name}: platform {build.group(1)}, not macOS")
    check(build.group(2) == "11.0", f"{name}: minimum macOS {build.group(2)}, expected 11.0")
    loads = re.findall(r"cmd LC_LOAD(?:_WEAK)?_DYLIB\n.*?name (\S+)", headers, flags=re.S)
    check(loads == ["/usr/lib/libSystem.B.dylib"], f"{name}: {library.name} loads {loads}")
    ident = re.search(r"cmd LC_ID_DYLIB\n.*?name (\S+)", headers, flags=re.S)
    check(ident is not None, f"{name}: no LC_ID_DYLIB")
    signed = "cmd LC_CODE_SIGNATURE" in headers
    # Apple silicon refuses to map code without at least an ad-hoc signature.
    check(signed or arch_of(name) != "aarch64", f"{name}: {library.name} has no code signature")
    return f"minos {build.group(2)}, loads {loads[0]}, id {ident.group(1)}" + (", code signature" if signed else "")


def check_auditwheel(name: str, wheel: Path, work: Path) -> str:
    """The tag auditwheel gives the wheel. With an empty library search path
    it judges the wheel alone, not this machine's (x86-64 glibc) libraries:
    a needed library outside the policy then shows up as external."""
    nowhere = work / "no-libraries"
    nowhere.mkdir(exist_ok=True)
    result = run([sys.executable, "-m", "auditwheel", "show", "--json", "--ldpaths", str(nowhere), str(wheel)])
    report = json.loads(result.stdout)
    expected = WHEELS[name].platform_tag.split(".")[0]
    check(report["overall_tag"] == expected and not report["external_libs"],
          f"{name}: auditwheel gives {report['overall_tag']}, expected {expected}:\n{result.stdout}")
    versions = sorted({v for libs in report["versioned_symbols"].values() for v in libs}, key=_version_key)
    newest = f", newest symbol {versions[-1]}" if versions else ""
    return f"auditwheel: {report['overall_tag']}, no external libraries{newest}"


def _version_key(symbol: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", symbol))


def make_images(folder: Path) -> list[Path]:
    """Photos-like content in the layouts the decoders special-case."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    base = Image.merge("RGB", [
        Image.linear_gradient("L").resize((301, 203)),
        Image.radial_gradient("L").resize((301, 203)),
        Image.effect_mandelbrot((301, 203), (-2.0, -1.2, 0.8, 1.2), 64),
    ]).rotate(17, expand=False, fillcolor=(40, 90, 200))
    files = []

    def save(image: Image.Image, file: str, **options) -> None:
        image.save(folder / file, **options)
        files.append(folder / file)

    save(base, "q90_420.jpg", quality=90, subsampling=2)
    save(base, "q95_444.jpg", quality=95, subsampling=0)
    save(base.resize((517, 389)), "q85_422.jpg", quality=85, subsampling=1)
    save(base, "progressive.jpg", quality=88, progressive=True)
    save(base.convert("L"), "gray.jpg", quality=90)
    save(base.resize((640, 480)), "large_420.jpg", quality=80)
    save(base, "rgb.png")
    rgba = base.copy()
    rgba.putalpha(Image.radial_gradient("L").resize(base.size))
    save(rgba, "rgba.png")
    save(base, "lossy.webp", quality=80)
    save(rgba, "lossless.webp", lossless=True)
    return files


def zig_cc(target: str, source: Path, include: Path, lib_dir: Path, out: Path) -> Path:
    run([sys.executable, "-m", "ziglang", "cc", "-target", target, "-std=c11", "-O1", str(source), f"-I{include}",
         f"-L{lib_dir}", "-ldatago", f"-Wl,-rpath,{lib_dir}", "-o", str(out)], timeout=600)
    return out


def execute_c(name: str, lib_dir: Path, work: Path, images: list[Path]) -> tuple[str, str]:
    """The C example and the decode digest against one unpacked wheel's
    library; returns the digest and the build info line."""
    zig_target, prefix = RUN_TARGETS[name]
    include = lib_dir
    example = zig_cc(zig_target, EXAMPLE, include, lib_dir, work / f"list_samples-{name}")
    digest = zig_cc(zig_target, DIGEST, include, lib_dir, work / f"decode_digest-{name}")
    listing = run([*prefix, str(example), str(images[0].parent)], timeout=300)
    expect = sorted(f"{p} " for p in images)
    got = sorted(line.split(" ")[0] + " " for line in listing.stdout.splitlines())
    check(got == expect, f"{name}: C example listed {got}, expected {expect}")
    check(f"{len(images)} samples, 0 still alive" in listing.stderr, f"{name}: C example: {listing.stderr}")
    result = run([*prefix, str(digest), *map(str, images)], timeout=300)
    return result.stdout, result.stderr.strip()


def check_installed_wheel(wheel: Path, work: Path) -> None:
    env_dir = work / "venv-wheel"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", str(wheel)], timeout=600)
    leaked = subprocess.run([str(python), "-c", "import ziglang"], capture_output=True)
    check(leaked.returncode != 0, "ziglang is installed in the wheel's venv")
    bench_dir = work / "bench"
    bench_dir.mkdir()
    result = run([str(python), "-m", "datago", "bench", "--count", "40", "--no-progress"], cwd=bench_dir, timeout=600)
    print(result.stdout.strip())
    info = run([str(python), "-c", "import datago, json; print(json.dumps(datago.build_info()))"], cwd=bench_dir).stdout
    check('"jpeg_simd_built": true' in info, f"the installed wheel has no JPEG SIMD: {info}")


def check_sdist(sdist: Path, install: bool, work: Path) -> str:
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    needed = {"build.py", "setup.py", "pyproject.toml", "native/build.zig", "native/build/codecs.zig",
              "native/build/codecs.zon", "native/src/decode/webp_config/src/webp/config.h",
              "native/include/datago.h", "datago/_native.py", "examples/c/list_samples.c"}
    needed |= {f"native/vendor/{vendor}/{file}" for vendor, files in LICENSES.items() for file in files}
    check(needed <= names, f"sdist: missing {sorted(needed - names)}")
    outputs = [n for n in names if n.endswith((".so", ".dylib")) or "/.zig-cache/" in n or "/zig-out/" in n]
    check(not outputs, f"sdist: build outputs inside: {outputs[:5]}")
    if not install:
        return f"{len(names)} files"
    env_dir = work / "venv-sdist"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    started = time.monotonic()
    run([str(python), "-m", "pip", "install", "-q", str(sdist)], timeout=1200)
    took = time.monotonic() - started
    info = run([str(python), "-c", "import datago; print(datago.build_info()['jpeg_simd_built'])"], cwd=work).stdout
    check(info.strip() == "True", f"sdist install: JPEG SIMD missing ({info})")
    return f"{len(names)} files; installed from source in {took:.0f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dist", type=Path)
    parser.add_argument("--sdist-install", action="store_true", help="also install from the sdist (a source build)")
    args = parser.parse_args()
    dist = args.dist.resolve()
    report: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="datago-wheels-") as tmp:
        work = Path(tmp)
        wheels = find_wheels(dist)
        reference_api = None
        for name, wheel in wheels.items():
            unpacked = work / name
            check_contents(name, wheel, unpacked)
            notes = report.setdefault(name, [f"{wheel.stat().st_size / 1e6:.2f} MB"])
            for lib in libraries(WHEELS[name]):
                path = unpacked / "datago" / lib
                if path.suffix == ".dylib":
                    notes.append(f"{lib}: {check_macho(name, path)}")
                else:
                    check_elf(name, path)
                api = exported_api(name, path)
                reference_api = reference_api or api
                check(api == reference_api, f"{name}: {lib} exports {sorted(api ^ reference_api)} differently")
            notes.append(f"exports {len(reference_api)} datago_* symbols, SIMD kernels linked")
            if "linux" in WHEELS[name].platform_tag:
                notes.append(check_auditwheel(name, wheel, work))

        images = make_images(work / "images")
        digests = {}
        for name in RUN_TARGETS:
            digests[name], info = execute_c(name, work / name / "datago", work, images)
            simd = re.search(r'"jpeg_simd":"(\w+)"', info)
            # A release bumps both versions (RELEASING.md); a wheel must not mix them.
            version = wheels[name].name.split("-")[1]
            check(f'"version":"{version}"' in info, f"{name}: the library is not version {version}: {info}")
            report[name].append(f"executed: C example + decode digest (jpeg_simd {simd.group(1) if simd else '?'})")
        reference = digests["manylinux_x86_64"]
        check(reference.count("\n") == 2 * len(images), f"decode digest: {reference}")
        for name, digest in digests.items():
            check(digest == reference, f"{name}: pixels differ from the x86-64 build:\n{digest}\nvs\n{reference}")

        check_installed_wheel(wheels["manylinux_x86_64"], work)
        report["manylinux_x86_64"].append("executed: installed in a fresh venv without Zig, datago bench --count 40")
        sdists = list(dist.glob("datago-*.tar.gz"))
        check(len(sdists) == 1, f"expected one sdist, found {sdists}")
        report[sdists[0].name] = [f"{sdists[0].stat().st_size / 1e6:.2f} MB", check_sdist(sdists[0], args.sdist_install, work)]

    for name, notes in report.items():
        print(f"{name}: " + "; ".join(notes))
    print("wheels: all checks passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as failure:
        print(f"check_wheels: FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
