"""Proves tests/dataroom_server.py against the Dataroom protocol with Python's
own HTTP client, before the native `db` source relies on it: authentication,
`page_size`, `fields`, keyset paging, every filter, partitions and the routing
hash, the random endpoint, records, presigned blobs, faults and the log.

Needs no native library; outside the full suite run it with
`pytest --noconftest tests/test_dataroom_server.py` (tests/conftest.py imports
datago for its leak check).
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from dataroom_server import (
    AUTH_ERRORS,
    DEFAULT_FIELDS,
    INACTIVE_TOKEN,
    NO_PERMISSION_TOKEN,
    TOKEN,
    BlobFault,
    DataroomServer,
    Record,
    murmur3_x86_32,
    partition_of,
    routing_hash,
    shard_of,
    synthetic_record,
)
from PIL import Image

ALL_FIELDS = "id,source,attributes,height,width,tags,image_direct_url,latents,duplicate_state,coca_embedding"


@pytest.fixture(scope="module")
def synthetic_30() -> list[dict[str, Any]]:
    """The arguments of 30 synthetic records, made once (Pillow encodes)."""
    return [synthetic_record(i, seed=7) for i in range(30)]


@pytest.fixture
def server(synthetic_30: list[dict[str, Any]]):
    with DataroomServer(seed=3) as running:
        for kwargs in synthetic_30:
            running.add_image(**kwargs)
        yield running


@pytest.fixture
def empty_server():
    with DataroomServer(seed=3) as running:
        yield running


def request(server: DataroomServer, target: str, *, token: str | bytes | None = TOKEN, headers: dict[str, Any] | None = None,
            method: str = "GET", timeout_s: float = 10.0) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request; `target` is an absolute URL or a path under the API root.
    `token` None sends no Authorization header."""
    url = target if target.startswith("http") else server.url(target)
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout_s)
    try:
        all_headers = dict(headers or {})
        connection.putrequest(method, parsed.path + ("?" + parsed.query if parsed.query else ""),
                              skip_host="Host" in all_headers, skip_accept_encoding=True)
        if token is not None:
            all_headers.setdefault("Authorization", token if isinstance(token, bytes) else f"Token {token}")
        for name, value in all_headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def api(server: DataroomServer, target: str, **kwargs: Any) -> tuple[int, Any]:
    status, headers, body = request(server, target, **kwargs)
    assert headers["Content-Type"] == "application/json", body
    return status, json.loads(body)


def ok(server: DataroomServer, target: str, **kwargs: Any) -> Any:
    status, body = api(server, target, **kwargs)
    assert status == 200, body
    return body


def list_all(server: DataroomServer, query: str) -> list[dict[str, Any]]:
    """Follows `next` from `images/?<query>` to the final empty page."""
    results: list[dict[str, Any]] = []
    url: str | None = server.url(f"images/?{query}")
    while url is not None:
        page = ok(server, url)
        results += page["results"]
        url = page["next"]
        assert len(results) <= len(server.records()) + 1
    return results


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in records]


def expected_ids(server: DataroomServer, predicate: Callable[[Record], bool]) -> list[str]:
    return [r.id for r in server.records() if predicate(r)]


# -- routing hash ------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_id", "signed", "mod768", "shard", "n2", "n3", "n48"),
    [("hello", -675079799, 649, 40, 0, 1, 40), ("a", 1867108634, 26, 1, 1, 1, 1), ("0", 384918240, 480, 30, 0, 0, 30),
     ("abc", 1118836419, 195, 12, 0, 0, 12), ("img_0000", -594619486, 674, 42, 0, 0, 42),
     ("img_0001", -1241154886, 698, 43, 1, 1, 43), ("img_0002", 159752104, 424, 26, 0, 2, 26),
     ("img_0003", -269434038, 330, 20, 0, 2, 20), ("Z-9_x", -1684629600, 672, 42, 0, 0, 42)],
)
def test_routing_hash_vectors(image_id: str, signed: int, mod768: int, shard: int, n2: int, n3: int, n48: int) -> None:
    assert routing_hash(image_id) == signed
    assert signed % 768 == mod768
    assert shard_of(image_id) == shard
    assert (partition_of(image_id, 2), partition_of(image_id, 3), partition_of(image_id, 48)) == (n2, n3, n48)


def test_murmur3_check_values() -> None:
    assert murmur3_x86_32("hello".encode("utf-16-le")) == 0xD7C31989
    assert murmur3_x86_32("hell".encode("utf-16-le")) == 0x5A0CB7C3
    assert murmur3_x86_32(b"") == 0
    assert murmur3_x86_32(b"hello") == 0x248BFA47  # the classic UTF-8 vector


# -- authentication ----------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [(None, "missing"), ("Bearer " + TOKEN, "missing"), ("Basic dXNlcjpwYXNz", "missing"), ("Token", "empty"),
     ("Token ", "empty"), ("Token a b", "spaces"), ("Token " + "f" * 40, "unknown"), (b"Token \xff\xfe", "undecodable"),
     ("Token " + NO_PERMISSION_TOKEN, "permission"), ("Token " + INACTIVE_TOKEN, "inactive")],
)
def test_auth_failures_are_403_with_drf_details(server: DataroomServer, authorization: str | bytes | None, detail: str) -> None:
    # A bad parameter too: authentication runs first.
    status, body = api(server, "images/?page_size=0&partition=1", token=None,
                       headers={} if authorization is None else {"Authorization": authorization})
    assert (status, body) == (403, {"detail": AUTH_ERRORS[detail]})


