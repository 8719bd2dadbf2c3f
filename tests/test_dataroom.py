"""The Dataroom (`db`) source against the protocol-faithful test server
(tests/dataroom_server.py): paging, filters as the server receives them,
partitions, masks and latents, and every fault the issue lists."""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from dataroom_server import INACTIVE_TOKEN, BlobFault, DataroomServer, partition_of

import datago

FIELDS_DEFAULT = "id,source,attributes,height,width,tags,duplicate_state"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[DataroomServer]:
    with DataroomServer(seed=3) as s:
        s.add_synthetic(25)
        # Without its trailing slash: datago adds it.
        monkeypatch.setenv("DATAROOM_API_URL", s.api_url.rstrip("/"))
        monkeypatch.setenv("DATAROOM_API_KEY", s.token)
        yield s


def db_config(limit: int | None = None, **source: Any) -> str:
    config: dict[str, Any] = {"source_config": {"sources": "", "page_size": 10, **source}, "samples_buffer_size": 8}
    if limit is not None:
        config["limit"] = limit
    return json.dumps(config)


def read_all(config: str) -> list[datago.Sample]:
    client = datago.DatagoClient(config)
    try:
        samples = []
        while (sample := client.get_sample()) is not None:
            samples.append(sample)
        return samples
    finally:
        client.stop()


def ids(samples: list[datago.Sample]) -> list[str]:
    return [s.id for s in samples]


def test_the_seeds_example(server: DataroomServer) -> None:
    server.add_synthetic(300, start=25)
    config = {"source_config": {"sources": "", "page_size": 500, "rank": 0, "world_size": 1},
              "limit": 200, "samples_buffer_size": 32}
    samples = read_all(json.dumps(config))
    assert ids(samples) == [f"img_{i:04d}" for i in range(200)]
    first = server.requests("list")[0]
    assert first.path == "/api/images/"
    assert first.raw_query == "fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Cduplicate_state&page_size=500"
    assert first.header("Authorization") == f"Token {server.token}"


def test_paging_follows_next_to_the_final_empty_page(server: DataroomServer) -> None:
    samples = read_all(db_config(require_images=True))
    assert ids(samples) == [f"img_{i:04d}" for i in range(25)]
    pages = server.requests("list")
    # 10, 10, 5, then the empty page: ceil(25 / 10) + 1 requests.
    assert len(pages) == 4
    assert [p.params.get("cursor") for p in pages] == [None, "img_0009", "img_0019", "img_0024"]
    assert all(p.header("Authorization") == f"Token {server.token}" for p in pages)
    blobs = server.requests("blob")
    assert len(blobs) == 25 and all(b.header("Authorization") is None for b in blobs)
    record = server.record("img_0003")
    assert samples[3].source == record.source
    assert json.loads(samples[3].attributes) == record.attributes
    assert samples[3].tags == record.tags
    assert samples[2].duplicate_state == -1 and samples[1].duplicate_state == 2 and samples[3].duplicate_state == 1
    assert samples[3].image.width == record.width and samples[3].image.height == record.height


def test_paging_with_a_limit(server: DataroomServer) -> None:
    samples = read_all(db_config(limit=12))
    assert ids(samples) == [f"img_{i:04d}" for i in range(12)]


def test_without_require_images_no_blob_is_read(server: DataroomServer) -> None:
    samples = read_all(db_config())
    assert len(samples) == 25 and samples[0].image.width == 0
    assert server.requests("blob") == []


