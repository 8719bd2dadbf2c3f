"""A local Dataroom API server with faults on demand, for the `db` source's
tests.

`DataroomServer` speaks the subset of the Dataroom REST API that datago uses,
as the real server (Django REST Framework over an OpenSearch index) answers
it, from an in-memory dataset, on 127.0.0.1 (ephemeral port), one thread per
connection, HTTP/1.1 keep-alive:

    with DataroomServer(seed=1) as server:
        server.add_synthetic(25)
        os.environ["DATAROOM_API_URL"] = server.api_url       # http://127.0.0.1:PORT/api/
        os.environ["DATAROOM_API_KEY"] = server.token
        ...
        server.wait_for_requests("list", 4)

Routes (all `GET`; trailing slashes are part of them, a missing one gets a 301):

- `/api/images/`: the listing, sorted by `id` (code point order, which is the
  byte order of UTF-8), keyset paged: `cursor=<id>` returns the records whose
  id sorts after it. The body is `{"next": url-or-null, "results": [...]}`;
  `next` is absolute (scheme and `Host` as the request arrived), keeps the
  request's query parameters in their order with `cursor` replaced in place
  or appended, form-urlencoded (`,` -> `%2C`). `next` is null only on an empty
  page, so a listing always ends with `{"next": null, "results": []}`.
- `/api/images/random/`: one page, `next` always null, same `fields`,
  `page_size` and filters, partition parameters ignored (not even
  validated). `prefix_length` (1..64, default 5) and `num_prefixes` (1..300,
  default 100) are validated. With `random_mode="sample"` (the default, so
  that small test datasets give full pages) each request draws
  `min(page_size, matches)` distinct matching records from the server's
  seeded generator; with `random_mode="prefix"` it draws `num_prefixes` hex
  strings of `prefix_length` and returns the matching records whose
  `image_hash` starts with one of them, as the real server does (mostly empty
  pages on small datasets). Either way records come back in id order and two
  requests may return the same record.
- `/api/images/<id>/`: one record, same `fields`/`return_latents` rules, 404
  `{"detail": "Not found."}` when unknown; filters do not apply.
- `/api/images/count/`: `{"count": n}` with the filters and partitions.
- `/blobs/<key>?X-Amz-...`: image, mask and latent files (no `Authorization`).

Authentication comes first on every `/api/` route: `Authorization: Token
<key>` (keyword in any case). Failures are 403 with DRF's `detail` texts:
no header or another scheme -> "Authentication credentials were not
provided.", `Token` alone -> "Invalid token header. No credentials
provided.", a space in the key -> "... should not contain spaces.", bytes
that are not UTF-8 -> "... invalid characters.", unknown key -> "Invalid
token.", inactive user -> "User inactive or deleted.", no `dataroom_access`
-> "You do not have permission to perform this action.". `server.token` has
access; `NO_PERMISSION_TOKEN` and `INACTIVE_TOKEN` exist too.

Query parameters follow Django: the last of repeated names wins, an empty
value counts as absent, unknown names are ignored.

- `fields`: `id` first, then the named available fields in the order given,
  unknown names and duplicates dropped; absent or empty -> `DEFAULT_FIELDS`.
- `return_latents`: when non-empty, `latents` keeps those types only.
- `page_size`: DRF integer (`"10.0"` is 10), 1..2000, default 100; 400 bodies
  `{"page_size": ["Ensure this value is greater than or equal to 1."]}`,
  `... less than or equal to 2000.` and `A valid integer is required.`.
- Filters: `sources`, `sources__ne`, `source`; `tags` (any), `tags__all`,
  `tags__ne` (none), `tags__ne_all` (not all) -- every named tag must exist
  or 400 `["One or more tags do not exist: 'x', 'y'"]`; `tags__empty`
  (`true`/`True`, `false`/`False`, else ignored); `has_attributes`,
  `lacks_attributes` (present = not null); `attributes=name[__cmp]:value,...`
  with cmp in eq ne lt lte gt gte match match_phrase prefix not_match
  not_match_phrase not_prefix (numbers: eq..gte, booleans: eq ne, strings:
  eq ne and the text ones; the negated ones, ne included, also match records
  without the attribute); `has_latents`/`has_masks` (a file for every listed
  type), `lacks_latents`/`lacks_masks` (for none) -- unknown type -> 400
  `["Latent type 'x' does not exist"]`; `short_edge`, `pixel_count`,
  `aspect_ratio` with `__gte __lte __gt __lt` or exact (non-numbers -> 400
  `{"<param>": ["Enter a number."]}`); `duplicate_state` 1, 2 or `None`
  (unprocessed), else 400 `["Invalid value for duplicate_state: 5"]`;
  `source__empty`, `coca_embedding__empty`. The date and dataset filters
  of the real API are not implemented (ignored like unknown parameters).
- Partitions: `partitions_count` and `partition` both or neither; each
  record lives in shard `floorMod(murmur3_x86_32(UTF-16LE(id), 0), 768) //
  16` of 48 (`shard_of`), partition p of n serves the shards with `shard % n
  == p`. 400 bodies as the real server's (`PARTITION_ERRORS` below).

When several parameters are wrong only one error is reported, checked in this
order: numeric filters (all of them in one object), tags, latent types,
`duplicate_state`, `attributes`, partitions, `page_size`, `prefix_length`,
`num_prefixes`.

Records carry the JSON types of the real API (`tags` null when empty,
`attributes` `{}`, `duplicate_state` null when unprocessed,
`coca_embedding` `{"vector": [...], "author": ...}` or null, `latents` a list
of `{"latent_type", "file_direct_url", "is_mask"}`). Blob URLs are signed
(HMAC) and expire `blob_ttl_s` (24 h) after they were issued by the
server's clock; every answer signs afresh. A blob request answers 403 XML
`AccessDenied`/`Request has expired` once expired, 403
`SignatureDoesNotMatch` when tampered with, 404 XML `NoSuchKey` for an
unknown key, 400 XML `InvalidArgument` when it carries an `Authorization`
header as well, as S3 does (`reject_blob_authorization=False` allows it). The clock moves with `advance_clock(s)` and
`expire_blob_urls()`; `expire_blob(id, kind)` expires the URLs issued so far
for one blob, fresh ones (`GET images/<id>/`) work.

Faults: `add_page_fault(PageFault(...))` answers a chosen status/body on the
k-th..(k+n-1)-th request to its endpoints (counted from when it was added,
before authentication); `set_blob_fault(id, kind, BlobFault(...))` gives a
blob an error status, a delay, a truncated body or a cut connection;
`revoke_token`. `latency_s` delays every response. Every delay waits on the
server's stop event, so stopping never waits for it.

The log (`requests()`) holds each request once its response is written or
cut, in arrival order: method, path, query pairs in order (decoded) and the
raw query, headers, status, body bytes sent, whether the body went out whole,
the endpoint (`list`, `random`, `record`, `count`, `blob`, `api`, `other`).
"""

