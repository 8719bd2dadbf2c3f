//! HTTP GET that loses nothing, for WebDataset shards (and, later, the
//! Dataroom source), on std.http.Client (docs/http.md says why std and not a
//! vendored C library, with the measurements).
//!
//! A `Body` is a `std.Io.Reader` over one URL's content. Behind it:
//! - keep-alive: connections go back to std's pool and are reused;
//! - at most `connections_per_host_max` bodies open per host (`HostLimiter`);
//! - a connect timeout (TCP and TLS handshake) by running the connect as an
//!   `Io` task that is canceled at the deadline: std's own connect timeout is
//!   a TODO that panics (Io/Threaded.zig, netConnectIpPosix);
//! - a read timeout by a `Watchdog` that shuts the socket down when a
//!   request has made no progress for `read_timeout_ms`: std has none, and
//!   SO_RCVTIMEO's EAGAIN panics in Debug (Zig 0.17's std, lib/std/Io/Threaded.zig);
//! - retries on connect errors, timeouts, 408, 429 and 5xx with exponential
//!   backoff and jitter, honouring `Retry-After`, up to `retries_max`
//!   (DATAGO_MAX_RETRIES); any other 4xx gives the URL up at once
//!   (`error.HttpStatus`); an error response's body is never delivered;
//! - a connection lost mid-body continues with `Range: bytes=<delivered>-`;
//!   a server that answers 200 instead is read again from the start and the
//!   delivered bytes are skipped, so the reader sees every byte exactly once.
//!   A change of size or ETag between attempts is `error.ContentChanged`.
//!
//! Threads: a `Body` is used by one thread at a time; `Client` and
//! `Watchdog` are thread-safe. The watchdog needs a thread of its own
//! (`Watchdog.run`), which the runtime owns.
const std = @import("std");
const assert = std.debug.assert;
const Io = std.Io;
const Allocator = std.mem.Allocator;
const HttpClient = std.http.Client;

/// Upper bound for `Options.retries_max`.
pub const retries_limit = 32;
/// Longest wait a `Retry-After` can impose.
pub const retry_after_max_ms = 60_000;
/// Resumptions of one body, whatever its progress: a server that cuts every
/// few bytes must not keep a shard alive forever.
pub const resumes_max = 1024;
/// A failure after this much new data since the previous one does not use
/// up a retry: a large shard over a flaky link keeps going while it moves.
pub const progress_reset_bytes = 1 << 20;
/// Requests the watchdog can watch at once (and so bodies open at once).
pub const transfers_max = 256;
/// Hosts the limiter tracks at once.
pub const hosts_max = 64;
/// Redirects followed per request.
pub const redirects_max = 5;
/// Room for a URL and every redirect target.
pub const url_bytes_max = 16 * 1024;
/// ETag bytes kept to detect a changed object.
pub const etag_bytes_max = 128;
/// Bytes of a refused response's body kept for the caller (a JSON `detail`,
/// an S3 XML error): enough for a message, bounded for a hostile server.
pub const error_body_bytes_max = 1024;
/// Watchdog period bounds.
pub const tick_ms_min = 5;
pub const tick_ms_max = 250;

comptime {
    assert(redirects_max * 2 * 1024 < url_bytes_max);
    assert(tick_ms_min < tick_ms_max);
}

pub const Options = struct {
    connect_timeout_ms: u32 = 10_000,
    read_timeout_ms: u32 = 60_000,
    retries_max: u8 = 3,
    backoff_initial_ms: u32 = 100,
    backoff_max_ms: u32 = 3_000,
    connections_per_host_max: u16 = 8,
    /// The `Authorization` header value for every request (e.g. "Bearer x").
    authorization: ?[]const u8 = null,
    /// More headers for every request (`source_config.headers`), at most
    /// `extra_headers_max`; like `authorization`, not sent to another host
    /// after a redirect.
    extra_headers: []const std.http.Header = &.{},
};

/// Most `Options.extra_headers`.
pub const extra_headers_max = 16;

pub const Error = error{
    /// A 4xx other than 408 and 429 (or 3xx without a usable Location): the
    /// URL is given up at once. `diagnostics.status` has the status.
    HttpStatus,
    /// Every attempt failed; `diagnostics.cause` has the last cause.
    RetriesExhausted,
    /// The size or ETag changed between attempts, or a 206 did not start at
    /// the requested byte: what was delivered cannot be continued.
    ContentChanged,
    /// TLS failed (certificate not trusted, wrong name, handshake refused):
    /// not retried.
    Tls,
    /// Not an http:// or https:// URL, or one too long.
    InvalidUrl,
    /// `Client.stop` was called.
    Stopped,
    /// More than `transfers_max` bodies open.
    TooManyTransfers,
    OutOfMemory,
};

/// Why the last attempt failed.
pub const Cause = enum {
    none,
    connect,
    connect_timeout,
    read_timeout,
    /// The connection ended before the body did.
    cut,
    /// A retryable status (408, 429, 5xx).
    status,
    protocol,
    tls,
    redirects,
};

pub const Diagnostics = struct {
    cause: Cause = .none,
    /// The last HTTP status received (0 before any).
    status: u16 = 0,
    /// The error name behind `cause`, a static string.
    detail: []const u8 = "",
    /// Bytes delivered to the reader when it failed.
    position: u64 = 0,
};

