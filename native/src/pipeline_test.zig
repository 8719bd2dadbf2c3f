//! End-to-end tests of loader + pipeline + file source with the leak-checking
//! testing allocator. Images are tiny BMPs written by hand.
const std = @import("std");
const testing = std.testing;
const Io = std.Io;

const config_mod = @import("config.zig");
const loader_mod = @import("loader.zig");
const pipeline = @import("pipeline.zig");
const source_mod = @import("sources/source.zig");
const runtime = @import("runtime.zig");
const sample_mod = @import("sample.zig");

const bmp = @import("test_images.zig").bmp;

const Fixture = struct {
    tmp: testing.TmpDir,
    root: []u8,

    fn init(good: u32, bad: u32) !Fixture {
        const io = testing.io;
        var tmp = testing.tmpDir(.{});
        errdefer tmp.cleanup();
        var buffer: [4096]u8 = undefined;
        var name: [32]u8 = undefined;
        for (0..good) |i| {
            const file_name = try std.fmt.bufPrint(&name, "img{d:0>4}.bmp", .{i});
            try tmp.dir.writeFile(io, .{ .sub_path = file_name, .data = bmp(&buffer, 3, 2, .{ .value = @intCast(i % 256) }) });
        }
        for (0..bad) |i| {
            const file_name = try std.fmt.bufPrint(&name, "bad{d:0>4}.png", .{i});
            try tmp.dir.writeFile(io, .{ .sub_path = file_name, .data = "not an image" });
        }
        var path_buffer: [std.fs.max_path_bytes]u8 = undefined;
        const len = try tmp.dir.realPath(io, &path_buffer);
        return .{ .tmp = tmp, .root = try testing.allocator.dupe(u8, path_buffer[0..len]) };
    }

    fn deinit(self: *Fixture) void {
        testing.allocator.free(self.root);
        self.tmp.cleanup();
    }

    fn open(self: *const Fixture, comptime extra: []const u8, args: anytype) !*loader_mod.Loader {
        var text: [1024]u8 = undefined;
        const json = try std.fmt.bufPrint(&text, "{{\"source_type\": \"file\", \"source_config\": {{\"root_path\": \"{s}\"" ++ extra ++ "}}", .{self.root} ++ args);
        var diag: config_mod.Diagnostics = .{};
        return loader_mod.Loader.open(testing.allocator, json, &diag) catch |err| {
            std.debug.print("config error: {s}\n", .{diag.text()});
            return err;
        };
    }
};

/// Waits until every pass has been freed (its threads gone), so the testing
/// allocator sees no leak.
fn drain() !void {
    const io = testing.io;
    var waited_ms: u32 = 0;
    while (runtime.live_passes.load(.acquire) != 0) : (waited_ms += 1) {
        if (waited_ms > 10_000) return error.PassNeverFreed;
        try io.sleep(.fromMilliseconds(1), .awake);
    }
}

/// Closes a loader and waits until its pass is freed; for `defer`.
fn closeAndDrain(loader: *loader_mod.Loader) void {
    loader.close();
    drain() catch @panic("a pass was never freed");
}

const Collected = struct {
    ids: std.ArrayList([]u8) = .empty,
    result: enum { end, source_error } = .end,

    fn deinit(self: *Collected) void {
        for (self.ids.items) |id| testing.allocator.free(id);
        self.ids.deinit(testing.allocator);
    }
};

fn collect(loader: *loader_mod.Loader) !Collected {
    var out: Collected = .{};
    errdefer out.deinit();
    var message: [256]u8 = undefined;
    while (true) {
        switch (try loader.next(5_000, &message)) {
            .sample => |s| {
                defer s.destroy();
                const id = s.c.id.slice();
                try out.ids.append(testing.allocator, try testing.allocator.dupe(u8, id[std.mem.lastIndexOfScalar(u8, id, '/').? + 1 ..]));
                try testing.expectEqual(@as(i32, 3), s.c.image.width);
                try testing.expectEqual(@as(i32, 2), s.c.image.height);
                try testing.expectEqual(@as(i32, 3), s.c.image.channels);
            },
            .end => return out,
            .source_error => {
                out.result = .source_error;
                return out;
            },
            .timeout => return error.Timeout,
            .internal_error => return error.InternalError,
        }
    }
}

