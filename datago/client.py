"""``DatagoClient``: the reference's client (docs/compatibility.md §1.2, §2) over libdatago."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from . import _native, logs
from ._native import ffi, lib
from .errors import DatagoError, SampleTimeoutError
from .types import Batch, Sample

_logger = logging.getLogger("datago")

#: Slice of a blocking wait: Ctrl-C and other Python threads get a chance at
#: least this often (docs/compatibility.md §2.5).
POLL_MS = 100


class DatagoClient:
    """Loads samples described by a JSON configuration (docs/compatibility.md §4).

    ``DatagoClient(config_json)`` validates the configuration (a bad one raises
    ``ConfigError`` naming the key) but does no I/O and starts no thread: the
    first pass begins at ``start()`` or at the first ``get_sample()``.
    Samples come in a deterministic order (docs/design.md) and stay valid
    after the client is stopped or closed.

    Beyond the reference: iteration (``for sample in client``), ``close()``
    and ``with``, and ``last_stop_reason``.
    """

    def __init__(self, str_config: str | Mapping[str, Any], state: Mapping[str, Any] | list[Any] | str | None = None) -> None:
        if isinstance(str_config, Mapping):
            str_config = json.dumps(dict(str_config))
        if not isinstance(str_config, str):
            raise TypeError(f"argument 'str_config': '{type(str_config).__name__}' object cannot be cast as 'str' (or a dict)")
        settings = _settings_from(str_config)
        if fill_rank(settings):
            str_config = json.dumps(settings)
        logs.ensure_forwarding()
        encoded = str_config.encode("utf-8")
        out = ffi.new("datago_loader **")
        _native.check(lib.datago_loader_open(encoded, len(encoded), out))
        self._handle = ffi.gc(out[0], lib.datago_loader_close)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._closed = False
        logs.client_opened()
        self._timeout_s = float(settings.get("timeout_s", 300.0))
        # Each native wait lasts at most this long (less when timeout_s is
        # shorter than a slice).
        self._slice_ms = max(1, min(POLL_MS, int(self._timeout_s * 1000)))
        self._batching = settings.get("batch_size") is not None
        #: Why the last pass ended early: None, "stopped" or "timeout".
        self.last_stop_reason: str | None = None
        if state is not None:
            self.load_state_dict(state)

    # -- reference API --------------------------------------------------------

    def start(self) -> None:
        """Starts a pass if none is running; after the end of data or a
        ``stop()``, starts a new pass (the next epoch)."""
        handle = self._live_handle()
        self.last_stop_reason = None
        _native.check(lib.datago_loader_start(handle))

    def get_batch(self) -> Batch | None:
        """The next batch of samples of one shape (clients opened with
        ``batch_size``), or ``None`` at the end of the pass. Same waiting
        rules as ``get_sample()``."""
        handle = self._live_handle()
        if not self._batching:
            raise DatagoError("this client hands out single samples (no batch_size in its config): use get_sample() or iterate over it")
        out = ffi.new("datago_batch **")
        status = self._wait(lambda: lib.datago_loader_next_batch(handle, self._slice_ms, out))
        if status == _native.OK:
            return Batch(ffi.gc(out[0], lib.datago_batch_free))
        return None

    def _wait(self, call: Any) -> int:
        """Polls a native wait in POLL_MS slices until it is not TIMEOUT or
        timeout_s passed; then stops the pass and raises SampleTimeoutError
        naming what it waited for (an epoch never ends silently short)."""
        status = call()
        if status == _native.TIMEOUT:
            deadline = time.monotonic() + self._timeout_s
            while status == _native.TIMEOUT:
                if time.monotonic() >= deadline:
                    waiting_for = self.stats().get("waiting_for") or "the next sample"
                    self.stop()
                    self.last_stop_reason = "timeout"
                    raise SampleTimeoutError(
                        f"no sample within timeout_s={self._timeout_s:g} s while waiting for {waiting_for}; "
                        "the pass was stopped (start() begins the next one)"
                    )
                status = call()
        if status < 0:
            raise _native.error_for(status)
        return status

    def get_sample(self) -> Sample | None:
        """The next sample, or ``None`` at the end of the pass or after
        ``stop()``. Raises ``SourceError`` if the pass failed as a whole, and
        ``SampleTimeoutError`` (a ``SourceError`` and a ``TimeoutError``)
        when nothing arrived within ``timeout_s`` (300 s by default), naming
        what it waited for. Waits with the GIL released, in slices of 100 ms,
        so Ctrl-C works."""
        handle = self._live_handle()
        if self._batching:
            raise DatagoError("this client makes batches (batch_size is set): use get_batch() or iterate over it")
        out = ffi.new("datago_sample **")
        status = lib.datago_loader_next(handle, self._slice_ms, out)
        if status == _native.TIMEOUT:
            status = self._wait(lambda: lib.datago_loader_next(handle, self._slice_ms, out))
        elif status < 0:
            raise _native.error_for(status)
        if status == _native.OK:
            return Sample(ffi.gc(out[0], lib.datago_sample_free))
        return None

    def get_sample_auto_convert(self) -> dict[str, Any] | None:
        """Like ``get_sample()`` but a plain dict with PIL images (docs/compatibility.md §3.4)."""
        sample = self.get_sample()
        return None if sample is None else sample.to_dict()

    def stop(self) -> None:
        """Ends the running pass: waiting readers get ``None``. Idempotent."""
        if self._closed or os.getpid() != self._pid:
            return
        if self.last_stop_reason is None:
            self.last_stop_reason = "stopped"
        lib.datago_loader_stop(self._handle)

    # -- extensions -----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where this client stands, as a small JSON-serialisable dict (under
        4 KiB whatever the dataset): seed, epoch, this rank and worker's
        position, and a fingerprint of what it reads. Taken after a sample
        or batch was handed out, it resumes exactly after it: samples decoded
        but not handed out, and samples waiting in a partial bucket batch,
        are delivered by the resumed run. Taken after the end of a pass, it
        resumes at the start of the next epoch. See docs/design.md §3."""
        return _json_from(lib.datago_loader_state, self._live_handle(), 4096)

    def load_state_dict(self, state: Mapping[str, Any] | list[Any] | str) -> None:
        """Makes the next pass continue `state` (from ``state_dict()``):
        exactly after the last sample the saving client handed out. A list
        of the states of every rank and DataLoader worker resumes with
        another ``world_size`` or ``num_workers`` (the rest of the epoch is
        split over the new shape). A state of another dataset or ordering
        raises ``ConfigError`` (here, or at the first ``get_sample()`` when
        the listing differs). Call it before the first pass, or after the
        end of one or ``stop()``."""
        handle = self._live_handle()
        text = state if isinstance(state, str) else json.dumps(state if isinstance(state, list) else dict(state))
        encoded = text.encode("utf-8")
        _native.check(lib.datago_loader_restore(handle, encoded, len(encoded)))
        self.last_stop_reason = None

    @property
    def seed(self) -> int | None:
        """The shuffle seed in use with ``random_sampling``: the config's
        ``seed``, or the one drawn when the client was opened (put it in the
        config to repeat the order); None without ``random_sampling``."""
        seed = self.stats()["seed"]
        return None if seed is None else int(seed)

    def stats(self) -> dict[str, Any]:
        """Native counters of the current or last pass: samples and bytes
        delivered, failures per cause, listing entries skipped per cause,
        per-stage time (count, mean, p50, p99), the time readers waited,
        queue depths, threads, the shuffle ``seed`` and what the pass
        ``waiting_for``. Before the first pass, only ``seed``. Cheap: safe
        to poll during training."""
        return _json_from(lib.datago_loader_stats, self._live_handle(), 16384)

    def close(self) -> None:
        """Stops and releases the native loader. Idempotent. Samples already
        returned stay valid."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if os.getpid() == self._pid:
                ffi.release(self._handle)
                logs.client_closed()

    def __enter__(self) -> DatagoClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Sample] | Iterator[Batch]:
        """Samples (or batches, with ``batch_size``) until the end of the pass."""
        next_item = self.get_batch if self._batching else self.get_sample
        while (item := next_item()) is not None:
            yield item

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<datago.DatagoClient {state}>"

    def _live_handle(self) -> Any:
        if self._closed:
            raise DatagoError("this DatagoClient is closed")
        if os.getpid() != self._pid:
            raise DatagoError(
                f"this DatagoClient was created in process {self._pid} and cannot be used in process "
                f"{os.getpid()} (after fork); create the client inside the child, e.g. in "
                "IterableDataset.__iter__"
            )
        return self._handle


def fill_rank(config: dict[str, Any]) -> bool:
    """Sets ``source_config.rank`` when ``world_size > 1`` and the rank is
    absent: from torch.distributed when it is imported and initialised,
    else from ``RANK``. Returns whether it changed ``config``; without
    either, the library refuses the config (``ConfigError``) rather than
    let every process read rank 0's samples."""
    source = config.get("source_config")
    if not isinstance(source, dict) or "rank" in source:
        return False
    world_size = source.get("world_size")
    if not isinstance(world_size, int) or world_size <= 1:
        return False
    rank: int | None = None
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        rank = int(distributed.get_rank())
    elif os.environ.get("RANK", "").strip().isdigit():
        rank = int(os.environ["RANK"])
    if rank is None:
        return False
    source["rank"] = rank
    return True


