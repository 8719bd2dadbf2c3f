"""Every sample exactly once per epoch, whatever the options: an unseeded
shuffle across DataLoader workers (fork and spawn), the epoch rule for 0,
plain and persistent workers, and ranks that must be known."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

import datago
from support import file_config, plan, run_python

torch = pytest.importorskip("torch", reason="PyTorch is optional; the README's test command installs torch==2.13.0")
from torch.utils.data import DataLoader  # noqa: E402


def config(root: Path, **top) -> dict:
    return json.loads(file_config(root, **top))


def relative(root: Path, item_id: str) -> str:
    return os.path.relpath(json.loads(item_id), root)


def interleave(parts: list[list[str]]) -> list[str]:
    """The order an in-order DataLoader yields its workers' items in: one
    from each worker in turn, skipping workers that are done."""
    return [item for group in itertools.zip_longest(*parts) for item in group if item is not None]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from support import noise_image

    root = tmp_path_factory.mktemp("once")
    for i in range(60):
        noise_image(8, 8, "RGB", seed=i).save(root / f"f{i:03d}.png")
    return root


@pytest.mark.parametrize(("num_workers", "context"), [(2, "fork"), (3, "fork"), (2, "spawn"), (3, "spawn")])
def test_unseeded_shuffle_with_workers_delivers_each_sample_once(folder: Path, num_workers: int, context: str) -> None:
    dataset = datago.DatagoIterDataset(config(folder, source={"random_sampling": True}), return_python_types=False)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, multiprocessing_context=context)
    got = [relative(folder, item["id"]) for item in loader]
    assert sorted(got) == sorted(p.name for p in folder.iterdir())
    # The drawn seed is the one every worker used: the order is the model's.
    seed = dataset.seed
    assert isinstance(seed, int) and 0 <= seed < 2**64
    listing = [p.name for p in folder.iterdir()]
    expected = interleave([plan(listing, worker=w, num_workers=num_workers, seed=seed, epoch=0) for w in range(num_workers)])
    assert got == expected


def test_the_client_reports_the_seed_it_drew(folder: Path) -> None:
    with datago.DatagoClient(file_config(folder, source={"random_sampling": True})) as client:
        seed = client.seed
        assert isinstance(seed, int)
        got = [os.path.basename(s.path) for s in client]
        assert client.stats()["seed"] == seed
    assert got == plan([p.name for p in folder.iterdir()], seed=seed, epoch=0)
    with datago.DatagoClient(file_config(folder, source={"random_sampling": True, "seed": 2**64 - 1})) as client:
        assert client.seed == 2**64 - 1
    with datago.DatagoClient(file_config(folder)) as client:
        assert client.seed is None


def test_an_unseeded_client_keeps_its_seed_across_passes(folder: Path) -> None:
    listing = [p.name for p in folder.iterdir()]
    with datago.DatagoClient(file_config(folder, source={"random_sampling": True})) as client:
        seed = client.seed
        first = [os.path.basename(s.path) for s in client]
        client.start()
        second = [os.path.basename(s.path) for s in client]
    assert first == plan(listing, seed=seed, epoch=0)
    assert second == plan(listing, seed=seed, epoch=1)
    assert first != second


LOADERS = {
    "no workers": {"num_workers": 0},
    "plain workers": {"num_workers": 2},
    "persistent workers": {"num_workers": 2, "persistent_workers": True},
}


@pytest.mark.parametrize("kind", list(LOADERS))
def test_each_iteration_is_the_next_epoch_unless_set_epoch_says_otherwise(folder: Path, kind: str) -> None:
    options = LOADERS[kind]
    workers = max(1, options["num_workers"])
    listing = [p.name for p in folder.iterdir()]
    dataset = datago.DatagoIterDataset(config(folder, source={"random_sampling": True, "seed": 11}))
    loader = DataLoader(dataset, batch_size=None, **options)

    def epoch_order(epoch: int) -> list[str]:
        return interleave([plan(listing, worker=w, num_workers=workers, seed=11, epoch=epoch) for w in range(workers)])

    def run() -> list[str]:
        return [relative(folder, item["id"]) for item in loader]

    assert [run() for _ in range(3)] == [epoch_order(0), epoch_order(1), epoch_order(2)]
    dataset.set_epoch(7)
    assert run() == epoch_order(7)
    assert run() == epoch_order(8)
    dataset.set_epoch(7)
    assert run() == epoch_order(7)
    assert len({tuple(epoch_order(e)) for e in (0, 1, 2, 7, 8)}) == 5


def test_world_size_without_rank_takes_rank_from_the_environment(folder: Path) -> None:
    code = f"""
        import json, os
        import datago
        cfg = {{"source_type": "file", "source_config": {{"root_path": {str(folder)!r}, "world_size": 2}}}}
        with datago.DatagoClient(json.dumps(cfg)) as client:
            print(json.dumps(sorted(os.path.basename(s.path) for s in client)))
    """
    shares = []
    for rank in (0, 1):
        result = run_python(code, env={"RANK": str(rank), "WORLD_SIZE": "2"})
        assert result.returncode == 0, result.stderr
        shares.append(json.loads(result.stdout))
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(p.name for p in folder.iterdir())


def test_world_size_without_any_rank_is_a_config_error(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    cfg = config(folder, source={"world_size": 2})
    with pytest.raises(datago.ConfigError, match=r"source_config\.rank: missing while world_size is 2"):
        datago.DatagoClient(cfg)
    with pytest.raises(datago.ConfigError, match=r"source_config\.rank"):
        datago.DatagoIterDataset(cfg)


def test_world_size_without_rank_in_the_dataset_uses_rank_env(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    dataset = datago.DatagoIterDataset(config(folder, source={"world_size": 2}))
    got = sorted(relative(folder, item["id"]) for item in DataLoader(dataset, batch_size=None, num_workers=0))
    assert got == sorted(p.name for p in folder.iterdir())[1::2]


def test_the_cursor_says_where_this_worker_stands(folder: Path) -> None:
    config = file_config(folder, source={"random_sampling": True, "seed": 9}, num_workers=3, worker_id=1, epoch=4)
    with datago.DatagoClient(config) as client:
        for _ in range(5):
            assert client.get_sample() is not None
        cursor = client.stats()["cursor"]
        assert cursor == {"seed": 9, "epoch": 4, "rank": 0, "world_size": 1, "worker": 1, "num_workers": 3, "position": 5}
        rest = len(list(client))
        assert client.stats()["cursor"]["position"] == 5 + rest == 20