pub const Stats = struct {
    /// Requests sent, the first included.
    requests: u32 = 0,
    /// Requests sent to continue after a failure mid-body.
    resumes: u32 = 0,
    /// Retries used (failures that cost one).
    retries: u32 = 0,
    /// Body bytes received, skipped ones included.
    bytes_received: u64 = 0,
    /// Bytes received again from a server without Range and skipped.
    bytes_skipped: u64 = 0,
};

// ---------------------------------------------------------------------------
// Policy: pure functions.

pub const StatusClass = enum { ok, retry, redirect, give_up };

pub fn classifyStatus(status: u16) StatusClass {
    return switch (status) {
        200, 206 => .ok,
        408, 429 => .retry,
        301, 302, 303, 307, 308 => .redirect,
        500...599 => .retry,
        else => .give_up,
    };
}

/// Exponential backoff with "equal jitter": half the doubled delay fixed,
/// half random, so retries of many shards spread out but still grow.
pub fn backoffMs(options: Options, attempt: u32, random: std.Random) u32 {
    const shift: u5 = @intCast(@min(attempt, 20));
    const doubled = @as(u64, options.backoff_initial_ms) << shift;
    const ceiling: u32 = @intCast(@min(doubled, options.backoff_max_ms));
    const half = ceiling / 2;
    return half + random.uintAtMost(u32, ceiling - half);
}

/// `Retry-After` as delta-seconds, capped at `retry_after_max_ms`; null for
/// an HTTP-date or garbage (the backoff applies then).
pub fn parseRetryAfterMs(value: []const u8) ?u32 {
    const trimmed = std.mem.trim(u8, value, " \t");
    const seconds = std.fmt.parseUnsigned(u32, trimmed, 10) catch return null;
    return @intCast(@min(@as(u64, seconds) * 1000, retry_after_max_ms));
}

pub const ContentRange = struct { first: u64, last: u64, total: ?u64 };

/// `bytes <first>-<last>/<total or *>`.
pub fn parseContentRange(value: []const u8) ?ContentRange {
    const rest = std.mem.trim(u8, value, " \t");
    if (!std.mem.startsWith(u8, rest, "bytes ")) return null;
    const spec = rest["bytes ".len..];
    const dash = std.mem.findScalar(u8, spec, '-') orelse return null;
    const slash = std.mem.findScalar(u8, spec, '/') orelse return null;
    if (slash < dash) return null;
    const first = std.fmt.parseUnsigned(u64, spec[0..dash], 10) catch return null;
    const last = std.fmt.parseUnsigned(u64, spec[dash + 1 .. slash], 10) catch return null;
    const total_text = spec[slash + 1 ..];
    const total: ?u64 = if (std.mem.eql(u8, total_text, "*"))
        null
    else
        std.fmt.parseUnsigned(u64, total_text, 10) catch return null;
    if (last < first) return null;
    if (total) |t| if (last >= t) return null;
    return .{ .first = first, .last = last, .total = total };
}

// ---------------------------------------------------------------------------
// Watchdog: read timeouts by shutting sockets down.