from __future__ import annotations

import bisect
import copy
import datetime
import decimal
import hashlib
import hmac
import http.server
import io
import json
import math
import random
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from local_http_server import LocalHandler, LocalHttpServer, TrackingHTTPServer
from PIL import Image

# Body bytes written per send, so a cut lands inside a body.
_CHUNK_BYTES = 16 * 1024

TOKEN = "0123456789abcdef0123456789abcdef01234567"
NO_PERMISSION_TOKEN = "1111111111111111111111111111111111111111"
INACTIVE_TOKEN = "2222222222222222222222222222222222222222"

PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 2000
SHARDS = 48
ROUTING_SHARDS = 768
PARTITIONS_MAX = 48
BLOB_TTL_S = 24 * 3600

AVAILABLE_FIELDS = (
    "id", "source", "image", "image_direct_url", "date_created", "date_updated", "author", "image_hash", "width",
    "height", "short_edge", "pixel_count", "aspect_ratio", "aspect_ratio_fraction", "thumbnail",
    "thumbnail_direct_url", "thumbnail_error", "original_url", "tags", "coca_embedding", "latents", "attributes",
    "duplicate_state", "related_images", "datasets",
)
DEFAULT_FIELDS = (
    "id", "source", "image_direct_url", "date_created", "date_updated", "author", "image_hash", "width", "height",
    "short_edge", "pixel_count", "aspect_ratio", "aspect_ratio_fraction", "original_url", "tags", "attributes",
    "datasets",
)

AUTH_ERRORS = {
    "missing": "Authentication credentials were not provided.",
    "empty": "Invalid token header. No credentials provided.",
    "spaces": "Invalid token header. Token string should not contain spaces.",
    "undecodable": "Invalid token header. Token string should not contain invalid characters.",
    "unknown": "Invalid token.",
    "inactive": "User inactive or deleted.",
    "permission": "You do not have permission to perform this action.",
}
PARTITION_ERRORS = {
    "both": 'Both "partitions_count" and "partition" parameters must be provided',
    "count": 'Invalid "partitions_count" parameter',
    "partition": 'Invalid "partition" parameter',
    "count_range": '"partitions_count" should be between 2 and 48',
    "partition_range": '"partition" should be between 0 and {last}',
}

_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,512}")
_NUMERIC_FILTERS = {
    name + suffix: (name, op)
    for name in ("short_edge", "pixel_count", "aspect_ratio")
    for suffix, op in (("", "eq"), ("__gte", "gte"), ("__lte", "lte"), ("__gt", "gt"), ("__lt", "lt"))
}
_COMPARATORS = ("eq", "ne", "lt", "lte", "gt", "gte", "match", "match_phrase", "prefix", "not_match",
                "not_match_phrase", "not_prefix")
_ALLOWED_COMPARATORS = {
    "number": {"eq", "ne", "lt", "lte", "gt", "gte"},
    "boolean": {"eq", "ne"},
    "string": {"eq", "ne", "match", "match_phrase", "prefix", "not_match", "not_match_phrase", "not_prefix"},
}
_NEGATED = {"ne", "not_match", "not_match_phrase", "not_prefix"}
_DATE_ZERO = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


