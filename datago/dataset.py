"""``DatagoIterDataset``: datago as a ``torch.utils.data.IterableDataset``.

The only module of the package that imports torch.

Each ``__iter__`` opens its own client (in the DataLoader worker process, never
before the fork) and reads this worker's part of this rank's share
(docs/design.md): worker ``w`` of ``k`` takes every ``k``-th item of the rank's
order and ``limit // k`` samples (+1 for the first ``limit % k`` workers), so
every sample of the epoch arrives exactly once across ranks and workers.
Native decode threads are divided among the workers.

``num_workers=0`` is the fast path: the native threads already decode in
parallel outside the GIL, and worker processes only add a pickling copy of
every image on its way back to the main process.
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import multiprocessing.context
import os
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.utils.data

from .client import DatagoClient, fill_rank
from .errors import ConfigError
from .types import Batch, Sample

_logger = logging.getLogger("datago")


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _distributed() -> tuple[int, int] | None:
    """(rank, world_size) from torch.distributed when it is initialised, else
    from torchrun's RANK/WORLD_SIZE; None for a single process. More than one
    rank with no way to tell which is an error, not silent duplication."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return None
    if "RANK" not in os.environ:
        raise ConfigError(
            f"source_config.rank: WORLD_SIZE={world_size} but this process's rank is unknown: initialise "
            "torch.distributed, set RANK, or put rank and world_size in source_config"
        )
    return int(os.environ["RANK"]), world_size