@pytest.mark.parametrize("keyword", ["Token", "token", "TOKEN", "tOkEn"])
def test_auth_keyword_is_case_insensitive(server: DataroomServer, keyword: str) -> None:
    status, _ = api(server, "images/?page_size=1", token=None, headers={"Authorization": f"{keyword} {TOKEN}"})
    assert status == 200


@pytest.mark.parametrize("path", ["images/", "images/random/", "images/count/", "images/img_0001/", "images/nope/x/", "other/"])
def test_auth_on_every_api_route(server: DataroomServer, path: str) -> None:
    status, body = api(server, path, token="0" * 40)
    assert (status, body) == (403, {"detail": "Invalid token."})


def test_revoked_and_added_tokens(server: DataroomServer) -> None:
    other = "a" * 40
    server.add_token(other)
    assert api(server, "images/count/", token=other)[0] == 200
    server.revoke_token()
    assert api(server, "images/count/") == (403, {"detail": "Invalid token."})
    assert api(server, "images/count/", token=other)[0] == 200


def test_unknown_api_route_method_and_missing_slash(server: DataroomServer) -> None:
    assert api(server, "nothing/") == (404, {"detail": "Not found."})
    assert api(server, "images/", method="POST") == (405, {"detail": 'Method "POST" not allowed.'})
    status, headers, _ = request(server, "images?page_size=2", token=None)
    assert (status, headers["Location"]) == (301, "/api/images/?page_size=2")


# -- page_size, fields, return_latents ---------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "Ensure this value is greater than or equal to 1."), ("-5", "Ensure this value is greater than or equal to 1."),
     ("2001", "Ensure this value is less than or equal to 2000."), ("abc", "A valid integer is required."),
     ("1.5", "A valid integer is required."), ("1e3", "A valid integer is required.")],
)
@pytest.mark.parametrize("endpoint", ["images/", "images/random/"])
def test_page_size_validation(server: DataroomServer, endpoint: str, value: str, message: str) -> None:
    assert api(server, f"{endpoint}?page_size={value}") == (400, {"page_size": [message]})


def test_page_size_accepts_trailing_zeros_and_defaults_to_100(empty_server: DataroomServer) -> None:
    for i in range(105):
        empty_server.add_image(f"r{i:03d}", width=4, height=3)
    assert len(ok(empty_server, "images/?page_size=10.0")["results"]) == 10
    assert len(ok(empty_server, "images/?page_size=2000")["results"]) == 105
    page = ok(empty_server, "images/")
    assert len(page["results"]) == 100
    assert page["results"][-1]["id"] == "r099"
    assert len(ok(empty_server, "images/random/")["results"]) == 100


def test_fields_order_unknown_and_duplicates(server: DataroomServer) -> None:
    record = ok(server, "images/?page_size=1&fields=width,nope,source,width,id,tags,height")["results"][0]
    assert list(record) == ["id", "width", "source", "tags", "height"]
    record = ok(server, "images/?page_size=1&fields=bogus")["results"][0]
    assert list(record) == ["id"]


@pytest.mark.parametrize("query", ["page_size=1", "page_size=1&fields="])
def test_default_fields(server: DataroomServer, query: str) -> None:
    (record,) = ok(server, f"images/?{query}")["results"]
    assert list(record) == list(DEFAULT_FIELDS)
    single = ok(server, "images/img_0000/")
    assert single == record | {"image_direct_url": single["image_direct_url"]}


def test_return_latents_filters_the_list(server: DataroomServer) -> None:
    def types(query: str) -> list[str]:
        record = ok(server, f"images/img_0000/?{query}")
        return [entry["latent_type"] for entry in record.get("latents", [])]

    assert types("fields=latents") == ["segmentation_mask", "latent_vae", "masked_image"]
    assert types("fields=latents&return_latents=latent_vae") == ["latent_vae"]
    assert types("fields=latents&return_latents=latent_vae,") == ["latent_vae"]
    assert types("fields=latents&return_latents=masked_image,segmentation_mask") == ["segmentation_mask", "masked_image"]
    assert types("fields=latents&return_latents=") == ["segmentation_mask", "latent_vae", "masked_image"]
    assert types("fields=id&return_latents=latent_vae") == []


# -- paging ------------------------------------------------------------------


@pytest.mark.parametrize(("count", "sizes"), [(25, [10, 10, 5, 0]), (20, [10, 10, 0]), (0, [0])])
def test_paging_ends_with_an_empty_page(empty_server: DataroomServer, count: int, sizes: list[int]) -> None:
    for i in reversed(range(count)):
        empty_server.add_image(f"img_{i:04d}", width=8, height=8)
    query = "fields=id%2Csource&sources=SRC_A&page_size=10"
    url: str | None = empty_server.url(f"images/?{query}")
    seen, got_sizes = [], []
    while url is not None:
        page = ok(empty_server, url)
        assert list(page) == ["next", "results"]
        got_sizes.append(len(page["results"]))
        seen += ids(page["results"])
        if page["results"]:
            assert page["next"] == f"{empty_server.api_url}images/?{query}&cursor={seen[-1]}"
        url = page["next"]
    assert got_sizes == sizes
    assert seen == [f"img_{i:04d}" for i in range(count)]
    assert len(empty_server.wait_for_requests("list", len(sizes))) == len(sizes)