test "every file once, in sorted order, whatever the thread count" {
    var fixture = try Fixture.init(40, 0);
    defer fixture.deinit();
    for ([_]u32{ 1, 2, 5 }) |threads| {
        const loader = try fixture.open("}}, \"num_threads\": {d}, \"samples_buffer_size\": 4", .{threads});
        var got = try collect(loader);
        defer got.deinit();
        loader.close();
        try testing.expectEqual(@as(usize, 40), got.ids.items.len);
        for (got.ids.items, 0..) |id, i| {
            var expected: [32]u8 = undefined;
            try testing.expectEqualStrings(try std.fmt.bufPrint(&expected, "img{d:0>4}.bmp", .{i}), id);
        }
    }
    try drain();
}

test "limit is exact and failures do not count" {
    var fixture = try Fixture.init(12, 9);
    defer fixture.deinit();
    const loader = try fixture.open("}}, \"limit\": 10, \"num_threads\": 3", .{});
    var got = try collect(loader);
    defer got.deinit();
    const counters = loader.counters();
    loader.close();
    try drain();
    try testing.expectEqual(@as(usize, 10), got.ids.items.len);
    try testing.expectEqual(@as(u64, 10), counters.delivered);
    try testing.expectEqual(counters.by_cause.get(.not_image), counters.failed);
}

test "corrupt files are skipped and counted while good ones arrive" {
    var fixture = try Fixture.init(5, 3);
    defer fixture.deinit();
    const loader = try fixture.open("}}, \"num_threads\": 2", .{});
    var got = try collect(loader);
    defer got.deinit();
    const counters = loader.counters();
    loader.close();
    try drain();
    try testing.expectEqual(@as(usize, 5), got.ids.items.len);
    try testing.expect(got.result == .end);
    try testing.expectEqual(@as(u64, 3), counters.failed);
    try testing.expectEqual(@as(u64, 3), counters.by_cause.get(.not_image));
}

test "a pass of nothing but errors ends with a source error" {
    var fixture = try Fixture.init(0, 4);
    defer fixture.deinit();
    const loader = try fixture.open("}}", .{});
    defer closeAndDrain(loader);
    var got = try collect(loader);
    defer got.deinit();
    try testing.expect(got.result == .source_error);
    try testing.expectEqual(@as(usize, 0), got.ids.items.len);
}

test "a missing root is a source error from next" {
    var diag: config_mod.Diagnostics = .{};
    const loader = try loader_mod.Loader.open(testing.allocator,
        \\{"source_type": "file", "source_config": {"root_path": "/nonexistent/datago"}}
    , &diag);
    defer closeAndDrain(loader);
    var message: [256]u8 = undefined;
    const result = try loader.next(5_000, &message);
    try testing.expect(result == .source_error);
    try testing.expect(std.mem.indexOf(u8, result.source_error.text, "does not exist") != null);
    try testing.expectEqual(.source, result.source_error.kind);
    try testing.expect(try loader.next(0, &message) == .end);
}

test "ranks are disjoint and complete" {
    var fixture = try Fixture.init(23, 0);
    defer fixture.deinit();
    for (1..5) |world_size| {
        var seen: [23]u8 = @splat(0);
        for (0..world_size) |rank| {
            const loader = try fixture.open(", \"rank\": {d}, \"world_size\": {d}, \"random_sampling\": true}}", .{ rank, world_size });
            var got = try collect(loader);
            defer got.deinit();
            loader.close();
            for (got.ids.items) |id| seen[try std.fmt.parseInt(usize, id[3..7], 10)] += 1;
        }
        for (seen) |count| try testing.expectEqual(@as(u8, 1), count);
    }
    try drain();
}

extern "c" fn setenv(name: [*:0]const u8, value: [*:0]const u8, overwrite: c_int) c_int;
extern "c" fn unsetenv(name: [*:0]const u8) c_int;