pub const Watchdog = struct {
    io: Io,
    slots: [transfers_max]Slot = @splat(.{}),
    stopping: std.atomic.Value(bool) = .init(false),
    stopped: Io.Event = .unset,

    /// The stack for the thread that runs `run`. glibc refuses a thread
    /// stack that cannot hold the process's static TLS, and std then
    /// panics: 64 and 256 KiB aborted the test binary, and the process that
    /// loads libdatago may hold more static TLS still. The stack is only
    /// reserved, so the margin costs no memory.
    pub const stack_bytes = 1024 * 1024;

    const Slot = struct {
        /// Guards `handle` against the owner closing the socket while the
        /// watchdog shuts it down.
        mutex: Io.Mutex = .init,
        handle: ?Io.net.Socket.Handle = null,
        in_use: std.atomic.Value(bool) = .init(false),
        /// Nanoseconds on the awake clock; 0 = not watched.
        deadline_ns: std.atomic.Value(i64) = .init(0),
        timeout_ns: i64 = 0,
        fired: std.atomic.Value(bool) = .init(false),
    };

    pub fn init(io: Io) Watchdog {
        return .{ .io = io };
    }

    /// A slot for one body. Threadsafe.
    pub fn claim(w: *Watchdog) error{TooManyTransfers}!u16 {
        for (&w.slots, 0..) |*slot, index| {
            if (slot.in_use.cmpxchgStrong(false, true, .acquire, .monotonic) == null) return @intCast(index);
        }
        return error.TooManyTransfers;
    }

    /// Asserts the slot is disarmed.
    pub fn release(w: *Watchdog, slot_index: u16) void {
        const slot = &w.slots[slot_index];
        assert(slot.handle == null);
        slot.in_use.store(false, .release);
    }

    /// Starts watching `handle`: it is shut down if `progress` is not called
    /// within `timeout_ms`.
    pub fn arm(w: *Watchdog, slot_index: u16, handle: Io.net.Socket.Handle, timeout_ms: u32) void {
        const slot = &w.slots[slot_index];
        slot.mutex.lockUncancelable(w.io);
        defer slot.mutex.unlock(w.io);
        assert(slot.handle == null);
        slot.handle = handle;
        slot.timeout_ns = @as(i64, timeout_ms) * std.time.ns_per_ms;
        slot.fired.store(false, .monotonic);
        slot.deadline_ns.store(w.nowNs() + slot.timeout_ns, .release);
    }

    /// The request moved: push the deadline. One clock read and one store.
    pub fn progress(w: *Watchdog, slot_index: u16) void {
        const slot = &w.slots[slot_index];
        slot.deadline_ns.store(w.nowNs() + slot.timeout_ns, .release);
    }

    /// Stops watching; true if the watchdog fired since `arm`. After this
    /// returns the socket may be closed.
    pub fn disarm(w: *Watchdog, slot_index: u16) bool {
        const slot = &w.slots[slot_index];
        slot.mutex.lockUncancelable(w.io);
        defer slot.mutex.unlock(w.io);
        slot.handle = null;
        slot.deadline_ns.store(0, .release);
        return slot.fired.load(.acquire);
    }

    pub fn fired(w: *const Watchdog, slot_index: u16) bool {
        return w.slots[slot_index].fired.load(.acquire);
    }

    /// Shuts down every socket past its deadline; returns how many.
    pub fn tick(w: *Watchdog) u32 {
        const now = w.nowNs();
        var count: u32 = 0;
        for (&w.slots) |*slot| {
            const deadline = slot.deadline_ns.load(.acquire);
            if (deadline == 0 or deadline > now) continue;
            slot.mutex.lockUncancelable(w.io);
            defer slot.mutex.unlock(w.io);
            const handle = slot.handle orelse continue;
            // Re-read under the lock: progress may have moved it.
            if (slot.deadline_ns.load(.acquire) > now) continue;
            w.fireLocked(slot, handle);
            count += 1;
        }
        return count;
    }

    /// Shuts down every watched socket now (a stopped pass); returns how
    /// many. Their owners see `fired`, as after a timeout.
    pub fn interruptAll(w: *Watchdog) u32 {
        var count: u32 = 0;
        for (&w.slots) |*slot| {
            if (!slot.in_use.load(.acquire)) continue;
            slot.mutex.lockUncancelable(w.io);
            defer slot.mutex.unlock(w.io);
            const handle = slot.handle orelse continue;
            w.fireLocked(slot, handle);
            count += 1;
        }
        return count;
    }

    /// Shuts the slot's socket down; the slot's mutex is held.
    fn fireLocked(w: *Watchdog, slot: *Slot, handle: Io.net.Socket.Handle) void {
        // Marked before the shutdown: the owner's blocked read returns end
        // of stream right after it and must then see `fired`.
        slot.fired.store(true, .release);
        slot.deadline_ns.store(0, .release);
        const stream: Io.net.Stream = .{ .socket = .{ .handle = handle, .address = undefined } };
        stream.shutdown(w.io, .both) catch {};
    }

    /// Ticks every `period_ms` until `stop`. For a thread of its own.
    pub fn run(w: *Watchdog, period_ms: u32) void {
        const period = std.math.clamp(period_ms, tick_ms_min, tick_ms_max);
        while (!w.stopping.load(.acquire)) {
            _ = w.tick();
            // Waits on `stopped` rather than sleeping: the stream that owns
            // the watchdog joins this thread when a pass ends, and a sleep
            // held every stopped pass past the pipeline's grace period.
            w.stopped.waitTimeout(w.io, .{ .duration = .{ .raw = .fromMilliseconds(period), .clock = .awake } }) catch |err| switch (err) {
                error.Timeout => {},
                error.Canceled => return,
            };
        }
    }

    /// Ends `run` at once. Threadsafe, idempotent.
    pub fn stop(w: *Watchdog) void {
        w.stopping.store(true, .release);
        w.stopped.set(w.io);
    }

    /// The period that keeps a timeout's overshoot under a quarter of it.
    pub fn periodFor(read_timeout_ms: u32) u32 {
        return std.math.clamp(read_timeout_ms / 4, tick_ms_min, tick_ms_max);
    }

    fn nowNs(w: *const Watchdog) i64 {
        return @intCast(Io.Clock.awake.now(w.io).toNanoseconds());
    }
};

// ---------------------------------------------------------------------------
// HostLimiter: at most N bodies open per host.