def test_next_keeps_order_replaces_cursor_and_encodes(server: DataroomServer) -> None:
    page = ok(server, "images/?cursor=img_0003&fields=id,tags&page_size=2&attributes=score__gte:0")
    assert ids(page["results"]) == ["img_0004", "img_0005"]
    assert page["next"] == (f"http://127.0.0.1:{server.port}/api/images/?cursor=img_0005&fields=id%2Ctags&page_size=2"
                            "&attributes=score__gte%3A0")
    # The host as the request arrived.
    page = ok(server, "images/?page_size=1", headers={"Host": f"localhost:{server.port}"})
    assert page["next"] == f"http://localhost:{server.port}/api/images/?page_size=1&cursor=img_0000"


def test_cursor_is_a_key_not_an_offset(server: DataroomServer) -> None:
    first = ok(server, "images/?fields=id&page_size=5")
    server.remove_image("img_0001")
    server.add_image("img_0002a", width=2, height=2)  # after the cursor: returned
    server.add_image("img_0000a", width=2, height=2)  # before it: not
    second = ok(server, first["next"])
    assert ids(second["results"]) == ["img_0005", "img_0006", "img_0007", "img_0008", "img_0009"]
    again = ok(server, "images/?fields=id&page_size=4&cursor=img_0002")
    assert ids(again["results"]) == ["img_0002a", "img_0003", "img_0004", "img_0005"]
    assert ok(server, "images/?cursor=zzz")["next"] is None


def test_sort_is_by_code_point(empty_server: DataroomServer) -> None:
    for image_id in ["b", "B", "_", "-", "a1", "a", "0", "Z"]:
        empty_server.add_image(image_id, width=1, height=1)
    assert ids(list_all(empty_server, "fields=id&page_size=3")) == ["-", "0", "B", "Z", "_", "a", "a1", "b"]


# -- filters -----------------------------------------------------------------


FILTERS: list[tuple[str, Callable[[Record], bool]]] = [
    ("sources=SRC_A", lambda r: r.source == "SRC_A"),
    ("sources=SRC_A,SRC_B", lambda r: True),
    ("sources=SRC_A,nope", lambda r: r.source == "SRC_A"),
    ("sources=%20SRC_B%20", lambda r: r.source == "SRC_B"),
    ("sources__ne=SRC_A", lambda r: r.source != "SRC_A"),
    ("source=SRC_B", lambda r: r.source == "SRC_B"),
    ("sources=", lambda r: True),
    ("tags=t1", lambda r: "t1" in r.tags),
    ("tags=t1,t3", lambda r: bool({"t1", "t3"} & set(r.tags))),
    ("tags__all=t1,t2", lambda r: {"t1", "t2"} <= set(r.tags)),
    ("tags__ne=t1,t2", lambda r: not {"t1", "t2"} & set(r.tags)),
    ("tags__ne_all=t1,t2", lambda r: not {"t1", "t2"} <= set(r.tags)),
    ("tags__empty=true", lambda r: not r.tags),
    ("tags__empty=True", lambda r: not r.tags),
    ("tags__empty=false", lambda r: bool(r.tags)),
    ("tags__empty=False", lambda r: bool(r.tags)),
    ("tags__empty=yes", lambda r: True),
    ("has_attributes=caption,score", lambda r: "caption" in r.attributes),
    ("lacks_attributes=caption", lambda r: "caption" not in r.attributes),
    ("has_latents=latent_vae", lambda r: r.has_file("latent_vae")),
    ("has_masks=segmentation_mask,masked_image", lambda r: r.has_file("segmentation_mask") and r.has_file("masked_image")),
    ("has_latents=latent_vae,", lambda r: r.has_file("latent_vae")),
    ("lacks_latents=latent_vae,masked_image", lambda r: not r.has_file("latent_vae") and not r.has_file("masked_image")),
    ("lacks_masks=segmentation_mask", lambda r: not r.has_file("segmentation_mask")),
    ("short_edge__gte=32", lambda r: r.short_edge >= 32),
    ("short_edge__lte=24", lambda r: r.short_edge <= 24),
    ("short_edge__gt=24", lambda r: r.short_edge > 24),
    ("short_edge__lt=24", lambda r: r.short_edge < 24),
    ("short_edge=48", lambda r: r.short_edge == 48),
    ("short_edge__gte=24.5", lambda r: r.short_edge >= 25),
    ("pixel_count__gte=2000", lambda r: r.pixel_count >= 2000),
    ("pixel_count__lte=768", lambda r: r.pixel_count <= 768),
    ("pixel_count__gt=768&pixel_count__lt=2560", lambda r: 768 < r.pixel_count < 2560),
    ("pixel_count=2304", lambda r: r.pixel_count == 2304),
    ("aspect_ratio__gt=1", lambda r: r.width > r.height),
    ("duplicate_state=1", lambda r: r.duplicate_state == 1),
    ("duplicate_state=2", lambda r: r.duplicate_state == 2),
    ("duplicate_state=None", lambda r: r.duplicate_state is None),
    ("coca_embedding__empty=true", lambda r: r.coca_embedding is None),
    ("attributes=caption:a%20red%20square", lambda r: r.attributes.get("caption") == "a red square"),
    ("attributes=caption__ne:a%20red%20square", lambda r: r.attributes.get("caption") != "a red square"),
    ("attributes=caption__prefix:a%20gr", lambda r: r.attributes.get("caption", "").startswith("a gr")),
    ("attributes=caption__not_prefix:a%20gr", lambda r: not r.attributes.get("caption", "").startswith("a gr")),
    ("attributes=caption__match:BLUE%20circle", lambda r: any(w in r.attributes.get("caption", "") for w in ("blue", "circle"))),
    ("attributes=caption__match_phrase:white%20square", lambda r: "white square" in r.attributes.get("caption", "")),
    ("attributes=caption__not_match:circle", lambda r: "circle" not in r.attributes.get("caption", "")),
    ("attributes=caption__not_match_phrase:red%20square", lambda r: "red square" not in r.attributes.get("caption", "")),
    ("attributes=index:4", lambda r: r.attributes.get("index") == 4),
    ("attributes=index__eq:4.0", lambda r: r.attributes.get("index") == 4),
    ("attributes=index__ne:4", lambda r: r.attributes.get("index") != 4),
    ("attributes=index__lt:5", lambda r: r.attributes.get("index", 99) < 5),
    ("attributes=index__lte:5", lambda r: r.attributes.get("index", 99) <= 5),
    ("attributes=index__gt:25", lambda r: r.attributes.get("index", -1) > 25),
    ("attributes=index__gte:25,score__lt:0.5", lambda r: r.attributes.get("index", -1) >= 25 and r.attributes["score"] < 0.5),
    ("attributes=flag:true", lambda r: r.attributes.get("flag") is True),
    ("attributes=flag__ne:True", lambda r: r.attributes.get("flag") is not True),
    ("sources=SRC_B&tags=t1&short_edge__gte=24&partitions_count=3&partition=1",
     lambda r: r.source == "SRC_B" and "t1" in r.tags and r.short_edge >= 24 and partition_of(r.id, 3) == 1),
]


