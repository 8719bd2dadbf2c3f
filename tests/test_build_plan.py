"""build.py compiles libdatago without `zig build`, from native/build/codecs.zon
(the codecs' files and flags, which native/build/codecs.zig reads for `zig
build`). These tests check the file and what build.py makes of it for each
kind of target, without compiling anything."""

from __future__ import annotations

import runpy
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
BUILD = runpy.run_path(str(ROOT / "build.py"), run_name="datago_build")
read_zon = BUILD["_read_zon"]
SPEC = read_zon((NATIVE / "build" / "codecs.zon").read_text())


def test_zon_reader_handles_the_subset_codecs_zon_uses() -> None:
    text = r'''// a comment
    .{
        .name = "a \"quoted\" \\ value", // trailing comment
        .arch = .x86_64,
        .flags = .{ "-O2", "-Dx(y)=z(\"h\")" },
        .empty = .{},
        .on = true, .off = false, .none = null,
        .nested = .{ .{ .files = .{"f.c"} }, .{ .files = .{ "g.c", "h.c", } } },
    }'''
    assert read_zon(text) == {
        "name": 'a "quoted" \\ value',
        "arch": "x86_64",
        "flags": ["-O2", '-Dx(y)=z("h")'],
        "empty": [],
        "on": True, "off": False, "none": None,
        "nested": [{"files": ["f.c"]}, {"files": ["g.c", "h.c"]}],
    }


@pytest.mark.parametrize("text", ["", ".{ .a = 1 }", ".{ .a = \"x\" } junk", ".{ .a = \"x\", \"y\" }", ".{ \"x\""])
def test_zon_reader_refuses_what_it_does_not_know(text: str) -> None:
    with pytest.raises((ValueError, IndexError)):
        read_zon(text)


def test_every_file_codecs_zon_names_exists() -> None:
    missing = []
    for library in SPEC["libraries"]:
        for path in library.get("include", []):
            if not (NATIVE / path).is_dir():
                missing.append(path)
        for unit in library["units"]:
            for name in [*(f"{unit['root']}/{f}" for f in unit["files"]), *unit.get("include", []), *unit.get("inputs", [])]:
                if not (NATIVE / name).exists():
                    missing.append(name)
    assert missing == []
    assert [library["name"] for library in SPEC["libraries"]] == ["jpeg", "webp", "wuffs", "libdeflate"]