pub const HostLimiter = struct {
    io: Io,
    per_host_max: u16,
    mutex: Io.Mutex = .init,
    freed: Io.Condition = .init,
    hosts: [hosts_max]Host = @splat(.{}),

    const Host = struct {
        name: [Io.net.HostName.max_len]u8 = undefined,
        name_len: u8 = 0,
        port: u16 = 0,
        open: u16 = 0,
    };

    pub fn init(io: Io, per_host_max: u16) HostLimiter {
        assert(per_host_max > 0);
        return .{ .io = io, .per_host_max = per_host_max };
    }

    /// Waits for room on `host:port`; returns the entry to release.
    pub fn acquire(l: *HostLimiter, host: []const u8, port: u16, stop: *const std.atomic.Value(bool)) error{Stopped}!u8 {
        assert(host.len <= Io.net.HostName.max_len);
        l.mutex.lockUncancelable(l.io);
        defer l.mutex.unlock(l.io);
        while (true) {
            if (stop.load(.acquire)) return error.Stopped;
            if (l.find(host, port)) |index| {
                const entry = &l.hosts[index];
                if (entry.open < l.per_host_max) {
                    entry.open += 1;
                    return index;
                }
            } else if (l.findFree()) |index| {
                const entry = &l.hosts[index];
                @memcpy(entry.name[0..host.len], host);
                entry.name_len = @intCast(host.len);
                entry.port = port;
                entry.open = 1;
                return index;
            }
            // Wake periodically to notice `stop`.
            const timeout: Io.Timeout = .{ .duration = .{ .raw = .fromMilliseconds(100), .clock = .awake } };
            l.freed.waitTimeout(l.io, &l.mutex, timeout) catch {};
        }
    }

    pub fn release(l: *HostLimiter, index: u8) void {
        l.mutex.lockUncancelable(l.io);
        defer l.mutex.unlock(l.io);
        assert(l.hosts[index].open > 0);
        l.hosts[index].open -= 1;
        l.freed.broadcast(l.io);
    }

    pub fn openCount(l: *HostLimiter, host: []const u8, port: u16) u16 {
        l.mutex.lockUncancelable(l.io);
        defer l.mutex.unlock(l.io);
        const index = l.find(host, port) orelse return 0;
        return l.hosts[index].open;
    }

    fn find(l: *const HostLimiter, host: []const u8, port: u16) ?u8 {
        for (&l.hosts, 0..) |*entry, index| {
            if (entry.name_len == 0 or entry.port != port) continue;
            if (std.ascii.eqlIgnoreCase(entry.name[0..entry.name_len], host)) return @intCast(index);
        }
        return null;
    }

    /// An unused entry, or one of a host with nothing open.
    fn findFree(l: *const HostLimiter) ?u8 {
        for (&l.hosts, 0..) |*entry, index| {
            if (entry.open == 0) return @intCast(index);
        }
        return null;
    }
};

// ---------------------------------------------------------------------------
// Client.

pub const Client = struct {
    gpa: Allocator,
    io: Io,
    http: HttpClient,
    options: Options,
    watchdog: *Watchdog,
    hosts: HostLimiter,
    stopping: std.atomic.Value(bool) = .init(false),

    /// `watchdog` must be running (`Watchdog.run` on a thread) for read
    /// timeouts to fire, and must outlive the client.
    pub fn init(client: *Client, gpa: Allocator, io: Io, watchdog: *Watchdog, options: Options) void {
        assert(options.retries_max <= retries_limit);
        assert(options.extra_headers.len <= extra_headers_max);
        assert(options.connect_timeout_ms > 0 and options.read_timeout_ms > 0);
        client.* = .{
            .gpa = gpa,
            .io = io,
            .http = .{ .allocator = gpa, .io = io },
            .options = options,
            .watchdog = watchdog,
            .hosts = .init(io, options.connections_per_host_max),
        };
    }

    /// Asserts no body is open.
    pub fn deinit(client: *Client) void {
        client.http.deinit();
        client.* = undefined;
    }

    /// Trusts the certificates in the PEM file at `path` instead of the
    /// system's (the `ca_bundle` config key).
    pub fn useCaBundle(client: *Client, path: []const u8) !void {
        const now = Io.Clock.real.now(client.io);
        try client.http.ca_bundle.addCertsFromFilePath(client.gpa, client.io, now, Io.Dir.cwd(), path);
        // A non-null `now` stops std from rescanning the system store.
        client.http.now = now;
    }

    /// Makes every open body fail with `error.Stopped` at its next wait.
    /// Threadsafe.
    pub fn stop(client: *Client) void {
        client.stopping.store(true, .release);
    }
};

// ---------------------------------------------------------------------------
// Body: one URL's content as a resuming reader.

