"""The WebDataset sample shuffle (`source_config.shuffle_buffer`): samples
mixed across shards in blocks, reproducibly from (seed, epoch), each exactly
once, on local shards written at test time."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from shard_server import image_bytes, make_shards, sample_members, write_tar

import datago
from support import GOLDEN, MASK64, SplitMix64, drain, mix64, stream_seed


def wds_config(url: str, **source: Any) -> str:
    """One shard at a time unless asked otherwise, so that any mixing seen
    is the shuffle buffer's, not the lanes' interleave."""
    top = source.pop("top", {})
    source.setdefault("concurrent_downloads", 1)
    return json.dumps({"source_type": "webdataset", "source_config": {"url": url, **source},
                       "samples_buffer_size": 8, "num_threads": 2, "timeout_s": 60, **top})


def ids_of(config: str) -> list[str]:
    with datago.DatagoClient(config) as client:
        return [s.id for s in drain(client)]


@pytest.fixture
def shards(tmp_path: Path):
    return make_shards(tmp_path, 4, 10)


def pattern_of(shards) -> str:
    return str(shards[0].path.parent / "shard-{000..003}.tar")


def all_keys(shards) -> list[str]:
    return [k for s in shards for k in s.keys]


def runs_by_shard(ids: list[str]) -> list[list[str]]:
    """The ids cut wherever the shard (`sNN_` prefix) changes."""
    runs: list[list[str]] = []
    for key in ids:
        if runs and runs[-1][0][:3] == key[:3]:
            runs[-1].append(key)
        else:
            runs.append([key])
    return runs


def test_a_seed_repeats_the_order_and_every_sample_comes_once(shards) -> None:
    config = wds_config(pattern_of(shards), random_sampling=True, seed=11, shuffle_buffer=16)
    first, second = ids_of(config), ids_of(config)
    assert first == second
    assert sorted(first) == sorted(all_keys(shards))
    # Mixed across shard boundaries, not only reordered shards.
    assert len(runs_by_shard(first)) > 8, first


def block_shuffled(keys: list[str], capacity: int, seed: int, epoch: int = 0, rank: int = 0, worker: int = 0) -> list[str]:
    """docs/design.md's block shuffle, written again from its text."""
    state = mix64((stream_seed(seed ^ 0x73687566666C6531, epoch, rank) + GOLDEN * (worker + 1)) & MASK64)
    out: list[str] = []
    for b, start in enumerate(range(0, len(keys), capacity)):
        block = keys[start:start + capacity]
        rng = SplitMix64(mix64((state + GOLDEN * (b + 1)) & MASK64))
        for i in range(len(block) - 1, 0, -1):
            j = rng.below(i + 1)
            block[i], block[j] = block[j], block[i]
        out += block
    return out


def test_the_order_is_the_documented_block_shuffle(shards) -> None:
    # One lane, shards in expansion order: blocks of 16 over the tar order.
    ids = ids_of(wds_config(pattern_of(shards), seed=11, shuffle_buffer=16))
    assert ids == block_shuffled(all_keys(shards), 16, seed=11)
    epoch1 = ids_of(wds_config(pattern_of(shards), seed=11, shuffle_buffer=7, top={"epoch": 1}))
    assert epoch1 == block_shuffled(all_keys(shards), 7, seed=11, epoch=1)


def test_epochs_mix_differently(shards) -> None:
    url = pattern_of(shards)
    epoch0 = ids_of(wds_config(url, random_sampling=True, seed=11, shuffle_buffer=16))
    epoch1 = ids_of(wds_config(url, random_sampling=True, seed=11, shuffle_buffer=16, top={"epoch": 1}))
    assert epoch0 != epoch1
    assert sorted(epoch0) == sorted(epoch1) == sorted(all_keys(shards))
    with datago.DatagoClient(wds_config(url, random_sampling=True, seed=11, shuffle_buffer=16)) as client:
        assert [s.id for s in drain(client)] == epoch0
        client.start()  # the next pass is epoch 1
        assert [s.id for s in drain(client)] == epoch1


