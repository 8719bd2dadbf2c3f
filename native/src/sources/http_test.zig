//! http.zig against a loopback server in the same process: keep-alive,
//! Range resumption, a server without Range, retries and Retry-After, 4xx,
//! read and connect timeouts, redirects, changed content, the host cap, a
//! tar shard read through a cut and a stall, and a WebDataset stream
//! resumed inside a shard with Range.
const std = @import("std");
const Io = std.Io;
const testing = std.testing;
const http = @import("http.zig");
const Body = http.Body;
const Cause = http.Cause;
const Client = http.Client;
const HostLimiter = http.HostLimiter;
const Options = http.Options;
const Stats = http.Stats;
const Watchdog = http.Watchdog;

/// A loopback HTTP/1.1 server on its own threads (one per connection), with
/// keep-alive, `Range: bytes=N-`, a log, and faults.
const TestServer = struct {
    io: Io,
    listener: Io.net.Server,
    port: u16,
    data: []const u8,
    /// Served instead of `data` after the first request, when set.
    later_data: ?[]const u8 = null,
    fault: Fault,
    stopping: std.atomic.Value(bool) = .init(false),
    mutex: Io.Mutex = .init,
    recorded: Io.Condition = .init,
    log: [log_max]Record = undefined,
    log_len: usize = 0,
    requests: u32 = 0,
    accept_thread: ?std.Thread = null,
    connections: [connections_max]Connection = @splat(.{}),

    const log_max = 64;
    const connections_max = 16;

    const Fault = struct {
        status: ?u16 = null,
        fail_times: u32 = 0,
        fail_status: u16 = 500,
        retry_after: ?[]const u8 = null,
        cut_after: ?u64 = null,
        cut_times: u32 = 1,
        stall_after: ?u64 = null,
        stall_ms: u32 = 0,
        stall_times: u32 = 1,
        ignore_range: bool = false,
        /// Accept, read nothing, answer nothing.
        silent: bool = false,
        etag: ?[]const u8 = null,
        /// The ETag of every request after the first.
        later_etag: ?[]const u8 = null,
        /// Answer the first request with 302 to this Location.
        redirect_to: ?[]const u8 = null,
    };

    const Record = struct {
        range_start: ?u64,
        status: u16,
        bytes_sent: u64,
        client_port: u16,
        authorization: bool = false,
    };

    const Request = struct { range_start: ?u64 = null, authorization: bool = false };

    const Connection = struct {
        thread: ?std.Thread = null,
        stream: ?Io.net.Stream = null,
    };

    fn start(server: *TestServer, io: Io, data: []const u8, fault: Fault) !void {
        var address: Io.net.IpAddress = try .parse("127.0.0.1", 0);
        server.* = .{ .io = io, .listener = try address.listen(io, .{ .reuse_address = true }), .port = 0, .data = data, .fault = fault };
        server.port = server.listener.socket.address.getPort();
        server.accept_thread = try std.Thread.spawn(.{}, acceptLoop, .{server});
    }

    fn stop(server: *TestServer) void {
        server.stopping.store(true, .release);
        const listener_stream: Io.net.Stream = .{ .socket = server.listener.socket };
        listener_stream.shutdown(server.io, .both) catch {};
        if (server.accept_thread) |thread| thread.join();
        for (&server.connections) |*connection| {
            if (connection.stream) |s| s.shutdown(server.io, .both) catch {};
            if (connection.thread) |thread| thread.join();
            if (connection.stream) |s| s.close(server.io);
        }
        server.listener.deinit(server.io);
    }

    fn url(server: *const TestServer, buffer: []u8, scheme: []const u8) []const u8 {
        return std.fmt.bufPrint(buffer, "{s}://127.0.0.1:{d}/shard.tar", .{ scheme, server.port }) catch unreachable;
    }

    /// The log once it holds `count` records (a request is logged after its
    /// response was written, which the client may finish reading first).
    fn records(server: *TestServer, count: usize) ![]const Record {
        server.mutex.lockUncancelable(server.io);
        defer server.mutex.unlock(server.io);
        const deadline = Io.Clock.Timestamp.now(server.io, .awake).addDuration(.{ .raw = .fromSeconds(10), .clock = .awake });
        while (server.log_len < count) {
            server.recorded.waitTimeout(server.io, &server.mutex, .{ .deadline = deadline }) catch return error.Timeout;
        }
        return server.log[0..server.log_len];
    }

    fn acceptLoop(server: *TestServer) void {
        var index: usize = 0;
        while (index < connections_max) : (index += 1) {
            const stream = server.listener.accept(server.io) catch return;
            if (server.stopping.load(.acquire)) {
                stream.close(server.io);
                return;
            }
            server.connections[index].stream = stream;
            server.connections[index].thread = std.Thread.spawn(.{}, serve, .{ server, stream }) catch return;
        }
    }

    fn serve(server: *TestServer, stream: Io.net.Stream) void {
        if (server.fault.silent) {
            // Bounded, so that a client without a connect timeout fails
            // the test instead of hanging it.
            var waited_ms: u32 = 0;
            while (!server.stopping.load(.acquire) and waited_ms < 20_000) : (waited_ms += 5) {
                server.io.sleep(.fromMilliseconds(5), .awake) catch return;
            }
            stream.shutdown(server.io, .both) catch {};
            return;
        }
        var read_buffer: [4096]u8 = undefined;
        var write_buffer: [4096]u8 = undefined;
        var reader = stream.reader(server.io, &read_buffer);
        var writer = stream.writer(server.io, &write_buffer);
        const client_port = peerPort(stream);
        while (!server.stopping.load(.acquire)) {
            const request = readRequest(&reader.interface) catch return;
            const keep = server.respond(&writer.interface, stream, request, client_port) catch return;
            if (!keep) return;
        }
    }

    fn peerPort(stream: Io.net.Stream) u16 {
        var address: std.posix.sockaddr.in = undefined;
        var len: std.posix.socklen_t = @sizeOf(std.posix.sockaddr.in);
        if (std.posix.system.getpeername(stream.socket.handle, @ptrCast(&address), &len) != 0) return 0;
        return std.mem.bigToNative(u16, address.port);
    }

    /// Reads one request head: the start of its `Range`, if any, and
    /// whether it carried `Authorization`.
    fn readRequest(in: *Io.Reader) !Request {
        var request: Request = .{};
        var lines: u32 = 0;
        while (true) : (lines += 1) {
            if (lines > 64) return error.TooManyHeaders;
            const line = try in.takeDelimiterInclusive('\n');
            const text = std.mem.trimEnd(u8, line, "\r\n");
            if (text.len == 0) return request;
            const prefix = "range: bytes=";
            if (text.len > prefix.len and std.ascii.eqlIgnoreCase(text[0..prefix.len], prefix)) {
                const spec = text[prefix.len..];
                const dash = std.mem.findScalar(u8, spec, '-') orelse return error.BadRange;
                request.range_start = try std.fmt.parseUnsigned(u64, spec[0..dash], 10);
            }
            if (std.ascii.startsWithIgnoreCase(text, "authorization:")) request.authorization = true;
        }
    }

    /// Answers one request; false when the connection must end.
    fn respond(server: *TestServer, out: *Io.Writer, stream: Io.net.Stream, request: Request, client_port: u16) !bool {
        const range_start = request.range_start;
        const authorization = request.authorization;
        server.mutex.lockUncancelable(server.io);
        const index = server.requests;
        server.requests += 1;
        server.mutex.unlock(server.io);
        const fault = server.fault;
        const data = if (index > 0) server.later_data orelse server.data else server.data;
        var status: u16 = 200;
        if (fault.status) |s| status = s else if (index < fault.fail_times) status = fault.fail_status;
        if (fault.redirect_to) |location| if (index == 0) {
            try out.print("HTTP/1.1 302 Found\r\nLocation: {s}\r\nContent-Length: 0\r\n\r\n", .{location});
            try out.flush();
            server.record(.{ .range_start = range_start, .status = 302, .bytes_sent = 0, .client_port = client_port, .authorization = authorization });
            return true;
        };
        if (status != 200) {
            try out.print("HTTP/1.1 {d} Nope\r\nContent-Type: text/html\r\nContent-Length: 14\r\n", .{status});
            if (fault.retry_after) |value| try out.print("Retry-After: {s}\r\n", .{value});
            try out.writeAll("\r\n<html>no</html");
            try out.flush();
            server.record(.{ .range_start = range_start, .status = status, .bytes_sent = 0, .client_port = client_port, .authorization = authorization });
            return true;
        }
        var first: u64 = 0;
        if (range_start) |asked| if (!fault.ignore_range and asked < data.len) {
            first = asked;
            status = 206;
        };
        try out.print("HTTP/1.1 {d} OK\r\nContent-Length: {d}\r\n", .{ status, data.len - first });
        if (status == 206) try out.print("Content-Range: bytes {d}-{d}/{d}\r\n", .{ first, data.len - 1, data.len });
        const etag = if (index > 0) fault.later_etag orelse fault.etag else fault.etag;
        if (etag) |value| try out.print("ETag: {s}\r\n", .{value});
        try out.writeAll("\r\n");
        const body = data[first..];
        const cut_at: ?u64 = if (fault.cut_after != null and index < fault.cut_times) fault.cut_after else null;
        const stall_at: ?u64 = if (fault.stall_after != null and index < fault.stall_times) fault.stall_after else null;
        var sent: u64 = 0;
        var stalled = false;
        while (sent < body.len) {
            if (stall_at) |at| if (!stalled and sent >= at) {
                try out.flush();
                stalled = true;
                var waited: u32 = 0;
                while (waited < fault.stall_ms and !server.stopping.load(.acquire)) : (waited += 5) {
                    server.io.sleep(.fromMilliseconds(5), .awake) catch {};
                }
            };
            if (cut_at) |at| if (sent >= at) {
                try out.flush();
                stream.shutdown(server.io, .both) catch {};
                server.record(.{ .range_start = range_start, .status = status, .bytes_sent = sent, .client_port = client_port, .authorization = authorization });
                return false;
            };
            var end = @min(body.len, sent + 8192);
            if (cut_at) |at| if (at > sent) {
                end = @min(end, at);
            };
            if (stall_at) |at| if (!stalled and at > sent) {
                end = @min(end, at);
            };
            out.writeAll(body[sent..end]) catch {
                server.record(.{ .range_start = range_start, .status = status, .bytes_sent = sent, .client_port = client_port, .authorization = authorization });
                return false;
            };
            sent = end;
        }
        out.flush() catch return false;
        server.record(.{ .range_start = range_start, .status = status, .bytes_sent = sent, .client_port = client_port, .authorization = authorization });
        return true;
    }

    fn record(server: *TestServer, entry: Record) void {
        server.mutex.lockUncancelable(server.io);
        defer server.mutex.unlock(server.io);
        if (server.log_len < log_max) {
            server.log[server.log_len] = entry;
            server.log_len += 1;
        }
        server.recorded.broadcast(server.io);
    }
};