@pytest.mark.parametrize(("query", "predicate"), FILTERS, ids=[q for q, _ in FILTERS])
def test_filter(server: DataroomServer, query: str, predicate: Callable[[Record], bool]) -> None:
    want = expected_ids(server, predicate)
    assert ids(list_all(server, f"fields=id&page_size=7&{query}")) == want
    assert ok(server, f"images/count/?{query}") == {"count": len(want)}
    random_ids = ids(ok(server, f"images/random/?fields=id&page_size=2000&{query}")["results"])
    if "partition" not in query:
        assert random_ids == want


def test_the_filters_select_something_and_not_everything(server: DataroomServer) -> None:
    everything = len(server.records())
    for query, predicate in FILTERS:
        selected = len(expected_ids(server, predicate))
        assert selected > 0 and (selected < everything or query in ("sources=SRC_A,SRC_B", "sources=", "tags__empty=yes")), query


@pytest.mark.parametrize(
    ("query", "body"),
    [("tags=t1,nope", ["One or more tags do not exist: 'nope'"]),
     ("tags__all=x,t2,y", ["One or more tags do not exist: 'x', 'y'"]),
     ("tags__ne=zz", ["One or more tags do not exist: 'zz'"]),
     ("tags__ne_all=t1,zz", ["One or more tags do not exist: 'zz'"]),
     ("has_latents=latent_vae,nope", ["Latent type 'nope' does not exist"]),
     ("has_masks=nope", ["Latent type 'nope' does not exist"]),
     ("lacks_latents=nope", ["Latent type 'nope' does not exist"]),
     ("lacks_masks=nope", ["Latent type 'nope' does not exist"]),
     ("duplicate_state=5", ["Invalid value for duplicate_state: 5"]),
     ("duplicate_state=none", ["Invalid value for duplicate_state: none"]),
     ("short_edge__gte=abc", {"short_edge__gte": ["Enter a number."]}),
     ("pixel_count__lte=nan&short_edge=x", {"pixel_count__lte": ["Enter a number."], "short_edge": ["Enter a number."]}),
     ("attributes=index", ["Invalid filter value for attributes"]),
     ("attributes=caption:a:b", ["Invalid filter value for attributes"]),
     ("attributes=index:1,flag", ["Invalid filter value for attributes"]),
     ("attributes=nope:1", ["Attribute 'nope' does not exist"]),
     ("attributes=index__foo:1", ["Attribute 'index__foo' does not exist"]),
     ("attributes=index__prefix:1", ["Comparator 'prefix' is not allowed for attribute 'index' of type number"]),
     ("attributes=flag__lt:true", ["Comparator 'lt' is not allowed for attribute 'flag' of type boolean"]),
     ("attributes=caption__gt:a", ["Comparator 'gt' is not allowed for attribute 'caption' of type string"]),
     ("attributes=index:abc", ["Invalid value 'abc' for attribute 'index' of type number"]),
     ("attributes=flag:maybe", ["Invalid value 'maybe' for attribute 'flag' of type boolean"])],
)
def test_filter_validation(server: DataroomServer, query: str, body: Any) -> None:
    for endpoint in ("images/", "images/random/", "images/count/"):
        assert api(server, f"{endpoint}?{query}") == (400, body)