def test_random_sampling_mixes_by_default(shards) -> None:
    ids = ids_of(wds_config(pattern_of(shards), random_sampling=True, seed=5))
    assert sorted(ids) == sorted(all_keys(shards))
    assert len(runs_by_shard(ids)) > 8, ids


def test_shuffle_buffer_0_keeps_tar_order_within_shards(shards) -> None:
    ids = ids_of(wds_config(pattern_of(shards), random_sampling=True, seed=5, shuffle_buffer=0))
    runs = runs_by_shard(ids)
    assert len(runs) == 4
    assert sorted(map(tuple, runs)) == sorted(tuple(s.keys) for s in shards)
    # random_sampling still permutes the shards.
    assert any(ids_of(wds_config(pattern_of(shards), random_sampling=True, seed=seed, shuffle_buffer=0)) != all_keys(shards)
               for seed in (5, 6, 7))


def test_without_random_sampling_an_explicit_buffer_still_mixes(shards) -> None:
    assert ids_of(wds_config(pattern_of(shards))) == all_keys(shards)
    config = wds_config(pattern_of(shards), seed=3, shuffle_buffer=8)
    ids = ids_of(config)
    assert ids == ids_of(config) and ids != all_keys(shards)
    assert sorted(ids) == sorted(all_keys(shards))


def test_two_ranks_stay_disjoint_and_complete(shards) -> None:
    parts = [ids_of(wds_config(pattern_of(shards), rank=r, world_size=2, random_sampling=True, seed=2, shuffle_buffer=6))
             for r in range(2)]
    assert all(parts), parts
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(all_keys(shards))


def test_a_failed_decode_still_names_its_shard_and_key(tmp_path: Path, caplog) -> None:
    members = [m for i in range(6) for m in sample_members(f"ok{i}", i)]
    members[8:8] = [("bad.jpg", b"not a jpeg"), ("bad.txt", b"x")]
    write_tar(tmp_path / "m-0.tar", members)
    write_tar(tmp_path / "m-1.tar", [("z.jpg", image_bytes(9))])
    config = wds_config(str(tmp_path / "m-{0..1}.tar"), seed=1, shuffle_buffer=4)
    with caplog.at_level(logging.ERROR, logger="datago"), datago.DatagoClient(config) as client:
        ids = [s.id for s in drain(client)]
        stats = client.stats()
    datago.logs.flush()
    assert sorted(ids) == sorted([f"ok{i}" for i in range(6)] + ["z"]) and stats["failed"] == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"{tmp_path / 'm-0.tar'}#bad" in m for m in errors), errors


@pytest.mark.parametrize("value, message", [
    (-1, "source_config.shuffle_buffer: -1 is out of range"),
    ("8", "source_config.shuffle_buffer: expected a non-negative integer"),
    (2.5, "source_config.shuffle_buffer: expected a non-negative integer"),
    (1 << 20, "source_config.shuffle_buffer: 1048576 is above the maximum 65536"),
])
def test_bad_values_raise_at_open(value: Any, message: str) -> None:
    with pytest.raises(datago.ConfigError, match=message):
        datago.DatagoClient(wds_config("a.tar", shuffle_buffer=value))


def test_the_buffer_mixes_the_lanes_interleave_reproducibly(shards) -> None:
    config = wds_config(pattern_of(shards), random_sampling=True, seed=11, concurrent_downloads=4)
    ids = ids_of(config)
    assert ids == ids_of(config)
    assert sorted(ids) == sorted(all_keys(shards))
    unmixed = ids_of(wds_config(pattern_of(shards), random_sampling=True, seed=11, concurrent_downloads=4, shuffle_buffer=0))
    assert sorted(unmixed) == sorted(ids) and unmixed != ids