test "stop from another thread wakes a waiting reader; the stuck worker is counted" {
    // The stall hook holds the worker before it reads, as a hung network
    // filesystem would (no real file may block a worker: FIFOs are refused),
    // so the reader waits for nothing.
    var tmp = testing.tmpDir(.{});
    defer tmp.cleanup();
    try tmp.dir.writeFile(testing.io, .{ .sub_path = "stuck.jpg", .data = "not decoded" });
    var path_buffer: [std.fs.max_path_bytes]u8 = undefined;
    const dir_len = try tmp.dir.realPath(testing.io, &path_buffer);
    const stuck_path = try std.fmt.allocPrintSentinel(testing.allocator, "{s}/stuck.jpg", .{path_buffer[0..dir_len]}, 0);
    defer testing.allocator.free(stuck_path);
    try testing.expectEqual(@as(c_int, 0), setenv("DATAGO_TEST_STALL_PATH", stuck_path, 1));
    defer _ = unsetenv("DATAGO_TEST_STALL_PATH");

    var text: [512]u8 = undefined;
    const json = try std.fmt.bufPrint(&text, "{{\"source_type\": \"file\", \"source_config\": {{\"root_path\": \"{s}\"}}}}", .{stuck_path});
    var diag: config_mod.Diagnostics = .{};
    const loader = try loader_mod.Loader.open(testing.allocator, json, &diag);

    const Stopper = struct {
        fn run(l: *loader_mod.Loader) void {
            testing.io.sleep(.fromMilliseconds(100), .awake) catch {};
            l.stop();
        }
    };
    const cleanups_before = runtime.live_cleanups.load(.acquire);
    const thread = try std.Thread.spawn(.{}, Stopper.run, .{loader});
    var message: [256]u8 = undefined;
    const result = try loader.next(-1, &message);
    thread.join();
    try testing.expect(result == .end);
    try testing.expectEqual(cleanups_before + 1, runtime.live_cleanups.load(.acquire));

    // Release the worker: it reads, sees the pass canceled and leaves.
    try tmp.dir.writeFile(testing.io, .{ .sub_path = "stuck.jpg.release", .data = "" });
    loader.close();
    try drain();
    try testing.expectEqual(cleanups_before, runtime.live_cleanups.load(.acquire));
}

test "close mid-stream leaks nothing after the drain" {
    var fixture = try Fixture.init(50, 2);
    defer fixture.deinit();
    const loader = try fixture.open("}}, \"num_threads\": 3, \"samples_buffer_size\": 8", .{});
    var message: [256]u8 = undefined;
    const r = try loader.next(5_000, &message);
    const kept = r.sample;
    loader.close();
    try drain();
    // The sample outlives its loader.
    try testing.expectEqual(@as(i32, 3), kept.c.image.width);
    kept.destroy();
}

test "a new pass after the end is epoch 1 and the same files" {
    var fixture = try Fixture.init(4, 0);
    defer fixture.deinit();
    const loader = try fixture.open("}}", .{});
    defer closeAndDrain(loader);
    var first = try collect(loader);
    defer first.deinit();
    var message: [256]u8 = undefined;
    try testing.expect(try loader.next(0, &message) == .end);
    try loader.start();
    const r = try loader.next(5_000, &message);
    defer r.sample.destroy();
    try testing.expectEqual(@as(u64, 1), r.sample.c.epoch);
}

/// Runs a pass over the test stream source (the reader stage between a
/// streaming source and the workers) and returns the delivered ids in order.
fn streamPass(images: []const []const u8, fail_after: ?usize, prefetch_size: u32, threads: u32, ids: *std.ArrayList(u8)) !pipeline.NextResult {
    return streamPassResumed(images, fail_after, prefetch_size, threads, ids, null);
}