/// Deterministic test content: every offset distinguishable.
fn testData(comptime len: usize) [len]u8 {
    var data: [len]u8 = undefined;
    for (&data, 0..) |*byte, i| byte.* = @truncate(i *% 31 +% i / 251);
    return data;
}

const Fixture = struct {
    watchdog: Watchdog,
    watchdog_thread: std.Thread,
    client: Client,
    server: TestServer,
    body: Body,
    buffer: [64 * 1024]u8,

    fn create(data: []const u8, fault: TestServer.Fault, options: Options) !*Fixture {
        const f = try testing.allocator.create(Fixture);
        errdefer testing.allocator.destroy(f);
        const io = testing.io;
        f.watchdog = .init(io);
        f.client.init(testing.allocator, io, &f.watchdog, options);
        try f.server.start(io, data, fault);
        f.watchdog_thread = try std.Thread.spawn(.{}, Watchdog.run, .{ &f.watchdog, Watchdog.periodFor(options.read_timeout_ms) });
        return f;
    }

    fn destroy(f: *Fixture) void {
        f.client.deinit();
        f.watchdog.stop();
        f.watchdog_thread.join();
        f.server.stop();
        testing.allocator.destroy(f);
    }

    /// Opens the server's URL and reads it all.
    fn fetch(f: *Fixture, scheme: []const u8) ![]u8 {
        var url_buffer: [128]u8 = undefined;
        const url = f.server.url(&url_buffer, scheme);
        try f.body.open(&f.client, url, &f.buffer);
        defer f.body.close();
        return f.body.interface.allocRemaining(testing.allocator, .unlimited);
    }
};

