"""Exact resume, elastic restarts and equal ranks (docs/design.md §2, §3) on
real files: a state taken after any step resumes exactly the suffix an
uninterrupted run delivers; the states of every part of a run, loaded with
another world_size and worker count, deliver the rest of the epoch exactly
once; `equal_per_rank` gives every rank the same count."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import datago
from support import plan

SIZES = (0, 1, 2, 5, 13, 31)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[int, Path]:
    """One folder per dataset size, of tiny PNGs of distinct shapes."""
    out = {}
    for n in SIZES:
        root = tmp_path_factory.mktemp(f"n{n}")
        for i in range(n):
            Image.new("RGB", (4 + i % 3, 4), (i, 2 * i % 256, 7)).save(root / f"{i:03d}.png")
        out[n] = root
    return out


def config(root: Path, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1,
           seed: int | None = None, shuffle: bool = True, **top: Any) -> dict[str, Any]:
    source: dict[str, Any] = {"root_path": os.fspath(root), "random_sampling": shuffle, "rank": rank, "world_size": world_size}
    if seed is not None:
        source["seed"] = seed
    return {"source_type": "file", "source_config": source, "worker_id": worker, "num_workers": num_workers,
            "num_threads": 2, "samples_buffer_size": 4, **top}


def names(samples) -> list[str]:
    return [os.path.basename(s.path) for s in samples]


def take(client: datago.DatagoClient, count: int) -> list[datago.Sample]:
    out = []
    for _ in range(count):
        sample = client.get_sample()
        if sample is None:
            break
        out.append(sample)
    return out


def open_client(cfg: dict[str, Any], state: Any = None) -> datago.DatagoClient:
    return datago.DatagoClient(json.dumps(cfg), state=state)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.sampled_from(SIZES), world_size=st.sampled_from([1, 2, 3, 8]), workers=st.sampled_from([1, 2, 3]),
       seeded=st.booleans(), stop=st.floats(0, 1))
def test_resuming_any_part_at_any_step_delivers_exactly_the_rest(folders, n, world_size, workers, seeded, stop) -> None:
    root = folders[n]
    union: list[str] = []
    for rank in range(world_size):
        for worker in range(workers):
            cfg = config(root, rank, world_size, worker, workers, seed=7 if seeded else None)
            expected = len(plan(sorted(os.listdir(root)), rank, world_size, worker, workers))
            k = int(stop * expected)
            with open_client(cfg) as first:
                head = names(take(first, k))
                state = first.state_dict()
                seed = first.seed
                # The uninterrupted run goes on from the same client.
                full = head + names(first)
            if seeded:
                assert full == plan(sorted(os.listdir(root)), rank, world_size, worker, workers, seed=7)
            assert len(json.dumps(state)) <= 4096
            # An unseeded run records the seed it drew, so it resumes too.
            assert state["seed"] == seed
            with open_client(cfg, state=state) as resumed:
                assert names(resumed) == full[k:]
            union += full
    # Ranks split before any shuffle; a rank's workers share its seed only
    # when one is given (DatagoIterDataset draws one for all of them).
    if seeded or workers == 1:
        assert sorted(union) == sorted(os.listdir(root))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.sampled_from(SIZES), shape=st.sampled_from([(1, 1), (2, 1), (3, 2), (8, 1), (2, 3)]),
       new_shape=st.sampled_from([(1, 1), (2, 1), (3, 2), (8, 3), (1, 3)]), stops=st.lists(st.floats(0, 1), min_size=24, max_size=24))
def test_an_elastic_restart_delivers_the_rest_of_the_epoch_exactly_once(folders, n, shape, new_shape, stops) -> None:
    root = folders[n]
    world_size, workers = shape
    consumed: list[str] = []
    states = []
    for rank in range(world_size):
        for worker in range(workers):
            cfg = config(root, rank, world_size, worker, workers, seed=3)
            with open_client(cfg) as client:
                share = client.stats  # noqa: F841 (the pass starts at the first get_sample)
                all_items = names(client)
            k = int(stops[rank * workers + worker] * len(all_items))
            with open_client(cfg) as client:
                consumed += names(take(client, k))
                states.append(client.state_dict())
    rest: list[str] = []
    new_world, new_workers = new_shape
    for rank in range(new_world):
        for worker in range(new_workers):
            with open_client(config(root, rank, new_world, worker, new_workers, seed=3), state=states) as client:
                rest += names(client)
                after = client.state_dict()
            assert after["epoch"] == 0 and len(after["levels"]) == (1 if (new_world, new_workers) == shape else 2)
    assert sorted(consumed + rest) == sorted(os.listdir(root))


def test_an_elastic_restart_needs_every_part_and_the_next_epoch_uses_the_new_split(folders) -> None:
    root = folders[31]
    states = []
    for rank in range(2):
        with open_client(config(root, rank, 2, seed=5)) as client:
            take(client, 4)
            states.append(client.state_dict())
    with pytest.raises(datago.ConfigError, match="every rank and worker"):
        open_client(config(root, 0, 3, seed=5), state=states[:1])
    with open_client(config(root, 1, 3, seed=5), state=states) as client:
        names(client)
        client.start()  # the next epoch: the plain split of 3 ranks
        assert names(client) == plan(sorted(os.listdir(root)), 1, 3, seed=5, epoch=1)


def test_a_state_of_another_dataset_or_order_is_refused(folders) -> None:
    with open_client(config(folders[13], seed=1)) as client:
        take(client, 3)
        state = client.state_dict()
    # Another listing: found when the pass lists, reported by the first read.
    with open_client(config(folders[31], seed=1), state=state) as client:
        with pytest.raises(datago.ConfigError, match="another listing"):
            client.get_sample()
    with pytest.raises(datago.ConfigError, match="seed 1"):
        open_client(config(folders[13], seed=2), state=state)
    with pytest.raises(datago.ConfigError, match="orders samples differently"):
        open_client(config(folders[13], seed=None, shuffle=False), state=state)
    with open_client(config(folders[13], 0, 2, seed=1)) as client:
        take(client, 1)
        rank0 = client.state_dict()
    with pytest.raises(datago.ConfigError, match="no part for rank 1"):
        open_client(config(folders[13], 1, 2, seed=1), state=rank0)
    with pytest.raises(datago.ConfigError, match="format 9"):
        open_client(config(folders[13], seed=1), state=state | {"datago_state": 9})


def test_a_state_after_the_end_of_a_pass_starts_the_next_epoch(folders) -> None:
    root = folders[13]
    with open_client(config(root, seed=4)) as client:
        names(client)
        state = client.state_dict()
    assert state["levels"][0]["parts"][0]["done"] is True
    with open_client(config(root, seed=4), state=state) as client:
        assert names(client) == plan(sorted(os.listdir(root)), seed=4, epoch=1)
        assert client.state_dict()["epoch"] == 1


def test_limit_counts_across_a_resume(folders) -> None:
    root = folders[31]
    cfg = config(root, seed=8, limit=10)
    with open_client(cfg) as client:
        full = names(client)
    with open_client(cfg) as client:
        head = names(take(client, 4))
        state = client.state_dict()
    with open_client(cfg, state=state) as client:
        assert head + names(client) == full and len(full) == 10


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """40 images of 3 shapes, a rare 4th, and two broken files: bucket
    batches keep partial groups pending across a state."""
    root = tmp_path_factory.mktemp("mixed")
    for i in range(40):
        width = 9 if i % 13 == 0 else 4 + i % 3
        Image.new("RGB", (width, 4), (i, 0, 0)).save(root / f"{i:03d}.png")
    (root / "500.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (root / "501.png").write_bytes(b"")
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_bucket_batches_resume_exactly(mixed, workers) -> None:
    for worker in range(workers):
        cfg = config(mixed, 0, 1, worker, workers, seed=2, batch_size=3)
        with open_client(cfg) as client:
            full = [[s.index for s in b.samples] for b in client]
        for k in range(len(full)):
            with open_client(cfg) as client:
                head = [[s.index for s in client.get_batch().samples] for _ in range(k)]
                state = client.state_dict()
            assert len(json.dumps(state)) <= 4096
            with open_client(cfg, state=state) as client:
                assert head + [[s.index for s in b.samples] for b in client] == full, k


def test_equal_per_rank_gives_every_rank_the_same_count(folders, mixed) -> None:
    for root in (folders[13], folders[31], mixed):
        listed = len(os.listdir(root))
        for mode, expected in (("drop", listed // 3), ("pad", -(-listed // 3))):
            counts, padded, seen = [], 0, []
            for rank in range(3):
                with open_client(config(root, rank, 3, seed=6, equal_per_rank=mode)) as client:
                    samples = list(client)
                    counts.append(len(samples))
                    padded += sum(s.padded for s in samples)
                    assert client.stats()["padded"] == sum(s.padded for s in samples)
                    seen += [s.path for s in samples if not s.padded]
            assert counts == [expected] * 3, (root, mode)
            assert len(seen) == len(set(seen))
            if root == mixed:
                # Two broken files: their ranks fill in with marked repeats.
                assert padded >= 2
            elif mode == "pad" and listed % 3:
                assert padded == 3 - listed % 3


def test_equal_per_rank_equal_batches_with_workers(mixed) -> None:
    for mode in ("drop", "pad"):
        counts = []
        for rank in range(3):
            total = 0
            for worker in range(2):
                with open_client(config(mixed, rank, 3, worker, 2, seed=6, equal_per_rank=mode, batch_size=4)) as client:
                    total += len(list(client))
            counts.append(total)
        assert len(set(counts)) == 1, (mode, counts)


def test_equal_per_rank_is_refused_where_a_stream_cannot_honour_it() -> None:
    wds = {"source_type": "webdataset", "source_config": {"url": "x-{0..1}.tar"}}
    with pytest.raises(datago.ConfigError, match="needs a limit"):
        datago.DatagoClient(json.dumps(wds | {"equal_per_rank": "drop"}))
    with pytest.raises(datago.ConfigError, match="file source"):
        datago.DatagoClient(json.dumps(wds | {"equal_per_rank": "pad", "limit": 5}))
    with pytest.raises(datago.ConfigError, match="equal_per_rank"):
        datago.DatagoClient(json.dumps(wds | {"equal_per_rank": "even"}))


def test_the_state_goes_through_the_c_abi_as_a_string(folders) -> None:
    from datago._native import ffi, lib

    cfg = json.dumps(config(folders[13], seed=9)).encode()
    loader = ffi.new("datago_loader **")
    assert lib.datago_loader_open(cfg, len(cfg), loader) == lib.DATAGO_OK
    sample = ffi.new("datago_sample **")
    assert lib.datago_loader_next(loader[0], -1, sample) == lib.DATAGO_OK
    lib.datago_sample_free(sample[0])
    length = ffi.new("size_t *")
    assert lib.datago_loader_state(loader[0], ffi.NULL, 0, length) == lib.DATAGO_ERR_ARGUMENT
    buffer = ffi.new("char[]", length[0] + 1)
    assert lib.datago_loader_state(loader[0], buffer, len(buffer), length) == lib.DATAGO_OK
    state = ffi.string(buffer)
    assert json.loads(state)["levels"][0]["parts"][0]["position"] == 1
    lib.datago_loader_close(loader[0])
    assert lib.datago_loader_open(cfg, len(cfg), loader) == lib.DATAGO_OK
    assert lib.datago_loader_restore(loader[0], state, len(state)) == lib.DATAGO_OK
    assert lib.datago_loader_next(loader[0], -1, sample) == lib.DATAGO_OK
    assert sample[0].index == 1 and sample[0].padded == 0
    lib.datago_sample_free(sample[0])
    assert lib.datago_loader_restore(loader[0], b"{}", 2) == lib.DATAGO_ERR_MISUSE
    lib.datago_loader_stop(loader[0])
    assert lib.datago_loader_restore(loader[0], b"{}", 2) == lib.DATAGO_ERR_CONFIG
    assert b"datago_state" in ffi.string(lib.datago_last_error())
    lib.datago_loader_close(loader[0])


def test_the_same_epoch_repeats_and_another_differs(folders) -> None:
    root = folders[31]
    orders = []
    for epoch in (0, 0, 1):
        with open_client(config(root, 1, 2, seed=11, epoch=epoch)) as client:
            orders.append(names(client))
    assert orders[0] == orders[1] and orders[0] != orders[2] and sorted(orders[0]) == sorted(orders[2])


def test_a_state_loaded_after_a_finished_pass_resumes_at_the_next_read(folders) -> None:
    root = folders[13]
    with open_client(config(root, seed=2)) as client:
        head = names(take(client, 5))
        state = client.state_dict()
        rest = names(client)
        assert client.get_sample() is None
        client.load_state_dict(state)
        assert names(client) == rest and len(head + rest) == 13
