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
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.utils.data

from .client import DatagoClient
from .errors import ConfigError, DatagoError
from .types import Batch, Sample


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
        raise DatagoError(
            f"WORLD_SIZE={world_size} but this process's rank is unknown: initialise torch.distributed, "
            "set RANK, or put rank and world_size in source_config"
        )
    return int(os.environ["RANK"]), world_size


class DatagoIterDataset(torch.utils.data.IterableDataset):
    """Iterates over a datago source (``datago_config``: a dict or a JSON
    string, as for ``DatagoClient``).

    With ``return_python_types=True`` each item is the dict of
    ``get_sample_auto_convert()`` (spec §3.4) with ``attributes`` decoded by
    ``json.loads`` and images as PIL images; with ``False`` the same dict with
    images as zero-copy ``torch.Tensor`` (H x W x C, uint8, or int16 views of
    16-bit data are not offered: 16-bit images come as uint16 NumPy arrays).
    With ``batch_size`` in the config each item is a dict ``{"images": tensor
    [B, H, W, C], "ids", "paths", "crop_boxes", "original_sizes"}`` instead
    (use ``DataLoader(batch_size=None)``).

    ``rank``/``world_size`` come from the config's source_config, else from
    torch.distributed, else from torchrun's environment. Call
    ``set_epoch(epoch)`` before each epoch (as with DistributedSampler) to
    reshuffle with ``random_sampling`` and a ``seed``; with ``num_workers=0``
    each ``__iter__`` also advances the epoch by itself.
    """

    def __init__(self, datago_config: Mapping[str, Any] | str, return_python_types: bool = True) -> None:
        super().__init__()
        config = json.loads(datago_config) if isinstance(datago_config, str) else copy.deepcopy(dict(datago_config))
        if not isinstance(config, dict):
            raise ConfigError("config: expected a JSON object")
        DatagoClient(json.dumps(config)).close()  # validate now: a bad config fails here, not in a worker
        self.config = config
        self.return_python_types = return_python_types
        self._epoch: int | None = None
        self._passes = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next iteration (reshuffles with a seed)."""
        self._epoch = epoch

    def __len__(self) -> int:
        limit = self.config.get("limit")
        if limit is None:
            raise TypeError("DatagoIterDataset has no length without 'limit' (the reference returned 1e9)")
        return int(limit)

    def worker_config(self) -> dict[str, Any]:
        """The config the current process (rank and DataLoader worker) reads."""
        config = copy.deepcopy(self.config)
        source = config.setdefault("source_config", {})
        if "rank" not in source and "world_size" not in source:
            distributed = _distributed()
            if distributed is not None:
                source["rank"], source["world_size"] = distributed
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        config["worker_id"], config["num_workers"] = worker, num_workers
        if num_workers > 1:
            total = config.get("num_threads") or int(os.environ.get("DATAGO_MAX_TASKS") or 0) or _usable_cpus()
            config["num_threads"] = max(1, total // num_workers)
        epoch = self._epoch if self._epoch is not None else self._passes
        config["epoch"] = epoch
        return config

    def __iter__(self) -> Iterator[Any]:
        config = self.worker_config()
        self._passes += 1
        with DatagoClient(json.dumps(config)) as client:
            for item in client:
                yield self._convert(item)

    def _convert(self, item: Sample | Batch) -> Any:
        if isinstance(item, Batch):
            return {
                "images": item.to_torch(),
                "ids": item.ids,
                "paths": [s.path for s in item.samples],
                "crop_boxes": [s.image.crop_box for s in item.samples],
                "original_sizes": [(s.image.original_width, s.image.original_height) for s in item.samples],
            }
        if self.return_python_types:
            converted = item.to_dict()
            converted["attributes"] = item.attributes_dict
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
        }


def _tensor(payload: Any) -> Any:
    array = payload._inner.writable_array()
    if array is None or array.dtype != "uint8":
        return array
    return torch.from_numpy(array)


__all__ = ["DatagoIterDataset"]