pub const Body = struct {
    interface: Io.Reader,
    client: *Client,
    url_buffer: [url_bytes_max]u8,
    uri: std.Uri,
    host_buffer: [Io.net.HostName.max_len]u8,
    host: []const u8,
    port: u16,
    protocol: HttpClient.Protocol,
    slot: u16,
    host_index: u8,
    /// The watchdog slot and the host entry are held (until `close`).
    holding: bool,
    /// False once a redirect left the original host: the token stays home.
    send_authorization: bool,
    request: ?HttpClient.Request,
    reader: ?*Io.Reader,
    transfer_buffer: [16 * 1024]u8,
    /// Bytes delivered to `interface`'s consumer (and buffered for it).
    position: u64,
    /// Bytes of the current response to drop before delivering.
    skip: u64,
    /// The object's size, once a response told it.
    total: ?u64,
    etag_buffer: [etag_bytes_max]u8,
    etag_len: u8,
    retries_left: u32,
    position_at_failure: u64,
    prng: std.Random.DefaultPrng,
    state: State,
    failure: Error,
    diagnostics: Diagnostics,
    stats: Stats,
    /// The start of the body of the response that gave the URL up
    /// (`error.HttpStatus`), for messages; see `errorBody`.
    error_body_buffer: [error_body_bytes_max]u8,
    error_body_len: u16,

    const State = enum { open, done, failed };

    /// The first bytes of the refused response's body (empty if none).
    pub fn errorBody(body: *const Body) []const u8 {
        return body.error_body_buffer[0..body.error_body_len];
    }

    const vtable: Io.Reader.VTable = .{ .stream = stream };

    /// Opens `url` and receives the first response head: a status that gives
    /// the URL up is returned here, before any byte is read. `buffer` becomes
    /// the reader's buffer (the tar reader wants at least 16 bytes). The
    /// body must not move while open. On error nothing is held (`close` is
    /// then a no-op) and `diagnostics` says why.
    pub fn open(body: *Body, client: *Client, url: []const u8, buffer: []u8) Error!void {
        return body.openAt(client, url, buffer, 0);
    }

    /// `open` for the object's bytes from `start` on (a resumed shard): the
    /// requests carry `Range: bytes=<start>-` from the first, exactly as a
    /// retry after `start` delivered bytes would, so a 206 is checked the
    /// same way and a server that answers 200 has its first `start` bytes
    /// skipped.
    pub fn openAt(body: *Body, client: *Client, url: []const u8, buffer: []u8, start: u64) Error!void {
        assert(buffer.len >= 16);
        var seed: [8]u8 = undefined;
        client.io.random(&seed);
        body.* = .{
            .interface = .{ .vtable = &vtable, .buffer = buffer, .seek = 0, .end = 0 },
            .client = client,
            .url_buffer = undefined,
            .uri = undefined,
            .host_buffer = undefined,
            .host = "",
            .port = 0,
            .protocol = .plain,
            .slot = 0,
            .host_index = 0,
            .holding = false,
            .send_authorization = true,
            .request = null,
            .reader = null,
            .transfer_buffer = undefined,
            .position = start,
            .skip = 0,
            .total = null,
            .etag_buffer = undefined,
            .etag_len = 0,
            .retries_left = client.options.retries_max,
            .position_at_failure = start,
            .prng = .init(std.mem.readInt(u64, &seed, .little)),
            .state = .failed,
            .failure = error.InvalidUrl,
            .diagnostics = .{},
            .stats = .{},
            .error_body_buffer = undefined,
            .error_body_len = 0,
        };
        if (url.len > body.url_buffer.len / 2) return error.InvalidUrl;
        @memcpy(body.url_buffer[0..url.len], url);
        body.uri = std.Uri.parse(body.url_buffer[0..url.len]) catch return error.InvalidUrl;
        try body.resolveHost();
        body.slot = try client.watchdog.claim();
        body.host_index = client.hosts.acquire(body.host, body.port, &client.stopping) catch |err| {
            client.watchdog.release(body.slot);
            return err;
        };
        body.holding = true;
        body.state = .open;
        body.connect() catch |err| {
            body.state = .failed;
            body.failure = err;
            body.close();
            return err;
        };
    }

    /// Releases the connection (to the pool when the body was read to its
    /// end) and the host slot. Idempotent.
    pub fn close(body: *Body) void {
        if (!body.holding) return;
        body.endRequest(body.state != .done);
        body.client.hosts.release(body.host_index);
        body.client.watchdog.release(body.slot);
        body.holding = false;
    }

    fn resolveHost(body: *Body) Error!void {
        body.protocol = HttpClient.Protocol.fromUri(body.uri) orelse return error.InvalidUrl;
        const host = Io.net.HostName.fromUri(body.uri, &body.host_buffer) catch return error.InvalidUrl;
        body.host = host.bytes;
        body.port = body.uri.port orelse switch (body.protocol) {
            .plain => 80,
            .tls => 443,
        };
    }

    fn stream(r: *Io.Reader, w: *Io.Writer, limit: Io.Limit) Io.Reader.StreamError!usize {
        const body: *Body = @alignCast(@fieldParentPtr("interface", r));
        while (true) {
            switch (body.state) {
                .open => {},
                .done => return error.EndOfStream,
                .failed => return error.ReadFailed,
            }
            const reader = body.reader orelse {
                body.connect() catch |err| {
                    body.state = .failed;
                    body.failure = err;
                    return error.ReadFailed;
                };
                continue;
            };
            if (body.skip > 0) {
                const n = reader.discard(.limited64(body.skip)) catch |err| {
                    body.readFailed(err);
                    continue;
                };
                body.skip -= n;
                body.stats.bytes_received += n;
                body.stats.bytes_skipped += n;
                body.client.watchdog.progress(body.slot);
                continue;
            }
            const n = reader.stream(w, limit) catch |err| switch (err) {
                error.WriteFailed => return error.WriteFailed,
                error.EndOfStream, error.ReadFailed => {
                    if (err == error.EndOfStream and body.complete()) {
                        body.state = .done;
                        body.endRequest(false);
                        return error.EndOfStream;
                    }
                    body.readFailed(err);
                    continue;
                },
            };
            body.position += n;
            body.stats.bytes_received += n;
            body.client.watchdog.progress(body.slot);
            return n;
        }
    }

    /// True when the body ended where the server said it would.
    fn complete(body: *const Body) bool {
        const total = body.total orelse return true;
        return body.position == total;
    }

    /// A failure mid-body: drop the connection and let the next `stream`
    /// call resume, if the budget allows.
    fn readFailed(body: *Body, err: anyerror) void {
        const timed_out = body.client.watchdog.fired(body.slot);
        body.endRequest(true);
        body.diagnostics.cause = if (timed_out) .read_timeout else .cut;
        body.diagnostics.detail = @errorName(err);
        body.diagnostics.position = body.position;
        body.stats.resumes += 1;
        if (body.stats.resumes > resumes_max) return body.giveUp(error.RetriesExhausted);
        const moved = body.position - body.position_at_failure;
        body.position_at_failure = body.position;
        if (moved >= progress_reset_bytes) return;
        body.spendRetry(null) catch |e| body.giveUp(e);
    }

    fn giveUp(body: *Body, err: Error) void {
        body.state = .failed;
        body.failure = err;
    }

    /// Uses one retry and waits its backoff (or `retry_after_ms`).
    fn spendRetry(body: *Body, retry_after_ms: ?u32) Error!void {
        if (body.retries_left == 0) return error.RetriesExhausted;
        body.retries_left -= 1;
        body.stats.retries += 1;
        const attempt_index = body.client.options.retries_max - body.retries_left - 1;
        const backoff = backoffMs(body.client.options, attempt_index, body.prng.random());
        try body.wait(@max(backoff, retry_after_ms orelse 0));
    }

    /// Sleeps in slices so that `Client.stop` ends the wait.
    fn wait(body: *Body, ms: u32) Error!void {
        var left = ms;
        while (left > 0) {
            if (body.client.stopping.load(.acquire)) return error.Stopped;
            const slice = @min(left, 100);
            body.client.io.sleep(.fromMilliseconds(slice), .awake) catch return error.Stopped;
            left -= slice;
        }
        if (body.client.stopping.load(.acquire)) return error.Stopped;
    }

    fn endRequest(body: *Body, drop_connection: bool) void {
        body.reader = null;
        var request = body.request orelse return;
        body.request = null;
        // Disarm before std may close the socket.
        _ = body.client.watchdog.disarm(body.slot);
        if (request.connection) |connection| {
            if (drop_connection) connection.closing = true;
        }
        request.deinit();
    }

    /// Sends requests until one returns a usable response head.
    fn connect(body: *Body) Error!void {
        assert(body.request == null);
        var redirects: u32 = 0;
        var aux: []u8 = body.url_buffer[body.url_buffer.len / 2 ..];
        while (true) {
            const outcome = body.attempt(&aux) catch |err| switch (err) {
                error.Retry => {
                    try body.spendRetry(null);
                    continue;
                },
                else => |e| return e,
            };
            switch (outcome) {
                .ready => return,
                .retry_after => |ms| try body.spendRetry(ms),
                .redirected => {
                    redirects += 1;
                    if (redirects > redirects_max) {
                        body.diagnostics.cause = .redirects;
                        return error.HttpStatus;
                    }
                },
            }
        }
    }

    const Outcome = union(enum) {
        ready,
        retry_after: ?u32,
        redirected,
    };

    /// One request: connect, send, receive the head, judge the status.
    fn attempt(body: *Body, aux: *[]u8) (Error || error{Retry})!Outcome {
        if (body.client.stopping.load(.acquire)) return error.Stopped;
        const client = body.client;
        const connection = try body.connectWithTimeout();
        var range_buffer: [64]u8 = undefined;
        var headers_buffer: [extra_headers_max + 1]std.http.Header = undefined;
        var headers: std.ArrayList(std.http.Header) = .initBuffer(&headers_buffer);
        if (body.send_authorization) headers.appendSliceAssumeCapacity(client.options.extra_headers);
        if (body.position > 0) {
            const range = std.fmt.bufPrint(&range_buffer, "bytes={d}-", .{body.position}) catch unreachable;
            headers.appendAssumeCapacity(.{ .name = "Range", .value = range });
        }
        const authorization: HttpClient.Request.Headers.Value = if (client.options.authorization) |value|
            (if (body.send_authorization) .{ .override = value } else .omit)
        else
            .default;
        body.request = client.http.request(.GET, body.uri, .{
            .connection = connection,
            .redirect_behavior = .unhandled,
            .extra_headers = headers.items,
            // A compressed transfer would hand the reader compressed bytes.
            .headers = .{ .accept_encoding = .{ .override = "identity" }, .authorization = authorization },
        }) catch |err| {
            // request() with a connection given only fails before using it.
            client.http.connection_pool.release(connection, client.io);
            return body.failed(.protocol, err);
        };
        body.stats.requests += 1;
        const request = &body.request.?;
        client.watchdog.arm(body.slot, connection.stream_reader.stream.socket.handle, client.options.read_timeout_ms);
        request.sendBodiless() catch |err| {
            const cause: Cause = if (client.watchdog.fired(body.slot)) .read_timeout else .connect;
            body.endRequest(true);
            return body.failed(cause, err);
        };
        var response = request.receiveHead(&.{}) catch |err| {
            const cause: Cause = if (client.watchdog.fired(body.slot)) .read_timeout else .cut;
            body.endRequest(true);
            return body.failed(cause, err);
        };
        client.watchdog.progress(body.slot);
        const status: u16 = @backingInt(response.head.status);
        body.diagnostics.status = status;
        switch (classifyStatus(status)) {
            .ok => {
                try body.acceptRange(&response, status);
                body.reader = response.reader(&body.transfer_buffer);
                return .ready;
            },
            .retry => {
                const retry_after = if (findHeader(response.head, "retry-after")) |v| parseRetryAfterMs(v) else null;
                body.dropResponse(&response);
                body.diagnostics.cause = .status;
                body.diagnostics.detail = "retryable status";
                return .{ .retry_after = retry_after };
            },
            .redirect => {
                const location = response.head.location orelse {
                    body.dropResponse(&response);
                    return error.HttpStatus;
                };
                if (location.len > aux.len) {
                    body.dropResponse(&response);
                    return error.InvalidUrl;
                }
                @memcpy(aux.*[0..location.len], location);
                body.dropResponse(&response);
                body.uri = body.uri.resolveInPlace(location.len, aux) catch return error.InvalidUrl;
                try body.switchHost();
                return .redirected;
            },
            .give_up => {
                body.keepErrorBody(&response);
                body.dropResponse(&response);
                body.diagnostics.cause = .status;
                body.diagnostics.detail = "status";
                return error.HttpStatus;
            },
        }
    }

    /// Reads the start of a refused response's body while the watchdog
    /// still guards the socket (a stalling server times out as any read).
    fn keepErrorBody(body: *Body, response: *HttpClient.Response) void {
        body.error_body_len = 0;
        if (response.head.content_length) |n| if (n == 0) return;
        const reader = response.reader(&body.transfer_buffer);
        const n = reader.readSliceShort(&body.error_body_buffer) catch 0;
        body.error_body_len = @intCast(n);
    }

    /// Records a retryable failure.
    fn failed(body: *Body, cause: Cause, err: anyerror) error{Retry} {
        body.diagnostics.cause = cause;
        body.diagnostics.detail = @errorName(err);
        body.diagnostics.position = body.position;
        return error.Retry;
    }

    /// Ends a response whose body is not delivered. The connection is
    /// dropped rather than drained: draining happens after the watchdog let
    /// go of the socket, and a stalling server would hang it.
    fn dropResponse(body: *Body, response: *HttpClient.Response) void {
        _ = response;
        body.endRequest(true);
    }

    /// Checks a 200/206 against what was delivered, and sets `skip`.
    fn acceptRange(body: *Body, response: *HttpClient.Response, status: u16) Error!void {
        const head = response.head;
        var total: ?u64 = null;
        var first: u64 = 0;
        if (status == 206) {
            const value = findHeader(head, "content-range") orelse return body.changed(response);
            const range = parseContentRange(value) orelse return body.changed(response);
            if (range.first > body.position) return body.changed(response);
            first = range.first;
            total = range.total;
        } else {
            total = head.content_length;
        }
        if (body.total) |known| {
            if (total) |now| if (now != known) return body.changed(response);
        } else {
            body.total = total;
        }
        if (findHeader(head, "etag")) |etag| {
            const kept = etag[0..@min(etag.len, etag_bytes_max)];
            if (body.position == 0) {
                @memcpy(body.etag_buffer[0..kept.len], kept);
                body.etag_len = @intCast(kept.len);
            } else if (body.etag_len > 0 and !std.mem.eql(u8, body.etag_buffer[0..body.etag_len], kept)) {
                return body.changed(response);
            }
        }
        // 200 to a Range request: the server sent everything again.
        body.skip = body.position - first;
    }

    fn changed(body: *Body, response: *HttpClient.Response) Error {
        body.dropResponse(response);
        body.diagnostics.cause = .protocol;
        body.diagnostics.detail = "content changed between attempts";
        return error.ContentChanged;
    }

    fn switchHost(body: *Body) Error!void {
        var old_host_buffer: [Io.net.HostName.max_len]u8 = undefined;
        const old_host = old_host_buffer[0..body.host.len];
        @memcpy(old_host, body.host);
        const old_host_index = body.host_index;
        try body.resolveHost();
        if (!std.ascii.eqlIgnoreCase(old_host, body.host)) body.send_authorization = false;
        body.client.hosts.release(old_host_index);
        body.holding = false;
        body.host_index = try body.client.hosts.acquire(body.host, body.port, &body.client.stopping);
        body.holding = true;
    }

    /// Connects (TCP and TLS) within `connect_timeout_ms`, or reuses a pooled
    /// connection.
    fn connectWithTimeout(body: *Body) (Error || error{Retry})!*HttpClient.Connection {
        const client = body.client;
        const io = client.io;
        if (body.protocol == .tls) try body.loadCaBundle();
        const host: Io.net.HostName = .{ .bytes = body.host };
        const Result = union(enum) {
            connected: HttpClient.ConnectTcpError!*HttpClient.Connection,
            timed_out: Io.Cancelable!void,
        };
        var results: [2]Result = undefined;
        var select: Io.Select(Result) = .init(io, &results);
        select.concurrent(.connected, HttpClient.connectTcp, .{ &client.http, host, body.port, body.protocol }) catch {
            // No concurrency (a single-threaded Io): connect without a timeout.
            const connection = client.http.connectTcp(host, body.port, body.protocol) catch |err| return body.connectFailed(err);
            return connection;
        };
        // `async` may run the sleep inline, before the connect is awaited.
        select.concurrent(.timed_out, Io.sleep, .{ io, .fromMilliseconds(client.options.connect_timeout_ms), .awake }) catch {
            body.collectLosers(&select);
            const connection = client.http.connectTcp(host, body.port, body.protocol) catch |err| return body.connectFailed(err);
            return connection;
        };
        const first = select.await() catch {
            body.collectLosers(&select);
            return error.Stopped;
        };
        switch (first) {
            .connected => |result| {
                body.collectLosers(&select);
                const connection = result catch |err| return body.connectFailed(err);
                return connection;
            },
            .timed_out => {
                body.collectLosers(&select);
                return body.failed(.connect_timeout, error.ConnectTimeout);
            },
        }
    }

    /// Cancels what is left of a connect select, closing a connection that
    /// arrived too late.
    fn collectLosers(body: *Body, select: anytype) void {
        while (select.cancel()) |late| switch (late) {
            .connected => |result| if (result) |connection| {
                connection.closing = true;
                body.client.http.connection_pool.release(connection, body.client.io);
            } else |_| {},
            .timed_out => {},
        };
    }

    /// std loads the system's CA bundle in `request`, but the TLS handshake
    /// happens in the connect that we run first (and that asserts the bundle
    /// is there), so load it here, once per client, as std would.
    fn loadCaBundle(body: *Body) Error!void {
        const client = &body.client.http;
        const io = client.io;
        {
            client.ca_bundle_lock.lockSharedUncancelable(io);
            defer client.ca_bundle_lock.unlockShared(io);
            if (client.now != null) return;
        }
        var bundle: std.crypto.Certificate.Bundle = .empty;
        defer bundle.deinit(client.allocator);
        const now = Io.Clock.real.now(io);
        bundle.rescan(client.allocator, io, now) catch |err| switch (err) {
            error.OutOfMemory => return error.OutOfMemory,
            else => {
                body.diagnostics.cause = .tls;
                body.diagnostics.detail = @errorName(err);
                return error.Tls;
            },
        };
        client.ca_bundle_lock.lockUncancelable(io);
        defer client.ca_bundle_lock.unlock(io);
        if (client.now != null) return;
        client.now = now;
        std.mem.swap(std.crypto.Certificate.Bundle, &client.ca_bundle, &bundle);
    }

    fn connectFailed(body: *Body, err: HttpClient.ConnectTcpError) (Error || error{Retry}) {
        return switch (err) {
            error.OutOfMemory => error.OutOfMemory,
            error.TlsInitializationFailed => {
                body.diagnostics.cause = .tls;
                body.diagnostics.detail = @errorName(err);
                return error.Tls;
            },
            error.Canceled => error.Stopped,
            else => body.failed(.connect, err),
        };
    }
};

