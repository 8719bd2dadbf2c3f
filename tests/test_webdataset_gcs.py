"""WebDataset `url`s that are Google Cloud Storage JSON API listings
(docs/compatibility.md §7.2): a listing served by tests/shard_server.py on
127.0.0.1 at the JSON API's path, paginated with `nextPageToken`, whose
`mediaLink`s point at shards on the same server."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from shard_server import Fault, ShardServer, delivery_order, make_shards

import datago
from support import drain

LISTING = "/storage/v1/b/bkt/o"
# Tokens as GCS makes them (base64) plus bytes that must be URL-encoded.
TOKENS = ["", "Cg+tok/2==", "tok 3&x=%"]


def wds_config(url: str, **source: Any) -> str:
    top = source.pop("top", {})
    return json.dumps({"source_type": "webdataset", "source_config": {"url": url, **source},
                       "samples_buffer_size": 8, "num_threads": 2, "timeout_s": 60, **top})


def ids_of(config: str) -> list[str]:
    with datago.DatagoClient(config) as client:
        return [s.id for s in drain(client)]


def page(objects: list[dict[str, str]], next_token: str | None) -> bytes:
    body: dict[str, Any] = {"kind": "storage#objects", "items": objects}
    if next_token is not None:
        body["nextPageToken"] = next_token
    return json.dumps(body).encode()


def serve_listing(server: ShardServer, shards, pages_of: list[list[int]], extra: dict[int, list[dict[str, str]]] | None = None,
                  fault: Fault | None = None) -> str:
    """Serves the shards under /s/ and a listing whose page p names the shards
    `pages_of[p]` (plus `extra[p]` objects); returns the listing URL."""
    objects = []
    for shard in shards:
        name = f"train/{shard.path.name}"
        link = server.add(f"/s/{shard.path.name}", shard.path.read_bytes())
        objects.append({"kind": "storage#object", "name": name, "bucket": "bkt", "mediaLink": link + "?alt=media"})
    pages = {}
    for number, indices in enumerate(pages_of):
        following = TOKENS[number + 1] if number + 1 < len(pages_of) else None
        pages[TOKENS[number]] = page([objects[i] for i in indices] + (extra or {}).get(number, []), following)
    return server.add_pages(LISTING, pages, fault) + "?prefix=train%2F"


def test_a_paginated_listing_delivers_every_sample_once(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 5, 3)
    with ShardServer() as server:
        readme = {"name": "train/README.md", "mediaLink": server.add("/s/README.md", b"# not a shard\n")}
        url = serve_listing(server, shards, [[0, 1], [2], [3, 4]], extra={1: [readme]})
        with datago.DatagoClient(wds_config(url, auth_token="sekret", headers={"X-Team": "v"})) as client:
            ids = [s.id for s in drain(client)]
            stats = client.stats()
        listing = server.requests(LISTING)
    # Listing order is read order without random_sampling.
    assert ids == delivery_order([s.keys for s in shards])
    assert stats["shards"]["planned"] == 5 and stats["shards"]["read"] == 5
    tokens = [urllib.parse.parse_qs(r.query).get("pageToken", [""])[-1] for r in listing]
    assert tokens == TOKENS
    assert all(urllib.parse.parse_qs(r.query)["prefix"] == ["train/"] for r in listing)
    # Private buckets need the token on the listing too.
    headers = {k.lower(): v for k, v in listing[0].headers.items()}
    assert headers["authorization"] == "Bearer sekret" and headers["x-team"] == "v"
    # Not a shard's name: skipped (counted and logged at INFO), never fetched.
    assert server.requests("/s/README.md") == []


def test_gzip_shards_and_their_suffixes_are_kept(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2, 2, gzip=True)
    with ShardServer() as server:
        url = serve_listing(server, shards, [[0, 1]])
        assert ids_of(wds_config(url)) == delivery_order([s.keys for s in shards])


@pytest.mark.parametrize("objects", [[], [{"name": "train/a.json", "mediaLink": "http://127.0.0.1:1/a"}]])
def test_a_listing_without_shards_fails_naming_the_url(objects: list[dict[str, str]]) -> None:
    with ShardServer() as server:
        url = server.add_pages(LISTING, {"": page(objects, None)}) + "?prefix=none"
        with pytest.raises(datago.SourceError, match=r"GCS listing '.*/storage/v1/b/bkt/o\?prefix=none' names no shard"):
            ids_of(wds_config(url))


def test_a_403_listing_fails_naming_the_status() -> None:
    with ShardServer() as server:
        url = server.add_pages(LISTING, {"": page([], None)}, Fault(status=403))
        with pytest.raises(datago.SourceError, match=r"GCS listing '.*/storage/v1/b/bkt/o': HTTP status 403"):
            ids_of(wds_config(url))
        assert len(server.requests(LISTING)) == 1  # a 403 is not retried


def test_a_page_that_is_not_json_fails() -> None:
    with ShardServer() as server:
        url = server.add_pages(LISTING, {"": b"<html><body>Sign in</body></html>"})
        with pytest.raises(datago.SourceError, match=r"GCS listing .* page 1 is not a JSON object listing"):
            ids_of(wds_config(url))


def test_a_listing_page_that_fails_midway_fails_the_pass(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2, 1)
    with ShardServer() as server:
        url = serve_listing(server, shards, [[0], [1]])
        server.add_pages(LISTING, {"": page([], TOKENS[1])})  # the second page is gone: 400
        with pytest.raises(datago.SourceError, match=r"HTTP status 400 \(page 2\)"):
            ids_of(wds_config(url))


def test_two_ranks_are_disjoint_and_complete(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 5, 3)
    with ShardServer() as server:
        url = serve_listing(server, shards, [[0, 1], [2], [3, 4]])
        parts = [ids_of(wds_config(url, rank=rank, world_size=2, random_sampling=True, seed=3)) for rank in range(2)]
    assert all(parts), parts
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(k for s in shards for k in s.keys)


def test_a_gs_url_is_refused_with_the_listing_url_to_use() -> None:
    with pytest.raises(datago.ConfigError, match=r"https://storage\.googleapis\.com/storage/v1/b/bkt/o\?prefix=train%2Fshard-"):
        datago.DatagoClient(wds_config("gs://bkt/train/shard-"))


def test_the_constructor_does_not_list() -> None:
    with ShardServer() as server:
        url = server.add_pages(LISTING, {"": page([], None)})
        client = datago.DatagoClient(wds_config(url))
        try:
            assert server.requests() == []
        finally:
            client.close()
