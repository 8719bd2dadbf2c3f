"""The one door to libdatago: finds the shared library, declares its C ABI to
cffi (ABI mode: no compiler at import) from the same header C users include,
checks the ABI version, and maps status codes to exceptions.

Nothing else in the package imports cffi.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

from .errors import AuthError, ConfigError, DatagoError, SourceError

ABI_VERSION = 2

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_TREE = _PACKAGE_DIR.parent / "native"
# The macOS wheels carry a Mach-O .dylib; everywhere else it is an ELF .so.
_LIBRARY_NAME = "libdatago.dylib" if sys.platform == "darwin" else "libdatago.so"


def header_to_cdef(text: str) -> str:
    """Turns datago.h into declarations cffi accepts: no comments, no
    preprocessor lines except integer #defines, no extern "C" braces."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if re.fullmatch(r"#define\s+[A-Z_][A-Z0-9_]*\s+-?\d+", stripped):
                lines.append(stripped)
            continue
        if stripped in ('extern "C" {', "}") and not line.startswith(" "):
            # The closing brace of extern "C" stands alone at column 0;
            # struct bodies close with "} name;".
            continue
        lines.append(line)
    return "\n".join(lines)


def _find(name: str, candidates: list[Path]) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise DatagoError(f"cannot find {name} (looked at {tried}); reinstall datago with `pip install .`")


# CPU features each optional variant needs (Linux /proc/cpuinfo flag names;
# elsewhere there is no such file, and no variant is shipped).
_VARIANTS = [("libdatago_x86_64_v3.so", {"avx", "avx2", "fma", "bmi1", "bmi2", "movbe", "f16c"})]


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _installed_package_dir() -> Path | None:
    """The `datago/` folder of an installed distribution that is not this
    one: running a script from the root of a clone puts the clone's
    `datago/` (which has no library unless `python build.py` ran) ahead of the
    package that `pip install .` built from that same clone. That build also
    leaves `datago.egg-info` in the clone, which names the clone's folder:
    every distribution is looked at, not just the first."""
    from importlib.metadata import distributions

    for dist in distributions(name="datago"):
        try:
            folder = Path(str(dist.locate_file("datago"))).resolve()
        except (OSError, ValueError):
            continue
        if folder != _PACKAGE_DIR and (folder / _LIBRARY_NAME).is_file():
            return folder
    return None


def _library_path() -> Path:
    """DATAGO_LIBRARY if set; else, in this package, then in the installed
    one (see `_installed_package_dir`), the most specific build this CPU
    runs (DATAGO_CPU=baseline forces the baseline one); else the source
    tree's `zig build` output."""
    override = os.environ.get("DATAGO_LIBRARY")
    if override:
        return _find(_LIBRARY_NAME, [Path(override)])
    flags = _cpu_flags() if os.environ.get("DATAGO_CPU") != "baseline" else set()
    folders = [_PACKAGE_DIR]
    installed = _installed_package_dir()
    if installed is not None:
        folders.append(installed)
    candidates = []
    for folder in folders:
        candidates += [folder / name for name, needs in _VARIANTS if needs <= flags and (folder / name).is_file()]
        candidates.append(folder / _LIBRARY_NAME)
    candidates.append(_SOURCE_TREE / "zig-out" / "lib" / _LIBRARY_NAME)
    return _find(_LIBRARY_NAME, candidates)


def _header_path() -> Path:
    """The header that describes the library that `_library_path` loads."""
    return _find("datago.h", [library_path.parent / "datago.h", _PACKAGE_DIR / "datago.h", _SOURCE_TREE / "include" / "datago.h"])


library_path = _library_path()
ffi = FFI()
ffi.cdef(header_to_cdef(_header_path().read_text()))
lib = ffi.dlopen(str(library_path))

if lib.datago_abi_version() != ABI_VERSION:
    raise DatagoError(
        f"{library_path} implements datago ABI version {lib.datago_abi_version()}, "
        f"but this Python package was written for version {ABI_VERSION}; reinstall datago"
    )

# cffi parses a C type the first time it sees it (~1 ms for "char[]"): do it
# at import, not on the way to the first sample.
for _type in ("char[]", "size_t *", "uint64_t *", "int32_t *", "datago_loader **", "datago_sample **",
              "datago_batch **", "datago_fit *", "datago_bucket[]", "datago_encoded[]", "uint8_t *"):
    ffi.typeof(_type)

OK = lib.DATAGO_OK
END = lib.DATAGO_END
TIMEOUT = lib.DATAGO_TIMEOUT

_ERRORS = {
    lib.DATAGO_ERR_CONFIG: ConfigError,
    lib.DATAGO_ERR_SOURCE: SourceError,
    lib.DATAGO_ERR_AUTH: AuthError,
    lib.DATAGO_ERR_NO_MEMORY: MemoryError,
}


def last_error() -> str:
    return ffi.string(lib.datago_last_error()).decode("utf-8", "replace")


def error_for(status: int) -> Exception:
    """The exception for a failed call, with the library's message."""
    return _ERRORS.get(status, DatagoError)(last_error())


def check(status: int) -> int:
    """Raises the mapped exception for a failure status; returns the others."""
    if status < 0:
        raise error_for(status)
    return status