# -- routing hash ------------------------------------------------------------


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit, unsigned."""
    mask = 0xFFFFFFFF
    c1, c2 = 0xCC9E2D51, 0x1B873593

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    h = seed & mask
    whole = len(data) // 4 * 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = rotl((k * c1) & mask, 15) * c2 & mask
        h = (rotl(h ^ k, 13) * 5 + 0xE6546B64) & mask
    tail = data[whole:]
    k = 0
    if len(tail) >= 3:
        k ^= tail[2] << 16
    if len(tail) >= 2:
        k ^= tail[1] << 8
    if tail:
        k ^= tail[0]
        k = rotl((k * c1) & mask, 15) * c2 & mask
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


def routing_hash(image_id: str) -> int:
    """OpenSearch's routing hash of an id: murmur3 over its UTF-16LE code
    units, seed 0, as a signed 32-bit integer."""
    h = murmur3_x86_32(image_id.encode("utf-16-le"))
    return h - (1 << 32) if h >= 1 << 31 else h


def shard_of(image_id: str) -> int:
    """The shard (0..47) of the index that holds `image_id`."""
    return routing_hash(image_id) % ROUTING_SHARDS // (ROUTING_SHARDS // SHARDS)


def partition_of(image_id: str, partitions_count: int) -> int:
    return shard_of(image_id) % partitions_count


# -- the dataset -------------------------------------------------------------


def _image_format(data: bytes) -> str:
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    return "bin"


_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "npy": "application/octet-stream", "bin": "application/octet-stream"}


@dataclass
class Record:
    """One image of the dataset, as stored (see `DataroomServer.add_image`)."""

    id: str
    source: str
    image_key: str | None
    image_hash: str
    width: int
    height: int
    tags: list[str]
    attributes: dict[str, Any]
    latents: dict[str, str | None]  # latent type -> blob key (None: no stored file), in insertion order
    coca_embedding: list[float] | None
    coca_author: str | None
    duplicate_state: int | None
    date_created: str
    date_updated: str
    author: str | None
    original_url: str | None
    datasets: list[str]
    shard: int = 0  # of the 48 index shards, from the id

    @property
    def short_edge(self) -> int:
        return min(self.width, self.height)

    @property
    def pixel_count(self) -> int:
        return self.width * self.height

    @property
    def aspect_ratio(self) -> float:
        return self.width / self.height if self.height else 0.0

    @property
    def aspect_ratio_fraction(self) -> str | None:
        if not self.width or not self.height:
            return None
        g = math.gcd(self.width, self.height)
        return f"{self.width // g}:{self.height // g}"

    def has_file(self, latent_type: str) -> bool:
        return self.latents.get(latent_type) is not None


@dataclass
class PageFault:
    """Answers `status` with `body` instead of the real page for the requests
    number `first` .. `first + times - 1` (1-based) to `endpoints`, counted
    from when the fault was added, before authentication. The default body
    suits the status: Django's HTML for 5xx, DRF JSON for 4xx; `status=200`
    with a `body` gives a non-JSON page."""

    status: int = 500
    first: int = 1
    times: int = 1
    body: bytes | None = None
    content_type: str | None = None
    retry_after: str | None = None  # 429 gets "1" when unset
    endpoints: tuple[str, ...] = ("list", "random")
    seen: int = field(default=0, compare=False)


@dataclass
class BlobFault:
    """What a blob does wrong for its first `times` requests (None: every
    request): wait `delay_s` first (on the stop event), answer `status` with
    S3's XML error (403 is the `AccessDenied` of an expired URL, 404
    `NoSuchKey`, 5xx `InternalError`/`SlowDown`), replace the body
    (`body`), send only the first `truncate_to` bytes as a complete response,
    or announce the whole body and close the connection after
    `cut_after_bytes`."""

    status: int | None = None
    times: int | None = None
    delay_s: float = 0.0
    truncate_to: int | None = None
    cut_after_bytes: int | None = None
    body: bytes | None = None
    seen: int = field(default=0, compare=False)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    raw_query: str
    headers: dict[str, str]
    status: int
    bytes_sent: int
    endpoint: str
    complete: bool = True
    sequence: int = 0  # arrival order; the log is sorted by it

    @property
    def params(self) -> dict[str, str]:
        """The query as Django reads it: the last value of each name."""
        return dict(self.query)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


@dataclass
class _User:
    active: bool = True
    permission: bool = True


class _ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


class _Cut(Exception):
    """The handler dropped the connection on purpose."""


class DataroomServer(LocalHttpServer):
    """The Dataroom API over an in-memory dataset; see the module docstring.

    Thread-safe: the test thread may add records, set faults and read the log
    while requests run.
    """

    def __init__(
        self, *, seed: int = 0, latency_s: float = 0.0, blob_ttl_s: float = BLOB_TTL_S, random_mode: str = "sample",
        tokens: Iterable[str] = (TOKEN,), reject_blob_authorization: bool = True,
    ) -> None:
        if random_mode not in ("sample", "prefix"):
            raise ValueError(f"random_mode must be 'sample' or 'prefix', not {random_mode!r}")
        self.latency_s = latency_s
        self.blob_ttl_s = blob_ttl_s
        self.random_mode = random_mode
        self.reject_blob_authorization = reject_blob_authorization
        self.token = next(iter(tokens), TOKEN)
        self._users: dict[str, _User] = {key: _User() for key in tokens}
        self._users[NO_PERMISSION_TOKEN] = _User(permission=False)
        self._users[INACTIVE_TOKEN] = _User(active=False)
        self._random = random.Random(seed)
        self._secret = hashlib.sha256(f"dataroom-test-{seed}".encode()).digest()
        self._records: dict[str, Record] = {}
        self._ids: list[str] = []  # sorted
        self._sorted: list[Record] = []  # the records in the order of _ids
        self._blobs: dict[str, bytes] = {}
        self._tags: set[str] = set()
        self._latent_types: dict[str, bool] = {}  # type -> is_mask
        self._attribute_types: dict[str, tuple[str, bool]] = {}  # name -> (type, indexed)
        self._clock_offset = 0.0
        self._signed = 0  # URLs signed so far; each URL carries its number
        self._expired_below: dict[str, int] = {}  # blob key -> URLs numbered below are expired
        self._page_faults: list[PageFault] = []
        self._blob_faults: dict[str | None, BlobFault] = {}
        self._log: list[RequestRecord] = []
        self._added = 0
        self._arrived = 0
        super().__init__(_Handler, name="dataroom-server", server_class=_Server)

    # -- addresses ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    def env(self) -> dict[str, str]:
        """`DATAROOM_API_URL` and `DATAROOM_API_KEY` for a client of this server."""
        return {"DATAROOM_API_URL": self.api_url, "DATAROOM_API_KEY": self.token}

    def url(self, path: str) -> str:
        """An absolute URL for a path relative to the API root (`images/?...`)."""
        return self.api_url + path.lstrip("/")

    # -- dataset -----------------------------------------------------------

    def add_image(
        self, id: str, *, source: str = "SRC_A", image: bytes | Image.Image | None = None, width: int | None = None,
        height: int | None = None, tags: Iterable[str] = (), attributes: Mapping[str, Any] | None = None,
        masks: Mapping[str, bytes | Image.Image | None] | None = None,
        latents: Mapping[str, bytes | Image.Image | None] | None = None,
        coca_embedding: Iterable[float] | None = None, coca_author: str | None = None,
        duplicate_state: int | None = None, author: str | None = None, original_url: str | None = None,
        datasets: Iterable[str] = (), date_created: str | None = None,
    ) -> Record:
        """Adds (or replaces) a record. `image` (bytes or a PIL image, saved
        as PNG) sets `width`/`height` unless given; `masks` and `latents` map a
        latent type to its file (masks are `is_mask` types; None: the type is
        listed with no stored file). Tags, latent types and attribute types
        become known to the server (see `define_attribute`)."""
        if not _ID_PATTERN.fullmatch(id):
            raise ValueError(f"a Dataroom id is 1..512 characters of [A-Za-z0-9_-], not {id!r}")
        if duplicate_state not in (None, 1, 2):
            raise ValueError(f"duplicate_state is 1, 2 or None, not {duplicate_state!r}")
        image_bytes = _to_bytes(image)
        if image_bytes is not None and (width is None or height is None):
            with Image.open(io.BytesIO(image_bytes)) as opened:
                width, height = (width or opened.width), (height or opened.height)
        entries: dict[str, tuple[bytes | None, bool]] = {}
        for name, data in (masks or {}).items():
            entries[name] = (_to_bytes(data), True)
        for name, data in (latents or {}).items():
            entries[name] = (_to_bytes(data), self._latent_types.get(name, False))
        with self._changed:
            for name, (_, is_mask) in entries.items():
                known = self._latent_types.setdefault(name, is_mask)
                if known != is_mask and name in (masks or {}):
                    raise ValueError(f"latent type {name!r} is already known as a non-mask type")
            stored_latents: dict[str, str | None] = {}
            for name, (data, _) in entries.items():
                if data is None:
                    stored_latents[name] = None
                    continue
                key = f"latents/{id}/{name}.{_image_format(data)}"
                self._blobs[key] = data
                stored_latents[name] = key
            image_key = None
            if image_bytes is not None:
                image_key = f"images/{id}.{_image_format(image_bytes)}"
                self._blobs[image_key] = image_bytes
            digest = hashlib.sha256(image_bytes if image_bytes is not None else id.encode()).hexdigest()
            attributes_copy = copy.deepcopy(dict(attributes or {}))
            for name, value in attributes_copy.items():
                if name not in self._attribute_types and value is not None:
                    self._attribute_types[name] = _attribute_type(value)
            tag_list = list(dict.fromkeys(tags))
            self._tags.update(tag_list)
            created = date_created or _iso(_DATE_ZERO + datetime.timedelta(seconds=self._added))
            self._added += 1
            record = Record(
                id=id, source=source, image_key=image_key, image_hash=f"sha256:{digest}", width=int(width or 0),
                height=int(height or 0), tags=tag_list, attributes=attributes_copy, latents=stored_latents,
                coca_embedding=None if coca_embedding is None else [float(x) for x in coca_embedding],
                coca_author=coca_author, duplicate_state=duplicate_state, date_created=created,
                date_updated=created, author=author, original_url=original_url, datasets=list(datasets),
                shard=shard_of(id),
            )
            position = bisect.bisect_left(self._ids, id)
            if id in self._records:
                self._sorted[position] = record
            else:
                self._ids.insert(position, id)
                self._sorted.insert(position, record)
            self._records[id] = record
            self._changed.notify_all()
        return record

    def remove_image(self, image_id: str) -> None:
        """Deletes a record (its blobs stay in the store, as S3 objects do)."""
        with self._changed:
            del self._records[image_id]
            position = bisect.bisect_left(self._ids, image_id)
            del self._ids[position], self._sorted[position]

    def add_synthetic(
        self, count: int, *, seed: int = 0, prefix: str = "img_", start: int = 0,
        sources: tuple[str, ...] = ("SRC_A", "SRC_B"), embeddings: bool = True,
    ) -> list[str]:
        """Adds `count` records `<prefix>0000`, ... (numbered from `start`),
        deterministic by `seed` and index (see `synthetic_record`)."""
        ids = []
        for index in range(start, start + count):
            kwargs = synthetic_record(index, seed=seed, prefix=prefix, sources=sources, embeddings=embeddings)
            ids.append(self.add_image(**kwargs).id)
        return ids

    def add_tag(self, *names: str) -> None:
        """Makes tags known (valid in tag filters) without any record having them."""
        with self._changed:
            self._tags.update(names)

    def add_latent_type(self, name: str, *, is_mask: bool = False) -> None:
        with self._changed:
            self._latent_types[name] = is_mask

    def define_attribute(self, name: str, kind: str, *, indexed: bool = True) -> None:
        """Sets an attribute's type ("number", "boolean", "string", "object")
        and whether it is indexed (filterable); by default the first value
        added decides, arrays and objects are not indexed."""
        if kind not in ("number", "boolean", "string", "object"):
            raise ValueError(kind)
        with self._changed:
            self._attribute_types[name] = (kind, indexed and kind != "object")

    def records(self) -> list[Record]:
        """The records in id order (copies: editing them changes nothing)."""
        with self._changed:
            return [copy.deepcopy(r) for r in self._sorted]

    def record(self, image_id: str) -> Record:
        with self._changed:
            return copy.deepcopy(self._records[image_id])

    def blob(self, key: str) -> bytes:
        with self._changed:
            return self._blobs[key]

    def blob_key(self, image_id: str, kind: str = "image") -> str:
        """The key of a record's image (`kind="image"`) or latent/mask file."""
        with self._changed:
            record = self._records[image_id]
            key = record.image_key if kind == "image" else record.latents.get(kind)
        if key is None:
            raise KeyError(f"{image_id} has no {kind} file")
        return key

    # -- auth --------------------------------------------------------------

    def add_token(self, key: str, *, permission: bool = True, active: bool = True) -> None:
        with self._changed:
            self._users[key] = _User(active=active, permission=permission)

    def revoke_token(self, key: str | None = None) -> None:
        """Forgets a key (default: `token`): its requests get 403 "Invalid token."."""
        with self._changed:
            self._users.pop(key or self.token, None)

    # -- clock and blob URLs -----------------------------------------------

    def now(self) -> float:
        with self._changed:
            return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        with self._changed:
            self._clock_offset += seconds

    def expire_blob_urls(self) -> None:
        """Moves the clock past the lifetime of every URL issued so far."""
        self.advance_clock(self.blob_ttl_s + 1)

    def expire_blob(self, image_id: str, kind: str = "image") -> None:
        """Expires the URLs issued so far for one blob; later ones work."""
        key = self.blob_key(image_id, kind)
        with self._changed:
            self._expired_below[key] = self._signed + 1

    def sign(self, key: str) -> str:
        """A fresh presigned URL for a blob key."""
        with self._changed:
            self._signed += 1
            number = self._signed
            issued = int(time.time() + self._clock_offset)
        date = datetime.datetime.fromtimestamp(issued, datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        expires = int(self.blob_ttl_s)
        credential = f"DATAROOMTEST{number}/{date[:8]}/us-east-1/s3/aws4_request"
        signature = self._signature(key, credential, date, expires)
        query = urllib.parse.urlencode([
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"), ("X-Amz-Credential", credential), ("X-Amz-Date", date),
            ("X-Amz-Expires", str(expires)), ("X-Amz-SignedHeaders", "host"), ("X-Amz-Signature", signature),
        ])
        return f"{self.base_url}/blobs/{urllib.parse.quote(key)}?{query}"

    def sign_blob(self, image_id: str, kind: str = "image") -> str:
        return self.sign(self.blob_key(image_id, kind))

    def _signature(self, key: str, credential: str, date: str, expires: int) -> str:
        message = f"{key}\n{credential}\n{date}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    # -- faults ------------------------------------------------------------

    def add_page_fault(self, fault: PageFault) -> PageFault:
        with self._changed:
            self._page_faults.append(fault)
        return fault

    def fail_pages(self, status: int = 500, *, first: int = 1, times: int = 1, **kwargs: Any) -> PageFault:
        """Shorthand: `status` on page requests `first`..`first+times-1`."""
        return self.add_page_fault(PageFault(status=status, first=first, times=times, **kwargs))

    def set_blob_fault(self, image_id: str | None, kind: str = "image", fault: BlobFault | None = None) -> None:
        """Sets (or with None clears) the fault of one blob; `image_id=None`
        sets the fault of every blob without its own."""
        key = None if image_id is None else self.blob_key(image_id, kind)
        with self._changed:
            if fault is None:
                self._blob_faults.pop(key, None)
            else:
                self._blob_faults[key] = fault

    def clear_faults(self) -> None:
        with self._changed:
            self._page_faults.clear()
            self._blob_faults.clear()
            self._expired_below.clear()

    # -- the log -----------------------------------------------------------

    def requests(self, endpoint: str | None = None) -> list[RequestRecord]:
        """The log, optionally of one endpoint (`list`, `random`, `record`,
        `count`, `blob`, `api`, `other`, or `page` for list + random)."""
        kinds = ("list", "random") if endpoint == "page" else (endpoint,)
        with self._changed:
            return [r for r in self._log if endpoint is None or r.endpoint in kinds]

    def clear_log(self) -> None:
        with self._changed:
            self._log.clear()

    def bytes_sent(self, endpoint: str | None = None) -> int:
        return sum(r.bytes_sent for r in self.requests(endpoint))

    def wait_for_requests(self, endpoint: str | None, count: int, timeout_s: float = 10.0) -> list[RequestRecord]:
        """Waits until `count` requests of `endpoint` are logged; a request is
        logged once its response is written or cut."""
        self.wait_until(lambda: len(self.requests(endpoint)) >= count, timeout_s, f"{count} requests of {endpoint}")
        return self.requests(endpoint)

    def _arrival(self) -> int:
        with self._changed:
            self._arrived += 1
            return self._arrived

    def _record_request(self, record: RequestRecord) -> None:
        with self._changed:
            # In arrival order, although logged when the response is written.
            position = len(self._log)
            while position > 0 and self._log[position - 1].sequence > record.sequence:
                position -= 1
            self._log.insert(position, record)
            self._changed.notify_all()

    def _wait(self, seconds: float) -> bool:
        """Waits on the stop event; True when the server is stopping."""
        return seconds > 0 and self._stopping.wait(seconds)

    # -- the API -----------------------------------------------------------

    def _page_fault(self, endpoint: str) -> PageFault | None:
        with self._changed:
            chosen = None
            for fault in self._page_faults:
                if endpoint in fault.endpoints:
                    fault.seen += 1
                    if chosen is None and fault.first <= fault.seen < fault.first + fault.times:
                        chosen = fault
            return chosen

    def _authenticate(self, raw_header: str | None) -> None:
        # DRF TokenAuthentication: the header as ISO-8859-1 bytes, split on whitespace.
        parts = (raw_header or "").encode("iso-8859-1", "replace").split()
        if not parts or parts[0].lower() != b"token":
            raise _ApiError(403, {"detail": AUTH_ERRORS["missing"]})
        if len(parts) == 1:
            raise _ApiError(403, {"detail": AUTH_ERRORS["empty"]})
        if len(parts) > 2:
            raise _ApiError(403, {"detail": AUTH_ERRORS["spaces"]})
        try:
            key = parts[1].decode("utf-8")
        except UnicodeError:
            raise _ApiError(403, {"detail": AUTH_ERRORS["undecodable"]}) from None
        with self._changed:
            user = self._users.get(key)
        if user is None:
            raise _ApiError(403, {"detail": AUTH_ERRORS["unknown"]})
        if not user.active:
            raise _ApiError(403, {"detail": AUTH_ERRORS["inactive"]})
        if not user.permission:
            raise _ApiError(403, {"detail": AUTH_ERRORS["permission"]})

    def _api(self, endpoint: str, path: str, query: list[tuple[str, str]], host: str, image_id: str | None) -> Any:
        params = {name: value for name, value in query if value != ""}
        if endpoint == "record":
            with self._changed:
                record = copy.deepcopy(self._records.get(image_id or ""))
            if record is None:
                raise _ApiError(404, {"detail": "Not found."})
            return self._render(record, _fields(params), _latent_filter(params))
        cursor = params.get("cursor") if endpoint == "list" else None
        with self._changed:
            predicate = self._filters(params)
            records = self._sorted[bisect.bisect_right(self._ids, cursor) if cursor is not None else 0:]
        if endpoint != "random":
            partition = _partition(params)
            if partition is not None:
                count, index = partition
                predicate = _both(predicate, lambda r: r.shard % count == index)
        if endpoint == "count":
            return {"count": sum(1 for r in records if predicate(r))}
        page_size = _drf_int(params, "page_size", 1, PAGE_SIZE_MAX, PAGE_SIZE_DEFAULT)
        fields, latent_filter = _fields(params), _latent_filter(params)
        if endpoint == "random":
            prefix_length = _drf_int(params, "prefix_length", 1, 64, 5)
            num_prefixes = _drf_int(params, "num_prefixes", 1, 300, 100)
            chosen = self._random_page([r for r in records if predicate(r)], page_size, prefix_length, num_prefixes)
            return {"next": None, "results": [self._render(r, fields, latent_filter) for r in chosen]}
        page = []
        for record in records:
            if predicate(record):
                page.append(record)
                if len(page) == page_size:
                    break
        next_url = None
        if page:
            next_url = f"http://{host}{path}?{_with_cursor(query, page[-1].id)}"
        return {"next": next_url, "results": [self._render(r, fields, latent_filter) for r in page]}

    def _random_page(self, matching: list[Record], page_size: int, prefix_length: int, num_prefixes: int) -> list[Record]:
        with self._changed:
            if self.random_mode == "sample":
                chosen = self._random.sample(range(len(matching)), min(page_size, len(matching)))
                return [matching[i] for i in sorted(chosen)]
            prefixes = tuple("".join(self._random.choice("0123456789abcdef") for _ in range(prefix_length))
                             for _ in range(num_prefixes))
        return [r for r in matching if r.image_hash[len("sha256:"):].startswith(prefixes)][:page_size]

    def _filters(self, params: dict[str, str]) -> Callable[[Record], bool]:
        """Validates the filter parameters (raising the first error) and
        returns the predicate they make. Call with the lock held."""
        checks: list[Callable[[Record], bool]] = []
        numeric_errors = {}
        for name, value in params.items():
            if name in _NUMERIC_FILTERS:
                number = _number(value)
                if number is None:
                    numeric_errors[name] = ["Enter a number."]
                else:
                    checks.append(_numeric_check(*_NUMERIC_FILTERS[name], number))
        if numeric_errors:
            raise _ApiError(400, numeric_errors)

        char = {name: value.strip() for name, value in params.items()}
        for name, test in (("tags", lambda t, want: any(x in t for x in want)),
                           ("tags__all", lambda t, want: all(x in t for x in want)),
                           ("tags__ne", lambda t, want: not any(x in t for x in want)),
                           ("tags__ne_all", lambda t, want: not all(x in t for x in want))):
            if char.get(name):
                wanted = _items(char[name])
                missing = [t for t in wanted if t not in self._tags]
                if missing:
                    raise _ApiError(400, ["One or more tags do not exist: " + ", ".join(f"'{t}'" for t in missing)])
                checks.append(lambda r, want=wanted, test=test: test(set(r.tags), want))
        for name, has in (("has_latents", True), ("has_masks", True), ("lacks_latents", False), ("lacks_masks", False)):
            if char.get(name):
                types = _items(char[name])
                for latent_type in types:
                    if latent_type not in self._latent_types:
                        raise _ApiError(400, [f"Latent type '{latent_type}' does not exist"])
                if has:
                    checks.append(lambda r, types=types: all(r.has_file(t) for t in types))
                else:
                    checks.append(lambda r, types=types: not any(r.has_file(t) for t in types))
        if char.get("duplicate_state"):
            value = char["duplicate_state"]
            states = {"1": 1, "2": 2, "None": None}
            if value not in states:
                raise _ApiError(400, [f"Invalid value for duplicate_state: {value}"])
            checks.append(lambda r, state=states[value]: r.duplicate_state == state)
        if char.get("attributes"):
            checks.extend(self._attribute_checks(char["attributes"]))

        if char.get("sources"):
            included = set(char["sources"].split(","))
            checks.append(lambda r: r.source in included)
        if char.get("sources__ne"):
            excluded = set(char["sources__ne"].split(","))
            checks.append(lambda r: r.source not in excluded)
        if char.get("source"):
            checks.append(lambda r, s=char["source"]: r.source == s)
        for name, want_empty in (("tags__empty", "tags"), ("source__empty", "source"),
                                 ("coca_embedding__empty", "coca_embedding")):
            flag = {"true": True, "True": True, "false": False, "False": False}.get(char.get(name, ""))
            if flag is not None:
                checks.append(lambda r, flag=flag, what=want_empty: (not getattr(r, what)) == flag)
        if char.get("has_attributes"):
            names = _items(char["has_attributes"])
            checks.append(lambda r, names=names: all(r.attributes.get(n) is not None for n in names))
        if char.get("lacks_attributes"):
            names = _items(char["lacks_attributes"])
            checks.append(lambda r, names=names: all(r.attributes.get(n) is None for n in names))
        return lambda record: all(check(record) for check in checks)

    def _attribute_checks(self, value: str) -> list[Callable[[Record], bool]]:
        checks = []
        for pair in value.split(","):
            if pair.count(":") != 1:
                raise _ApiError(400, ["Invalid filter value for attributes"])
            name, wanted = pair.split(":")
            comparator = "eq"
            base, sep, suffix = name.rpartition("__")
            if sep and suffix in _COMPARATORS:
                name, comparator = base, suffix
            if name not in self._attribute_types:
                raise _ApiError(400, [f"Attribute '{name}' does not exist"])
            kind, indexed = self._attribute_types[name]
            if not indexed:
                raise _ApiError(400, [f"Attribute '{name}' is not indexed"])
            if comparator not in _ALLOWED_COMPARATORS[kind]:
                raise _ApiError(400, [f"Comparator '{comparator}' is not allowed for attribute '{name}' of type {kind}"])
            converted = _convert_attribute(kind, wanted)
            if converted is None:
                raise _ApiError(400, [f"Invalid value '{wanted}' for attribute '{name}' of type {kind}"])
            checks.append(_attribute_check(name, kind, comparator, converted))
        return checks

    def _render(self, record: Record, fields: list[str], latent_filter: set[str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in fields:
            if name == "image_direct_url":
                out[name] = self.sign(record.image_key) if record.image_key else None
            elif name == "latents":
                out[name] = [
                    {"latent_type": t, "file_direct_url": self.sign(key) if key else None,
                     "is_mask": self._latent_types.get(t, False)}
                    for t, key in record.latents.items() if latent_filter is None or t in latent_filter
                ]
            elif name == "coca_embedding":
                out[name] = None if record.coca_embedding is None else {
                    "vector": list(record.coca_embedding), "author": record.coca_author}
            elif name == "image":
                out[name] = record.image_key
            elif name == "tags":
                out[name] = list(record.tags) or None
            elif name in ("thumbnail", "thumbnail_direct_url", "thumbnail_error"):
                out[name] = None
            elif name == "related_images":
                out[name] = []
            else:
                value = getattr(record, name)
                out[name] = copy.deepcopy(value) if isinstance(value, (list, dict)) else value
        return out

    # -- blobs -------------------------------------------------------------

    def _blob_check(self, key: str, query: dict[str, str], headers: Mapping[str, str]) -> tuple[int, str, str] | None:
        """The (status, code, message) an S3 store would refuse with, or None."""
        with self._changed:
            data = self._blobs.get(key)
            expired_below = self._expired_below.get(key, 0)
        if self.reject_blob_authorization and any(k.lower() == "authorization" for k in headers):
            return 400, "InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified"
        try:
            credential, date = query["X-Amz-Credential"], query["X-Amz-Date"]
            expires, signature = int(query["X-Amz-Expires"]), query["X-Amz-Signature"]
            issued = datetime.datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()
            number = int(credential.split("/", 1)[0].removeprefix("DATAROOMTEST"))
        except (KeyError, ValueError):
            return 403, "AccessDenied", "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters"
        if not hmac.compare_digest(signature, self._signature(key, credential, date, expires)):
            return 403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided."
        if self.now() > issued + expires or number < expired_below:
            return 403, "AccessDenied", "Request has expired"
        if data is None:
            return 404, "NoSuchKey", "The specified key does not exist."
        return None

    def _blob_fault(self, key: str) -> BlobFault | None:
        with self._changed:
            fault = self._blob_faults.get(key) or self._blob_faults.get(None)
            if fault is None or (fault.times is not None and fault.seen >= fault.times):
                return None
            fault.seen += 1
            return fault


def _both(first: Callable[[Record], bool], second: Callable[[Record], bool]) -> Callable[[Record], bool]:
    return lambda record: first(record) and second(record)


def _items(value: str) -> list[str]:
    """A comma-separated list, empty items dropped, duplicates kept once."""
    return list(dict.fromkeys(item for item in value.split(",") if item))


def _fields(params: dict[str, str]) -> list[str]:
    if not params.get("fields"):
        return list(DEFAULT_FIELDS)
    chosen = ["id"]
    for name in params["fields"].split(","):
        if name in AVAILABLE_FIELDS and name not in chosen:
            chosen.append(name)
    return chosen


def _latent_filter(params: dict[str, str]) -> set[str] | None:
    value = params.get("return_latents")
    return None if not value else set(_items(value))


def _drf_int(params: dict[str, str], name: str, low: int, high: int, default: int) -> int:
    """A DRF IntegerField: trailing `.0` accepted, bounds checked."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        if len(raw) > 1000:
            raise ValueError(raw)
        value = int(re.sub(r"\.0*\s*$", "", raw))
    except ValueError:
        raise _ApiError(400, {name: ["A valid integer is required."]}) from None
    if value < low:
        raise _ApiError(400, {name: [f"Ensure this value is greater than or equal to {low}."]})
    if value > high:
        raise _ApiError(400, {name: [f"Ensure this value is less than or equal to {high}."]})
    return value


def _partition(params: dict[str, str]) -> tuple[int, int] | None:
    count_raw, index_raw = params.get("partitions_count"), params.get("partition")
    if count_raw is None and index_raw is None:
        return None
    if count_raw is None or index_raw is None:
        raise _ApiError(400, [PARTITION_ERRORS["both"]])
    count = _int_or_none(count_raw)
    if count is None or count <= 0:
        raise _ApiError(400, [PARTITION_ERRORS["count"]])
    index = _int_or_none(index_raw)
    if index is None or index < 0:
        raise _ApiError(400, [PARTITION_ERRORS["partition"]])
    if not 2 <= count <= PARTITIONS_MAX:
        raise _ApiError(400, [PARTITION_ERRORS["count_range"]])
    if index >= count:
        raise _ApiError(400, [PARTITION_ERRORS["partition_range"].format(last=count - 1)])
    return count, index


def _int_or_none(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


def _number(raw: str) -> decimal.Decimal | None:
    """django-filter's NumberFilter (a DecimalField): finite decimals only."""
    try:
        value = decimal.Decimal(raw.strip())
    except decimal.InvalidOperation:
        return None
    return value if value.is_finite() else None


def _numeric_check(field_name: str, op: str, number: decimal.Decimal) -> Callable[[Record], bool]:
    def check(record: Record) -> bool:
        value = decimal.Decimal(repr(getattr(record, field_name)))
        return {"eq": value == number, "gte": value >= number, "lte": value <= number,
                "gt": value > number, "lt": value < number}[op]
    return check


def _attribute_type(value: Any) -> tuple[str, bool]:
    if isinstance(value, bool):
        return "boolean", True
    if isinstance(value, (int, float)):
        return "number", True
    if isinstance(value, str):
        return "string", True
    return "object", False


def _convert_attribute(kind: str, raw: str) -> Any:
    if kind == "number":
        try:
            value = float(raw)
        except ValueError:
            return None
        return value if math.isfinite(value) else None
    if kind == "boolean":
        return {"true": True, "false": False}.get(raw.lower())
    return raw


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _attribute_check(name: str, kind: str, comparator: str, wanted: Any) -> Callable[[Record], bool]:
    positive = comparator.removeprefix("not_") if comparator != "ne" else "eq"

    def holds(value: Any) -> bool:
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            return {"eq": value == wanted, "lt": value < wanted, "lte": value <= wanted,
                    "gt": value > wanted, "gte": value >= wanted}[positive]
        if kind == "boolean":
            return isinstance(value, bool) and value == wanted
        if not isinstance(value, str):
            return False
        if positive == "eq":
            return value == wanted
        if positive == "prefix":
            return value.startswith(wanted)
        have, want = _words(value), _words(wanted)
        if positive == "match":
            return any(word in have for word in want)
        return bool(want) and any(have[i:i + len(want)] == want for i in range(len(have) - len(want) + 1))

    if comparator in _NEGATED:
        return lambda record: not holds(record.attributes.get(name))
    return lambda record: name in record.attributes and holds(record.attributes[name])


def _with_cursor(query: list[tuple[str, str]], cursor: str) -> str:
    """The query with `cursor` replaced in place (or appended), urlencoded."""
    pairs: list[tuple[str, str]] = []
    replaced = False
    for name, value in query:
        if name == "cursor":
            if not replaced:
                pairs.append(("cursor", cursor))
                replaced = True
            continue
        pairs.append((name, value))
    if not replaced:
        pairs.append(("cursor", cursor))
    return urllib.parse.urlencode(pairs)


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _to_bytes(data: bytes | Image.Image | None) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    out = io.BytesIO()
    data.save(out, "PNG")
    return out.getvalue()


# -- synthetic data ----------------------------------------------------------

SYNTHETIC_SIZES = ((32, 24), (24, 32), (48, 48), (64, 40), (40, 64), (16, 16))
SYNTHETIC_TAGS = ("t1", "t2", "t3")
SYNTHETIC_COLOURS = ("red", "green", "blue", "white")
SYNTHETIC_SHAPES = ("square", "circle", "triangle")


def image_bytes(seed: int, size: tuple[int, int] = (32, 24), fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A small smooth random image, encoded by Pillow."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    small = rng.integers(0, 256, (max(1, size[1] // 4), max(1, size[0] // 4), channels), dtype=np.uint8)
    image = Image.fromarray(small[..., 0] if channels == 1 else small, mode).resize(size, Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def synthetic_record(
    index: int, *, seed: int = 0, prefix: str = "img_", sources: tuple[str, ...] = ("SRC_A", "SRC_B"),
    embeddings: bool = True,
) -> dict[str, Any]:
    """The `add_image` arguments of synthetic record `index`. By index `i`:
    size `SYNTHETIC_SIZES[i % 6]`, source `sources[i % len]`, tags the bits of
    `i % 8` over t1 t2 t3 (i % 8 == 0: no tags), JPEG image (PNG when i % 4 ==
    3), attributes caption/score/index/flag (none when i % 10 == 9), a
    `segmentation_mask` PNG L unless i % 3 == 2, a raw `latent_vae` when i is
    even, a `masked_image` JPEG when i % 3 == 0, duplicate_state 1, 2, None by
    i % 3, a 768-float coca embedding when i is even. Pixels and scores depend
    on `seed` too."""
    rng = np.random.default_rng([seed, index])
    size = SYNTHETIC_SIZES[index % len(SYNTHETIC_SIZES)]
    pixel_seed = seed * 1_000_003 + index
    attributes: dict[str, Any] = {}
    if index % 10 != 9:
        attributes = {
            "caption": f"a {SYNTHETIC_COLOURS[index % 4]} {SYNTHETIC_SHAPES[index % 3]}",
            "score": round(float(rng.random()), 3), "index": index, "flag": index % 2 == 0,
        }
    masks = {} if index % 3 == 2 else {"segmentation_mask": image_bytes(pixel_seed + 1, size, "PNG", "L")}
    latents: dict[str, bytes] = {}
    if index % 2 == 0:
        latents["latent_vae"] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    if index % 3 == 0:
        latents["masked_image"] = image_bytes(pixel_seed + 2, size)
    embedding = None
    if embeddings and index % 2 == 0:
        embedding = [float(x) for x in rng.standard_normal(768).astype(np.float32)]
    return {
        "id": f"{prefix}{index:04d}", "source": sources[index % len(sources)],
        "image": image_bytes(pixel_seed, size, "PNG" if index % 4 == 3 else "JPEG"),
        "tags": [t for bit, t in enumerate(SYNTHETIC_TAGS) if (index % 8) >> bit & 1],
        "attributes": attributes, "masks": masks, "latents": latents, "coca_embedding": embedding,
        "coca_author": "coca" if embedding is not None else None, "duplicate_state": (1, 2, None)[index % 3],
    }


# -- HTTP --------------------------------------------------------------------


class _Server(TrackingHTTPServer):
    owner: DataroomServer


_ROUTES = (
    (re.compile(r"/api/images/"), "list"),
    (re.compile(r"/api/images/random/"), "random"),
    (re.compile(r"/api/images/count/"), "count"),
    (re.compile(r"/api/images/([^/]+)/"), "record"),
)

_DJANGO_500 = (b'<!doctype html>\n<html lang="en">\n<head>\n  <title>Server Error (500)</title>\n</head>\n<body>\n'
               b"  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n")


def _default_fault_body(status: int) -> tuple[bytes, str]:
    if status >= 500:
        if status == 500:
            return _DJANGO_500, "text/html; charset=utf-8"
        reason = http.server.BaseHTTPRequestHandler.responses.get(status, ("Error",))[0]
        return f"<html><body><h1>{status} {reason}</h1></body></html>\n".encode(), "text/html"
    detail = {
        400: ["Bad request."], 401: {"detail": "Authentication credentials were not provided."},
        403: {"detail": AUTH_ERRORS["permission"]}, 404: {"detail": "Not found."},
        429: {"detail": "Request was throttled. Expected available in 1 second."},
    }.get(status, {"detail": "Error."})
    return _json(detail), "application/json"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _s3_error(code: str, message: str, key: str) -> bytes:
    request_id = hashlib.sha256(f"{key}{time.monotonic_ns()}".encode()).hexdigest()[:16].upper()
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Key>{key}</Key><RequestId>{request_id}</RequestId><HostId>dataroom-test</HostId></Error>").encode()


_S3_ERRORS = {
    403: ("AccessDenied", "Request has expired"),
    404: ("NoSuchKey", "The specified key does not exist."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


class _Handler(LocalHandler):
    server_version = "DataroomTestServer/1"
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        owner = self.server.owner
        sequence = owner._arrival()
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path, _, raw_query = self.path.partition("?")
        query = urllib.parse.parse_qsl(raw_query, keep_blank_values=True)
        endpoint, image_id = "other", None
        if path.startswith("/blobs/"):
            endpoint = "blob"
        elif path.startswith("/api/"):
            endpoint = "api"
            for pattern, name in _ROUTES:
                match = pattern.fullmatch(path)
                if match:
                    endpoint, image_id = name, (match.group(1) if match.groups() else None)
                    break
        status, sent, complete = 0, 0, True
        try:
            if owner._wait(owner.latency_s):
                raise _Cut(0, 0)
            if endpoint == "blob":
                status, sent = self._blob(owner, urllib.parse.unquote(path[len("/blobs/"):]), dict(query))
            elif endpoint == "other":
                status, sent = self._send(404, b"<h1>Not Found</h1>\n", "text/html")
            else:
                status, sent = self._api(owner, endpoint, path, query, raw_query, image_id)
        except _Cut as cut:
            status, sent, complete = int(cut.args[0]), int(cut.args[1]), False
            self.close_connection = True
        except OSError:
            complete = False
            self.close_connection = True
        finally:
            owner._record_request(RequestRecord(
                method=self.command, path=path, query=tuple(query), raw_query=raw_query,
                headers=dict(self.headers.items()), status=status, bytes_sent=sent, endpoint=endpoint, complete=complete,
                sequence=sequence,
            ))

    def _api(self, owner: DataroomServer, endpoint: str, path: str, query: list[tuple[str, str]], raw_query: str,
             image_id: str | None) -> tuple[int, int]:
        if endpoint == "api" and not path.endswith("/") and any(p.fullmatch(path + "/") for p, _ in _ROUTES):
            # Django's APPEND_SLASH, before any view (so before authentication).
            location = path + "/" + ("?" + raw_query if raw_query else "")
            return self._send(301, b"", "text/html; charset=utf-8", {"Location": location})
        if endpoint in ("list", "random", "record", "count"):
            fault = owner._page_fault(endpoint)
            if fault is not None:
                body, content_type = _default_fault_body(fault.status)
                headers = {}
                if fault.status == 429 or fault.retry_after is not None:
                    headers["Retry-After"] = fault.retry_after or "1"
                return self._send(fault.status, fault.body if fault.body is not None else body,
                                  fault.content_type or content_type, headers)
        try:
            owner._authenticate(self.headers.get("Authorization"))
            if endpoint == "api":
                raise _ApiError(404, {"detail": "Not found."})
            if self.command != "GET":
                raise _ApiError(405, {"detail": f'Method "{self.command}" not allowed.'})
            host = self.headers.get("Host") or f"127.0.0.1:{owner.port}"
            body = owner._api(endpoint, path, query, host, image_id)
        except _ApiError as error:
            return self._send(error.status, _json(error.body), "application/json")
        return self._send(200, _json(body), "application/json")

    def _blob(self, owner: DataroomServer, key: str, query: dict[str, str]) -> tuple[int, int]:
        fault = owner._blob_fault(key)
        if fault is not None and owner._wait(fault.delay_s):
            raise _Cut(0, 0)
        refusal = owner._blob_check(key, query, self.headers)
        if refusal is None and fault is not None and fault.status is not None:
            code, message = _S3_ERRORS.get(fault.status, ("InternalError", "We encountered an internal error."))
            refusal = (fault.status, code, message)
        if refusal is not None:
            return self._send(refusal[0], _s3_error(refusal[1], refusal[2], key), "application/xml")
        data = owner.blob(key)
        content_type = _CONTENT_TYPES[_image_format(data)]
        if fault is not None and fault.body is not None:
            data = fault.body
        if fault is not None and fault.truncate_to is not None:
            data = data[:fault.truncate_to]
        cut_at = fault.cut_after_bytes if fault is not None else None
        return self._send(200, data, content_type, cut_after=cut_at)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None,
              cut_after: int | None = None) -> tuple[int, int]:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = 0
        while sent < len(body):
            if cut_after is not None and sent >= cut_after:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                raise _Cut(status, sent)
            end = min(len(body), sent + _CHUNK_BYTES)
            if cut_after is not None and cut_after > sent:
                end = min(end, cut_after)
            self.wfile.write(body[sent:end])
            sent = end
        self.wfile.flush()
        return status, sent


__all__ = [
    "AUTH_ERRORS", "AVAILABLE_FIELDS", "DEFAULT_FIELDS", "INACTIVE_TOKEN", "NO_PERMISSION_TOKEN", "PARTITION_ERRORS",
    "TOKEN", "BlobFault", "DataroomServer", "PageFault", "Record", "RequestRecord", "image_bytes", "murmur3_x86_32",
    "partition_of", "routing_hash", "shard_of", "synthetic_record",
]