fn findHeader(head: HttpClient.Response.Head, name: []const u8) ?[]const u8 {
    var it = head.iterateHeaders();
    while (it.next()) |header| {
        if (std.ascii.eqlIgnoreCase(header.name, name)) return header.value;
    }
    return null;
}

const testing = std.testing;

test "statuses: 2xx ok, 408/429/5xx retried, redirects followed, other 4xx given up" {
    try testing.expectEqual(StatusClass.ok, classifyStatus(200));
    try testing.expectEqual(StatusClass.ok, classifyStatus(206));
    for ([_]u16{ 408, 429, 500, 502, 503, 504, 599 }) |status| try testing.expectEqual(StatusClass.retry, classifyStatus(status));
    for ([_]u16{ 301, 302, 303, 307, 308 }) |status| try testing.expectEqual(StatusClass.redirect, classifyStatus(status));
    for ([_]u16{ 204, 304, 400, 401, 403, 404, 410, 416 }) |status| try testing.expectEqual(StatusClass.give_up, classifyStatus(status));
}

test "backoff doubles from the initial delay, is capped, and jitters in its upper half" {
    var prng: std.Random.DefaultPrng = .init(7);
    const options: Options = .{ .backoff_initial_ms = 100, .backoff_max_ms = 3_000 };
    for (0..40) |attempt| {
        const ceiling: u32 = @intCast(@min(@as(u64, 100) << @intCast(@min(attempt, 20)), 3_000));
        var seen_low = false;
        var seen_high = false;
        for (0..200) |_| {
            const ms = backoffMs(options, @intCast(attempt), prng.random());
            try testing.expect(ms >= ceiling / 2 and ms <= ceiling);
            seen_low = seen_low or ms < ceiling * 3 / 4;
            seen_high = seen_high or ms > ceiling * 3 / 4;
        }
        try testing.expect(seen_low and seen_high);
    }
}

test "Retry-After: delta-seconds, capped; dates and garbage fall back to the backoff" {
    try testing.expectEqual(@as(?u32, 2000), parseRetryAfterMs("2"));
    try testing.expectEqual(@as(?u32, 0), parseRetryAfterMs(" 0 "));
    try testing.expectEqual(@as(?u32, retry_after_max_ms), parseRetryAfterMs("86400"));
    try testing.expectEqual(@as(?u32, null), parseRetryAfterMs("Wed, 21 Oct 2015 07:28:00 GMT"));
    try testing.expectEqual(@as(?u32, null), parseRetryAfterMs("-1"));
    try testing.expectEqual(@as(?u32, null), parseRetryAfterMs(""));
}

test "Content-Range parsing" {
    try testing.expectEqual(ContentRange{ .first = 100, .last = 199, .total = 1000 }, parseContentRange("bytes 100-199/1000").?);
    try testing.expectEqual(ContentRange{ .first = 0, .last = 0, .total = null }, parseContentRange("bytes 0-0/*").?);
    for ([_][]const u8{ "bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes 1/2", "bytes a-b/c", "bytes */10" }) |bad| {
        try testing.expectEqual(@as(?ContentRange, null), parseContentRange(bad));
    }
}
