"""PyTorch: DatagoIterDataset in a real DataLoader (every sample once across
workers and ranks), zero-copy tensors, epochs, rank detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import datago
from support import file_config, run_python

torch = pytest.importorskip("torch", reason="PyTorch is optional; the README's test command installs torch==2.13.0")
from torch.utils.data import DataLoader  # noqa: E402


def config(root: Path, **top) -> dict:
    return json.loads(file_config(root, **top))


def test_dataloader_with_two_workers_delivers_every_sample_once(image_dir) -> None:
    root = image_dir(41)
    dataset = datago.DatagoIterDataset(config(root, source={"random_sampling": True, "seed": 5}), return_python_types=False)
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    ids = [item["id"] for item in loader]
    assert len(ids) == 41 and len(set(ids)) == 41
    assert all(json.loads(i).startswith(str(root)) for i in ids)


def test_ranks_times_workers_cover_the_epoch_once(image_dir) -> None:
    root = image_dir(50)
    seen: list[str] = []
    for rank in range(2):
        cfg = config(root, source={"rank": rank, "world_size": 2})
        loader = DataLoader(datago.DatagoIterDataset(cfg), batch_size=None, num_workers=2)
        seen += [item["id"] for item in loader]
    assert len(seen) == 50 and len(set(seen)) == 50


def test_limit_is_per_rank_across_workers(image_dir) -> None:
    root = image_dir(30)
    dataset = datago.DatagoIterDataset(config(root, limit=11))
    assert len(dataset) == 11
    assert len(list(DataLoader(dataset, batch_size=None, num_workers=2))) == 11
    # A folder's length is known from its listing; a stream's is not.
    assert len(datago.DatagoIterDataset(config(root))) == 30
    with pytest.raises(TypeError, match="set 'limit'"):
        len(datago.DatagoIterDataset({"source_type": "webdataset", "source_config": {"url": "/nowhere/s-{0..1}.tar"}}))


def test_python_types_and_zero_copy_tensors(image_dir) -> None:
    root = image_dir(2)
    item = next(iter(datago.DatagoIterDataset(config(root))))
    assert list(item)[:4] == ["id", "source", "duplicate_state", "attributes"]
    assert item["attributes"] == {} and item["image"].size == (24, 16)
    raw = next(iter(datago.DatagoIterDataset(config(root), return_python_types=False)))
    tensor = raw["image"]
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (16, 24, 3) and tensor.dtype == torch.uint8
    # The tensor views the native buffer and keeps it alive.
    live = datago.live_samples()
    del raw
    assert datago.live_samples() == live
    expected = np.asarray(item["image"])
    np.testing.assert_array_equal(tensor.numpy(), expected)


def test_set_epoch_reshuffles_reproducibly(image_dir) -> None:
    root = image_dir(20)
    dataset = datago.DatagoIterDataset(config(root, source={"random_sampling": True, "seed": 1}))
    orders = []
    for epoch in (0, 1, 0):
        dataset.set_epoch(epoch)
        orders.append([item["id"] for item in DataLoader(dataset, batch_size=None, num_workers=2)])
    assert orders[0] == orders[2] and orders[0] != orders[1]
    assert sorted(orders[0]) == sorted(orders[1])


def test_len_counts_samples_and_is_refused_in_batch_mode(image_dir) -> None:
    root = image_dir(4)
    assert len(datago.DatagoIterDataset(config(root, limit=3))) == 3
    batched = datago.DatagoIterDataset(config(root, limit=3, batch_size=2))
    with pytest.raises(TypeError, match="no length in batch mode"):
        len(batched)


def test_batches_through_a_dataloader(image_dir) -> None:
    root = image_dir(10)
    image_dir(7, size=(16, 24), sub="portrait")
    cfg = config(root, batch_size=4, image_config={"crop_and_resize": True, "default_image_size": 64, "downsampling_ratio": 16,
                                                  "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0})
    items = list(DataLoader(datago.DatagoIterDataset(cfg), batch_size=None, num_workers=2))
    ids = [i for item in items for i in item["ids"]]
    assert len(ids) == 17 and len(set(ids)) == 17
    for item in items:
        assert item["images"].ndim == 4 and item["images"].shape[0] == len(item["ids"]) <= 4


def test_threads_are_divided_among_workers(image_dir) -> None:
    root = image_dir(4)
    dataset = datago.DatagoIterDataset(config(root, num_threads=8))
    code = f"""
        import datago, json, torch.utils.data as tud
        ds = datago.DatagoIterDataset({json.dumps(dataset.config)!r})
        class Probe(tud.IterableDataset):
            def __iter__(self):
                yield ds.worker_config()["num_threads"], ds.worker_config()["worker_id"]
        print(sorted(tud.DataLoader(Probe(), batch_size=None, num_workers=2)))
    """
    result = run_python(code)
    assert result.stdout.strip() == "[[4, 0], [4, 1]]", result.stderr


def test_more_than_one_rank_without_a_rank_is_an_error(image_dir) -> None:
    root = image_dir(2)
    code = f"""
        import datago, os
        os.environ["WORLD_SIZE"] = "2"
        os.environ.pop("RANK", None)
        try:
            datago.DatagoIterDataset({file_config(root)!r})
        except datago.ConfigError as e:
            print("refused:", e)
        os.environ["RANK"] = "1"
        ds = datago.DatagoIterDataset({file_config(root)!r})
        print("rank", ds.worker_config()["source_config"]["rank"])
    """
    result = run_python(code)
    assert "refused: source_config.rank: WORLD_SIZE=2 but this process's rank is unknown" in result.stdout, result.stderr
    assert "rank 1" in result.stdout


def test_import_without_torch_works() -> None:
    code = """
        import sys
        sys.modules["torch"] = None  # make `import torch` fail
        import datago
        print(hasattr(datago, "DatagoClient"))
        try:
            datago.DatagoIterDataset
        except ImportError as e:
            print("ImportError:", "PyTorch" in str(e))
    """
    result = run_python(code)
    assert result.stdout.split() == ["True", "ImportError:", "True"], result.stderr
