"""Native log lines into Python's ``logging`` (logger ``datago`` and its
children ``datago.files``, ``datago.pipeline``...), and ``initialize_logging``
for the native level (spec §8).

Native threads never wait for Python: the library queues lines (1024 at
most, the oldest dropped and counted when Python falls behind), and a daemon
thread here drains the queue with the GIL released while it waits.
"""

from __future__ import annotations

import logging
import os
import threading

from . import _native
from ._native import ffi, lib

_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG, 5: 5}
_READ_TIMEOUT_MS = 200
_BUFFER_BYTES = 1 << 16

logging.addLevelName(5, "TRACE")
_root_logger = logging.getLogger("datago")
_lock = threading.Lock()
# Held while a batch of lines is read and forwarded, so `flush` returns only
# after lines taken by the forwarding thread reached `logging`.
_read_lock = threading.Lock()
_forwarder_pid: int | None = None


def _reset_after_fork() -> None:
    # The forwarding thread does not survive fork() and may have held the
    # locks at that moment; the child starts its own thread on demand.
    global _lock, _read_lock, _forwarder_pid
    _lock, _read_lock, _forwarder_pid = threading.Lock(), threading.Lock(), None


os.register_at_fork(after_in_child=_reset_after_fork)


def _forward(buffer: bytes) -> None:
    for line in buffer.decode("utf-8", "replace").splitlines():
        level, _, rest = line.partition("\t")
        scope, _, message = rest.partition("\t")
        logging.getLogger(f"datago.{scope}").log(_LEVELS.get(int(level or 1), logging.ERROR), "%s", message)


def _read(timeout_ms: int) -> int:
    """Forwards what is queued (waiting up to timeout_ms for something);
    returns the bytes forwarded."""
    buffer = ffi.new("char[]", _BUFFER_BYTES)
    length = ffi.new("size_t *")
    dropped = ffi.new("uint64_t *")
    with _read_lock:
        _native.check(lib.datago_log_read(timeout_ms, buffer, _BUFFER_BYTES, length, dropped))
        if dropped[0]:
            _root_logger.warning("datago: %d native log lines were dropped (Python did not drain them in time)", dropped[0])
        if length[0]:
            _forward(ffi.buffer(buffer, length[0])[:])
    return length[0]


def _run() -> None:
    while True:
        _read(_READ_TIMEOUT_MS)


def ensure_forwarding() -> None:
    """Routes native lines to ``logging`` and starts the forwarding thread
    once per process (again after a fork: threads do not survive it)."""
    global _forwarder_pid
    if _forwarder_pid == os.getpid():
        return
    with _lock:
        if _forwarder_pid == os.getpid():
            return
        lib.datago_log_capture(1)
        threading.Thread(target=_run, name="datago-log", daemon=True).start()
        _forwarder_pid = os.getpid()


def flush() -> None:
    """Forwards every line queued so far, synchronously (the forwarding
    thread does this on its own within a fraction of a second)."""
    while _read(0):
        pass


def initialize_logging(log_level: str | None = None) -> bool:
    """Installs the native logger once per process and returns True, or
    returns False if it was already installed (by an earlier call or by the
    first pass of any client, which installs it at ``warn``). ``RUST_LOG``
    (or ``DATAGO_LOG``), when set, wins over ``log_level``. Levels: error,
    warn, info, debug, trace, off; an unknown one raises ``ValueError``.
    Lines reach ``logging.getLogger("datago")``; configure handlers there."""
    if log_level is not None and not isinstance(log_level, str):
        raise TypeError(f"argument 'log_level': '{type(log_level).__name__}' object cannot be cast as 'str'")
    ensure_forwarding()
    installed = ffi.new("int32_t *")
    level = ffi.NULL if log_level is None else log_level.encode()
    status = lib.datago_log_init(level, installed)
    if status == lib.DATAGO_ERR_ARGUMENT:
        raise ValueError(_native.last_error())
    _native.check(status)
    return bool(installed[0])
