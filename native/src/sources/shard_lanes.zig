//! Several shards read at once (`concurrent_downloads`), merged into one
//! order that does not depend on timing.
//!
//! Lane `l` of `L` reads the planned shards `l, l + L, l + 2L, ...` on a
//! thread of its own and puts their items into its own small queue; the
//! merging thread takes one item from each live lane in turn (lane 0, 1,
//! ..., L-1, 0, ...), skipping lanes that have ended. The delivered order
//! is therefore a function of the plan and `L` alone: the same with a warm
//! cache or a cold one, on a fast disk or a slow link, which is what makes
//! a seeded run reproducible and a position in it resumable.
//!
//! A lane's queue holds at most `items_max` items and, beyond its first
//! item, `bytes_max` bytes, so the memory of a pass stays bounded by
//! `L × bytes_max` plus the reader stage. A full lane waits until the
//! merger has taken half of it: a fast lane refills in bursts.
//!
//! Ownership: an item put into a lane belongs to the lanes until `take`
//! returns it; `close` and `deinit` release what was never taken.
const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;

const source = @import("source.zig");
const LanePosition = @import("wds_checkpoint.zig").LanePosition;

pub const items_max = 64;
pub const bytes_max = 1024 * 1024;

pub const Lanes = struct {
    gpa: Allocator,
    io: Io,
    lanes: []Lane,
    closed: std.atomic.Value(bool) = .init(false),

    const Lane = struct {
        mutex: Io.Mutex = .init,
        ring: [items_max]source.Item = undefined,
        /// Where the lane stands after each queued item (wds_checkpoint.zig).
        after: [items_max]LanePosition = undefined,
        head: usize = 0,
        count: usize = 0,
        bytes: usize = 0,
        ended: bool = false,
        closed: bool = false,
        producer_waiting: bool = false,
        consumer_waiting: bool = false,
        room: Io.Condition = .init,
        arrived: Io.Condition = .init,

        fn full(lane: *const Lane) bool {
            return lane.count == items_max or (lane.count > 0 and lane.bytes >= bytes_max);
        }

        fn halfEmpty(lane: *const Lane) bool {
            return lane.count <= items_max / 2 and lane.bytes <= bytes_max / 2;
        }
    };

    pub fn init(gpa: Allocator, io: Io, count: usize) Allocator.Error!Lanes {
        std.debug.assert(count > 0);
        const lanes = try gpa.alloc(Lane, count);
        @memset(lanes, .{});
        return .{ .gpa = gpa, .io = io, .lanes = lanes };
    }

    /// Releases items never taken. No thread may use the lanes any more.
    pub fn deinit(self: *Lanes) void {
        for (self.lanes) |*lane| releaseQueued(self.gpa, lane);
        self.gpa.free(self.lanes);
        self.* = undefined;
    }

    /// Lane side: queues `item`, after which the lane stands at `after`,
    /// waiting for room. error.Closed (with `item` released) once the lanes
    /// are closed.
    pub fn put(self: *Lanes, index: usize, item: source.Item, after: LanePosition) error{Closed}!void {
        var owned = item;
        const lane = &self.lanes[index];
        lane.mutex.lockUncancelable(self.io);
        defer lane.mutex.unlock(self.io);
        std.debug.assert(!lane.ended);
        while (!lane.closed and lane.full()) {
            lane.producer_waiting = true;
            lane.room.waitUncancelable(self.io, &lane.mutex);
        }
        lane.producer_waiting = false;
        if (lane.closed) {
            owned.release(self.gpa);
            return error.Closed;
        }
        lane.ring[(lane.head + lane.count) % items_max] = owned;
        lane.after[(lane.head + lane.count) % items_max] = after;
        lane.count += 1;
        lane.bytes += itemBytes(&owned);
        if (lane.consumer_waiting) lane.arrived.signal(self.io);
    }

    /// Lane side: this lane has no more items.
    pub fn end(self: *Lanes, index: usize) void {
        const lane = &self.lanes[index];
        lane.mutex.lockUncancelable(self.io);
        defer lane.mutex.unlock(self.io);
        lane.ended = true;
        lane.arrived.signal(self.io);
    }

    /// An item and where its lane stands after it.
    pub const Taken = struct { item: source.Item, after: LanePosition };

    /// Merger side: the next item of lane `index`, waiting for it; null
    /// when the lane ended with nothing left, or the lanes were closed.
    pub fn take(self: *Lanes, index: usize) ?Taken {
        const lane = &self.lanes[index];
        lane.mutex.lockUncancelable(self.io);
        defer lane.mutex.unlock(self.io);
        while (!lane.closed and lane.count == 0 and !lane.ended) {
            lane.consumer_waiting = true;
            lane.arrived.waitUncancelable(self.io, &lane.mutex);
        }
        lane.consumer_waiting = false;
        if (lane.closed or lane.count == 0) return null;
        const item = lane.ring[lane.head];
        const after = lane.after[lane.head];
        lane.head = (lane.head + 1) % items_max;
        lane.count -= 1;
        lane.bytes -= itemBytes(&item);
        if (lane.producer_waiting and lane.halfEmpty()) lane.room.signal(self.io);
        return .{ .item = item, .after = after };
    }

    /// Wakes every lane and the merger; queued items are released.
    /// Idempotent.
    pub fn close(self: *Lanes) void {
        self.closed.store(true, .release);
        for (self.lanes) |*lane| {
            lane.mutex.lockUncancelable(self.io);
            defer lane.mutex.unlock(self.io);
            lane.closed = true;
            releaseQueued(self.gpa, lane);
            lane.room.broadcast(self.io);
            lane.arrived.broadcast(self.io);
        }
    }

    pub fn isClosed(self: *const Lanes) bool {
        return self.closed.load(.acquire);
    }

    fn releaseQueued(gpa: Allocator, lane: *Lane) void {
        while (lane.count > 0) {
            lane.ring[lane.head].release(gpa);
            lane.head = (lane.head + 1) % items_max;
            lane.count -= 1;
        }
        lane.bytes = 0;
    }

    fn itemBytes(item: *const source.Item) usize {
        return if (item.backing) |b| b.len else item.bytes.len;
    }
};