def _with_rank(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with this process's rank and world_size filled in where the
    source config leaves them out (see `DatagoIterDataset`)."""
    config = copy.deepcopy(config)
    source = config.setdefault("source_config", {})
    if "rank" not in source and "world_size" not in source:
        distributed = _distributed()
        if distributed is not None:
            source["rank"], source["world_size"] = distributed
    fill_rank(config)
    return config


class _EpochCounter:
    """The epoch of each iteration, shared by the main process and the
    DataLoader worker processes: each new iteration is the next epoch, unless
    ``set_epoch`` named one, whatever ``num_workers`` and
    ``persistent_workers`` are. Worker copies of the dataset are made by fork
    or by pickling at process start, so the counts live in shared memory
    (a RawArray passes to both). Layout: [base epoch, set_epoch calls], then
    per iterating process (the main process, then each worker) the
    set_epoch call count it last saw and its iterations since then."""

    processes_max = 1 + 1024
    # After the per-process slots: [seed adopted from a resume state (0/1), the seed as int64].
    _seed_slot = 2 + 2 * processes_max

    def __init__(self, epoch: int) -> None:
        self._shared = multiprocessing.RawArray("q", 2 + 2 * self.processes_max + 2)
        self._shared[0] = epoch

    def adopt_seed(self, seed: int) -> None:
        """The seed of a resumed run, for every process from now on."""
        self._shared[self._seed_slot + 1] = seed - (1 << 64) if seed >= 1 << 63 else seed
        self._shared[self._seed_slot] = 1

    def adopted_seed(self) -> int | None:
        if not self._shared[self._seed_slot]:
            return None
        return int(self._shared[self._seed_slot + 1]) % (1 << 64)

    def set_epoch(self, epoch: int) -> None:
        self._shared[0] = epoch
        self._shared[1] += 1

    def resumed(self, worker: int | None, epoch: int) -> None:
        """This process's iteration ran `epoch` from a resume state: its next
        one is `epoch + 1`, whatever the count said."""
        slot = 0 if worker is None else 1 + worker
        self._shared[2 + 2 * slot] = self._shared[1]
        self._shared[3 + 2 * slot] = epoch + 1 - self._shared[0]

    def next_epoch(self, worker: int | None) -> int:
        """The epoch of a new iteration by worker `worker` (None: the main
        process, num_workers=0). Each process writes only its own slot."""
        slot = 0 if worker is None else 1 + worker
        if slot >= self.processes_max:
            raise ConfigError(f"num_workers: at most {self.processes_max - 1} DataLoader workers are supported")
        calls, seen, count = self._shared[1], 2 + 2 * slot, 3 + 2 * slot
        if self._shared[seen] != calls:
            self._shared[seen], self._shared[count] = calls, 0
        epoch = self._shared[0] + self._shared[count]
        self._shared[count] += 1
        return int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader hands the dataset to spawned workers while a process is
        # being started: the shared array travels then. Any other pickle
        # (a deepcopy, a checkpoint) gets an independent copy of the counts.
        if multiprocessing.context.get_spawning_popen() is not None:
            return {"shared": self._shared}
        return {"values": list(self._shared)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "shared" in state:
            self._shared = state["shared"]
        else:
            self._shared = multiprocessing.RawArray("q", state["values"])


class DatagoIterDataset(torch.utils.data.IterableDataset):
    """Iterates over a datago source (``datago_config``: a dict or a JSON
    string, as for ``DatagoClient``).

    With ``return_python_types=True`` each item is the dict of
    ``get_sample_auto_convert()`` (docs/compatibility.md §3.4) with ``attributes`` decoded by
    ``json.loads`` and images as PIL images; with ``False`` the same dict with
    images as zero-copy ``torch.Tensor`` (H x W x C, uint8, or int16 views of
    16-bit data are not offered: 16-bit images come as uint16 NumPy arrays).
    With ``batch_size`` in the config each item is a dict ``{"images": tensor
    [B, H, W, C], "ids", "paths", "crop_boxes", "original_sizes"}`` instead
    (use ``DataLoader(batch_size=None)``).

    ``rank``/``world_size`` come from the config's source_config, else from
    torch.distributed, else from torchrun's environment; a ``world_size``
    above 1 without ``rank`` takes the rank from torch.distributed, else from
    ``RANK``, else raises ``ConfigError``.

    **Epochs.** Each new iteration over the dataset is the next epoch (the
    first is the config's ``epoch``, default 0), unless ``set_epoch(e)`` was
    called: the next iteration is then epoch ``e``, the one after ``e + 1``.
    The rule holds alike for ``num_workers=0``, plain workers and
    ``persistent_workers=True`` (the count is shared with the worker
    processes). With ``random_sampling`` each epoch is a new permutation.

    **Seed.** With ``random_sampling`` and no ``seed``, one seed is drawn
    here, once, and used by every DataLoader worker and every epoch (workers
    that drew their own would take overlapping parts of differently shuffled
    lists); ``seed`` reports it.
    """

    def __init__(self, datago_config: Mapping[str, Any] | str, return_python_types: bool = True) -> None:
        super().__init__()
        config = json.loads(datago_config) if isinstance(datago_config, str) else copy.deepcopy(dict(datago_config))
        if not isinstance(config, dict):
            raise ConfigError("config: expected a JSON object")
        source = config.get("source_config")
        self._seed_drawn = isinstance(source, dict) and source.get("random_sampling") is True and source.get("seed") is None
        if self._seed_drawn:
            assert isinstance(source, dict)
            source["seed"] = secrets.randbits(64)
        DatagoClient(json.dumps(_with_rank(config))).close()  # validate now: a bad config fails here, not in a worker
        self.config = config
        self.return_python_types = return_python_types
        epoch = config.get("epoch", 0)
        self._epochs = _EpochCounter(epoch if isinstance(epoch, int) else 0)
        # Per process (each DataLoader worker has its own copy of these):
        # the state to resume at the next iteration, the client of the
        # running iteration, and the state at the end of the last one.
        self._resume_state: Any = None
        self._listed: int | None = None
        self._num_workers_hint: int | None = None
        self._client: DatagoClient | None = None
        self._last_state: dict[str, Any] | None = None
        distributed = sys.modules.get("torch.distributed")
        if (
            config.get("equal_per_rank") is None
            and distributed is not None
            and distributed.is_available()
            and distributed.is_initialized()
            and distributed.get_world_size() > 1
        ):
            _logger.warning(
                "DatagoIterDataset: %d ranks without equal_per_rank: ranks may yield different numbers of samples "
                "and batches, and a DDP collective then waits forever for the rank that ran out; set "
                "equal_per_rank to \"drop\" or \"pad\"",
                distributed.get_world_size(),
            )

    @property
    def seed(self) -> int | None:
        """The shuffle seed every worker and epoch uses (given, or drawn at
        construction); None without ``random_sampling``."""
        source = self.config.get("source_config") or {}
        if source.get("random_sampling") is not True:
            return None
        return self._epochs.adopted_seed() or int(source["seed"])

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next iteration (reshuffles with random_sampling);
        later iterations count on from it. Reaches DataLoader workers,
        persistent ones included."""
        self._epochs.set_epoch(int(epoch))

    def __len__(self) -> int:
        """This rank's samples per epoch (all its DataLoader workers), or
        batches with ``batch_size``. Known from ``limit``, or for the file
        source from its listing (read once, here, on first use); batches
        only with ``equal_per_rank`` (bucket batches otherwise depend on
        the shapes). Else ``TypeError``, as ``len()`` of an iterable without
        a length."""
        config = _with_rank(self.config)
        source = config.get("source_config") or {}
        limit = config.get("limit")
        equal = config.get("equal_per_rank")
        batch_size = config.get("batch_size")
        rank, world_size = int(source.get("rank", 0)), int(source.get("world_size", 1))
        if config.get("source_type", "db") == "file":
            if self._listed is None:
                self._listed = _listed_count(config)
            n = self._listed
            if equal == "drop":
                samples = n // world_size
            elif equal == "pad":
                samples = -(-n // world_size)
            else:
                samples = _rank_share(n, rank, world_size)
            if limit is not None:
                samples = min(samples, int(limit))
        elif limit is not None and (equal is not None or batch_size is None):
            samples = int(limit)
        else:
            raise TypeError(
                "DatagoIterDataset has no length here: a stream's size is known only at its end; set 'limit' "
                "(with equal_per_rank, every rank yields exactly limit samples)"
            )
        if batch_size is None:
            return samples
        if equal is None:
            raise TypeError(
                "DatagoIterDataset has no length in batch mode without equal_per_rank: batches group samples by "
                "shape, so their number is only known at the end of the epoch"
            )
        # Each DataLoader worker batches its own part.
        info = torch.utils.data.get_worker_info()
        workers = 1 if info is None else info.num_workers
        workers = int(self._num_workers_hint or workers)
        parts = [samples // workers + (1 if w < samples % workers else 0) for w in range(workers)]
        size = int(batch_size)
        return sum(p // size if equal == "drop" else -(-p // size) for p in parts)

    def set_num_workers(self, num_workers: int) -> None:
        """The DataLoader's ``num_workers``, for ``len()`` in batch mode
        (each worker batches its own part)."""
        self._num_workers_hint = max(1, int(num_workers))

    def state_dict(self) -> dict[str, Any]:
        """This process's state (its rank and DataLoader worker), as
        ``DatagoClient.state_dict()``: torchdata's ``StatefulDataLoader``
        calls it in each worker and hands it back to the same worker's
        ``load_state_dict``. In the main process without workers, the state
        of the running (or last) iteration."""
        if self._client is not None:
            return self._client.state_dict()
        if self._resume_state is not None:
            return dict(self._resume_state) if isinstance(self._resume_state, Mapping) else {"states": self._resume_state}
        if self._last_state is not None:
            return self._last_state
        return {}

    def load_state_dict(self, state: Mapping[str, Any] | list[Any]) -> None:
        """The next iteration (in this process) continues `state`: one
        process's ``state_dict()``, or the list of every rank's and worker's
        to resume with another ``world_size`` or ``num_workers``. An empty
        dict (a state taken before the first iteration) is ignored."""
        if isinstance(state, Mapping) and "states" in state and len(state) == 1:
            state = state["states"]
        if isinstance(state, Mapping) and not state:
            return
        self._resume_state = state
        # A seed this dataset drew gives way to the one the saved run used
        # (shared with the main process and every worker, for later epochs).
        first = state[0] if isinstance(state, list) and state else state
        if self._seed_drawn and isinstance(first, Mapping) and first.get("seed") is not None:
            self._epochs.adopt_seed(int(first["seed"]))

    def worker_config(self, epoch: int | None = None) -> dict[str, Any]:
        """The config the current process (rank and DataLoader worker) reads
        for `epoch` (default: the config's)."""
        config = _with_rank(self.config)
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        config["worker_id"], config["num_workers"] = worker, num_workers
        if num_workers > 1:
            total = config.get("num_threads") or int(os.environ.get("DATAGO_MAX_TASKS") or 0) or _usable_cpus()
            config["num_threads"] = max(1, total // num_workers)
        if epoch is not None:
            config["epoch"] = epoch
        adopted = self._epochs.adopted_seed()
        if adopted is not None:
            config["source_config"]["seed"] = adopted
        return config

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        worker = None if info is None else info.id
        epoch = self._epochs.next_epoch(worker)
        config = self.worker_config(epoch)
        state, self._resume_state = self._resume_state, None
        with DatagoClient(json.dumps(config), state=state) as client:
            if state is not None:
                resumed_epoch = int(client.state_dict()["epoch"])
                self._epochs.resumed(worker, resumed_epoch)
            self._client = client
            try:
                for item in client:
                    yield self._convert(item)
            finally:
                self._last_state = client.state_dict()
                self._client = None

    def _convert(self, item: Sample | Batch) -> Any:
        if isinstance(item, Batch):
            return {
                "images": item.to_torch(),
                "ids": item.ids,
                "paths": [s.path for s in item.samples],
                "crop_boxes": [s.image.crop_box for s in item.samples],
                "original_sizes": [(s.image.original_width, s.image.original_height) for s in item.samples],
                "padded": [s.padded for s in item.samples],
            }
        if self.return_python_types:
            converted = item.to_dict()
            converted["attributes"] = item.attributes_dict
            converted["padded"] = item.padded
            return converted
        return {
            "id": item.id,
            "source": item.source,
            "duplicate_state": item.duplicate_state,
            "attributes": item.attributes_dict,
            "tags": item.tags,
            "coca_embedding": item.coca_embedding,
            "latents": {k: {"data": v.data, "len": v.len} for k, v in item.latents.items()},
            "image": _tensor(item.image),
            "masks": {k: _tensor(v) for k, v in item.masks.items()},
            "additional_images": {k: _tensor(v) for k, v in item.additional_images.items()},
            "padded": item.padded,
        }


def _rank_share(n: int, rank: int, world_size: int) -> int:
    """Items of a listing of `n` in rank `rank`'s strided share (docs/design.md §2)."""
    return 0 if n <= rank else (n - rank - 1) // world_size + 1


def _listed_count(config: dict[str, Any]) -> int:
    """The number of files the file source lists for `config`: a client
    lists them (its pass is stopped as soon as the listing is known)."""
    probe = {**config, "num_threads": 1, "samples_buffer_size": 1, "log_interval_s": 0}
    probe.pop("limit", None)
    probe.pop("equal_per_rank", None)
    with DatagoClient(json.dumps(probe)) as client:
        client.start()
        while True:
            stats = client.stats()
            waiting = stats.get("waiting_for") or ""
            if not stats.get("running") or not waiting.startswith("the preparation"):
                break
            time.sleep(0.005)
        if not stats.get("running") and stats.get("listed", 0) == 0:
            client.get_sample()  # raises the listing's error (a missing root_path), if any
        return int(stats["listed"])


def _tensor(payload: Any) -> Any:
    array = payload._inner.writable_array()
    if array is None or array.dtype != "uint8":
        return array
    return torch.from_numpy(array)


__all__ = ["DatagoIterDataset"]