def test_non_indexed_attribute_and_known_tags(server: DataroomServer) -> None:
    server.add_image("extra", width=2, height=2, attributes={"meta": {"k": 1}})
    assert api(server, "images/?attributes=meta:1") == (400, ["Attribute 'meta' is not indexed"])
    server.add_tag("unused")
    assert ok(server, "images/count/?tags=unused") == {"count": 0}
    server.add_latent_type("latent_other")
    assert ok(server, "images/count/?has_latents=latent_other") == {"count": 0}


def test_a_latent_listed_without_a_file_does_not_count(empty_server: DataroomServer) -> None:
    empty_server.add_image("x", width=2, height=2, latents={"latent_vae": None})
    record = ok(empty_server, "images/x/?fields=latents")
    assert record["latents"] == [{"latent_type": "latent_vae", "file_direct_url": None, "is_mask": False}]
    assert ok(empty_server, "images/count/?has_latents=latent_vae") == {"count": 0}
    assert ok(empty_server, "images/count/?lacks_latents=latent_vae") == {"count": 1}


# -- partitions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [("partitions_count=2", 'Both "partitions_count" and "partition" parameters must be provided'),
     ("partition=0", 'Both "partitions_count" and "partition" parameters must be provided'),
     ("partitions_count=x&partition=0", 'Invalid "partitions_count" parameter'),
     ("partitions_count=0&partition=0", 'Invalid "partitions_count" parameter'),
     ("partitions_count=-2&partition=0", 'Invalid "partitions_count" parameter'),
     ("partitions_count=2.0&partition=0", 'Invalid "partitions_count" parameter'),
     ("partitions_count=2&partition=x", 'Invalid "partition" parameter'),
     ("partitions_count=2&partition=-1", 'Invalid "partition" parameter'),
     ("partitions_count=1&partition=0", '"partitions_count" should be between 2 and 48'),
     ("partitions_count=49&partition=0", '"partitions_count" should be between 2 and 48'),
     ("partitions_count=3&partition=3", '"partition" should be between 0 and 2'),
     ("partitions_count=48&partition=48", '"partition" should be between 0 and 47')],
)
def test_partition_validation(server: DataroomServer, query: str, message: str) -> None:
    assert api(server, f"images/?{query}") == (400, [message])
    assert api(server, f"images/count/?{query}") == (400, [message])
    # Ignored, not even validated, by the random endpoint.
    assert api(server, f"images/random/?page_size=1&{query}")[0] == 200


@pytest.mark.parametrize("count", [2, 3, 5, 48])
def test_partitions_are_disjoint_and_complete(empty_server: DataroomServer, count: int) -> None:
    all_ids = [f"img_{i:04d}" for i in range(200)]
    for image_id in all_ids:
        empty_server.add_image(image_id, width=1, height=1)
    parts = []
    for partition in range(count):
        got = ids(list_all(empty_server, f"fields=id&page_size=50&partitions_count={count}&partition={partition}"))
        assert got == sorted(got)
        assert got == [i for i in all_ids if shard_of(i) % count == partition]
        assert ok(empty_server, f"images/count/?partitions_count={count}&partition={partition}") == {"count": len(got)}
        parts.append(set(got))
    assert sum(len(p) for p in parts) == len(all_ids)
    assert set().union(*parts) == set(all_ids)


def test_next_keeps_both_partition_parameters(server: DataroomServer) -> None:
    page = ok(server, "images/?fields=id&partitions_count=2&partition=1&page_size=3")
    assert all(partition_of(i, 2) == 1 for i in ids(page["results"]))
    assert page["next"].endswith(f"images/?fields=id&partitions_count=2&partition=1&page_size=3&cursor={page['results'][-1]['id']}")


# -- random ------------------------------------------------------------------


def test_random_pages(server: DataroomServer, synthetic_30: list[dict[str, Any]]) -> None:
    pages = [ok(server, "images/random/?fields=id&page_size=8&partitions_count=2&partition=0&cursor=img_0020") for _ in range(6)]
    for page in pages:
        assert page["next"] is None
        assert len(page["results"]) == 8
        assert ids(page["results"]) == sorted(ids(page["results"]))
    drawn = [i for page in pages for i in ids(page["results"])]
    assert len(set(drawn)) < len(drawn), "records come back again"
    assert {partition_of(i, 2) for i in drawn} == {0, 1}, "partitions are ignored"
    # The same seed gives the same pages.
    with DataroomServer(seed=3) as twin:
        for kwargs in synthetic_30:
            twin.add_image(**kwargs)
        again = [ok(twin, "images/random/?fields=id&page_size=8") for _ in range(6)]
    assert [ids(p["results"]) for p in again] == [ids(p["results"]) for p in pages]
    # Fewer matches than page_size: all of them.
    assert ids(ok(server, "images/random/?fields=id&page_size=20&tags__all=t1,t2,t3")["results"]) == ["img_0007", "img_0015", "img_0023"]