def _plan(tmp_path: Path, zig_target: str, cpu: str, simd: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """What build.py would compile for a target: C file -> its flags, and the
    nasm sources, with the SIMD decision forced to `simd`."""
    monkeypatch.setitem(BUILD["_Zig"].__init__.__globals__, "_jpeg_simd", lambda arch: simd)
    assembled: list[str] = []
    zig = BUILD["_Zig"](BUILD["Target"](zig_target, cpu, "tag"), "ReleaseSafe", tmp_path)
    monkeypatch.setattr(zig, "_assemble", lambda unit, root: assembled.extend(unit["files"]) or [])
    command = zig.codecs_command(tmp_path / "libdatago_codecs.a")
    assert command[:2] == ["build-lib", "-static"]
    assert ["-target", zig_target, "-mcpu", cpu] == command[command.index("-target"):command.index("-target") + 4]
    files: dict[str, list[str]] = {}
    at = 0
    while "-cflags" in command[at:]:
        start = command.index("-cflags", at)
        end = command.index("--", start)
        flags = command[start + 1:end]
        at = end + 1
        while at < len(command) and not command[at].startswith("-"):
            files[command[at]] = flags
            at += 1
    return {"files": files, "nasm": assembled}  # type: ignore[dict-item]


def test_x86_64_with_simd_compiles_the_sse_files_and_assembles_the_nasm_kernels(tmp_path, monkeypatch) -> None:
    plan = _plan(tmp_path, "x86_64-linux-gnu.2.17", "x86_64_v2", True, monkeypatch)
    files = plan["files"]
    assert "vendor/libjpeg-turbo/simd/x86_64/jsimd.c" in files
    assert "vendor/libwebp/src/dsp/dec_sse41.c" in files and "-msse4.1" in files["vendor/libwebp/src/dsp/dec_sse41.c"]
    assert not any("neon" in name for name in files)
    assert len(plan["nasm"]) == 27 and "jsimdcpu.asm" in plan["nasm"]
    assert not any("-DJT_NO_SIMD" in flags for flags in files.values())
    for name, flags in files.items():
        # Every codec file: hidden symbols and no UBSan traps in the host process.
        assert flags[-3:] == ["-DNDEBUG", "-fno-sanitize=undefined", "-fvisibility=hidden"], name
    jpeg = files["vendor/libjpeg-turbo/src/jdhuff.c"]
    assert "-Ivendor/libjpeg-turbo/gen" in jpeg and "-O3" in jpeg
    assert "-DHAVE_CONFIG_H" in files["vendor/libwebp/src/dsp/yuv.c"]
    assert "-Isrc/decode/webp_config" in files["vendor/libwebp/src/dsp/yuv.c"]
    # 30 + 71 jpeg sources, the shims, 30 + 7 + 5 webp, wuffs, 7 libdeflate.
    assert len(files) == 30 + 71 + 1 + 1 + 30 + 7 + 5 + 1 + 1 + 7


def test_x86_64_without_simd_builds_the_portable_jpeg(tmp_path, monkeypatch) -> None:
    plan = _plan(tmp_path, "x86_64-linux-gnu.2.17", "x86_64_v2", False, monkeypatch)
    assert plan["nasm"] == []
    jpeg = [flags for name, flags in plan["files"].items() if "libjpeg-turbo" in name or "jpeg_shim" in name]
    assert len(jpeg) == 30 + 71 + 1 and all("-DJT_NO_SIMD" in flags for flags in jpeg)
    assert not any("-DJT_NO_SIMD" in flags for name, flags in plan["files"].items() if "webp" in name)


def test_macos_x86_64_assembles_mach_o_objects(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(BUILD["_Zig"].__init__.__globals__, "_jpeg_simd", lambda arch: True)
    zig = BUILD["_Zig"](BUILD["Target"]("x86_64-macos.11.0", "x86_64_v2", "tag", "libdatago.dylib"), "ReleaseSafe", tmp_path)
    assert (zig.arch, zig.os) == ("x86_64", "macos")
    commands: list[list[str]] = []
    monkeypatch.setattr(BUILD["_Zig"].__init__.__globals__["subprocess"], "run",
                        lambda command, **kwargs: commands.append(command))
    monkeypatch.setattr(BUILD["_Zig"].__init__.__globals__["shutil"], "which", lambda name: "/usr/bin/" + name)
    zig.codecs_command(tmp_path / "libdatago_codecs.a")
    assert len(commands) == 27 and all(command[1:4] == ["-f", "macho64", "-DMACHO"] for command in commands)


def test_aarch64_compiles_the_neon_kernels_and_no_x86_file(tmp_path, monkeypatch) -> None:
    plan = _plan(tmp_path, "aarch64-linux-gnu.2.17", "baseline", True, monkeypatch)
    files = plan["files"]
    assert plan["nasm"] == []
    neon = [name for name in files if "/simd/arm/" in name]
    assert len(neon) == 15 and all("-DNEON_INTRINSICS" in files[name] for name in neon)
    assert not any("sse" in name or "x86_64/jsimd.c" in name for name in files)


@pytest.fixture
def scratch_native(tmp_path, monkeypatch) -> Path:
    """A native/ with one Zig source, which build.py's NATIVE points at;
    the SIMD decision fixed to on. Returns native/src."""
    src = tmp_path / "native" / "src"
    src.mkdir(parents=True)
    (src / "root.zig").write_text("pub fn a() void {}\n")
    monkeypatch.setitem(BUILD["_Zig"].__init__.__globals__, "NATIVE", tmp_path / "native")
    monkeypatch.setitem(BUILD["_Zig"].__init__.__globals__, "_jpeg_simd", lambda arch: True)
    (tmp_path / "work").mkdir()
    return src


def test_the_zig_object_is_rebuilt_when_a_zig_source_changes(tmp_path, scratch_native) -> None:
    src = scratch_native
    zig = BUILD["_Zig"](BUILD["Target"]("x86_64-linux-gnu.2.17", "x86_64_v2", "tag"), "ReleaseSafe", tmp_path / "work")
    command = zig.zig_object_command(None, tmp_path / "work" / "zig-base" / "datago_zig.o")
    assert "-Mroot=src/root.zig" in command and shlex.join(command).count("x86_64_v2") == 1
    first = zig._kept_zig_object(command)
    assert zig._kept_zig_object(command) == first
    assert zig._kept_zig_object(zig.zig_object_command("x86_64_v3", tmp_path / "work" / "v3.o")) != first
    (src / "root.zig").write_text("pub fn b() void {}\n")
    assert zig._kept_zig_object(command) != first


def test_without_nasm_the_build_warns_or_with_require_simd_refuses(monkeypatch, capsys) -> None:
    jpeg_simd = BUILD["_jpeg_simd"]
    monkeypatch.setattr(BUILD["_Zig"].__init__.__globals__["shutil"], "which", lambda name: None)
    monkeypatch.delenv("DATAGO_REQUIRE_SIMD", raising=False)
    assert jpeg_simd("x86_64") is False
    assert "WITHOUT SIMD" in capsys.readouterr().err
    assert jpeg_simd("aarch64") is True  # Neon intrinsics: plain C, no tool needed
    monkeypatch.setenv("DATAGO_REQUIRE_SIMD", "1")
    with pytest.raises(RuntimeError, match="nasm"):
        jpeg_simd("x86_64")
    monkeypatch.setattr(BUILD["_Zig"].__init__.__globals__["shutil"], "which", lambda name: "/usr/bin/nasm")
    assert jpeg_simd("x86_64") is True


def test_a_native_cpu_object_is_kept_per_host_cpu(tmp_path, monkeypatch, scratch_native) -> None:
    build_globals = BUILD["_Zig"].__init__.__globals__
    zig = BUILD["_Zig"](None, "ReleaseSafe", tmp_path / "work")
    command = zig.zig_object_command(None, tmp_path / "work" / "zig-base" / "datago_zig.o")
    assert command[command.index("-mcpu") + 1] == "native" and "-target" not in command
    monkeypatch.setitem(build_globals, "_host_cpu_features", lambda: "flags: sse2 avx2")
    first = zig._kept_zig_object(command)
    monkeypatch.setitem(build_globals, "_host_cpu_features", lambda: "flags: sse2 avx2 avx512f")
    assert zig._kept_zig_object(command) != first