@pytest.mark.parametrize(("key", "value", "param", "sent"), [
    ("sources", "SRC_A", "sources", "SRC_A"),
    ("sources_ne", "SRC_A", "sources__ne", "SRC_A"),
    ("tags", "t1,t2", "tags", "t1,t2"),
    ("tags_all", "t1", "tags__all", "t1"),
    ("tags_ne", "t1", "tags__ne", "t1"),
    ("tags_ne_all", "t1,t2", "tags__ne_all", "t1,t2"),
    ("tags_empty", "true", "tags__empty", "true"),
    ("has_attributes", "caption", "has_attributes", "caption"),
    ("lacks_attributes", "caption", "lacks_attributes", "caption"),
    ("has_masks", "segmentation_mask", "has_masks", "segmentation_mask"),
    ("lacks_masks", "segmentation_mask", "lacks_masks", "segmentation_mask"),
    ("has_latents", "latent_vae", "has_latents", "latent_vae"),
    ("lacks_latents", "latent_vae", "lacks_latents", "latent_vae"),
    ("min_short_edge", 40, "short_edge__gte", "40"),
    ("max_short_edge", 40, "short_edge__lte", "40"),
    ("min_pixel_count", 3000, "pixel_count__gte", "3000"),
    ("max_pixel_count", 3000, "pixel_count__lte", "3000"),
    ("duplicate_state", 1, "duplicate_state", "1"),
    ("attributes", "score__gte:0.5", "attributes", "score__gte:0.5"),
])
def test_each_filter_reaches_the_server(server: DataroomServer, key: str, value: Any, param: str, sent: str) -> None:
    samples = read_all(db_config(**{key: value}))
    first = server.requests("list")[0]
    assert first.params[param] == sent
    # The server's own count of matches: every one delivered, in order.
    assert ids(samples) == _matching_ids(server, first.raw_query)


def _matching_ids(server: DataroomServer, raw_query: str) -> list[str]:
    """The ids the server lists for the same query, in one big page."""
    query = [(k, v) for k, v in urllib.parse.parse_qsl(raw_query) if k != "page_size"]
    url = server.url("images/?" + urllib.parse.urlencode([*query, ("page_size", "2000")]))
    request = urllib.request.Request(url, headers={"Authorization": f"Token {server.token}"})
    with urllib.request.urlopen(request) as response:
        return [r["id"] for r in json.load(response)["results"]]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint_and_complete(server: DataroomServer, world_size: int) -> None:
    seen: list[str] = []
    for rank in range(world_size):
        got = ids(read_all(db_config(rank=rank, world_size=world_size)))
        assert all(partition_of(i, world_size) == rank for i in got)
        seen += got
    assert sorted(seen) == [r.id for r in server.records()]
    params = [r.params for r in server.requests("list")]
    assert all(p["partitions_count"] == str(world_size) for p in params)


