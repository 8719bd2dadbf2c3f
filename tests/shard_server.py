"""A local HTTP/1.1 shard server with faults on demand, for the WebDataset
source's tests, and a helper that writes WebDataset shards.

`ShardServer` serves byte strings from memory on 127.0.0.1 (ephemeral port),
one thread per connection, with keep-alive, single-range `Range:` requests
(206 / `Content-Range`, 416 when unsatisfiable), an optional TLS layer whose
CA is made at test time with `trustme`, and a per-request log (path, range
asked, status, body bytes sent, client port, whether the body was complete).
Faults are set per path with `Fault`:

    with ShardServer() as server:
        server.add("/s0.tar", data, Fault(fail_times=2, cut_after_bytes=4096))
        urllib.request.urlopen(server.url("/s0.tar"))   # 500, 500, then cut
        server.wait_for_requests("/s0.tar", 3)
        server.bytes_sent("/s0.tar")

Faults are counted per path and applied in this order, each to the first
requests only: a fixed `status` (404, 403, ...) on every request;
`fail_times` × `fail_status` (500); `too_many_times` × 429 with
`Retry-After: retry_after`; then the body, where `cut_after_bytes` closes (or
resets) the connection after that many body bytes for the first `cut_times`
requests and `stall_after_bytes` stops sending for `stall_s` seconds for the
first `stall_times` requests. `body` replaces the content (a non-tar body
served with 200); `ignore_range` answers every request with 200 and the full
body, as a server without Range support does.

`add_pages(path, pages)` serves a paginated JSON listing (as Google Cloud
Storage's JSON API does): the body is `pages[<pageToken query value>]`, `""`
for the first page, 400 for an unknown token; faults apply as above.

A stall waits on the server's stop event, so stopping never waits for it.
"""

from __future__ import annotations

import io
import json
import socket
import ssl
import struct
import tarfile
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from local_http_server import HANDLER_TIMEOUT_S, LocalHandler, LocalHttpServer, TrackingHTTPServer
from PIL import Image

# Body bytes written per send, so cuts and stalls land inside a body.
_CHUNK_BYTES = 16 * 1024


@dataclass
class Fault:
    """What to do wrong for one path; see the module docstring."""

    status: int | None = None
    fail_times: int = 0
    fail_status: int = 500
    too_many_times: int = 0
    retry_after: str = "1"
    cut_after_bytes: int | None = None
    cut_times: int = 1
    cut_with_reset: bool = False
    stall_after_bytes: int | None = None
    stall_s: float = 0.0
    stall_times: int = 1
    body: bytes | None = None
    ignore_range: bool = False


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    status: int
    bytes_sent: int
    complete: bool
    client_port: int
    headers: dict[str, str]
    query: str = ""


@dataclass
class _Resource:
    data: bytes
    fault: Fault = field(default_factory=Fault)
    pages: dict[str, bytes] | None = None
    requests: int = 0
    failures: int = 0
    too_many: int = 0
    cuts: int = 0
    stalls: int = 0


class _Cut(Exception):
    """The handler dropped the connection on purpose."""


class ShardServer(LocalHttpServer):
    """Serves in-memory files over HTTP/1.1 (or HTTPS with `tls=True`).

    Use as a context manager; `url(path)` gives the address. Thread-safe: the
    test thread may add files and read the log while requests run.
    `wait_until` wakes on every logged request and failed TLS handshake.
    """

    def __init__(self, *, tls: bool = False) -> None:
        self._resources: dict[str, _Resource] = {}
        self._log: list[RequestRecord] = []
        self.handshake_failures = 0
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
        self.ca_path: Path | None = None
        self._ssl_context: ssl.SSLContext | None = None
        if tls:
            self._setup_tls()
        super().__init__(_Handler, name="shard-server", server_class=_Server)

    def _setup_tls(self) -> None:
        import trustme

        ca = trustme.CA()
        certificate = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        self._ssl_context = context
        self._tls_dir = tempfile.TemporaryDirectory(prefix="shard-server-ca-")
        self.ca_path = Path(self._tls_dir.name) / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))

    # -- lifecycle ---------------------------------------------------------

    def _stopped(self) -> None:
        # Clients read the CA file; it goes once nothing is served any more.
        if self._tls_dir is not None:
            self._tls_dir.cleanup()

    # -- content -----------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self._ssl_context is not None else "http"

    def url(self, path: str) -> str:
        assert path.startswith("/"), path
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes, fault: Fault | None = None) -> str:
        """Serves `data` at `path` (with `fault`, if given); returns its URL."""
        with self._changed:
            self._resources[path] = _Resource(data=data, fault=fault or Fault())
        return self.url(path)

    def add_pages(self, path: str, pages: dict[str, bytes], fault: Fault | None = None) -> str:
        """Serves a listing at `path`: the page is chosen by the `pageToken`
        query value (`""` when absent); returns the URL of `path`."""
        with self._changed:
            self._resources[path] = _Resource(data=b"", fault=fault or Fault(), pages=dict(pages))
        return self.url(path)

    def add_file(self, path: str, file: Path, fault: Fault | None = None) -> str:
        return self.add(path, Path(file).read_bytes(), fault)

    def set_fault(self, path: str, fault: Fault) -> None:
        """Replaces the fault of `path` and resets its counters."""
        with self._changed:
            resource = self._resources[path]
            self._resources[path] = _Resource(data=resource.data, fault=fault, pages=resource.pages)

    # -- the log -----------------------------------------------------------

    def requests(self, path: str | None = None) -> list[RequestRecord]:
        with self._changed:
            return [r for r in self._log if path is None or r.path == path]

    def bytes_sent(self, path: str | None = None) -> int:
        """Body bytes sent for `path` (or all paths), over every request."""
        return sum(r.bytes_sent for r in self.requests(path))

    def wait_for_requests(self, path: str | None, count: int, timeout_s: float = 10.0) -> list[RequestRecord]:
        """Waits until `count` requests for `path` (None: any) are logged; a
        request is logged once its response is written or cut."""
        self.wait_until(lambda: len(self.requests(path)) >= count, timeout_s, f"{count} requests of {path}")
        return self.requests(path)

    def _record(self, record: RequestRecord) -> None:
        with self._changed:
            self._log.append(record)
            self._changed.notify_all()

    def _resource(self, path: str) -> _Resource | None:
        with self._changed:
            resource = self._resources.get(path)
            if resource is not None:
                resource.requests += 1
            return resource

    def _take(self, resource: _Resource, counter: str, times: int) -> bool:
        """True (and counts it) while the fault `counter` has uses left."""
        with self._changed:
            used = getattr(resource, counter)
            if used >= times:
                return False
            setattr(resource, counter, used + 1)
            return True