const fast: Options = .{ .backoff_initial_ms = 5, .backoff_max_ms = 20, .connect_timeout_ms = 2_000, .read_timeout_ms = 2_000 };

test "a plain GET streams the whole body once" {
    const data = testData(300_000);
    const f = try Fixture.create(&data, .{}, fast);
    defer f.destroy();
    const got = try f.fetch("http");
    defer testing.allocator.free(got);
    try testing.expectEqualSlices(u8, &data, got);
    try testing.expectEqual(Stats{ .requests = 1, .bytes_received = data.len }, f.body.stats);
    const records = try f.server.records(1);
    try testing.expectEqual(@as(usize, 1), records.len);
    try testing.expectEqual(@as(u64, data.len), records[0].bytes_sent);
}

test "keep-alive: a second body reuses the connection" {
    const data = testData(10_000);
    const f = try Fixture.create(&data, .{}, fast);
    defer f.destroy();
    for (0..2) |_| {
        const got = try f.fetch("http");
        defer testing.allocator.free(got);
        try testing.expectEqualSlices(u8, &data, got);
    }
    const records = try f.server.records(2);
    try testing.expectEqual(@as(usize, 2), records.len);
    try testing.expectEqual(records[0].client_port, records[1].client_port);
}

test "a cut mid-body resumes with Range from the byte delivered, nothing twice" {
    const data = testData(200_000);
    const f = try Fixture.create(&data, .{ .cut_after = 70_000 }, fast);
    defer f.destroy();
    const got = try f.fetch("http");
    defer testing.allocator.free(got);
    try testing.expectEqualSlices(u8, &data, got);
    const records = try f.server.records(2);
    try testing.expectEqual(@as(usize, 2), records.len);
    try testing.expectEqual(@as(?u64, null), records[0].range_start);
    try testing.expectEqual(@as(u64, 70_000), records[0].bytes_sent);
    // The server sent every byte once: the resume starts where the cut was.
    try testing.expectEqual(@as(?u64, 70_000), records[1].range_start);
    try testing.expectEqual(@as(u16, 206), records[1].status);
    try testing.expectEqual(@as(u64, data.len), records[0].bytes_sent + records[1].bytes_sent);
    try testing.expectEqual(@as(u32, 2), f.body.stats.requests);
    try testing.expectEqual(Cause.cut, f.body.diagnostics.cause);
}