/// The order the merger delivers in: one item per live lane in turn,
/// starting with lane `first` among the `live` ones (all lanes, lane 0
/// first, for a stream from its start; a checkpoint's for a resumed one).
/// `take(lane)` returns null once that lane is over (`ended(lane)` is then
/// called); `deliver(lane, taken)` returns false to stop early. Returns
/// whether every lane was drained.
pub fn merge(
    live_lanes: []const usize,
    first: usize,
    context: anytype,
    comptime Taken: type,
    comptime take: fn (@TypeOf(context), usize) ?Taken,
    comptime deliver: fn (@TypeOf(context), usize, Taken) bool,
    comptime ended: fn (@TypeOf(context), usize) void,
) bool {
    var live_buffer: [256]usize = undefined;
    std.debug.assert(live_lanes.len <= live_buffer.len);
    var live = live_buffer[0..live_lanes.len];
    @memcpy(live, live_lanes);
    var turn: usize = std.mem.findScalar(usize, live, first) orelse 0;
    while (live.len > 0) {
        const lane = live[turn];
        if (take(context, lane)) |taken| {
            if (!deliver(context, lane, taken)) return false;
            turn = (turn + 1) % live.len;
        } else {
            ended(context, lane);
            // Drop the lane, keeping the others' turn order.
            std.mem.copyForwards(usize, live[turn .. live.len - 1], live[turn + 1 ..]);
            live = live[0 .. live.len - 1];
            if (turn == live.len) turn = 0;
        }
    }
    return true;
}

/// The lanes `L` for `shards` shards and `concurrent` downloads at most.
pub fn laneCount(shards: usize, concurrent: u16) usize {
    return @max(1, @min(shards, @min(@as(usize, concurrent), 256)));
}

const testing = std.testing;
const prefetch = @import("prefetch.zig");

test "merge takes one item per live lane in turn and drops ended lanes" {
    // Lane i holds counts[i] items named "<lane><index>".
    const Fake = struct {
        counts: [3]usize,
        next: [3]usize = @splat(0),
        out: std.ArrayList(u8) = .empty,
        stop_after: usize = std.math.maxInt(usize),

        const names = [3][3][]const u8{ .{ "a0", "a1", "a2" }, .{ "b0", "b1", "b2" }, .{ "c0", "c1", "c2" } };

        fn take(f: *@This(), lane: usize) ?source.Item {
            if (f.next[lane] == f.counts[lane]) return null;
            f.next[lane] += 1;
            return .{ .bytes = "", .kind = .webdataset, .id = .{ .plain = "" }, .source_name = "", .origin = names[lane][f.next[lane] - 1] };
        }

        fn deliver(f: *@This(), lane: usize, item: source.Item) bool {
            _ = lane;
            f.out.appendSlice(testing.allocator, item.origin) catch return false;
            f.out.append(testing.allocator, ' ') catch return false;
            return f.out.items.len / 3 < f.stop_after;
        }

        fn ended(f: *@This(), lane: usize) void {
            f.out.print(testing.allocator, "-{d} ", .{lane}) catch {};
        }
    };
    const all = [_]usize{ 0, 1, 2 };
    var fake: Fake = .{ .counts = .{ 3, 1, 2 } };
    defer fake.out.deinit(testing.allocator);
    try testing.expect(merge(&all, 0, &fake, source.Item, Fake.take, Fake.deliver, Fake.ended));
    try testing.expectEqualStrings("a0 b0 c0 a1 -1 c1 a2 -2 -0 ", fake.out.items);

    var stopped: Fake = .{ .counts = .{ 3, 3, 3 }, .stop_after = 4 };
    defer stopped.out.deinit(testing.allocator);
    try testing.expect(!merge(&all, 0, &stopped, source.Item, Fake.take, Fake.deliver, Fake.ended));
    try testing.expectEqualStrings("a0 b0 c0 a1 ", stopped.out.items);

    // Resumed: lane 1 over, lane 2's turn.
    var resumed: Fake = .{ .counts = .{ 2, 3, 2 } };
    defer resumed.out.deinit(testing.allocator);
    try testing.expect(merge(&.{ 0, 2 }, 2, &resumed, source.Item, Fake.take, Fake.deliver, Fake.ended));
    try testing.expectEqualStrings("c0 a0 c1 a1 -2 -0 ", resumed.out.items);
}

