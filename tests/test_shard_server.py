"""Proves tests/shard_server.py with Python's own HTTP clients, before the
native client relies on it: Range, keep-alive, the request log, every fault,
TLS with a CA made at test time, and the WebDataset shard writer.

Needs no native library; outside the full suite run it with
`pytest --noconftest tests/test_shard_server.py` (tests/conftest.py imports
datago for its leak check).
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import ssl
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from shard_server import Fault, ShardServer, image_bytes, make_shards, sample_members, write_tar

DATA = bytes(range(256)) * 400  # 102 400 bytes, every offset distinguishable


@pytest.fixture
def server():
    with ShardServer() as running:
        running.add("/data.bin", DATA)
        yield running


def connect(server: ShardServer, timeout_s: float = 10.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout_s)


def get(connection: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection.request("GET", path, headers=headers or {})
    return connection.getresponse()


def read_until_cut(response: http.client.HTTPResponse) -> bytes:
    """Reads a body that the server cuts; returns the bytes that arrived."""
    received = b""
    try:
        while chunk := response.read(4096):
            received += chunk
    except http.client.IncompleteRead as cut:
        received += cut.partial
    except ConnectionResetError:
        pass
    assert len(received) < len(DATA), "the body was not cut"
    return received


def test_full_body_with_length_and_log(server: ShardServer) -> None:
    connection = connect(server)
    response = get(connection, "/data.bin")
    assert response.status == 200
    assert response.getheader("Content-Length") == str(len(DATA))
    assert response.getheader("Accept-Ranges") == "bytes"
    assert response.read() == DATA
    (record,) = server.wait_for_requests("/data.bin", 1)
    assert (record.status, record.bytes_sent, record.complete, record.range) == (200, len(DATA), True, None)
    connection.close()


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=100-199", 100, 200), ("bytes=1000-", 1000, len(DATA)), ("bytes=-50", len(DATA) - 50, len(DATA)),
     ("bytes=0-", 0, len(DATA)), ("bytes=102000-999999", 102000, len(DATA))],
)
def test_range_requests_get_206_and_content_range(server: ShardServer, header: str, start: int, end: int) -> None:
    connection = connect(server)
    response = get(connection, "/data.bin", {"Range": header})
    assert response.status == 206
    assert response.getheader("Content-Range") == f"bytes {start}-{end - 1}/{len(DATA)}"
    assert response.read() == DATA[start:end]
    (record,) = server.wait_for_requests("/data.bin", 1)
    assert (record.range, record.status, record.bytes_sent) == (header, 206, end - start)


def test_unsatisfiable_range_is_416(server: ShardServer) -> None:
    connection = connect(server)
    response = get(connection, "/data.bin", {"Range": f"bytes={len(DATA)}-"})
    assert response.status == 416
    assert response.getheader("Content-Range") == f"bytes */{len(DATA)}"
    response.read()


def test_keep_alive_reuses_one_connection(server: ShardServer) -> None:
    server.add("/other.bin", b"x" * 10)
    connection = connect(server)
    for path in ["/data.bin", "/other.bin", "/data.bin"]:
        response = get(connection, path, {"Range": "bytes=0-9"})
        assert response.read() == (DATA if path == "/data.bin" else b"x" * 10)[:10]
    records = server.wait_for_requests(None, 3)
    assert len({r.client_port for r in records}) == 1
    connection.close()


def test_500_then_success(server: ShardServer) -> None:
    server.set_fault("/data.bin", Fault(fail_times=2))
    statuses = []
    for _ in range(3):
        connection = connect(server)
        response = get(connection, "/data.bin")
        body = response.read()
        statuses.append(response.status)
        connection.close()
    assert statuses == [500, 500, 200]
    assert body == DATA
    records = server.wait_for_requests("/data.bin", 3)
    assert [r.status for r in records] == [500, 500, 200]
    assert [r.bytes_sent for r in records] == [0, 0, len(DATA)]


def test_error_responses_keep_the_connection(server: ShardServer) -> None:
    server.set_fault("/data.bin", Fault(fail_times=1, fail_status=503))
    connection = connect(server)
    first = get(connection, "/data.bin")
    assert first.status == 503
    assert first.getheader("Content-Type") == "text/html"
    first.read()
    second = get(connection, "/data.bin")
    assert second.status == 200 and second.read() == DATA
    records = server.wait_for_requests("/data.bin", 2)
    assert records[0].client_port == records[1].client_port


def test_429_with_retry_after(server: ShardServer) -> None:
    server.set_fault("/data.bin", Fault(too_many_times=1, retry_after="2"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.url("/data.bin"), timeout=10)
    assert refused.value.code == 429
    assert refused.value.headers["Retry-After"] == "2"
    refused.value.close()
    with urllib.request.urlopen(server.url("/data.bin"), timeout=10) as response:
        assert response.read() == DATA


@pytest.mark.parametrize("reset", [False, True])
def test_cut_after_n_bytes_then_resume_with_range(server: ShardServer, reset: bool) -> None:
    cut = 40_000
    server.set_fault("/data.bin", Fault(cut_after_bytes=cut, cut_with_reset=reset))
    connection = connect(server)
    response = get(connection, "/data.bin")
    assert response.status == 200
    received = read_until_cut(response)
    connection.close()
    assert received == DATA[: len(received)] and len(received) <= cut
    (record,) = server.wait_for_requests("/data.bin", 1)
    assert (record.bytes_sent, record.complete) == (cut, False)

    # Only the first request is cut; a Range request picks up where the bytes stopped.
    connection = connect(server)
    rest = get(connection, "/data.bin", {"Range": f"bytes={len(received)}-"})
    assert rest.status == 206
    assert received + rest.read() == DATA
    server.wait_for_requests("/data.bin", 2)
    assert server.bytes_sent("/data.bin") == cut + len(DATA) - len(received)


def test_stall_longer_than_the_client_timeout(server: ShardServer) -> None:
    stall_s = 3.0
    server.set_fault("/data.bin", Fault(stall_after_bytes=1000, stall_s=stall_s))
    connection = connect(server, timeout_s=0.3)
    response = get(connection, "/data.bin")
    assert response.status == 200
    assert response.read(1000) == DATA[:1000]
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        response.read(1)
    waited = time.monotonic() - started
    assert 0.25 < waited < stall_s
    connection.close()
    # Only the first request stalls.
    with urllib.request.urlopen(server.url("/data.bin"), timeout=10) as again:
        assert again.read() == DATA


def test_stop_ends_a_stall_at_once() -> None:
    server = ShardServer().start()
    server.add("/slow.bin", DATA, Fault(stall_after_bytes=0, stall_s=60))
    connection = connect(server, timeout_s=30)
    response = get(connection, "/slow.bin")
    assert response.status == 200
    started = time.monotonic()
    server.stop()
    # The stall waited on the stop event: well under its 60 s.
    assert time.monotonic() - started < 30
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)
    server.stop()  # idempotent


def test_404_and_fixed_statuses(server: ShardServer) -> None:
    server.add("/gone.tar", b"never sent", Fault(status=404))
    for path in ["/gone.tar", "/missing.tar"]:
        connection = connect(server)
        response = get(connection, path)
        assert response.status == 404
        assert b"404" in response.read()
    records = server.wait_for_requests(None, 2)
    assert [(r.path, r.status, r.bytes_sent) for r in records] == [("/gone.tar", 404, 0), ("/missing.tar", 404, 0)]
    server.set_fault("/gone.tar", Fault(status=403))
    with pytest.raises(urllib.error.HTTPError) as forbidden:
        urllib.request.urlopen(server.url("/gone.tar"), timeout=10)
    assert forbidden.value.code == 403
    forbidden.value.close()


def test_non_tar_body_with_status_200(server: ShardServer) -> None:
    page = b"<html><body>Sign in to continue</body></html>\n" * 30
    server.add("/shard.tar", DATA, Fault(body=page))
    with urllib.request.urlopen(server.url("/shard.tar"), timeout=10) as response:
        assert response.status == 200
        body = response.read()
    assert body == page
    with pytest.raises(tarfile.ReadError):
        tarfile.open(fileobj=io.BytesIO(body))


def test_server_without_range_always_sends_everything(server: ShardServer) -> None:
    server.set_fault("/data.bin", Fault(ignore_range=True))
    connection = connect(server)
    response = get(connection, "/data.bin", {"Range": "bytes=500-"})
    assert response.status == 200
    assert response.getheader("Content-Range") is None
    assert response.getheader("Accept-Ranges") is None
    assert response.read() == DATA
    (record,) = server.wait_for_requests("/data.bin", 1)
    assert (record.range, record.bytes_sent) == ("bytes=500-", len(DATA))


def test_request_headers_are_logged(server: ShardServer) -> None:
    request = urllib.request.Request(server.url("/data.bin"), headers={"Authorization": "Bearer t0k"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
    (record,) = server.wait_for_requests("/data.bin", 1)
    assert record.headers["Authorization"] == "Bearer t0k"


def test_tls_with_a_ca_made_at_test_time() -> None:
    pytest.importorskip("trustme", reason="trustme is in the test extra")
    with ShardServer(tls=True) as server:
        url = server.add("/data.bin", DATA)
        assert url.startswith("https://127.0.0.1:")
        assert server.ca_path is not None and server.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
        trusted = ssl.create_default_context(cafile=str(server.ca_path))
        with urllib.request.urlopen(url, timeout=10, context=trusted) as response:
            assert response.read() == DATA
        # Without the CA the system store refuses the certificate.
        with pytest.raises(urllib.error.URLError) as refused:
            urllib.request.urlopen(url, timeout=10, context=ssl.create_default_context())
        assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
        assert [r.status for r in server.wait_for_requests("/data.bin", 1)] == [200]
        server.wait_until(lambda: server.handshake_failures >= 1, what="the refused handshake")
        assert server.handshake_failures == 1


def test_tls_cut_and_range() -> None:
    pytest.importorskip("trustme", reason="trustme is in the test extra")
    with ShardServer(tls=True) as server:
        server.add("/data.bin", DATA, Fault(cut_after_bytes=5000))
        context = ssl.create_default_context(cafile=str(server.ca_path))
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=context)
        response = get(connection, "/data.bin")  # type: ignore[arg-type]
        with pytest.raises((http.client.IncompleteRead, ssl.SSLError, ConnectionError)):
            response.read()
        connection.close()
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=context)
        rest = get(connection, "/data.bin", {"Range": "bytes=5000-"})  # type: ignore[arg-type]
        assert rest.status == 206 and rest.read() == DATA[5000:]
        connection.close()


# -- WebDataset shards --------------------------------------------------------


@pytest.mark.parametrize("gzip", [False, True])
def test_make_shards_writes_readable_webdataset_shards(tmp_path: Path, gzip: bool) -> None:
    shards = make_shards(tmp_path, 3, 4, gzip=gzip)
    assert [s.path.name for s in shards] == [f"shard-{i:03d}.tar{'.gz' if gzip else ''}" for i in range(3)]
    assert shards[1].keys == ["s01_0000", "s01_0001", "s01_0002", "s01_0003"]
    if gzip:
        assert shards[0].path.read_bytes()[:2] == b"\x1f\x8b"
    with tarfile.open(shards[1].path) as archive:
        names = archive.getnames()
        assert names[:4] == ["s01_0000.jpg", "s01_0000.json", "s01_0000.txt", "s01_0000.cls"]
        assert len(names) == 16
        image = Image.open(io.BytesIO(archive.extractfile("s01_0002.jpg").read()))  # type: ignore[union-attr]
        assert (image.format, image.size, image.mode) == ("JPEG", (32, 24), "RGB")
        assert json.loads(archive.extractfile("s01_0002.json").read()) == {"i": 10_002}  # type: ignore[union-attr]


def test_shards_without_images_and_truncated_shards(tmp_path: Path) -> None:
    (text_only,) = make_shards(tmp_path, 1, 2, with_image=False, name=lambda i: "text-only")
    with tarfile.open(text_only.path) as archive:
        assert not [n for n in archive.getnames() if n.endswith((".jpg", ".png"))]
    path = write_tar(tmp_path / "png.tar", sample_members("k", 1, image_ext="png"))
    with tarfile.open(path) as archive:
        assert Image.open(io.BytesIO(archive.extractfile("k.png").read())).format == "PNG"  # type: ignore[union-attr]
    data = path.read_bytes()
    with pytest.raises(tarfile.ReadError):
        with tarfile.open(fileobj=io.BytesIO(data[:700])) as archive:
            for member in archive:
                archive.extractfile(member).read()  # type: ignore[union-attr]


def test_served_shards_are_byte_identical(server: ShardServer, tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2, 3, gzip=True)
    urls = [server.add_file(f"/{s.path.name}", s.path) for s in shards]
    for shard, url in zip(shards, urls, strict=True):
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == shard.path.read_bytes()
    server.wait_for_requests(None, len(shards))
    assert server.bytes_sent() == sum(s.path.stat().st_size for s in shards)


def test_image_bytes_are_deterministic() -> None:
    assert image_bytes(3) == image_bytes(3)
    assert image_bytes(3) != image_bytes(4)