test "a server without Range is read again and the delivered bytes skipped" {
    const data = testData(200_000);
    const f = try Fixture.create(&data, .{ .cut_after = 70_000, .ignore_range = true }, fast);
    defer f.destroy();
    const got = try f.fetch("http");
    defer testing.allocator.free(got);
    try testing.expectEqualSlices(u8, &data, got);
    const records = try f.server.records(2);
    try testing.expectEqual(@as(usize, 2), records.len);
    try testing.expectEqual(@as(?u64, 70_000), records[1].range_start);
    try testing.expectEqual(@as(u16, 200), records[1].status);
    try testing.expectEqual(@as(u64, 70_000), f.body.stats.bytes_skipped);
    try testing.expectEqual(@as(u64, data.len + 70_000), f.body.stats.bytes_received);
}

test "openAt asks for the rest with Range from its first request; a 200 has the start skipped" {
    const data = testData(100_000);
    for ([_]bool{ false, true }) |ignore_range| {
        const f = try Fixture.create(&data, .{ .ignore_range = ignore_range }, fast);
        defer f.destroy();
        var url_buffer: [128]u8 = undefined;
        try f.body.openAt(&f.client, f.server.url(&url_buffer, "http"), &f.buffer, 30_000);
        const got = got: {
            defer f.body.close();
            break :got try f.body.interface.allocRemaining(testing.allocator, .unlimited);
        };
        defer testing.allocator.free(got);
        try testing.expectEqualSlices(u8, data[30_000..], got);
        const records = try f.server.records(1);
        try testing.expectEqual(@as(usize, 1), records.len);
        try testing.expectEqual(@as(?u64, 30_000), records[0].range_start);
        try testing.expectEqual(@as(u16, if (ignore_range) 200 else 206), records[0].status);
        try testing.expectEqual(@as(u64, if (ignore_range) 30_000 else 0), f.body.stats.bytes_skipped);
    }
}

