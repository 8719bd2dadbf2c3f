"""A small loopback HTTP/1.1 file server for the WebDataset benchmarks.

    python bench/_shard_server.py --root DIR [--root DIR2 ...] [--port 0] [--log FILE]

Serves the files of the DIRs (`/NAME` is the first DIR/NAME that exists; no subfolders) on
127.0.0.1 with keep-alive, one thread per connection, single-range `Range:` requests (206)
and `sendfile(2)` for the bodies, so that the server costs little next to the loaders it
feeds. It prints its port on the first line of stdout once it listens. Every GET is appended
to the log (JSON lines: path, range, status, body bytes sent, whether the body was complete,
client port, start and end times); `GET /_stats` answers the body bytes and requests per path since the start,
the responses to Range requests, the bodies cut short and the responses in flight, which
compare.py reads before and after each run.

compare.py starts it in its own process and pins it (taskset -a) to CPUs outside the
measured ones when the machine has any; its CPU is never part of an engine's process CPU.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path

_CHUNK_BYTES = 1 << 20  # bytes per sendfile call
_IDLE_TIMEOUT_S = 120.0  # a keep-alive connection with no request is closed after this


class _State:
    def __init__(self, roots: list[Path], log_path: Path | None) -> None:
        self.roots = roots
        self.lock = threading.Lock()
        self.bytes_by_path: dict[str, int] = {}
        self.requests_by_path: dict[str, int] = {}
        self.in_flight = 0
        self.ranged = 0  # responses to a Range request (a loader resuming a cut transfer)
        self.incomplete = 0  # bodies not sent to the end (the client hung up)
        self.log = log_path.open("a", buffering=1) if log_path else None

    def begin(self) -> None:
        with self.lock:
            self.in_flight += 1

    def end(self, record: dict[str, object]) -> None:
        with self.lock:
            self.in_flight -= 1
            path = str(record["path"])
            self.bytes_by_path[path] = self.bytes_by_path.get(path, 0) + int(record["bytes_sent"])  # type: ignore[call-overload]
            self.requests_by_path[path] = self.requests_by_path.get(path, 0) + 1
            self.ranged += record["range"] is not None
            self.incomplete += not record["complete"]
            if self.log is not None:
                self.log.write(json.dumps(record) + "\n")

    def stats(self) -> dict[str, object]:
        with self.lock:
            return {
                "in_flight": self.in_flight,
                "ranged": self.ranged,
                "incomplete": self.incomplete,
                "bytes": dict(self.bytes_by_path),
                "requests": dict(self.requests_by_path),
            }


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state = state
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that stop reading (a loader that reached its limit) are expected


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "datago-bench-shards/1"
    # TCP_NODELAY, as nginx sets by default: with Nagle the body's first small segment waits
    # for the ACK of the headers' segment, which the client delays (up to 40 ms a response).
    disable_nagle_algorithm = True
    timeout = _IDLE_TIMEOUT_S
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state
        path = self.path.split("?", 1)[0]
        if path == "/_stats":
            self._small(200, json.dumps(state.stats()).encode(), "application/json")
            return
        name = path.lstrip("/")
        file = next((root / name for root in state.roots if (root / name).is_file()), None)
        if "/" in name or not name or file is None:
            self._small(404, b"not found\n", "text/plain")
            return
        size = file.stat().st_size
        range_header = self.headers.get("Range")
        start, end, status = 0, size, 200
        if range_header is not None:
            parsed = _parse_range(range_header, size)
            if parsed is None:
                self._small(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"})
                return
            start, end, partial = parsed
            status = 206 if partial else 200
        state.begin()
        began = time.time()
        sent, complete = 0, False
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-tar")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            self.wfile.flush()
            with file.open("rb") as body:
                sent = _sendfile(self.connection, body.fileno(), start, end - start)
            complete = sent == end - start
        except OSError:
            self.close_connection = True
        finally:
            state.end({
                "path": path, "range": range_header, "status": status, "bytes_sent": sent,
                "complete": complete, "client_port": self.client_address[1],
                "start": round(began, 6), "end": round(time.time(), 6),
            })

    def _small(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _sendfile(connection: socket.socket, fd: int, offset: int, count: int) -> int:
    """Sends `count` bytes of `fd` from `offset`; returns the bytes sent, also when the
    client hangs up or stops reading for `_IDLE_TIMEOUT_S` (socket.sendfile would lose that
    count). The socket is non-blocking under its timeout: wait with poll when it is full."""
    sent = 0
    out = connection.fileno()
    writable = select.poll()
    writable.register(out, select.POLLOUT)
    while sent < count:
        try:
            n = os.sendfile(out, fd, offset + sent, min(_CHUNK_BYTES, count - sent))
        except BlockingIOError:
            if not writable.poll(_IDLE_TIMEOUT_S * 1000):
                break
            continue
        except OSError:  # the client hung up (EPIPE, ECONNRESET)
            break
        if n == 0:
            break
        sent += n
    return sent


def _parse_range(header: str, size: int) -> tuple[int, int, bool] | None:
    """`bytes=a-b`, `bytes=a-`, `bytes=-n` as (start, end exclusive, True); None when
    unsatisfiable; anything else (several ranges, another unit) is the whole body."""
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or "," in spec or not dash:
        return (0, size, False)
    try:
        if first == "":
            suffix = int(last)
            return (max(0, size - suffix), size, True) if suffix > 0 and size else None
        start = int(first)
        end = min(size, int(last) + 1) if last else size
    except ValueError:
        return (0, size, False)
    return (start, end, True) if start < size and end > start else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, action="append", required=True, help="repeatable")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    server = _Server(("127.0.0.1", args.port), _State(args.root, args.log))
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