test "lanes deliver every item once, in lane order, through threads" {
    const gpa = testing.allocator;
    const lane_count = 4;
    var lanes = try Lanes.init(gpa, testing.io, lane_count);
    defer lanes.deinit();
    const per_lane = 300; // several times items_max: producers wait and refill
    const Producer = struct {
        fn run(l: *Lanes, index: usize) void {
            defer l.end(index);
            for (0..per_lane - index) |i| {
                var text: [16]u8 = undefined;
                const id = std.fmt.bufPrint(&text, "{d}:{d}", .{ index, i }) catch unreachable;
                const item = prefetch.ownedItem(testing.allocator, id, id, .webdataset, "t") catch return;
                l.put(index, item, .{ .shard = @intCast(i) }) catch return;
            }
        }
    };
    var threads: [lane_count]std.Thread = undefined;
    for (&threads, 0..) |*t, i| t.* = try std.Thread.spawn(.{}, Producer.run, .{ &lanes, i });
    const Consumer = struct {
        l: *Lanes,
        next: [lane_count]usize = @splat(0),
        delivered: usize = 0,
        bad: bool = false,
        fn take(c: *@This(), lane: usize) ?Lanes.Taken {
            return c.l.take(lane);
        }
        fn ended(c: *@This(), lane: usize) void {
            _ = c;
            _ = lane;
        }
        fn deliver(c: *@This(), from: usize, taken: Lanes.Taken) bool {
            var it = taken.item;
            defer it.release(testing.allocator);
            var parts = std.mem.splitScalar(u8, it.bytes, ':');
            const lane = std.fmt.parseInt(usize, parts.next().?, 10) catch unreachable;
            const index = std.fmt.parseInt(usize, parts.next().?, 10) catch unreachable;
            if (index != c.next[lane] or from != lane or taken.after.shard != index) c.bad = true;
            c.next[lane] += 1;
            c.delivered += 1;
            return true;
        }
    };
    var consumer: Consumer = .{ .l = &lanes };
    try testing.expect(merge(&.{ 0, 1, 2, 3 }, 0, &consumer, Lanes.Taken, Consumer.take, Consumer.deliver, Consumer.ended));
    for (threads) |t| t.join();
    try testing.expect(!consumer.bad);
    try testing.expectEqual(@as(usize, 4 * per_lane - 6), consumer.delivered);
}

test "close wakes a full lane's producer and releases its queue" {
    const gpa = testing.allocator;
    var lanes = try Lanes.init(gpa, testing.io, 1);
    defer lanes.deinit();
    for (0..items_max) |_| try lanes.put(0, try prefetch.ownedItem(gpa, "x", "x", .webdataset, "t"), .{ .shard = 0 });
    const Producer = struct {
        fn run(l: *Lanes, result: *?anyerror) void {
            const item = prefetch.ownedItem(testing.allocator, "y", "y", .webdataset, "t") catch unreachable;
            l.put(0, item, .{ .shard = 0 }) catch |err| {
                result.* = err;
            };
        }
    };
    var result: ?anyerror = null;
    const t = try std.Thread.spawn(.{}, Producer.run, .{ &lanes, &result });
    lanes.close();
    t.join();
    try testing.expectEqual(@as(?anyerror, error.Closed), result);
    try testing.expect(lanes.take(0) == null);
}

test "lane count" {
    try testing.expectEqual(@as(usize, 1), laneCount(0, 8));
    try testing.expectEqual(@as(usize, 3), laneCount(3, 8));
    try testing.expectEqual(@as(usize, 8), laneCount(100, 8));
    try testing.expectEqual(@as(usize, 1), laneCount(100, 1));
}
