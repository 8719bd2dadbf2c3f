"""The WebDataset shard cache (`cache_dir`, `cache_max_bytes`; docs/design.md
§1, "The shard cache") against tests/shard_server.py on 127.0.0.1: later epochs and clients
read the cache instead of the network, the bound holds, damaged entries are
found and fetched again, failed shards and local shards leave nothing."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

import pytest
from shard_server import Fault, ShardServer, delivery_order, make_shards

import datago
from support import drain, run_python, wait_until

HEADER_BYTES = 32


def cache_config(url: str, cache_dir: Path, **source: Any) -> str:
    top = source.pop("top", {})
    return json.dumps({"source_type": "webdataset",
                       "source_config": {"url": url, "cache_dir": str(cache_dir), **source},
                       "samples_buffer_size": 8, "num_threads": 2, "timeout_s": 60, **top})


def serve(server: ShardServer, shards, faults: dict[int, Fault] | None = None) -> str:
    """Serves every shard under /s/<name>; returns the brace pattern of their URLs."""
    for index, shard in enumerate(shards):
        server.add(f"/s/{shard.path.name}", shard.path.read_bytes(), (faults or {}).get(index))
    suffix = "".join(shards[0].path.suffixes)
    return server.url(f"/s/shard-{{000..{len(shards) - 1:03d}}}{suffix}")


def all_keys(shards) -> list[str]:
    """Every key, in the order the source delivers them."""
    return delivery_order([s.keys for s in shards])


def entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.suffix == ".shard")


def temp_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.name.startswith(".tmp-"))


def entry_url(entry: Path) -> str:
    data = entry.read_bytes()
    (url_len,) = struct.unpack_from("<I", data, 8)
    return data[HEADER_BYTES:HEADER_BYTES + url_len].decode()


def entry_bytes(url: str, shard: Path) -> int:
    return HEADER_BYTES + len(url.encode()) + shard.stat().st_size


def one_pass(client: datago.DatagoClient) -> tuple[list[str], dict[str, Any]]:
    ids = [s.id for s in drain(client)]
    return ids, client.stats()["shards"]["cache"]


def messages_of(caplog, level: int) -> list[str]:
    datago.logs.flush()
    return [r.getMessage() for r in caplog.records if r.name.startswith("datago") and r.levelno == level]


@pytest.mark.parametrize("gzip", [False, True])
def test_later_epochs_and_clients_read_the_cache_not_the_network(tmp_path: Path, gzip: bool) -> None:
    shards = make_shards(tmp_path / "shards", 3, 4, gzip=gzip)
    cache_dir = tmp_path / "cache" / "nested"  # made when the pass starts
    with ShardServer() as server:
        pattern = serve(server, shards)
        config = cache_config(pattern, cache_dir)
        with datago.DatagoClient(config) as client:
            assert not cache_dir.exists()  # the constructor does no I/O
            ids, cache = one_pass(client)
            assert ids == all_keys(shards)
            assert (cache["hits"], cache["misses"], cache["corrupt"]) == (0, 3, 0)
            assert len(server.requests()) == 3
            urls = sorted(server.url(f"/s/{s.path.name}") for s in shards)
            assert sorted(entry_url(e) for e in entries(cache_dir)) == urls
            assert cache["bytes_written"] == sum(e.stat().st_size for e in entries(cache_dir))
            assert temp_files(cache_dir) == []

            requests, sent = len(server.requests()), server.bytes_sent()
            client.start()
            ids, cache = one_pass(client)
            assert ids == all_keys(shards)
            assert (cache["hits"], cache["misses"], cache["bytes_written"]) == (3, 0, 0)
        with datago.DatagoClient(config) as second:
            ids, cache = one_pass(second)
            assert ids == all_keys(shards)
            assert cache["hits"] == 3
        assert (len(server.requests()), server.bytes_sent()) == (requests, sent)


def test_eviction_keeps_the_cache_within_its_bound(tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "shards", 4, 3)
    cache_dir = tmp_path / "cache"
    with ShardServer() as server:
        pattern = serve(server, shards)
        largest = max(entry_bytes(server.url(f"/s/{s.path.name}"), s.path) for s in shards)
        bound = 2 * largest + largest // 2
        # One shard at a time, so the least recently used entry is known.
        config = cache_config(pattern, cache_dir, cache_max_bytes=bound, concurrent_downloads=1)
        with datago.DatagoClient(config) as client:
            # Epoch 0 fills two entries and evicts for the next two; read in
            # the same order, epoch 1 misses every shard and evicts four.
            for evictions in (2, 4):
                ids, cache = one_pass(client)
                assert ids == delivery_order([s.keys for s in shards], 1)
                kept = entries(cache_dir)
                assert sum(e.stat().st_size for e in kept) <= bound
                assert len(kept) == 2
                assert (cache["evictions"], cache["misses"], cache["too_large"]) == (evictions, 4, 0)
                client.start()
        # Read in order, the last two shards are the ones kept.
        last_two = [server.url(f"/s/{s.path.name}") for s in shards[2:]]
        assert sorted(entry_url(e) for e in entries(cache_dir)) == sorted(last_two)


def test_a_shard_larger_than_the_bound_is_streamed_not_cached(tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "shards", 2, 3)
    cache_dir = tmp_path / "cache"
    with ShardServer() as server:
        pattern = serve(server, shards)
        config = cache_config(pattern, cache_dir, cache_max_bytes=1000)
        # INFO lines need the level set before the first loader of a
        # process: a fresh interpreter.
        result = run_python(f"""
            import json, datago
            datago.initialize_logging("info")
            with datago.DatagoClient({config!r}) as client:
                ids = [s.id for s in client]
                print(json.dumps({{"ids": ids, "cache": client.stats()["shards"]["cache"]}}))
        """)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["ids"] == all_keys(shards)
    assert out["cache"]["too_large"] == 2 and out["cache"]["bytes_written"] == 0
    assert list(cache_dir.iterdir()) == []
    assert result.stderr.count("larger than cache_max_bytes (1000): streamed, not cached") == 1, result.stderr


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_entry_is_detected_and_fetched_again(tmp_path: Path, caplog, damage: str) -> None:
    shards = make_shards(tmp_path / "shards", 3, 4)
    cache_dir = tmp_path / "cache"
    with ShardServer() as server, caplog.at_level(logging.WARNING, logger="datago"):
        pattern = serve(server, shards)
        config = cache_config(pattern, cache_dir)
        with datago.DatagoClient(config) as client:
            assert one_pass(client)[0] == all_keys(shards)
        victim = entries(cache_dir)[0]
        url = entry_url(victim)
        data = bytearray(victim.read_bytes())
        if damage == "flip":
            data[len(data) - 700] ^= 0x01
        else:
            del data[-512:]
        victim.write_bytes(bytes(data))
        before = len(server.requests())
        with datago.DatagoClient(config) as client:
            ids, cache = one_pass(client)
        assert ids == all_keys(shards)
        assert (cache["hits"], cache["misses"], cache["corrupt"]) == (2, 1, 1)
        refetched = server.requests()[before:]
        assert [server.url(r.path) for r in refetched] == [url]
        assert any(url in m and "corrupt" in m for m in messages_of(caplog, logging.WARNING))
        # Fetched again, it was stored again, whole.
        shard = next(s for s in shards if url.endswith(s.path.name))
        assert entry_url(victim) == url and victim.stat().st_size == entry_bytes(url, shard.path)


def test_failed_shards_leave_no_entry_and_are_fetched_whole_later(tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "shards", 3, 6)
    cache_dir = tmp_path / "cache"
    # Shard 1 is cut after 3000 bytes on every request and its server
    # ignores Range, so it cannot be resumed; shard 2 is missing.
    cut = Fault(cut_after_bytes=3000, cut_times=1000, ignore_range=True)
    with ShardServer() as server:
        pattern = serve(server, shards, {1: cut, 2: Fault(status=404)})
        config = cache_config(pattern, cache_dir, concurrent_downloads=1)
        with datago.DatagoClient(config) as client:
            ids, _ = one_pass(client)
            assert client.stats()["shards"]["failed"] == 2
        assert ids[:6] == shards[0].keys and set(ids[6:]) <= set(shards[1].keys)
        assert [entry_url(e) for e in entries(cache_dir)] == [server.url(f"/s/{shards[0].path.name}")]
        assert temp_files(cache_dir) == []

        for shard in shards[1:]:
            server.set_fault(f"/s/{shard.path.name}", Fault())
        with datago.DatagoClient(config) as client:
            ids, cache = one_pass(client)
        assert ids == delivery_order([s.keys for s in shards], 1)
        assert (cache["hits"], cache["misses"]) == (1, 2)
        assert len(entries(cache_dir)) == 3


def test_a_pass_stopped_mid_shard_leaves_no_entry(tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "shards", 1, 200)
    cache_dir = tmp_path / "cache"
    with ShardServer() as server:
        pattern = serve(server, shards)
        config = cache_config(pattern, cache_dir, top={"prefetch_buffer_size": 2})
        with datago.DatagoClient(config) as client:
            assert client.get_sample() is not None
            # The reader is inside the shard, teeing it into a temporary file.
            assert client.stats()["shards"]["read"] == 0
            assert len(temp_files(cache_dir)) == 1
        # close() does not wait for the reader: it removes the file as it ends.
        wait_until(lambda: list(cache_dir.iterdir()) == [], what="the temporary file to go")
        assert entries(cache_dir) == []


def test_local_shards_are_read_in_place_never_copied(tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "shards", 2, 3)
    cache_dir = tmp_path / "cache"
    for pattern in (str(tmp_path / "shards" / "shard-{000..001}.tar"),
                    "file://" + str(tmp_path / "shards" / "shard-{000..001}.tar")):
        with datago.DatagoClient(cache_config(pattern, cache_dir)) as client:
            ids, cache = one_pass(client)
        assert ids == all_keys(shards)
        assert (cache["hits"], cache["misses"], cache["bytes_written"]) == (0, 0, 0)
        assert list(cache_dir.iterdir()) == []


def test_dataloader_workers_share_one_cache(tmp_path: Path) -> None:
    torch_data = pytest.importorskip("torch.utils.data")
    shards = make_shards(tmp_path / "shards", 4, 3)
    cache_dir = tmp_path / "cache"
    with ShardServer() as server:
        pattern = serve(server, shards)
        config = json.loads(cache_config(pattern, cache_dir))
        loader = torch_data.DataLoader(datago.DatagoIterDataset(config), batch_size=None, num_workers=2)
        assert sorted(item["id"] for item in loader) == sorted(all_keys(shards))
        assert len(server.requests()) == 4 and len(entries(cache_dir)) == 4
        assert sorted(item["id"] for item in loader) == sorted(all_keys(shards))
        assert len(server.requests()) == 4
    assert temp_files(cache_dir) == []


def test_an_unusable_cache_dir_fails_the_pass_not_the_constructor(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    shards = make_shards(tmp_path / "shards", 1, 1)
    with ShardServer() as server:
        pattern = serve(server, shards)
        client = datago.DatagoClient(cache_config(pattern, tmp_path / "file" / "cache"))
        with client, pytest.raises(datago.SourceError, match="source_config.cache_dir: cannot create '.*file/cache'"):
            client.get_sample()
        assert server.requests() == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, a folder no one may create files in")
def test_a_cache_dir_without_write_access_fails_the_pass(tmp_path: Path) -> None:
    # /proc refuses new files even to root, who may write anywhere else.
    shards = make_shards(tmp_path / "shards", 1, 1)
    with pytest.raises(datago.SourceError, match="source_config.cache_dir: cannot write a file in '/proc'"):
        with datago.DatagoClient(cache_config(str(shards[0].path), Path("/proc"))) as client:
            drain(client)


@pytest.mark.parametrize("source, message", [
    ({"cache_dir": "c", "cache_max_bytes": 0}, "source_config.cache_max_bytes: must be greater than 0"),
    ({"cache_dir": "c", "cache_max_bytes": -5}, "source_config.cache_max_bytes: -5 is out of range"),
    ({"cache_dir": "c", "cache_max_bytes": 1.5}, "source_config.cache_max_bytes: expected a non-negative integer"),
    ({"cache_max_bytes": 10}, "source_config.cache_max_bytes: set without cache_dir"),
    ({"cache_dir": ""}, "source_config.cache_dir: expected a folder path"),
    ({"cache_dir": 7}, "source_config.cache_dir: expected a string"),
])
def test_bad_cache_configs_raise_at_open(source: dict[str, Any], message: str) -> None:
    with pytest.raises(datago.ConfigError, match=message):
        datago.DatagoClient(json.dumps({"source_type": "webdataset", "source_config": {"url": "a.tar", **source}}))