test "500 then success: retried with backoff" {
    const data = testData(5_000);
    const f = try Fixture.create(&data, .{ .fail_times = 2 }, fast);
    defer f.destroy();
    const got = try f.fetch("http");
    defer testing.allocator.free(got);
    try testing.expectEqualSlices(u8, &data, got);
    try testing.expectEqual(@as(u32, 3), f.body.stats.requests);
    try testing.expectEqual(@as(u32, 2), f.body.stats.retries);
    const records = try f.server.records(3);
    try testing.expectEqual(@as(u16, 500), records[0].status);
    try testing.expectEqual(@as(u16, 200), records[2].status);
}

test "429 with Retry-After waits what the server asked" {
    const data = testData(5_000);
    const f = try Fixture.create(&data, .{ .fail_times = 1, .fail_status = 429, .retry_after = "1" }, fast);
    defer f.destroy();
    const started = Io.Clock.awake.now(testing.io);
    const got = try f.fetch("http");
    defer testing.allocator.free(got);
    const waited_ms = started.durationTo(Io.Clock.awake.now(testing.io)).toMilliseconds();
    try testing.expectEqualSlices(u8, &data, got);
    // The backoff alone is at most 20 ms here.
    try testing.expect(waited_ms >= 950);
    try testing.expectEqual(@as(u32, 2), f.body.stats.requests);
}

test "retries run out: RetriesExhausted with the last cause" {
    const data = testData(100);
    const f = try Fixture.create(&data, .{ .fail_times = 100, .fail_status = 503 }, .{ .retries_max = 2, .backoff_initial_ms = 1, .backoff_max_ms = 2 });
    defer f.destroy();
    try testing.expectError(error.RetriesExhausted, f.fetch("http"));
    try testing.expectEqual(@as(u32, 3), f.body.stats.requests);
    try testing.expectEqual(Cause.status, f.body.diagnostics.cause);
    try testing.expectEqual(@as(u16, 503), f.body.diagnostics.status);
}

test "a 404 gives the URL up at once, before any byte" {
    const data = testData(100);
    const f = try Fixture.create(&data, .{ .status = 404 }, fast);
    defer f.destroy();
    try testing.expectError(error.HttpStatus, f.fetch("http"));
    try testing.expectEqual(@as(u16, 404), f.body.diagnostics.status);
    try testing.expectEqual(@as(u32, 1), f.body.stats.requests);
    try testing.expectEqual(@as(u64, 0), f.body.stats.bytes_received);
    // A failed open holds nothing.
    try testing.expectEqual(@as(u16, 0), f.client.hosts.openCount("127.0.0.1", f.server.port));
    try testing.expect(!f.body.holding);
}