def test_random_prefix_mode(synthetic_30: list[dict[str, Any]]) -> None:
    with DataroomServer(seed=5, random_mode="prefix") as server:
        for kwargs in synthetic_30:
            server.add_image(**kwargs)
        hashes = {r.id: r.image_hash for r in server.records()}
        page = ok(server, "images/random/?fields=id,image_hash&page_size=5&prefix_length=1&num_prefixes=3")
        assert page["next"] is None and len(page["results"]) <= 5
        letters = {hashes[i][7] for i in ids(page["results"])}
        assert len(letters) <= 3
        # 300 one-letter prefixes cover all 16 almost surely; then page_size records in id order.
        page = ok(server, "images/random/?fields=id&page_size=4&prefix_length=1&num_prefixes=300")
        assert ids(page["results"]) == ["img_0000", "img_0001", "img_0002", "img_0003"]
        # The default prefixes (5 hex digits) find nothing in a small dataset.
        assert ok(server, "images/random/?page_size=30")["results"] == []
        for query, body in [("prefix_length=0", {"prefix_length": ["Ensure this value is greater than or equal to 1."]}),
                            ("prefix_length=65", {"prefix_length": ["Ensure this value is less than or equal to 64."]}),
                            ("num_prefixes=301", {"num_prefixes": ["Ensure this value is less than or equal to 300."]}),
                            ("num_prefixes=x", {"num_prefixes": ["A valid integer is required."]})]:
            assert api(server, f"images/random/?{query}") == (400, body)


# -- records -----------------------------------------------------------------


def test_record_json_types(server: DataroomServer) -> None:
    records = {r["id"]: r for r in list_all(server, "page_size=50&fields=" + ",".join(
        ["image", "date_created", "date_updated", "author", "image_hash", "short_edge", "pixel_count", "aspect_ratio",
         "aspect_ratio_fraction", "thumbnail", "original_url", "related_images", "datasets", ALL_FIELDS]))}
    full = records["img_0000"]
    assert full["source"] == "SRC_A" and (full["width"], full["height"]) == (32, 24)
    assert (full["short_edge"], full["pixel_count"], full["aspect_ratio"], full["aspect_ratio_fraction"]) == (24, 768, 32 / 24, "4:3")
    assert full["tags"] is None and full["duplicate_state"] == 1
    assert set(full["attributes"]) == {"caption", "score", "index", "flag"}
    assert full["image_hash"].startswith("sha256:") and len(full["image_hash"]) == 71
    assert full["image"] == "images/img_0000.jpg"
    assert full["date_created"].endswith("Z") and isinstance(full["datasets"], list) and full["related_images"] == []
    assert full["thumbnail"] is None and full["author"] is None and full["original_url"] is None
    assert len(full["coca_embedding"]["vector"]) == 768 and full["coca_embedding"]["author"] == "coca"
    assert all(isinstance(x, float) for x in full["coca_embedding"]["vector"])
    assert [(e["latent_type"], e["is_mask"]) for e in full["latents"]] == [
        ("segmentation_mask", True), ("latent_vae", False), ("masked_image", False)]
    assert records["img_0009"]["attributes"] == {} and records["img_0001"]["coca_embedding"] is None
    assert records["img_0007"]["tags"] == ["t1", "t2", "t3"] and records["img_0002"]["duplicate_state"] is None
    assert records["img_0003"]["image"] == "images/img_0003.png"
    for record in records.values():
        assert isinstance(record["width"], int) and isinstance(record["height"], int)
        assert record["duplicate_state"] in (1, 2, None)


def test_record_endpoint(server: DataroomServer) -> None:
    record = ok(server, "images/img_0006/?fields=tags,id,latents&return_latents=latent_vae&sources=nope&page_size=0")
    assert list(record) == ["id", "tags", "latents"]
    assert [e["latent_type"] for e in record["latents"]] == ["latent_vae"]
    assert api(server, "images/nope/") == (404, {"detail": "Not found."})


def test_add_image_from_pil_and_validation(empty_server: DataroomServer) -> None:
    record = empty_server.add_image("p", image=Image.new("RGB", (5, 7), "red"), masks={"m": Image.new("L", (5, 7))})
    assert (record.width, record.height, record.image_key) == (5, 7, "images/p.png")
    with pytest.raises(ValueError):
        empty_server.add_image("bad id", width=1, height=1)
    with pytest.raises(ValueError):
        empty_server.add_image("x", duplicate_state=3)


# -- blobs -------------------------------------------------------------------


def fetch(url: str, **kwargs: Any) -> tuple[int, http.client.HTTPMessage, bytes]:
    return request(None, url, token=None, **kwargs)  # type: ignore[arg-type]


def test_blobs_serve_the_files_without_auth(server: DataroomServer, synthetic_30: list[dict[str, Any]]) -> None:
    record = ok(server, f"images/img_0000/?fields={ALL_FIELDS}")
    status, headers, body = fetch(record["image_direct_url"])
    assert (status, headers["Content-Type"], body) == (200, "image/jpeg", synthetic_30[0]["image"])
    files = {e["latent_type"]: fetch(e["file_direct_url"]) for e in record["latents"]}
    assert files["latent_vae"][2] == synthetic_30[0]["latents"]["latent_vae"]
    mask = Image.open(io.BytesIO(files["segmentation_mask"][2]))
    assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (32, 24))
    assert Image.open(io.BytesIO(files["masked_image"][2])).format == "JPEG"
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(record["image_direct_url"]).query))
    assert query["X-Amz-Expires"] == "86400" and "X-Amz-Signature" in query
    # Every answer signs afresh.
    assert ok(server, "images/img_0000/?fields=image_direct_url")["image_direct_url"] != record["image_direct_url"]
    assert all(r.header("Authorization") is None for r in server.wait_for_requests("blob", 4))