def test_masks_and_latents_are_byte_exact_and_aligned(server: DataroomServer) -> None:
    config = json.loads(db_config(require_images=True, has_masks="segmentation_mask", has_latents="latent_vae,masked_image",
                                    require_embeddings=True))
    config["image_config"] = {"crop_and_resize": True, "default_image_size": 64, "downsampling_ratio": 16,
                              "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0}
    samples = read_all(json.dumps(config))
    assert samples
    for sample in samples:
        record = server.record(sample.id)
        assert set(sample.masks) == {"segmentation_mask"}
        mask = sample.masks["segmentation_mask"]
        assert (mask.width, mask.height) == (sample.image.width, sample.image.height)
        assert mask.channels == 1
        raw = sample.latents["latent_vae"]
        assert raw.data == server.blob(record.latents["latent_vae"])
        if "masked_image" in record.latents:
            extra = sample.additional_images["masked_image"]
            assert (extra.width, extra.height) == (sample.image.width, sample.image.height)
        if record.coca_embedding is not None:
            assert np.allclose(sample.coca_embedding, record.coca_embedding)


@pytest.mark.parametrize("token", ["0" * 40, INACTIVE_TOKEN])
def test_auth_failure_raises(server: DataroomServer, monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("DATAROOM_API_KEY", token)
    client = datago.DatagoClient(db_config())
    with pytest.raises(datago.AuthError) as raised:
        client.get_sample()
    assert isinstance(raised.value, datago.SourceError)
    assert "/api/images/" in str(raised.value)
    assert ("Invalid token." if token != INACTIVE_TOKEN else "User inactive or deleted.") in str(raised.value)
    assert len(server.requests("list")) == 1


def test_a_bad_filter_is_a_config_error_with_the_servers_words(server: DataroomServer) -> None:
    client = datago.DatagoClient(db_config(tags="no_such_tag"))
    with pytest.raises(datago.ConfigError, match="One or more tags do not exist: 'no_such_tag'"):
        client.get_sample()


def test_transient_500s_are_retried_and_nothing_is_lost(server: DataroomServer) -> None:
    server.fail_pages(500, first=2, times=4)
    samples = read_all(db_config())
    assert ids(samples) == [f"img_{i:04d}" for i in range(25)]


def test_429_with_retry_after_is_honoured_and_nothing_is_lost(server: DataroomServer) -> None:
    server.fail_pages(429, first=2, times=2, retry_after="0")
    samples = read_all(db_config())
    assert ids(samples) == [f"img_{i:04d}" for i in range(25)]
    assert [p.status for p in server.requests("list")][:4] == [200, 429, 429, 200]


def test_a_truncated_image_blob_fails_only_its_sample(server: DataroomServer) -> None:
    server.set_blob_fault("img_0005", "image", BlobFault(truncate_to=600))
    client = datago.DatagoClient(db_config(require_images=True))
    got = []
    while (sample := client.get_sample()) is not None:
        got.append(sample.id)
    stats = client.stats()
    client.stop()
    assert got == [f"img_{i:04d}" for i in range(25) if i != 5]
    assert stats["failed"] == 1 and sum(stats["errors"].values()) == 1


def test_a_non_json_page_is_asked_again(server: DataroomServer) -> None:
    server.fail_pages(200, first=2, times=1, body=b"<html>oops</html>", content_type="text/html")
    client = datago.DatagoClient(db_config())
    got = []
    while (sample := client.get_sample()) is not None:
        got.append(sample.id)
    assert got == [f"img_{i:04d}" for i in range(25)]
    assert client.stats()["dataroom"]["pages_malformed"] == 1


def test_an_expired_blob_url_is_refreshed(server: DataroomServer) -> None:
    # S3's answer to an expired signature, once: the fresh URL works.
    server.set_blob_fault("img_0004", "image", BlobFault(status=403, times=1))
    samples = read_all(db_config(require_images=True))
    assert ids(samples) == [f"img_{i:04d}" for i in range(25)]
    records = server.requests("record")
    assert [r.path for r in records] == ["/api/images/img_0004/"]
    assert records[0].params["fields"] == "id,source,attributes,height,width,tags,image_direct_url,duplicate_state"


def test_a_missing_blob_skips_its_record_and_is_counted(server: DataroomServer, caplog: pytest.LogCaptureFixture) -> None:
    server.set_blob_fault("img_0007", "image", BlobFault(status=404))
    client = datago.DatagoClient(db_config(require_images=True))
    got = []
    while (sample := client.get_sample()) is not None:
        got.append(sample.id)
    assert got == [f"img_{i:04d}" for i in range(25) if i != 7]
    assert client.stats()["dataroom"]["blobs_missing"] == 1
    datago.logs.flush()
    assert any("img_0007" in r.getMessage() and "404" in r.getMessage() for r in caplog.records)


def test_stop_during_a_slow_blob_returns_promptly(server: DataroomServer) -> None:
    server.set_blob_fault("img_0002", "image", BlobFault(delay_s=3600))
    client = datago.DatagoClient(db_config(require_images=True))
    assert client.get_sample() is not None
    server.wait_for_requests("blob", 3)
    stopped = threading.Event()

    def stop() -> None:
        client.stop()
        stopped.set()

    thread = threading.Thread(target=stop)
    thread.start()
    # The server's slow blob waits an hour: only an interrupted read lets stop end.
    assert stopped.wait(60)
    thread.join()
    assert datago.live_cleanup_threads() >= 0


def test_the_cursor_is_a_keyset_position(server: DataroomServer) -> None:
    client = datago.DatagoClient(db_config())
    for _ in range(13):
        client.get_sample()
    cursor = client.stats()["cursor"]
    assert cursor["after_key"] == "img_0009" and cursor["in_page"] == 3
    client.stop()


def test_random_sampling_repeats_and_drops_seen_ids(server: DataroomServer) -> None:
    samples = read_all(db_config(random_sampling=True))
    got = ids(samples)
    assert len(got) == len(set(got)) and set(got) <= {r.id for r in server.records()}
    assert len(server.requests("random")) >= 2


def test_bench_reads_the_db_source(server: DataroomServer, capsys: pytest.CaptureFixture[str]) -> None:
    from datago.cli import main

    assert main(["bench", "--source", "db", "--page-size", "10", "--limit", "20", "--passes", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples_per_pass"] == 20, result