fn streamPassResumed(images: []const []const u8, fail_after: ?usize, prefetch_size: u32, threads: u32, ids: *std.ArrayList(u8), resumption: ?pipeline.Pass.Resume) !pipeline.NextResult {
    var text: [256]u8 = undefined;
    const json = try std.fmt.bufPrint(&text, "{{\"source_type\": \"file\", \"source_config\": {{\"root_path\": \"unused\"}}, \"prefetch_buffer_size\": {d}, \"num_threads\": {d}, \"samples_buffer_size\": 4}}", .{ prefetch_size, threads });
    var diag: config_mod.Diagnostics = .{};
    var parsed = try config_mod.parse(testing.allocator, json, &diag);
    defer parsed.deinit();
    const pass = try pipeline.Pass.createWith(testing.allocator, &parsed.config, 0, .{ .test_stream = .{ .images = images, .fail_after = fail_after } }, resumption);
    defer pass.unref();
    try pass.start();
    while (true) {
        const result = pass.next(5_000);
        switch (result) {
            .sample => |s| {
                defer s.destroy();
                try ids.appendSlice(testing.allocator, s.c.id.slice());
                try ids.append(testing.allocator, ' ');
            },
            .source_error => {
                try ids.appendSlice(testing.allocator, "error: ");
                try ids.appendSlice(testing.allocator, pass.failureMessage());
                return result;
            },
            else => return result,
        }
    }
}

test "a streaming source goes through the reader stage in order, with bad items skipped" {
    var buffer: [8][128]u8 = undefined;
    var images: [8][]const u8 = undefined;
    for (&images, 0..) |*image, i| image.* = if (i == 3) "not an image" else bmp(&buffer[i], 2, 2, .{ .value = @intCast(i) });
    for ([_]u32{ 1, 2, 8 }) |prefetch_size| {
        for ([_]u32{ 1, 3 }) |threads| {
            var ids: std.ArrayList(u8) = .empty;
            defer ids.deinit(testing.allocator);
            const result = try streamPass(&images, null, prefetch_size, threads, &ids);
            try testing.expect(result == .end);
            try testing.expectEqualStrings("item-0 item-1 item-2 item-4 item-5 item-6 item-7 ", ids.items);
        }
    }
    try drain();
}

test "a stream that fails fails its pass with the source's reason" {
    var buffer: [4][128]u8 = undefined;
    var images: [4][]const u8 = undefined;
    for (&images, 0..) |*image, i| image.* = bmp(&buffer[i], 2, 2, .{ .value = @intCast(i) });
    var ids: std.ArrayList(u8) = .empty;
    defer ids.deinit(testing.allocator);
    const result = try streamPass(&images, 2, 1, 2, &ids);
    try testing.expect(result == .source_error);
    // Items before the failure may or may not have been handed out when
    // it ended the pass; nothing after it ever is.
    const reason = "error: test stream broke after 2 items";
    try testing.expect(std.mem.endsWith(u8, ids.items, reason));
    const delivered = ids.items[0 .. ids.items.len - reason.len];
    try testing.expect(std.mem.startsWith(u8, "item-0 item-1 ", delivered));
    try drain();
}

test "a resumed stream passes over the items its part had consumed, without decoding them" {
    var buffer: [10][128]u8 = undefined;
    var images: [10][]const u8 = undefined;
    // Item 1 is not an image: consumed before the resume, it must not be
    // decoded (and counted as failed) again.
    for (&images, 0..) |*image, i| image.* = if (i == 1) "not an image" else bmp(&buffer[i], 2, 2, .{ .value = @intCast(i) });
    // Consumed: everything below 3, and 4 and 6 of the window [3, 7).
    const part: @import("resume.zig").Part = .{ .rank = 0, .worker = 0, .position = 3, .head = 7, .consumed = &.{0b1010}, .delivered = 4 };
    for ([_]u32{ 1, 3 }) |threads| {
        var ids: std.ArrayList(u8) = .empty;
        defer ids.deinit(testing.allocator);
        const result = try streamPassResumed(&images, null, 2, threads, &ids, .{ .part = part, .limit = null, .start_seq = 0 });
        try testing.expect(result == .end);
        try testing.expectEqualStrings("item-3 item-5 item-7 item-8 item-9 ", ids.items);
    }
    try drain();
}