def test_expired_urls_and_refresh(server: DataroomServer) -> None:
    page = ok(server, "images/?fields=image_direct_url&page_size=3")
    server.expire_blob_urls()
    for record in page["results"]:
        status, headers, body = fetch(record["image_direct_url"])
        assert (status, headers["Content-Type"]) == (403, "application/xml")
        assert b"<Code>AccessDenied</Code><Message>Request has expired</Message>" in body
    fresh = ok(server, "images/img_0001/?fields=image_direct_url")["image_direct_url"]
    assert fetch(fresh)[0] == 200
    server.advance_clock(86_000)
    assert fetch(fresh)[0] == 200
    server.advance_clock(401)
    assert fetch(fresh)[0] == 403


def test_expire_one_blob(server: DataroomServer) -> None:
    before = ok(server, "images/img_0002/?fields=image_direct_url,latents")
    server.expire_blob("img_0002")
    assert fetch(before["image_direct_url"])[0] == 403
    assert all(fetch(e["file_direct_url"])[0] == 200 for e in before["latents"])
    after = ok(server, "images/img_0002/?fields=image_direct_url")
    assert fetch(after["image_direct_url"])[0] == 200


def test_tampered_unknown_and_authorized_blob_requests(server: DataroomServer) -> None:
    url = server.sign_blob("img_0004")
    status, _, body = fetch(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    status, _, body = fetch(url.replace("img_0004.jpg", "img_0004.png"))
    assert status == 403  # the signature covers the key
    status, _, body = fetch(server.sign("images/missing.jpg"))
    assert status == 404 and b"<Code>NoSuchKey</Code>" in body
    status, _, body = fetch(url, headers={"Authorization": f"Token {TOKEN}"})
    assert status == 400 and b"<Code>InvalidArgument</Code>" in body
    assert fetch(url.split("?")[0])[0] == 403
    server.remove_image("img_0004")
    assert fetch(url)[0] == 200  # the object outlives the record


# -- faults ------------------------------------------------------------------


def test_500_on_the_kth_page_request_n_times(server: DataroomServer) -> None:
    server.fail_pages(500, first=2, times=3)
    responses = [request(server, "images/?page_size=10") for _ in range(6)]
    assert [r[0] for r in responses] == [200, 500, 500, 500, 200, 200]
    assert responses[1][1]["Content-Type"].startswith("text/html") and b"Server Error (500)" in responses[1][2]
    assert [r.status for r in server.wait_for_requests("list", 6)] == [200, 500, 500, 500, 200, 200]


def test_page_faults_429_403_400_and_non_json(server: DataroomServer) -> None:
    server.fail_pages(429, retry_after="2")
    status, headers, body = request(server, "images/")
    assert (status, headers["Retry-After"], json.loads(body)["detail"].startswith("Request was throttled")) == (429, "2", True)
    server.fail_pages(403)
    assert api(server, "images/") == (403, {"detail": "You do not have permission to perform this action."})
    server.fail_pages(400, body=b'["Bad page"]')
    assert api(server, "images/") == (400, ["Bad page"])
    server.fail_pages(200, body=b"<html>not json</html>", content_type="text/html")
    status, headers, body = request(server, "images/")
    assert (status, headers["Content-Type"], body) == (200, "text/html", b"<html>not json</html>")
    server.fail_pages(503, first=2, endpoints=("random",))
    assert [request(server, "images/random/")[0] for _ in range(3)] == [200, 503, 200]
    assert request(server, "images/")[0] == 200
    server.fail_pages(500, endpoints=("record",))
    assert request(server, "images/img_0001/")[0] == 500
    # Faults come before authentication.
    server.fail_pages(502)
    assert request(server, "images/", token=None)[0] == 502


@pytest.mark.parametrize(("status", "code"), [(404, b"NoSuchKey"), (403, b"AccessDenied"), (500, b"InternalError"), (503, b"SlowDown")])
def test_blob_status_faults(server: DataroomServer, status: int, code: bytes) -> None:
    server.set_blob_fault("img_0005", "image", BlobFault(status=status, times=2))
    url = server.sign_blob("img_0005")
    results = [fetch(url) for _ in range(3)]
    assert [r[0] for r in results] == [status, status, 200]
    assert f"<Code>{code.decode()}</Code>".encode() in results[0][2]
    assert fetch(server.sign_blob("img_0006"))[0] == 200


def test_blob_fault_for_every_blob_and_latents(server: DataroomServer) -> None:
    server.set_blob_fault(None, fault=BlobFault(status=404))
    server.set_blob_fault("img_0000", "latent_vae", BlobFault(status=403))
    assert fetch(server.sign_blob("img_0001"))[0] == 404
    assert fetch(server.sign_blob("img_0000", "latent_vae"))[0] == 403
    server.set_blob_fault(None, fault=None)
    assert fetch(server.sign_blob("img_0001"))[0] == 200
    server.clear_faults()
    assert fetch(server.sign_blob("img_0000", "latent_vae"))[0] == 200


def test_truncated_and_cut_blobs(server: DataroomServer, synthetic_30: list[dict[str, Any]]) -> None:
    image = synthetic_30[8]["image"]
    server.set_blob_fault("img_0008", "image", BlobFault(truncate_to=100, times=1))
    status, headers, body = fetch(server.sign_blob("img_0008"))
    assert (status, headers["Content-Length"], body) == (200, "100", image[:100])
    with pytest.raises(OSError):
        Image.open(io.BytesIO(body)).load()
    assert fetch(server.sign_blob("img_0008"))[2] == image
    server.set_blob_fault("img_0008", "image", BlobFault(cut_after_bytes=50))
    with pytest.raises(http.client.IncompleteRead) as cut:
        fetch(server.sign_blob("img_0008"))
    assert cut.value.partial == image[:50]
    (record,) = [r for r in server.wait_for_requests("blob", 3) if not r.complete]
    assert record.bytes_sent == 50


def test_slow_blob_times_out_and_stop_ends_the_delay(synthetic_30: list[dict[str, Any]]) -> None:
    server = DataroomServer().start()
    server.add_image(**synthetic_30[0])
    server.set_blob_fault("img_0000", "image", BlobFault(delay_s=60, times=1))
    with pytest.raises(TimeoutError):
        fetch(server.sign_blob("img_0000"), timeout_s=0.2)
    server.wait_until(lambda: server._blob_faults["images/img_0000.jpg"].seen == 1, what="the delayed request")
    assert fetch(server.sign_blob("img_0000"))[0] == 200  # the other connection is not held up
    # The delay waits on the stop event: stop returns without waiting 60 s, the request ends cut.
    server.stop()
    (delayed,) = [r for r in server.requests("blob") if not r.complete]
    assert delayed.status == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_latency_applies_to_every_response(synthetic_30: list[dict[str, Any]]) -> None:
    with DataroomServer(latency_s=0.001) as server:
        server.add_image(**synthetic_30[0])
        page = ok(server, "images/?fields=image_direct_url")
        assert fetch(page["results"][0]["image_direct_url"])[0] == 200
    server = DataroomServer(latency_s=60).start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/api/images/")
    server.stop()  # ends the wait
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        connection.getresponse()
    connection.close()


# -- the log -----------------------------------------------------------------


def test_request_log(server: DataroomServer) -> None:
    body = request(server, "images/?fields=id%2Csource&sources=SRC_A&page_size=2&fields=id")[2]
    (record,) = server.wait_for_requests("list", 1)
    assert (record.method, record.path, record.status, record.bytes_sent) == ("GET", "/api/images/", 200, len(body))
    assert record.query == (("fields", "id,source"), ("sources", "SRC_A"), ("page_size", "2"), ("fields", "id"))
    assert record.raw_query == "fields=id%2Csource&sources=SRC_A&page_size=2&fields=id"
    assert record.params == {"fields": "id", "sources": "SRC_A", "page_size": "2"}
    assert record.header("authorization") == f"Token {TOKEN}"
    # The last of repeated parameters wins, as in Django.
    assert list(json.loads(body)["results"][0]) == ["id"]
    request(server, "images/count/")
    request(server, "images/random/?page_size=1")
    request(server, "images/img_0000/")
    fetch(server.sign_blob("img_0000"))
    request(server, "images/x", token=None)
    fetch(f"{server.base_url}/elsewhere")
    # A request is logged once its response is written: wait for the last one.
    server.wait_until(lambda: len(server.requests()) == 7, what="seven requests")
    assert [r.endpoint for r in server.requests()] == ["list", "count", "random", "record", "blob", "api", "other"]
    assert [r.endpoint for r in server.requests("page")] == ["list", "random"]
    assert [r.status for r in server.requests()] == [200, 200, 200, 200, 200, 301, 404]
    server.clear_log()
    assert server.requests() == [] and server.bytes_sent() == 0


def test_keep_alive(server: DataroomServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for path in ["/api/images/?page_size=1", "/api/images/nope/", "/api/images/count/"]:
        connection.request("GET", path, headers={"Authorization": f"Token {TOKEN}"})
        response = connection.getresponse()
        response.read()
    assert response.status == 200
    connection.close()


def test_replacing_a_record_and_env(empty_server: DataroomServer) -> None:
    empty_server.add_image("b", width=1, height=1, source="old")
    empty_server.add_image("a", width=1, height=1)
    empty_server.add_image("b", width=2, height=2, source="new")
    assert [(r.id, r.source, r.shard) for r in empty_server.records()] == [("a", "SRC_A", 1), ("b", "new", shard_of("b"))]
    assert ok(empty_server, "images/?fields=source")["results"] == [{"id": "a", "source": "SRC_A"}, {"id": "b", "source": "new"}]
    assert empty_server.env() == {"DATAROOM_API_URL": f"http://127.0.0.1:{empty_server.port}/api/", "DATAROOM_API_KEY": TOKEN}