class _Server(TrackingHTTPServer):
    owner: ShardServer

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        context = self.owner._ssl_context
        if context is not None:
            # The handshake runs on the connection's thread, so a client that
            # never finishes it blocks no one else.
            request.settimeout(HANDLER_TIMEOUT_S)
            try:
                request = context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                with self.owner._changed:
                    self.owner.handshake_failures += 1
                    self.owner._changed.notify_all()
                return
        try:
            super().finish_request(request, client_address)
        finally:
            if context is not None:
                # socketserver closes the plain socket it accepted, which the
                # TLS socket took over.
                request.close()


class _Handler(LocalHandler):
    server_version = "ShardServer/1"
    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        path, _, query = self.path.partition("?")
        resource = owner._resource(path)
        range_header = self.headers.get("Range")
        status, sent, complete = 0, 0, True
        try:
            status, sent = self._respond(owner, resource, range_header, query)
        except _Cut as cut:
            status, sent, complete = int(cut.args[0]), int(cut.args[1]), False
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            complete = False
            self.close_connection = True
        finally:
            owner._record(RequestRecord(
                method="GET", path=path, range=range_header, status=status, bytes_sent=sent,
                complete=complete, client_port=self.client_address[1], headers=dict(self.headers.items()),
                query=query,
            ))

    def _respond(self, owner: ShardServer, resource: _Resource | None, range_header: str | None, query: str) -> tuple[int, int]:
        if resource is None:
            return self._error(404), 0
        fault = resource.fault
        if fault.status is not None:
            return self._error(fault.status), 0
        if owner._take(resource, "failures", fault.fail_times):
            return self._error(fault.fail_status), 0
        if owner._take(resource, "too_many", fault.too_many_times):
            return self._error(429, {"Retry-After": fault.retry_after}), 0
        if resource.pages is not None:
            return self._page(resource.pages, query)
        data = fault.body if fault.body is not None else resource.data
        start, end = 0, len(data)
        status = 200
        headers = {"Content-Type": "application/x-tar"}
        if not fault.ignore_range:
            headers["Accept-Ranges"] = "bytes"
            if range_header is not None:
                try:
                    parsed = _parse_range(range_header, len(data))
                except ValueError:
                    parsed = (0, len(data), False)
                if parsed is None:
                    return self._error(416, {"Content-Range": f"bytes */{len(data)}"}), 0
                start, end, partial = parsed
                if partial:
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        return status, self._send_body(owner, resource, data[start:end], status)

    def _page(self, pages: dict[str, bytes], query: str) -> tuple[int, int]:
        token = urllib.parse.parse_qs(query).get("pageToken", [""])[-1]
        page = pages.get(token)
        if page is None:
            return self._error(400), 0
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)
        self.wfile.flush()
        return 200, len(page)

    def _send_body(self, owner: ShardServer, resource: _Resource, body: bytes, status: int) -> int:
        fault = resource.fault
        cut_at = stall_at = None
        # A cut or stall counts against its `times` only when it lands inside this body.
        if fault.cut_after_bytes is not None and fault.cut_after_bytes < len(body):
            if owner._take(resource, "cuts", fault.cut_times):
                cut_at = fault.cut_after_bytes
        if fault.stall_after_bytes is not None and fault.stall_after_bytes < len(body):
            if owner._take(resource, "stalls", fault.stall_times):
                stall_at = fault.stall_after_bytes
        sent = 0
        while sent < len(body):
            if stall_at is not None and sent >= stall_at:
                self.wfile.flush()
                if owner._stopping.wait(fault.stall_s):
                    # Stopping drops the stalled response instead of finishing it.
                    self._cut(reset=False)
                    raise _Cut(status, sent)
                stall_at = None
            if cut_at is not None and sent >= cut_at:
                self._cut(fault.cut_with_reset)
                raise _Cut(status, sent)
            end = min(len(body), sent + _CHUNK_BYTES)
            for mark in (cut_at, stall_at):
                if mark is not None and mark > sent:
                    end = min(end, mark)
            self.wfile.write(body[sent:end])
            sent = end
        self.wfile.flush()
        return sent

    def _cut(self, reset: bool) -> None:
        self.wfile.flush()
        self.close_connection = True
        raw = self.connection
        if reset:
            # SO_LINGER 0: close() sends RST, the client reads ECONNRESET.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()
        else:
            raw.shutdown(socket.SHUT_RDWR)

    def _error(self, status: int, headers: dict[str, str] | None = None) -> int:
        # An HTML body, as real servers send: a client must never parse it as a tar.
        body = f"<html><body><h1>{status} {self.responses.get(status, ('',))[0]}</h1></body></html>\n".encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        return status


