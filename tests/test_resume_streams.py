"""Exact resume of streaming sources: WebDataset shards (local, lanes, block
shuffle, batches; over HTTP the resumed lane asks for the rest of its
half-read shard with a Range request) and the Dataroom (a keyset cursor)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dataroom_server import BlobFault, DataroomServer
from shard_server import ShardServer, make_shards

import datago


def wds(url: str, **source: Any) -> dict[str, Any]:
    top = source.pop("top", {})
    return {"source_type": "webdataset", "source_config": {"url": url, **source},
            "samples_buffer_size": 4, "prefetch_buffer_size": 4, "num_threads": 2, "timeout_s": 60, **top}


def take(client: datago.DatagoClient, count: int) -> list[str]:
    out = []
    for _ in range(count):
        sample = client.get_sample()
        if sample is None:
            break
        out.append(sample.id)
    return out


def resume_matches(config: dict[str, Any], k: int) -> tuple[list[str], dict[str, Any]]:
    """Takes k samples, saves, and checks that a new client given the state
    delivers exactly what the first client goes on to deliver."""
    with datago.DatagoClient(config) as first:
        head = take(first, k)
        state = first.state_dict()
        rest = [s.id for s in first]
    with datago.DatagoClient(config, state=state) as resumed:
        assert [s.id for s in resumed] == rest, (k, config["source_config"])
    return head + rest, state


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("wds")
    uneven = make_shards(root / "a", 3, 7) + make_shards(root / "b", 2, 3, name=lambda i: f"shard-{i + 3:03d}")
    (root / "b" / "shard-003.tar").rename(root / "a" / "shard-003.tar")
    (root / "b" / "shard-004.tar").rename(root / "a" / "shard-004.tar")
    return uneven


def pattern(shards) -> str:
    return str(shards[0].path.parent / "shard-{000..004}.tar")


@pytest.mark.parametrize(("lanes", "buffer"), [(1, 0), (3, 0), (2, 5), (3, 16)])
def test_a_webdataset_stream_resumes_exactly_at_any_step(shards, lanes, buffer) -> None:
    config = wds(pattern(shards), concurrent_downloads=lanes, shuffle_buffer=buffer, random_sampling=True, seed=4)
    total = sum(len(s.keys) for s in shards)
    for k in (0, 1, 5, 12, total - 1, total):
        everything, state = resume_matches(config, k)
        assert sorted(everything) == sorted(key for s in shards for key in s.keys)
        assert len(json.dumps(state)) <= 4096


def test_an_unseeded_shuffle_resumes_with_the_seed_it_drew(shards) -> None:
    resume_matches(wds(pattern(shards), concurrent_downloads=2, random_sampling=True), 9)


BUCKETS64 = {"crop_and_resize": True, "default_image_size": 64, "downsampling_ratio": 16, "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0}


def batches_resume_exactly(config: dict[str, Any], every: int = 1) -> None:
    """A state after every `every`-th batch resumes the batches exactly."""
    with datago.DatagoClient(config) as client:
        full = [[s.id for s in b.samples] for b in client]
    for k in range(0, len(full), every):
        with datago.DatagoClient(config) as client:
            head = [[s.id for s in client.get_batch().samples] for _ in range(k)]
            state = client.state_dict()
        with datago.DatagoClient(config, state=state) as client:
            assert head + [[s.id for s in b.samples] for b in client] == full, k


def test_webdataset_bucket_batches_resume_exactly(shards) -> None:
    batches_resume_exactly(wds(pattern(shards), concurrent_downloads=2, shuffle_buffer=6, random_sampling=True, seed=1,
                               top={"batch_size": 4, "image_config": BUCKETS64}))


def test_ranks_and_workers_resume_their_own_parts(shards) -> None:
    union = []
    for rank in range(2):
        for worker in range(2):
            config = wds(pattern(shards), rank=rank, world_size=2, random_sampling=True, seed=2,
                         top={"worker_id": worker, "num_workers": 2})
            everything, _ = resume_matches(config, 2)
            union += everything
    assert sorted(union) == sorted(key for s in shards for key in s.keys)


def test_a_webdataset_state_is_refused_for_another_shape_or_order(shards) -> None:
    with datago.DatagoClient(wds(pattern(shards), seed=1, random_sampling=True)) as client:
        take(client, 3)
        state = client.state_dict()
    with pytest.raises(datago.ConfigError, match="same world_size and num_workers"):
        datago.DatagoClient(wds(pattern(shards), seed=1, random_sampling=True, rank=0, world_size=2), state=state)
    with pytest.raises(datago.ConfigError, match="orders samples differently"):
        datago.DatagoClient(wds(pattern(shards), seed=1, random_sampling=True, concurrent_downloads=2), state=state)


def test_resuming_inside_an_http_shard_asks_for_the_rest_with_range(tmp_path: Path) -> None:
    # Without a shuffle buffer a checkpoint is kept every 64 samples: stop
    # past the 64th, inside the first shard.
    shards = make_shards(tmp_path, 2, 90)
    with ShardServer() as server:
        for shard in shards:
            server.add_file(f"/s/{shard.path.name}", shard.path)
        config = wds(server.url("/s/shard-{000..001}.tar"), concurrent_downloads=1)
        everything, state = resume_matches(config, 70)
        assert everything == shards[0].keys + shards[1].keys
        first_shard = server.requests(f"/s/{shards[0].path.name}")
        # The first client read it whole; the resumed one asked for the rest
        # of it, from the checkpoint before the 71st sample.
        assert first_shard[0].range is None and first_shard[-1].range is not None
        offset = int(first_shard[-1].range.removeprefix("bytes=").removesuffix("-"))
        assert 0 < offset < shards[0].path.stat().st_size
        lane = state["levels"][0]["parts"][0]["stream"]["lanes"][0]
        assert lane["shard"] == 0 and lane["offset"] == offset


def test_a_resumed_pass_whose_remaining_shards_all_fail_raises(tmp_path: Path) -> None:
    # A checkpoint is kept every 64 samples: after 140 the state resumes
    # from sample 128, inside the second shard. The first shard is done and
    # is not read again; every shard the resumed pass reads fails.
    shards = make_shards(tmp_path, 3, 70)
    config = wds(str(tmp_path / "shard-{000..002}.tar"), concurrent_downloads=1)
    with datago.DatagoClient(config) as client:
        assert len(take(client, 140)) == 140
        state = client.state_dict()
    assert state["levels"][0]["parts"][0]["stream"]["lanes"][0]["shard"] == 1
    for shard in shards[1:]:
        shard.path.write_bytes(b"<html>not a tar</html>\n" * 200)
    with datago.DatagoClient(config, state=state) as resumed:
        with pytest.raises(datago.SourceError, match="every WebDataset shard left after the resume point failed \\(2\\)"):
            list(resumed)


@pytest.fixture
def dataroom(monkeypatch: pytest.MonkeyPatch) -> Iterator[DataroomServer]:
    with DataroomServer(seed=3) as s:
        s.add_synthetic(37)
        monkeypatch.setenv("DATAROOM_API_URL", s.api_url)
        monkeypatch.setenv("DATAROOM_API_KEY", s.token)
        yield s


def db(**top: Any) -> dict[str, Any]:
    return {"source_config": {"sources": "", "page_size": 10, "require_images": True}, "samples_buffer_size": 4, **top}


def test_a_dataroom_stream_resumes_from_its_keyset(dataroom) -> None:
    expected = [f"img_{i:04d}" for i in range(37)]
    for k in (0, 1, 10, 13, 36, 37):
        everything, state = resume_matches(db(), k)
        assert everything == expected
        part = state["levels"][0]["parts"][0]
        if 0 < k < 37:
            # The page after `after_key`, and how many of its records come
            # first: the position of the next record (ids are img_<index>).
            key = part["after_key"]
            assert (0 if key == "" else int(key.removeprefix("img_")) + 1) + part["in_page"] == k
    # The resumed request asked for the page after the key, not the first page.
    assert any("cursor=img_0029" in r.raw_query for r in dataroom.requests("list"))


def test_a_dataroom_resume_after_a_skipped_record_names_the_right_one(dataroom) -> None:
    dataroom.set_blob_fault("img_0003", "image", BlobFault(status=404))
    everything, _ = resume_matches(db(), 5)
    assert everything == [f"img_{i:04d}" for i in range(37) if i != 3]


def test_dataroom_batches_resume_exactly(dataroom) -> None:
    batches_resume_exactly(db(batch_size=3, image_config=BUCKETS64), every=2)


def test_a_random_dataroom_stream_cannot_resume_mid_epoch(dataroom) -> None:
    config = db()
    config["source_config"]["random_sampling"] = True
    with datago.DatagoClient(config) as client:
        take(client, 2)
        state = client.state_dict()
    with pytest.raises(datago.ConfigError, match="random endpoint has no position"):
        datago.DatagoClient(config, state=state)


def count_or_failure(config: dict[str, Any]) -> int | str:
    with datago.DatagoClient(config) as client:
        count = 0
        try:
            while client.get_sample() is not None:
                count += 1
        except datago.SourceError as error:
            return str(error)
        return count


def test_equal_per_rank_over_uneven_shards_gives_every_rank_the_limit(shards) -> None:
    # Shards of 7, 7, 7, 3 and 3 samples: whole shards per rank, so the two
    # ranks' shares differ (the smaller holds at least 6).
    counts = [count_or_failure(wds(pattern(shards), rank=r, world_size=2, top={"limit": 5, "equal_per_rank": "drop"})) for r in range(2)]
    assert counts == [5, 5]
    # A limit beyond a rank's share: that rank fails rather than end short
    # (its DDP peers would wait for it forever).
    outcomes = [count_or_failure(wds(pattern(shards), rank=r, world_size=2, top={"limit": 20, "equal_per_rank": "drop"})) for r in range(2)]
    failures = [o for o in outcomes if isinstance(o, str)]
    assert failures and all("equal_per_rank" in f and "short of the 20" in f for f in failures)
    assert all(o == 20 for o in outcomes if not isinstance(o, str))
