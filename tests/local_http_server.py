"""The lifecycle shared by the threaded test HTTP servers (`shard_server.py`,
`dataroom_server.py`): listening on 127.0.0.1 (ephemeral port), one thread
per connection, and a `stop` that drops open connections instead of waiting
for their clients.

`LocalHttpServer` owns the listening server, the condition `_changed` that
guards the subclass's state and wakes `wait_until`, and the stop event
`_stopping` that the subclass's delays wait on. A subclass keeps its request
log in `_log` (shown when `wait_until` times out) and notifies `_changed`
whenever its state changes. Handlers derive from `LocalHandler`.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

# A request line, headers and a body are small in these tests; a stuck
# client must not hold a handler thread forever.
HANDLER_TIMEOUT_S = 30.0
# How long `stop` waits for handler threads to end after their sockets closed.
_JOIN_TIMEOUT_S = 5.0
# How often serve_forever looks at its shutdown flag: bounds `stop`'s latency.
_POLL_INTERVAL_S = 0.02

_S = TypeVar("_S", bound="LocalHttpServer")


class TrackingHTTPServer(http.server.ThreadingHTTPServer):
    """Records every handler thread and open connection in its owner, so
    `stop` can drop the connections and join the threads."""

    daemon_threads = True
    # socketserver's default backlog of 5 drops the SYNs of a client that
    # opens many connections at once (16 blob downloads, 8 shard lanes); the
    # kernel resends them after 1 s, which slows every such test by seconds.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler], owner: LocalHttpServer) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self.owner._changed:
            self.owner._threads.append(thread)
        thread.start()

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        with self.owner._changed:
            self.owner._connections.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self.owner._changed:
                self.owner._connections.discard(request)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that hang up mid-response are expected here.
        pass


class LocalHandler(http.server.BaseHTTPRequestHandler):
    """Keep-alive (HTTP/1.1), a timeout for stuck clients, and no log lines
    on stderr: the servers keep their own request logs."""

    protocol_version = "HTTP/1.1"
    timeout = HANDLER_TIMEOUT_S

    def log_message(self, format: str, *args: object) -> None:
        pass


class LocalHttpServer:
    """Serves `handler` on 127.0.0.1 from a `server_class` (a
    `TrackingHTTPServer`) once started; `port` is known at construction.

    Use as a context manager. `_stopped` runs at the end of the first `stop`,
    for a subclass's own cleanup.
    """

    _log: Sequence[Any]

    def __init__(
        self, handler: type[http.server.BaseHTTPRequestHandler], *, name: str,
        server_class: type[TrackingHTTPServer] = TrackingHTTPServer,
    ) -> None:
        self._changed = threading.Condition(threading.RLock())
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._name = name
        self._httpd = server_class(("127.0.0.1", 0), handler, self)
        self.port: int = self._httpd.server_address[1]
        self._serve_thread: threading.Thread | None = None

    def start(self: _S) -> _S:
        """Starts serving; returns the server."""
        self._serve_thread = threading.Thread(
            target=self._httpd.serve_forever, args=(_POLL_INTERVAL_S,), name=self._name, daemon=True)
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stops serving, drops open connections and ends every wait on the
        stop event. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._serve_thread is not None:
            self._httpd.shutdown()
            self._serve_thread.join(_JOIN_TIMEOUT_S)
        with self._changed:
            connections = list(self._connections)
            threads = list(self._threads)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        for thread in threads:
            thread.join(_JOIN_TIMEOUT_S)
        self._stopped()

    def _stopped(self) -> None:
        """Runs once, after every handler thread has ended (or timed out)."""

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
        """Waits for `predicate` on the server's state, woken by every
        notification of `_changed` (each logged request, at least)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; log: {self._log}")
                self._changed.wait(left)