def _parse_range(header: str, size: int) -> tuple[int, int, bool] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` as (start, end, True), end
    exclusive; None when unsatisfiable (416). Several ranges or another unit
    are answered with the whole body, (0, size, False), as RFC 9110 allows;
    a malformed header raises ValueError (also answered with the whole body)."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return (0, size, False)
    first, dash, last = spec.strip().partition("-")
    if not dash:
        raise ValueError(header)
    if first == "":
        suffix = int(last)
        if suffix <= 0 or size == 0:
            return None
        return (max(0, size - suffix), size, True)
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        return None
    return (start, end, True)


# -- WebDataset shards -------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    path: Path
    keys: list[str]


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (32, 24)) -> bytes:
    """A small smooth random RGB image, encoded by Pillow."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, size[1] // 4), max(1, size[0] // 4), 3), dtype=np.uint8)
    image = Image.fromarray(small, "RGB").resize(size, Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]], *, gzip: bool = False) -> Path:
    """Writes `members` (name, data) in order as a tar, or a .tar.gz."""
    with tarfile.open(path, "w:gz" if gzip else "w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
    return path


def sample_members(key: str, seed: int, *, image_ext: str = "jpg", with_image: bool = True) -> list[tuple[str, bytes]]:
    """The members of one WebDataset sample: image, json, txt and cls."""
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}[image_ext]
    members = [(f"{key}.{image_ext}", image_bytes(seed, fmt))] if with_image else []
    members += [
        (f"{key}.json", json.dumps({"i": seed}).encode()),
        (f"{key}.txt", f"caption {seed}".encode()),
        (f"{key}.cls", str(seed % 10).encode()),
    ]
    return members


def make_shards(
    folder: Path, count: int, samples_per_shard: int, *, gzip: bool = False, image_ext: str = "jpg",
    name: Callable[[int], str] = lambda i: f"shard-{i:03d}", with_image: bool = True,
) -> list[Shard]:
    """Writes `count` shards of `samples_per_shard` samples into `folder`.
    Keys are `s<shard>_<sample>` (`s00_0000` ...), unique across shards."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for index in range(count):
        keys = [f"s{index:02d}_{i:04d}" for i in range(samples_per_shard)]
        members = [m for i, key in enumerate(keys) for m in sample_members(
            key, index * 10_000 + i, image_ext=image_ext, with_image=with_image)]
        suffix = ".tar.gz" if gzip else ".tar"
        shards.append(Shard(write_tar(folder / f"{name(index)}{suffix}", members, gzip=gzip), keys))
    return shards


# `concurrent_downloads` when the config leaves it out.
DEFAULT_CONCURRENT_DOWNLOADS = 8


def delivery_order(keys_per_shard: list[list[str]], concurrent: int = DEFAULT_CONCURRENT_DOWNLOADS) -> list[str]:
    """The order the WebDataset source delivers in (docs/design.md): with
    `L = min(concurrent, shards)` lanes, lane `l` reads the planned shards
    `l, l + L, ...` one after the other, and the delivery takes one sample
    from each live lane in turn. `keys_per_shard` lists, in plan order, the
    keys each shard yields (empty for a shard that fails at once)."""
    lanes_count = max(1, min(concurrent, len(keys_per_shard)))
    lanes = [[k for shard in keys_per_shard[lane::lanes_count] for k in shard] for lane in range(lanes_count)]
    order: list[str] = []
    live = [lane for lane in lanes if lane]
    position = [0] * len(live)
    turn = 0
    while live:
        order.append(live[turn][position[turn]])
        position[turn] += 1
        if position[turn] == len(live[turn]):
            del live[turn], position[turn]
            if turn == len(live):
                turn = 0
        else:
            turn = (turn + 1) % len(live)
    return order