test "a stall longer than read_timeout: the watchdog cuts it, the body resumes" {
    const data = testData(150_000);
    var options = fast;
    options.read_timeout_ms = 200;
    // A stall far longer than the bound below, so that a slow machine (or
    // valgrind) cannot pass the test by waiting it out.
    const f = try Fixture.create(&data, .{ .stall_after = 50_000, .stall_ms = 20_000 }, options);
    defer f.destroy();
    const started = Io.Clock.awake.now(testing.io);
    const got = try f.fetch("http");
    defer testing.allocator.free(got);
    const elapsed_ms = started.durationTo(Io.Clock.awake.now(testing.io)).toMilliseconds();
    try testing.expectEqualSlices(u8, &data, got);
    try testing.expectEqual(Cause.read_timeout, f.body.diagnostics.cause);
    try testing.expectEqual(@as(u32, 2), f.body.stats.requests);
    try testing.expect(elapsed_ms < 10_000);
    // The stalled request is logged only when its stall ends (at the
    // server's stop), so the resume is the one record there now.
    const records = try f.server.records(1);
    var resumed = false;
    for (records) |r| resumed = resumed or (r.range_start == 50_000 and r.status == 206);
    try testing.expect(resumed);
}

test "connect timeout: a TLS handshake that never answers" {
    const data = testData(100);
    var options = fast;
    options.connect_timeout_ms = 200;
    options.retries_max = 1;
    const f = try Fixture.create(&data, .{ .silent = true }, options);
    defer f.destroy();
    // An empty trusted set: no system scan, and nothing would verify anyway.
    f.client.http.now = Io.Clock.real.now(testing.io);
    const started = Io.Clock.awake.now(testing.io);
    try testing.expectError(error.RetriesExhausted, f.fetch("https"));
    const elapsed_ms = started.durationTo(Io.Clock.awake.now(testing.io)).toMilliseconds();
    try testing.expectEqual(Cause.connect_timeout, f.body.diagnostics.cause);
    // Two attempts of 200 ms each and the backoff: far from the 20 s a
    // handshake without a timeout would wait for the server to stop.
    try testing.expect(elapsed_ms < 10_000);
}

test "refused connections are retried, then given up" {
    const data = testData(100);
    const f = try Fixture.create(&data, .{}, .{ .retries_max = 2, .backoff_initial_ms = 1, .backoff_max_ms = 2 });
    defer f.destroy();
    var url_buffer: [64]u8 = undefined;
    // Port 1 on loopback: nothing listens there.
    const url = try std.fmt.bufPrint(&url_buffer, "http://127.0.0.1:1/x.tar", .{});
    try testing.expectError(error.RetriesExhausted, f.body.open(&f.client, url, &f.buffer));
    defer f.body.close();
    try testing.expectEqual(Cause.connect, f.body.diagnostics.cause);
    try testing.expectEqualStrings("ConnectionRefused", f.body.diagnostics.detail);
}

test "a changed object between attempts is ContentChanged, not a splice" {
    const data = testData(100_000);
    const other = testData(120_000);
    const f = try Fixture.create(&data, .{ .cut_after = 30_000 }, fast);
    defer f.destroy();
    f.server.later_data = &other;
    try testing.expectError(error.ReadFailed, f.fetch("http"));
    try testing.expectEqual(error.ContentChanged, f.body.failure);
}

test "an ETag change between attempts is ContentChanged; the same ETag resumes" {
    const data = testData(100_000);
    const changed = try Fixture.create(&data, .{ .cut_after = 30_000, .etag = "\"v1\"", .later_etag = "\"v2\"" }, fast);
    defer changed.destroy();
    try testing.expectError(error.ReadFailed, changed.fetch("http"));
    try testing.expectEqual(error.ContentChanged, changed.body.failure);

    const same = try Fixture.create(&data, .{ .cut_after = 30_000, .etag = "\"v1\"" }, fast);
    defer same.destroy();
    const got = try same.fetch("http");
    defer testing.allocator.free(got);
    try testing.expectEqualSlices(u8, &data, got);
}

test "redirects are followed; the token does not follow to another host" {
    const data = testData(20_000);
    var options = fast;
    options.authorization = "Bearer secret";
    for ([_]bool{ false, true }) |other_host| {
        const f = try Fixture.create(&data, .{}, options);
        defer f.destroy();
        var location_buffer: [96]u8 = undefined;
        f.server.fault.redirect_to = if (other_host)
            try std.fmt.bufPrint(&location_buffer, "http://localhost:{d}/moved.tar", .{f.server.port})
        else
            "/moved.tar";
        const got = try f.fetch("http");
        defer testing.allocator.free(got);
        try testing.expectEqualSlices(u8, &data, got);
        const records = try f.server.records(2);
        try testing.expectEqual(@as(usize, 2), records.len);
        try testing.expectEqual(@as(u16, 302), records[0].status);
        try testing.expect(records[0].authorization);
        try testing.expectEqual(!other_host, records[1].authorization);
    }
}