def _settings_from(text: str) -> dict[str, Any]:
    """The top-level keys the Python side acts on; validated natively at
    open, only read here."""
    try:
        config = json.loads(text)
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def _json_from(call: Any, handle: Any, guess: int) -> dict[str, Any]:
    """The JSON object a native `call(handle, buffer, capacity, &length)`
    writes, in a buffer of `guess` bytes or, when the call says that is too
    small, of the length it asked for."""
    length = ffi.new("size_t *")
    buffer = ffi.new("char[]", guess)
    status = call(handle, buffer, len(buffer), length)
    if status == lib.DATAGO_ERR_ARGUMENT and length[0] >= len(buffer):
        buffer = ffi.new("char[]", length[0] + 1)
        status = call(handle, buffer, len(buffer), length)
    _native.check(status)
    document: dict[str, Any] = json.loads(ffi.string(buffer, length[0]))
    return document


def collect_states(*saved: Any) -> list[dict[str, Any]]:
    """Every datago state found in `saved`: states from ``state_dict()``,
    lists of them, or whole checkpoints that hold them (a torchdata
    ``StatefulDataLoader.state_dict()`` keeps each worker's inside its
    snapshot), from every rank. The result is what an elastic restart
    passes to ``DatagoClient(config, state=...)`` or
    ``DatagoIterDataset.load_state_dict``."""
    found: list[dict[str, Any]] = []

    def visit(value: Any) -> None:
        if isinstance(value, Mapping):
            if "datago_state" in value:
                found.append(dict(value))
                return
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    for item in saved:
        visit(item)
    return found


def live_cleanup_threads() -> int:
    """Stopped or closed passes whose native work is still finishing (0 once
    everything has drained)."""
    return int(lib.datago_live_cleanup_threads())


def live_samples() -> int:
    """Samples handed out by the library and not yet freed (for leak checks)."""
    return int(lib.datago_live_samples())
