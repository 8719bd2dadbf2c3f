"""Native log lines into Python's ``logging`` (logger ``datago`` and its
children ``datago.files``, ``datago.pipeline``...), and ``initialize_logging``
for the native level (docs/compatibility.md §8).

Native threads never wait for Python: the library queues lines (1024 at
most, the oldest dropped and counted when Python falls behind), and a daemon
thread here drains the queue with the GIL released while it waits.

At interpreter exit (and whenever the last client closes) the queue is
flushed into ``logging``, so no line is lost; at exit the forwarding thread
is also stopped and joined first. A daemon thread that is inside the
library when the interpreter finalises is killed on its way back into
Python, through native frames, which crashed the process.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading

from . import _native
from ._native import ffi, lib

_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG, 5: 5}
_READ_TIMEOUT_MS = 200
# How long `flush` waits for the forwarding thread before reading itself.
_FLUSH_WAIT_S = 2.0
_BUFFER_BYTES = 1 << 16

logging.addLevelName(5, "TRACE")
_root_logger = logging.getLogger("datago")
_lock = threading.Lock()
# Held while a batch of lines is read and forwarded, so `flush` returns only
# after lines taken by the forwarding thread reached `logging`.
_read_lock = threading.Lock()
_forwarder_pid: int | None = None
_forwarder: threading.Thread | None = None
_stopping = threading.Event()
# `flush` asks the forwarding thread to drain (it is the only reader then,
# so lines keep their order) and waits until it has: requests and the last
# request served, counted under `_flushed`.
_flushed = threading.Condition()
_flush_requested = 0
_flush_served = 0
# Clients open in this process; the last one to close flushes the queue.
_open_clients = 0
_ENV_LEVEL_NAMES = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG, "trace": 5}


def _reset_after_fork() -> None:
    # The forwarding thread does not survive fork() and may have held the
    # locks at that moment; the child starts its own thread on demand.
    global _lock, _read_lock, _forwarder_pid, _forwarder, _stopping, _open_clients
    global _flushed, _flush_requested, _flush_served
    _lock, _read_lock, _forwarder_pid, _forwarder = threading.Lock(), threading.Lock(), None, None
    _stopping, _open_clients = threading.Event(), 0
    _flushed, _flush_requested, _flush_served = threading.Condition(), 0, 0


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


def _run(stopping: threading.Event) -> None:
    global _flush_served
    while not stopping.is_set():
        with _flushed:
            requested = _flush_requested
        if requested != _flush_served:
            while _read(0):
                pass
            with _flushed:
                _flush_served = requested
                _flushed.notify_all()
        # Returns early when `flush` wakes it (the library keeps a wake that
        # comes before this wait).
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
        global _forwarder
        lib.datago_log_capture(1)
        _forwarder = threading.Thread(target=_run, args=(_stopping,), name="datago-log", daemon=True)
        _forwarder.start()
        _forwarder_pid = os.getpid()


def flush() -> None:
    """Forwards every line queued so far, synchronously (the forwarding
    thread does this on its own within a fraction of a second)."""
    global _flush_requested
    forwarder = _forwarder
    if forwarder is not None and forwarder.is_alive() and _forwarder_pid == os.getpid() \
            and threading.current_thread() is not forwarder:
        # Reading here would wait for the lock the forwarder holds while it
        # waits in the library (up to its read timeout on every close).
        with _flushed:
            _flush_requested += 1
            ticket = _flush_requested
        lib.datago_log_wake()
        with _flushed:
            if _flushed.wait_for(lambda: _flush_served - ticket >= 0 or not forwarder.is_alive(), timeout=_FLUSH_WAIT_S):
                if forwarder.is_alive():
                    return
    while _read(0):
        pass


def client_opened() -> None:
    global _open_clients
    with _lock:
        _open_clients += 1


def client_closed() -> None:
    """Flushes the queue when the last open client closes, so lines of a
    pass reach ``logging`` before the caller moves on (or exits)."""
    global _open_clients
    with _lock:
        _open_clients = max(0, _open_clients - 1)
        last = _open_clients == 0
    if last and _forwarder_pid == os.getpid():
        flush()


def _shutdown() -> None:
    """At interpreter exit: stop and join the forwarding thread, send native
    lines to stderr from now on, and forward what is queued."""
    if _forwarder_pid != os.getpid():
        return
    _stopping.set()
    lib.datago_log_capture(0)  # wakes the thread if it waits in the library
    if _forwarder is not None:
        _forwarder.join(timeout=5)
    flush()


atexit.register(_shutdown)


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
    if installed[0]:
        _show_level(log_level)
    return bool(installed[0])


def _show_level(log_level: str | None) -> None:
    """Makes the chosen native level visible in Python: without this, the
    ``datago`` logger inherits the root's WARNING and drops INFO and DEBUG
    lines, and with no handler anywhere only WARNING and above reach
    stderr. A level or handler the application set is left alone."""
    env = os.environ.get("DATAGO_LOG") or os.environ.get("RUST_LOG")
    name = (env if env and env.strip().lower() in _ENV_LEVEL_NAMES else log_level) or "error"
    level = _ENV_LEVEL_NAMES.get(name.strip().lower())
    if level is None:  # "off", or a RUST_LOG filter with module directives
        return
    if _root_logger.level == logging.NOTSET:
        _root_logger.setLevel(level)
    if not _root_logger.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s"))
        _root_logger.addHandler(handler)