test "the host limiter caps bodies per host" {
    var limiter: HostLimiter = .init(testing.io, 2);
    var stop: std.atomic.Value(bool) = .init(false);
    const State = struct {
        limiter: *HostLimiter,
        stop: *std.atomic.Value(bool),
        open: std.atomic.Value(u32) = .init(0),
        open_max: std.atomic.Value(u32) = .init(0),

        fn work(state: *@This()) void {
            for (0..20) |_| {
                const index = state.limiter.acquire("example.test", 443, state.stop) catch return;
                const now = state.open.fetchAdd(1, .acq_rel) + 1;
                _ = state.open_max.fetchMax(now, .acq_rel);
                testing.io.sleep(.fromMilliseconds(1), .awake) catch {};
                _ = state.open.fetchSub(1, .acq_rel);
                state.limiter.release(index);
            }
        }
    };
    var state: State = .{ .limiter = &limiter, .stop = &stop };
    var threads: [4]std.Thread = undefined;
    for (&threads) |*thread| thread.* = try std.Thread.spawn(.{}, State.work, .{&state});
    for (threads) |thread| thread.join();
    try testing.expectEqual(@as(u32, 2), state.open_max.load(.acquire));
    try testing.expectEqual(@as(u16, 0), limiter.openCount("example.test", 443));
    // Another host is not held back by a full one.
    const a = try limiter.acquire("a.test", 80, &stop);
    const b = try limiter.acquire("a.test", 80, &stop);
    const c = try limiter.acquire("b.test", 80, &stop);
    try testing.expectEqual(@as(u16, 2), limiter.openCount("A.TEST", 80));
    limiter.release(a);
    limiter.release(b);
    limiter.release(c);
    stop.store(true, .release);
    try testing.expectError(error.Stopped, limiter.acquire("a.test", 80, &stop));
}

test "a shard read through tar survives a cut and a stall" {
    const tar = @import("tar.zig");
    var archive: Io.Writer.Allocating = .init(testing.allocator);
    defer archive.deinit();
    var writer: std.tar.Writer = .{ .underlying_writer = &archive.writer };
    const member = testData(40_000);
    for (0..5) |i| {
        var name: [16]u8 = undefined;
        try writer.writeFileBytes(try std.fmt.bufPrint(&name, "s{d}.jpg", .{i}), &member, .{});
    }
    try writer.finishPedantically();
    var options = fast;
    options.read_timeout_ms = 200;
    const f = try Fixture.create(archive.written(), .{ .cut_after = 50_000, .stall_after = 20_000, .stall_ms = 2_000 }, options);
    defer f.destroy();
    var url_buffer: [128]u8 = undefined;
    try f.body.open(&f.client, f.server.url(&url_buffer, "http"), &f.buffer);
    defer f.body.close();
    const window = try testing.allocator.create([tar.window_bytes]u8);
    defer testing.allocator.destroy(window);
    const reader = try testing.allocator.create(tar.Reader);
    defer testing.allocator.destroy(reader);
    try reader.init(&f.body.interface, window);
    var count: usize = 0;
    var data: [40_000]u8 = undefined;
    while (try reader.next()) |m| {
        try reader.readAll(data[0..@intCast(m.size)]);
        try testing.expectEqualSlices(u8, &member, &data);
        count += 1;
    }
    try testing.expectEqual(@as(usize, 5), count);
    try testing.expect(f.body.stats.requests >= 2);
}

