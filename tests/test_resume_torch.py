"""Checkpoint and resume through PyTorch: DatagoIterDataset under torchdata's
StatefulDataLoader (0 workers, plain and persistent workers), its len(),
and the DDP warning for unequal ranks."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import datago

torch = pytest.importorskip("torch", reason="PyTorch is optional; the README's test command installs torch==2.13.0")
stateful = pytest.importorskip("torchdata.stateful_dataloader", reason="the README's test command installs torchdata==0.11.0")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume-torch")
    for i in range(37):
        Image.new("RGB", (4 + i % 2, 4), (i, 0, 0)).save(root / f"{i:03d}.png")
    return root


def config(root: Path, **top: Any) -> dict[str, Any]:
    source = {"root_path": os.fspath(root), "random_sampling": True, **top.pop("source", {})}
    return {"source_type": "file", "source_config": source, "num_threads": 2, "samples_buffer_size": 4, **top}


def ids(batch: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in batch]


def loader(dataset: datago.DatagoIterDataset, workers: int, persistent: bool) -> Any:
    return stateful.StatefulDataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=ids,
                                       persistent_workers=persistent and workers > 0)


@pytest.mark.parametrize(("workers", "persistent"), [(0, False), (2, False), (3, True)])
@pytest.mark.parametrize("seeded", [True, False])
def test_stateful_dataloader_resumes_mid_epoch_and_the_epochs_after(folder, workers, persistent, seeded) -> None:
    cfg = config(folder, source={"seed": 12} if seeded else {})
    dataset = datago.DatagoIterDataset(cfg)
    dl = loader(dataset, workers, persistent)
    epoch0, state = [], None
    for step, batch in enumerate(dl):
        epoch0.append(batch)
        if step == 4:
            state = dl.state_dict()
    epoch1 = list(dl)
    flat = sorted(i for b in epoch0 for i in b)
    assert flat == sorted(i for b in epoch1 for i in b) and len(flat) == len(set(flat)) == 37
    assert epoch0 != epoch1
    # A new process would build everything again: a new dataset (an
    # unseeded one draws another seed: the state's wins) and loader.
    restarted = loader(datago.DatagoIterDataset(cfg), workers, persistent)
    restarted.load_state_dict(json.loads(json.dumps(state)))
    assert list(restarted) == epoch0[5:]
    assert list(restarted) == epoch1


def test_len_is_this_ranks_count_from_the_listing(folder) -> None:
    assert len(datago.DatagoIterDataset(config(folder))) == 37
    assert len(datago.DatagoIterDataset(config(folder, source={"rank": 1, "world_size": 3}))) == 12
    assert len(datago.DatagoIterDataset(config(folder, source={"rank": 0, "world_size": 3}))) == 13
    assert len(datago.DatagoIterDataset(config(folder, source={"rank": 0, "world_size": 3}, equal_per_rank="drop"))) == 12
    assert len(datago.DatagoIterDataset(config(folder, source={"rank": 2, "world_size": 3}, equal_per_rank="pad"))) == 13
    assert len(datago.DatagoIterDataset(config(folder, limit=5))) == 5
    batched = datago.DatagoIterDataset(config(folder, source={"rank": 0, "world_size": 2}, equal_per_rank="pad", batch_size=4))
    batches = list(torch.utils.data.DataLoader(batched, batch_size=None))
    assert len(batched) == len(batches) == 5  # ceil(ceil(37 / 2) / 4)
    with pytest.raises(TypeError, match="equal_per_rank"):
        len(datago.DatagoIterDataset(config(folder, batch_size=4)))


def test_padded_samples_are_marked_in_the_dataset_dict(folder) -> None:
    items = []
    for rank in range(2):
        items += list(datago.DatagoIterDataset(config(folder, source={"rank": rank, "world_size": 2, "seed": 1}, equal_per_rank="pad")))
    assert len(items) == 38 and sum(item["padded"] for item in items) == 1
    assert len({item["id"] for item in items if not item["padded"]}) == 37


def test_ddp_without_equal_per_rank_warns_once(folder, monkeypatch, caplog) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="datago"):
        datago.DatagoIterDataset(config(folder))
    assert sum("can hang" in r.message or "waits forever" in r.message for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datago"):
        datago.DatagoIterDataset(config(folder, equal_per_rank="drop"))
    assert not [r for r in caplog.records if "equal_per_rank" in r.message]


def test_an_elastic_restart_from_stateful_dataloader_checkpoints(folder) -> None:
    """Two ranks with two workers each save their loaders' states; three
    ranks with one worker each resume the rest of the epoch from all of them."""
    seen, saved = [], []
    for rank in range(2):
        dl = loader(datago.DatagoIterDataset(config(folder, source={"seed": 5, "rank": rank, "world_size": 2})), 2, False)
        for step, batch in enumerate(dl):
            seen += batch
            if step == 2 + rank:
                saved.append(json.loads(json.dumps(dl.state_dict())))
                break
    states = datago.collect_states(saved)
    assert len(states) == 4
    rest = []
    for rank in range(3):
        dataset = datago.DatagoIterDataset(config(folder, source={"seed": 5, "rank": rank, "world_size": 3}))
        dataset.load_state_dict(states)
        rest += [item["id"] for item in dataset]
    assert sorted(seen + rest) == sorted(json.dumps(str(p)) for p in folder.iterdir())
