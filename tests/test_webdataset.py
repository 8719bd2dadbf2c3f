"""The WebDataset source (docs/compatibility.md §4.4, §6.2, §7.2) against
shards written at test time: local paths, file:// and HTTP(S) from
tests/shard_server.py on 127.0.0.1, with the faults the source must survive."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from shard_server import Fault, ShardServer, delivery_order, make_shards, sample_members, write_tar

import datago
from support import drain, wait_until


def wds_config(url: str, **source: Any) -> str:
    top = source.pop("top", {})
    return json.dumps({"source_type": "webdataset", "source_config": {"url": url, **source},
                       "samples_buffer_size": 8, "num_threads": 2, "timeout_s": 60, **top})


def ids_of(config: str) -> list[str]:
    with datago.DatagoClient(config) as client:
        return [s.id for s in drain(client)]


def serve(server: ShardServer, shards, faults: dict[int, Fault] | None = None) -> str:
    """Serves every shard under /s/<name>; returns the brace pattern of their URLs."""
    for index, shard in enumerate(shards):
        server.add(f"/s/{shard.path.name}", shard.path.read_bytes(), (faults or {}).get(index))
    suffix = "".join(shards[0].path.suffixes)
    return server.url(f"/s/shard-{{000..{len(shards) - 1:03d}}}{suffix}")


def all_keys(shards, concurrent: int = 8) -> list[str]:
    """Every key, in the order the source delivers them."""
    return delivery_order([s.keys for s in shards], concurrent)


def warnings_of(caplog) -> list[str]:
    datago.logs.flush()
    return [r.getMessage() for r in caplog.records if r.name.startswith("datago") and r.levelno == logging.WARNING]


def test_local_shards_in_order_with_attributes_and_source(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 3, 4)
    pattern = str(tmp_path / "shard-{000..002}.tar")
    with datago.DatagoClient(wds_config(pattern)) as client:
        samples = drain(client)
        stats = client.stats()
    assert [s.id for s in samples] == all_keys(shards)
    first = next(s for s in samples if s.id == "s01_0001")  # seed 10001
    assert first.source == str(shards[1].path)
    assert first.attributes_dict == {"json": json.dumps({"i": 10001}), "txt": "caption 10001", "cls": "1"}
    assert first.image.size == (32, 24)
    assert stats["shards"] == {"planned": 3, "read": 3, "failed": 0, "groups_without_image": 0, "groups_too_large": 0,
                               "cache": None}


def test_file_urls_tar_gz_and_limit(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2, 5, gzip=True)
    pattern = "file://" + str(tmp_path / "shard-{000..001}.tar.gz")
    assert ids_of(wds_config(pattern)) == all_keys(shards)
    assert ids_of(wds_config(pattern, top={"limit": 7})) == all_keys(shards)[:7]


def test_http_shards_every_sample_once(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 4, 3)
    with ShardServer() as server:
        pattern = serve(server, shards)
        assert ids_of(wds_config(pattern)) == all_keys(shards)
        assert sorted(r.path for r in server.requests()) == sorted(f"/s/{s.path.name}" for s in shards)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint_complete_and_fetch_their_share(tmp_path: Path, world_size: int) -> None:
    shards = make_shards(tmp_path, 7, 3)
    sizes = [s.path.stat().st_size for s in shards]
    with ShardServer() as server:
        pattern = serve(server, shards)
        seen: list[str] = []
        for rank in range(world_size):
            before = server.bytes_sent()
            seen += ids_of(wds_config(pattern, rank=rank, world_size=world_size))
            fetched = server.bytes_sent() - before
            assert fetched <= sum(sizes) / world_size + max(sizes), (rank, fetched)
    assert sorted(seen) == sorted(all_keys(shards))


def test_sample_hash_split_is_disjoint_and_complete(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2, 6)
    pattern = str(tmp_path / "shard-{000..001}.tar")
    parts = [ids_of(wds_config(pattern, rank=r, world_size=3, rank_split="sample_hash")) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(all_keys(shards))
    assert all(parts), parts


def test_dataloader_workers_read_each_sample_once(tmp_path: Path) -> None:
    torch_data = pytest.importorskip("torch.utils.data")
    shards = make_shards(tmp_path, 4, 3)
    config = json.loads(wds_config(str(tmp_path / "shard-{000..003}.tar")))
    loader = torch_data.DataLoader(datago.DatagoIterDataset(config), batch_size=None, num_workers=2)
    assert sorted(item["id"] for item in loader) == sorted(all_keys(shards))


def test_a_404_shard_is_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    shards = make_shards(tmp_path, 3, 2)
    with ShardServer() as server, caplog.at_level(logging.WARNING, logger="datago"):
        pattern = serve(server, shards, {1: Fault(status=404)})
        with datago.DatagoClient(wds_config(pattern)) as client:
            ids = [s.id for s in drain(client)]
            stats = client.stats()
        missing = server.url(f"/s/{shards[1].path.name}")
        assert ids == delivery_order([shards[0].keys, [], shards[2].keys])
        assert stats["shards"]["failed"] == 1
        assert any(missing in m and "HTTP status 404" in m for m in warnings_of(caplog))


def test_a_non_tar_http_body_is_skipped(tmp_path: Path, caplog) -> None:
    shards = make_shards(tmp_path, 2, 2)
    with ShardServer() as server, caplog.at_level(logging.WARNING, logger="datago"):
        pattern = serve(server, shards, {0: Fault(body=b"<html><body>Sign in</body></html>\n" * 40)})
        assert ids_of(wds_config(pattern)) == delivery_order([[], shards[1].keys])
        assert any(shards[0].path.name in m and "not a tar" in m for m in warnings_of(caplog))


def test_every_shard_failing_fails_the_pass(tmp_path: Path) -> None:
    with pytest.raises(datago.SourceError, match="every WebDataset shard failed .*missing-0.tar"):
        ids_of(wds_config(str(tmp_path / "missing-{0..1}.tar")))


def test_a_cut_connection_resumes_with_range(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2, 6)
    with ShardServer() as server:
        pattern = serve(server, shards, {0: Fault(cut_after_bytes=9000), 1: Fault(cut_after_bytes=5000, cut_with_reset=True)})
        assert ids_of(wds_config(pattern)) == all_keys(shards)
        records = server.requests(f"/s/{shards[0].path.name}")
        assert [r.range for r in records] == [None, "bytes=9000-"]
        # A reset may discard bytes the client had not read yet: it resumes
        # from what it delivered, which may be the start.
        assert len(server.requests(f"/s/{shards[1].path.name}")) == 2


def test_500_then_success_is_retried(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2, 2)
    with ShardServer() as server:
        pattern = serve(server, shards, {0: Fault(fail_times=2)})
        assert ids_of(wds_config(pattern)) == all_keys(shards)
        assert [r.status for r in server.requests(f"/s/{shards[0].path.name}")] == [500, 500, 200]


def test_a_stall_longer_than_read_timeout_is_recovered(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 1, 6)
    with ShardServer() as server:
        pattern = serve(server, shards, {0: Fault(stall_after_bytes=6000, stall_s=30)})
        started = time.monotonic()
        assert ids_of(wds_config(pattern, read_timeout_s=0.3)) == all_keys(shards)
        assert time.monotonic() - started < 15  # not the 30 s stall
        # The stalled request is logged only when the server stops; the
        # resumed one asked for the rest.
        assert [r.range for r in server.requests(f"/s/{shards[0].path.name}")] == ["bytes=6000-"]


def test_bad_shards_are_skipped_and_counted(tmp_path: Path, caplog) -> None:
    good = make_shards(tmp_path / "good", 1, 3)[0]
    data = good.path.read_bytes()
    (tmp_path / "b-1.tar").write_bytes(b"<html><body>not a tar</body></html>" * 20)
    (tmp_path / "b-2.tar").write_bytes(data[: len(data) // 2])  # truncated: the first samples come through
    write_tar(tmp_path / "b-3.tar", [m for m in sample_members("noimg", 7, with_image=False)])
    (tmp_path / "b-0.tar").write_bytes(data)
    # One shard at a time, so b-0's samples come first, then b-2's.
    config = wds_config(str(tmp_path / "b-{0..3}.tar"), concurrent_downloads=1)
    with caplog.at_level(logging.WARNING, logger="datago"), datago.DatagoClient(config) as client:
        ids = [s.id for s in drain(client)]
        stats = client.stats()
    assert ids[:3] == good.keys and ids[3:] and set(ids[3:]) < set(good.keys)
    assert stats["shards"]["failed"] == 2 and stats["shards"]["read"] == 2
    assert stats["shards"]["groups_without_image"] == 1
    messages = warnings_of(caplog)
    assert any("b-1.tar" in m and "not a tar" in m for m in messages), messages
    assert any("b-2.tar" in m and "Truncated" in m for m in messages), messages
    assert any("'noimg'" in m and "b-3.tar" in m for m in messages), messages


def test_an_undecodable_image_is_counted_with_its_shard_and_key(tmp_path: Path, caplog) -> None:
    members = sample_members("ok", 1) + [("bad.jpg", b"not a jpeg"), ("bad.txt", b"x")]
    write_tar(tmp_path / "m.tar", members)
    with caplog.at_level(logging.ERROR, logger="datago"), datago.DatagoClient(wds_config(str(tmp_path / "m.tar"))) as client:
        ids = [s.id for s in drain(client)]
        stats = client.stats()
    datago.logs.flush()
    assert ids == ["ok"] and stats["failed"] == 1
    assert any(f"{tmp_path / 'm.tar'}#bad" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_additional_images_follow_the_main_image_into_its_bucket(tmp_path: Path) -> None:
    from shard_server import image_bytes

    members = [("a/x.jpg", image_bytes(1, size=(96, 64))), ("a/x.seg.png", image_bytes(2, "PNG", (48, 32))),
               ("a/x.txt", b"t"), ("a/y.jpg", image_bytes(3, size=(64, 96)))]
    write_tar(tmp_path / "m.tar", members)
    image_config = {"crop_and_resize": True, "default_image_size": 64, "downsampling_ratio": 16,
                    "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0}
    with datago.DatagoClient(wds_config(str(tmp_path / "m.tar"), top={"image_config": image_config})) as client:
        x, y = drain(client)
    assert (x.id, y.id) == ("x", "y")
    assert list(x.additional_images) == ["a/x.seg.png"] and y.additional_images == {}
    extra = x.additional_images["a/x.seg.png"]
    assert (extra.width, extra.height) == (x.image.width, x.image.height)
    assert x.image.width > x.image.height  # the 3:2 bucket of the main image


def test_a_broken_additional_image_fails_its_sample(tmp_path: Path) -> None:
    from shard_server import image_bytes

    write_tar(tmp_path / "m.tar", [("x.jpg", image_bytes(1)), ("x.png", b"broken"), ("y.jpg", image_bytes(2))])
    with datago.DatagoClient(wds_config(str(tmp_path / "m.tar"))) as client:
        assert [s.id for s in drain(client)] == ["y"]
        assert client.stats()["failed"] == 1


def test_headers_and_auth_token_are_sent(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 1, 1)
    with ShardServer() as server:
        pattern = serve(server, shards)
        ids_of(wds_config(pattern, auth_token="sekret", headers={"X-Extra": "yes"}))
        headers = {k.lower(): v for k, v in server.requests()[0].headers.items()}
        assert headers["authorization"] == "Bearer sekret" and headers["x-extra"] == "yes"


def test_https_needs_the_ca_bundle(tmp_path: Path) -> None:
    pytest.importorskip("trustme")
    shards = make_shards(tmp_path, 2, 2)
    with ShardServer(tls=True) as server:
        pattern = serve(server, shards)
        assert ids_of(wds_config(pattern, ca_bundle=str(server.ca_path))) == all_keys(shards)
        with pytest.raises(datago.SourceError, match="every WebDataset shard failed"):
            ids_of(wds_config(pattern))


@pytest.mark.parametrize("source, message", [
    ({"url": "s-{3..1}.tar"}, "source_config.url: cannot be expanded"),
    ({"url": "a.tar", "world_size": 2}, "source_config.rank: missing"),
    ({"url": "a.tar", "shuffle_buffer": 70000}, "source_config.shuffle_buffer: 70000 is above the maximum"),
    ({"url": "a.tar", "read_timeout_s": "5"}, "source_config.read_timeout_s: expected a number"),
])
def test_bad_configs_raise_at_open(source: dict[str, Any], message: str) -> None:
    with pytest.raises(datago.ConfigError, match=message):
        datago.DatagoClient(json.dumps({"source_type": "webdataset", "source_config": source}))


@pytest.mark.parametrize("concurrent", [1, 2, 3, 8])
def test_concurrent_downloads_interleave_lanes_in_a_fixed_order(tmp_path: Path, concurrent: int) -> None:
    # Shards of different lengths: lanes end at different times.
    shards = [make_shards(tmp_path, 5, 1)[0]] + make_shards(tmp_path / "more", 4, 3, name=lambda i: f"m-{i}")
    for shard in shards[1:]:
        shard.path.rename(tmp_path / shard.path.name)
    names = ",".join(s.path.name.removesuffix(".tar") for s in shards)
    config = wds_config(str(tmp_path / f"{{{names}}}.tar"), concurrent_downloads=concurrent)
    expected = delivery_order([s.keys for s in shards], concurrent)
    assert ids_of(config) == expected
    assert ids_of(config) == expected


def test_several_http_shards_stream_at_once(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 4, 4)
    with ShardServer() as server:
        # Each body pauses part-way: one lane at a time would reuse a single
        # kept-alive connection; four lanes hold four.
        stall = Fault(stall_after_bytes=2048, stall_s=0.3)
        pattern = serve(server, shards, dict.fromkeys(range(4), stall))
        assert ids_of(wds_config(pattern, concurrent_downloads=4, read_timeout_s=10)) == all_keys(shards, 4)
        assert len({r.client_port for r in server.requests()}) == 4
        assert len(server.requests()) == 4  # none retried


def test_stop_interrupts_a_stalled_http_read(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2, 4)
    with ShardServer() as server:
        # Shard 1 stalls far longer than the test may take; the read timeout
        # is longer still, so only `stop` can end that read.
        pattern = serve(server, shards, {1: Fault(stall_after_bytes=1024, stall_s=120)})
        client = datago.DatagoClient(wds_config(pattern, concurrent_downloads=2, read_timeout_s=300))
        first = client.get_sample()
        assert first is not None
        del first
        server.wait_until(lambda: any(r.path.endswith(shards[0].path.name) for r in server.requests()), what="shard 0 served")
        client.stop()
        client.close()
        # Within seconds, not the stall's 120 s nor the read timeout's 300 s.
        wait_until(lambda: datago.live_cleanup_threads() == 0, timeout_s=20, what="the stopped reader to end")


def test_a_pass_stopped_at_its_limit_ends_within_the_grace_period(tmp_path: Path, caplog) -> None:
    # Stopping joins the lanes and the HTTP watchdog thread; the watchdog's
    # tick used to sleep out its period and outlast the stop's grace period.
    shards = make_shards(tmp_path, 4, 6)
    with ShardServer() as server, caplog.at_level(logging.WARNING, logger="datago"):
        pattern = serve(server, shards)
        for _ in range(3):
            with datago.DatagoClient(wds_config(pattern, top={"limit": 5})) as client:
                assert len(drain(client)) == 5
        wait_until(lambda: datago.live_cleanup_threads() == 0, what="the stopped passes to end")
        assert not [m for m in warnings_of(caplog) if "still busy" in m]