test "a connect that succeeds does not wait out the connect timeout" {
    // Regression: the timeout task ran inline (`Select.async`), so every new
    // connection took connect_timeout_ms.
    const data = testData(1000);
    var options = fast;
    options.connect_timeout_ms = 20_000;
    const f = try Fixture.create(&data, .{}, options);
    defer f.destroy();
    const started = Io.Clock.awake.now(testing.io);
    const got = try f.fetch("http");
    defer testing.allocator.free(got);
    try testing.expectEqualSlices(u8, &data, got);
    try testing.expect(started.durationTo(Io.Clock.awake.now(testing.io)).toMilliseconds() < 10_000);
}

test "a resumed WebDataset lane asks for its shard from the checkpoint's offset, and keeps it out of the cache" {
    const gpa = testing.allocator;
    const wds_source = @import("wds_source.zig");
    var archive: Io.Writer.Allocating = .init(gpa);
    defer archive.deinit();
    var writer: std.tar.Writer = .{ .underlying_writer = &archive.writer };
    const member = testData(3000);
    for (0..30) |i| {
        var name: [16]u8 = undefined;
        try writer.writeFileBytes(try std.fmt.bufPrint(&name, "k{d}.jpg", .{i}), member[0 .. 100 + i * 70], .{});
    }
    try writer.finishPedantically();
    var tmp = testing.tmpDir(.{});
    defer tmp.cleanup();
    var path_buffer: [std.fs.max_path_bytes]u8 = undefined;
    const cache_dir = path_buffer[0..try tmp.dir.realPath(testing.io, &path_buffer)];
    for ([_]bool{ false, true }) |ignore_range| {
        var server: TestServer = undefined;
        try server.start(testing.io, archive.written(), .{ .ignore_range = ignore_range });
        defer server.stop();
        var url_buffer: [128]u8 = undefined;
        const url = server.url(&url_buffer, "http");
        var json_buffer: [1024]u8 = undefined;
        const json = try std.fmt.bufPrint(&json_buffer,
            \\{{"source_type": "webdataset", "source_config": {{"url": "{s}", "shuffle_buffer": 4, "seed": 1}}}}
        , .{url});
        const whole = try wds_source.TestPass.run(json, null);
        defer whole.deinit();
        try testing.expectEqual(@as(u64, 30), whole.total);
        var cp = (try whole.src.checkpointAt(gpa, 14)).?;
        defer cp.deinit(gpa);
        try testing.expectEqual(@as(u64, 12), cp.seq);
        const offset = cp.lanes[0].offset;
        try testing.expect(offset > 0 and !cp.lanes[0].gzip);
        const resumed = try wds_source.TestPass.run(json, cp);
        defer resumed.deinit();
        try testing.expectEqualStrings(whole.from(12), resumed.text.items);
        const records = try server.records(2);
        try testing.expectEqual(@as(?u64, null), records[0].range_start);
        try testing.expectEqual(@as(?u64, offset), records[1].range_start);
        try testing.expectEqual(@as(u16, if (ignore_range) 200 else 206), records[1].status);

        // With a cache: the resumed read is not cached; a whole one is, and
        // a resume then seeks in the cached copy without a request.
        const cached_json = try std.fmt.bufPrint(&json_buffer,
            \\{{"source_type": "webdataset", "source_config": {{"url": "{s}", "shuffle_buffer": 4, "seed": 1, "cache_dir": "{s}/c{d}"}}}}
        , .{ url, cache_dir, @intFromBool(ignore_range) });
        const not_cached = try wds_source.TestPass.run(cached_json, cp);
        defer not_cached.deinit();
        try testing.expectEqualStrings(whole.from(12), not_cached.text.items);
        try testing.expectEqual(@as(u64, 0), not_cached.src.counts.cache.load().bytes_written);
        const filled = try wds_source.TestPass.run(cached_json, null);
        defer filled.deinit();
        try testing.expect(filled.src.counts.cache.load().bytes_written > 0);
        const from_cache = try wds_source.TestPass.run(cached_json, cp);
        defer from_cache.deinit();
        try testing.expectEqualStrings(whole.from(12), from_cache.text.items);
        try testing.expectEqual(@as(u64, 1), from_cache.src.counts.cache.load().hits);
        try testing.expectEqual(@as(usize, 4), (try server.records(4)).len);
    }
}
