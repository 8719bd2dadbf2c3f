"""``initialize_logging``: the native logger's level (spec §8)."""

from __future__ import annotations

from . import _native
from ._native import ffi, lib


def initialize_logging(log_level: str | None = None) -> bool:
    """Installs the native logger once per process and returns True, or
    returns False if it was already installed (by an earlier call or by the
    first pass of any client). ``RUST_LOG`` (or ``DATAGO_LOG``), when set,
    wins over ``log_level``. Levels: error, warn, info, debug, trace, off.
    An unknown level raises ``ValueError``."""
    if log_level is not None and not isinstance(log_level, str):
        raise TypeError(f"argument 'log_level': '{type(log_level).__name__}' object cannot be cast as 'str'")
    installed = ffi.new("int32_t *")
    level = ffi.NULL if log_level is None else log_level.encode()
    status = lib.datago_log_init(level, installed)
    if status == lib.DATAGO_ERR_ARGUMENT:
        raise ValueError(_native.last_error())
    _native.check(status)
    return bool(installed[0])
