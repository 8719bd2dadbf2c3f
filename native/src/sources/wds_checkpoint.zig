//! Checkpoints of a WebDataset stream (issue 19): where a (rank, worker)'s
//! stream can be restarted so that it puts exactly the items, in the order
//! and under the sequence numbers, of the uninterrupted stream from `seq` on.
//!
//! The stream's order is a function of the shard plan, the lane count `L`,
//! the shards' contents and the shuffle seed (shard_lanes.zig,
//! shuffle_buffer.zig). Items are shuffled in blocks, and a block is a
//! function of where the lanes stood when it started filling; so a
//! checkpoint is taken at each block start and holds, per lane, the shard
//! (its position in the plan) and the tar offset of the next group to read
//! there, whether the lane is over, whose turn it is, and the block's index.
//! A few bytes per lane, whatever the dataset or the buffer.
//!
//! `Retained` keeps the recent checkpoints of a running stream for the
//! consumer thread (`WdsSource.checkpointAt`).
const std = @import("std");
const Allocator = std.mem.Allocator;

const source = @import("source.zig");

/// Most checkpoints retained by one stream. With blocks shorter than the
/// retention needs (a tiny `shuffle_buffer`, or blocks closed early by the
/// byte bound), the retained ones are thinned instead of dropped: a resume
/// from an older checkpoint is as exact, it only re-reads more.
pub const entries_max = 1024;
/// Most lanes (shard_lanes.laneCount's bound).
pub const lanes_max = 256;

pub const LanePosition = struct {
    /// Position in the plan of the shard the lane reads next or is inside.
    /// A lane `l` of `L` reads the positions `l, l + L, ...`; one at or past
    /// the plan's end reads nothing.
    shard: u32,
    /// Tar-stream offset of the next group to read in that shard, at a
    /// member header (0: the shard from its start). For a gzip shard the
    /// offset counts decompressed bytes.
    offset: u64 = 0,
    /// The shard is gzip (it is then read from its start, tar.Start).
    gzip: bool = false,
    /// The lane has delivered its last item.
    done: bool = false,
};

pub const Checkpoint = struct {
    /// The sequence number of the first item the resumed stream puts.
    seq: u64,
    /// Index of the shuffle block that starts at `seq`.
    block: u64,
    /// Items per block; a resume with another shuffle_buffer is refused.
    block_items: u32,
    /// The shuffle's seed (`shuffle_buffer.Params.rng_seed`). The resumed
    /// stream uses it, so that a run whose seed came from entropy resumes
    /// exactly too.
    shuffle_seed: u64,
    /// Shards in this (rank, worker)'s plan; a resume over another plan is
    /// refused.
    shards: u32,
    /// The lane whose turn it is at `seq`.
    next_lane: u32,
    /// One per lane; owned (`deinit`).
    lanes: []LanePosition,

    pub fn deinit(cp: *Checkpoint, gpa: Allocator) void {
        gpa.free(cp.lanes);
        cp.* = undefined;
    }

    pub fn clone(cp: *const Checkpoint, gpa: Allocator) Allocator.Error!Checkpoint {
        var copy = cp.*;
        copy.lanes = try gpa.dupe(LanePosition, cp.lanes);
        return copy;
    }

    /// One compact JSON object; the seed is a hex string (JSON numbers do
    /// not hold every u64 in every reader).
    pub fn writeJson(cp: *const Checkpoint, w: *std.Io.Writer) std.Io.Writer.Error!void {
        try w.print("{{\"seq\":{d},\"block\":{d},\"block_items\":{d},\"shuffle_seed\":\"{x:0>16}\",\"shards\":{d},\"next_lane\":{d},\"lanes\":[", .{
            cp.seq, cp.block, cp.block_items, cp.shuffle_seed, cp.shards, cp.next_lane,
        });
        for (cp.lanes, 0..) |lane, i| {
            if (i > 0) try w.writeByte(',');
            try w.print("{{\"shard\":{d},\"offset\":{d}", .{ lane.shard, lane.offset });
            if (lane.gzip) try w.writeAll(",\"gzip\":true");
            if (lane.done) try w.writeAll(",\"done\":true");
            try w.writeByte('}');
        }
        try w.writeAll("]}");
    }

    /// Reads what `writeJson` wrote. A value of another shape fails naming
    /// the field (`failure`); consistency with the plan is checked when the
    /// stream is prepared (`WdsSource.prepare`).
    pub fn parse(gpa: Allocator, value: std.json.Value, failure: *source.Failure) error{ Failed, OutOfMemory }!Checkpoint {
        const object = switch (value) {
            .object => |o| o,
            else => return failure.set("webdataset checkpoint: expected an object", .{}),
        };
        const fields = [_][]const u8{ "seq", "block", "block_items", "shuffle_seed", "shards", "next_lane", "lanes" };
        try refuseUnknown(object, &fields, "", failure);
        var cp: Checkpoint = .{
            .seq = try unsigned(u64, object, "seq", "", failure),
            .block = try unsigned(u64, object, "block", "", failure),
            .block_items = try unsigned(u32, object, "block_items", "", failure),
            .shuffle_seed = undefined,
            .shards = try unsigned(u32, object, "shards", "", failure),
            .next_lane = try unsigned(u32, object, "next_lane", "", failure),
            .lanes = &.{},
        };
        if (cp.block_items == 0) return failure.set("webdataset checkpoint: 'block_items' must be positive", .{});
        const seed_text = switch (object.get("shuffle_seed") orelse return missing("shuffle_seed", "", failure)) {
            .string => |s| s,
            else => return failure.set("webdataset checkpoint: 'shuffle_seed' must be a string of 16 hex digits", .{}),
        };
        if (seed_text.len != 16) return failure.set("webdataset checkpoint: 'shuffle_seed' must be a string of 16 hex digits", .{});
        cp.shuffle_seed = std.fmt.parseUnsigned(u64, seed_text, 16) catch
            return failure.set("webdataset checkpoint: 'shuffle_seed' must be a string of 16 hex digits", .{});
        const lanes = switch (object.get("lanes") orelse return missing("lanes", "", failure)) {
            .array => |a| a.items,
            else => return failure.set("webdataset checkpoint: 'lanes' must be an array", .{}),
        };
        if (lanes.len == 0 or lanes.len > lanes_max) return failure.set("webdataset checkpoint: 'lanes' must hold 1 to {d} lanes, not {d}", .{ lanes_max, lanes.len });
        if (cp.next_lane >= lanes.len) return failure.set("webdataset checkpoint: 'next_lane' {d} is not one of the {d} lanes", .{ cp.next_lane, lanes.len });
        const positions = try gpa.alloc(LanePosition, lanes.len);
        errdefer gpa.free(positions);
        for (lanes, positions, 0..) |lane, *position, i| {
            var name_buffer: [32]u8 = undefined;
            const name = std.fmt.bufPrint(&name_buffer, "lanes[{d}].", .{i}) catch unreachable;
            const lane_object = switch (lane) {
                .object => |o| o,
                else => return failure.set("webdataset checkpoint: '{s}' must be an object", .{name[0 .. name.len - 1]}),
            };
            try refuseUnknown(lane_object, &.{ "shard", "offset", "gzip", "done" }, name, failure);
            position.* = .{
                .shard = try unsigned(u32, lane_object, "shard", name, failure),
                .offset = try unsigned(u64, lane_object, "offset", name, failure),
                .gzip = try flag(lane_object, "gzip", name, failure),
                .done = try flag(lane_object, "done", name, failure),
            };
        }
        cp.lanes = positions;
        return cp;
    }

    fn refuseUnknown(object: std.json.ObjectMap, fields: []const []const u8, prefix: []const u8, failure: *source.Failure) error{Failed}!void {
        for (object.keys()) |key| {
            const known = for (fields) |f| {
                if (std.mem.eql(u8, f, key)) break true;
            } else false;
            if (!known) return failure.set("webdataset checkpoint: unknown field '{s}{s}'", .{ prefix, key[0..@min(key.len, 64)] });
        }
    }

    fn missing(name: []const u8, prefix: []const u8, failure: *source.Failure) error{Failed} {
        return failure.set("webdataset checkpoint: '{s}{s}' is missing", .{ prefix, name });
    }

    fn unsigned(comptime T: type, object: std.json.ObjectMap, name: []const u8, prefix: []const u8, failure: *source.Failure) error{Failed}!T {
        const value = object.get(name) orelse return missing(name, prefix, failure);
        const n = switch (value) {
            .integer => |i| std.math.cast(T, i),
            else => null,
        };
        return n orelse failure.set("webdataset checkpoint: '{s}{s}' must be an integer in 0..{d}", .{ prefix, name, std.math.maxInt(T) });
    }

    fn flag(object: std.json.ObjectMap, name: []const u8, prefix: []const u8, failure: *source.Failure) error{Failed}!bool {
        const value = object.get(name) orelse return false;
        return switch (value) {
            .bool => |b| b,
            else => failure.set("webdataset checkpoint: '{s}{s}' must be true or false", .{ prefix, name }),
        };
    }
};

/// The checkpoints of one running stream, newest last: written by the
/// reader thread at each block start, read by the consumer thread. A spin
/// lock guards them: it is held for a copy of at most one checkpoint (the
/// consumer has no `Io` to wait with, as for `describeItem`).
pub const Retained = struct {
    lock: std.atomic.Value(bool) = .init(false),
    /// Ring of `entries.len` checkpoints; entry `i`'s lanes are
    /// `positions[i * lane_capacity ..][0..lane_count]`.
    entries: []Entry,
    positions: []LanePosition,
    lane_capacity: u32,
    head: u32 = 0,
    len: u32 = 0,
    /// Items a checkpoint must reach back (`retentionItems`).
    retention: u64,
    /// Set by `begin`; 0 before.
    lane_count: u32 = 0,
    block_items: u32 = 0,
    shuffle_seed: u64 = 0,
    shards: u32 = 0,

    const Entry = struct { seq: u64, block: u64, next_lane: u32 };

    /// Room for `lanes` lanes (at most `lanes_max`) and the checkpoints of
    /// blocks of `block_items` over `retention` items.
    pub fn init(gpa: Allocator, lanes: u32, retention: u64, block_items: u32) Allocator.Error!Retained {
        const lane_capacity = @max(1, @min(lanes, lanes_max));
        const count: u32 = @intCast(@min(entries_max, std.math.divCeil(u64, retention, @max(1, block_items)) catch unreachable) + 3);
        const entries = try gpa.alloc(Entry, count);
        errdefer gpa.free(entries);
        const positions = try gpa.alloc(LanePosition, @as(usize, count) * lane_capacity);
        return .{ .entries = entries, .positions = positions, .lane_capacity = lane_capacity, .retention = retention };
    }

    pub fn deinit(r: *Retained, gpa: Allocator) void {
        gpa.free(r.entries);
        gpa.free(r.positions);
        r.* = undefined;
    }

    /// The stream starts (reader thread): what every checkpoint of it holds.
    pub fn begin(r: *Retained, lane_count: u32, block_items: u32, shuffle_seed: u64, shards: u32) void {
        std.debug.assert(lane_count > 0 and lane_count <= r.lane_capacity);
        r.acquire();
        defer r.release();
        r.lane_count = lane_count;
        r.block_items = block_items;
        r.shuffle_seed = shuffle_seed;
        r.shards = shards;
        r.head = 0;
        r.len = 0;
    }

    /// Keeps the checkpoint of a block starting at `seq` (reader thread;
    /// `seq` never decreases). Asserts `begin` was called.
    pub fn record(r: *Retained, seq: u64, block: u64, next_lane: u32, lanes: []const LanePosition) void {
        std.debug.assert(lanes.len == r.lane_count);
        r.acquire();
        defer r.release();
        const capacity: u32 = @intCast(r.entries.len);
        if (r.len == capacity) {
            const floor = seq -| r.retention;
            // The oldest is needed only while the next one is after the floor.
            if (r.entryAt(1).seq <= floor) {
                r.head = (r.head + 1) % capacity;
                r.len -= 1;
            } else {
                r.thin();
            }
        }
        const index = (r.head + r.len) % capacity;
        r.entries[index] = .{ .seq = seq, .block = block, .next_lane = next_lane };
        @memcpy(r.lanesOf(index), lanes);
        r.len += 1;
    }

    /// The latest checkpoint at or before `seq`; null when `seq` is older
    /// than the oldest retained (or nothing was recorded yet). Any thread.
    pub fn at(r: *Retained, gpa: Allocator, seq: u64) Allocator.Error!?Checkpoint {
        // Allocated before the lock, which only the reader thread shares.
        const lanes = try gpa.alloc(LanePosition, r.lane_capacity);
        errdefer gpa.free(lanes);
        var cp: Checkpoint = undefined;
        const found = search: {
            r.acquire();
            defer r.release();
            var i = r.len;
            while (i > 0) {
                i -= 1;
                const entry = r.entryAt(i);
                if (entry.seq > seq) continue;
                const index = (r.head + i) % @as(u32, @intCast(r.entries.len));
                @memcpy(lanes[0..r.lane_count], r.lanesOf(index));
                cp = .{
                    .seq = entry.seq,
                    .block = entry.block,
                    .block_items = r.block_items,
                    .shuffle_seed = r.shuffle_seed,
                    .shards = r.shards,
                    .next_lane = entry.next_lane,
                    .lanes = undefined,
                };
                break :search r.lane_count;
            }
            break :search null;
        };
        const lane_count = found orelse {
            gpa.free(lanes);
            return null;
        };
        cp.lanes = if (gpa.resize(lanes, lane_count)) lanes[0..lane_count] else resized: {
            const exact = try gpa.dupe(LanePosition, lanes[0..lane_count]);
            gpa.free(lanes);
            break :resized exact;
        };
        return cp;
    }

    /// The oldest retained sequence number (null before any checkpoint).
    pub fn oldest(r: *Retained) ?u64 {
        r.acquire();
        defer r.release();
        return if (r.len == 0) null else r.entryAt(0).seq;
    }

    /// Keeps every other checkpoint, the oldest and the newest among them.
    fn thin(r: *Retained) void {
        const newest = r.len - 1;
        var kept: u32 = 0;
        var i: u32 = 0;
        while (i < newest) : (i += 2) {
            r.move(i, kept);
            kept += 1;
        }
        r.move(newest, kept);
        r.len = kept + 1;
    }

    /// Copies logical entry `from` to logical `to <= from`: in increasing
    /// order, a source is read before a later step overwrites it.
    fn move(r: *Retained, from: u32, to: u32) void {
        if (from == to) return;
        const capacity: u32 = @intCast(r.entries.len);
        const source_index = (r.head + from) % capacity;
        const target_index = (r.head + to) % capacity;
        r.entries[target_index] = r.entries[source_index];
        @memcpy(r.lanesOf(target_index), r.lanesOf(source_index));
    }

    fn entryAt(r: *const Retained, logical: u32) Entry {
        return r.entries[(r.head + logical) % @as(u32, @intCast(r.entries.len))];
    }

    fn lanesOf(r: *Retained, index: u32) []LanePosition {
        return r.positions[@as(usize, index) * r.lane_capacity ..][0..r.lane_count];
    }

    fn acquire(r: *Retained) void {
        while (r.lock.cmpxchgWeak(false, true, .acquire, .monotonic) != null) std.atomic.spinLoopHint();
    }

    fn release(r: *Retained) void {
        r.lock.store(false, .release);
    }
};

const testing = std.testing;

fn parseText(text: []const u8, failure: *source.Failure) !Checkpoint {
    var parsed = try std.json.parseFromSlice(std.json.Value, testing.allocator, text, .{});
    defer parsed.deinit();
    return Checkpoint.parse(testing.allocator, parsed.value, failure);
}

test "a checkpoint survives a JSON round trip" {
    var lanes = [_]LanePosition{
        .{ .shard = 0, .offset = 1536 },
        .{ .shard = 4, .offset = 0, .done = true },
        .{ .shard = 2, .offset = 1 << 40, .gzip = true },
    };
    const cp: Checkpoint = .{ .seq = 12345, .block = 77, .block_items = 1000, .shuffle_seed = 0xfedc_ba98_7654_3210, .shards = 9, .next_lane = 2, .lanes = &lanes };
    var buffer: [512]u8 = undefined;
    var w: std.Io.Writer = .fixed(&buffer);
    try cp.writeJson(&w);
    try testing.expectEqualStrings(
        \\{"seq":12345,"block":77,"block_items":1000,"shuffle_seed":"fedcba9876543210","shards":9,"next_lane":2,"lanes":[{"shard":0,"offset":1536},{"shard":4,"offset":0,"done":true},{"shard":2,"offset":1099511627776,"gzip":true}]}
    , w.buffered());
    var failure: source.Failure = .{};
    var back = try parseText(w.buffered(), &failure);
    defer back.deinit(testing.allocator);
    try testing.expectEqualDeep(cp, back);
}

test "a malformed or foreign checkpoint is refused naming the field" {
    const good =
        \\{"seq":1,"block":0,"block_items":64,"shuffle_seed":"0000000000000001","shards":2,"next_lane":0,"lanes":[{"shard":0,"offset":0}]}
    ;
    var failure: source.Failure = .{};
    var ok = try parseText(good, &failure);
    ok.deinit(testing.allocator);
    const cases = [_][2][]const u8{
        .{ "[]", "expected an object" },
        .{ "{\"seq\":1,\"extra\":2}", "unknown field 'extra'" },
        .{ "{\"block\":0,\"block_items\":64,\"shuffle_seed\":\"0000000000000001\",\"shards\":2,\"next_lane\":0,\"lanes\":[]}", "'seq' is missing" },
        .{ "{\"seq\":-1,\"block\":0,\"block_items\":64,\"shuffle_seed\":\"0000000000000001\",\"shards\":2,\"next_lane\":0,\"lanes\":[{\"shard\":0,\"offset\":0}]}", "'seq' must be an integer" },
        .{ "{\"seq\":1,\"block\":0,\"block_items\":0,\"shuffle_seed\":\"0000000000000001\",\"shards\":2,\"next_lane\":0,\"lanes\":[{\"shard\":0,\"offset\":0}]}", "'block_items' must be positive" },
        .{ "{\"seq\":1,\"block\":0,\"block_items\":64,\"shuffle_seed\":1,\"shards\":2,\"next_lane\":0,\"lanes\":[{\"shard\":0,\"offset\":0}]}", "'shuffle_seed' must be" },
        .{ "{\"seq\":1,\"block\":0,\"block_items\":64,\"shuffle_seed\":\"0000000000000001\",\"shards\":2,\"next_lane\":1,\"lanes\":[{\"shard\":0,\"offset\":0}]}", "'next_lane' 1 is not one of the 1 lanes" },
        .{ "{\"seq\":1,\"block\":0,\"block_items\":64,\"shuffle_seed\":\"0000000000000001\",\"shards\":2,\"next_lane\":0,\"lanes\":[{\"shard\":0,\"offset\":\"0\"}]}", "'lanes[0].offset' must be an integer" },
        .{ "{\"seq\":1,\"block\":0,\"block_items\":64,\"shuffle_seed\":\"0000000000000001\",\"shards\":2,\"next_lane\":0,\"lanes\":[{\"shard\":0,\"offset\":0,\"gzip\":1}]}", "'lanes[0].gzip' must be true or false" },
        .{ "{\"seq\":1,\"block\":0,\"block_items\":64,\"shuffle_seed\":\"0000000000000001\",\"shards\":2,\"next_lane\":0,\"lanes\":[{\"shard\":0,\"offset\":0,\"x\":1}]}", "unknown field 'lanes[0].x'" },
        .{ "{\"seq\":1,\"block\":0,\"block_items\":64,\"shuffle_seed\":\"0000000000000001\",\"shards\":2,\"next_lane\":0,\"lanes\":[7]}", "'lanes[0]' must be an object" },
    };
    for (cases) |case| {
        failure = .{};
        try testing.expectError(error.Failed, parseText(case[0], &failure));
        if (std.mem.indexOf(u8, failure.text(), case[1]) == null) {
            std.debug.print("'{s}' lacks '{s}'\n", .{ failure.text(), case[1] });
            return error.TestUnexpectedResult;
        }
    }
}

test "retained checkpoints reach back the retention, thinned when blocks are short" {
    const gpa = testing.allocator;
    var r = try Retained.init(gpa, 2, 100, 10);
    defer r.deinit(gpa);
    try testing.expectEqual(@as(usize, 13), r.entries.len);
    try testing.expectEqual(@as(?Checkpoint, null), try r.at(gpa, 5));
    r.begin(2, 10, 9, 4);
    var seq: u64 = 0;
    while (seq <= 1000) : (seq += 10) {
        const lanes = [_]LanePosition{ .{ .shard = 0, .offset = seq }, .{ .shard = 1, .offset = seq + 1 } };
        r.record(seq, seq / 10, @intCast(seq % 2), &lanes);
        // Anything at most `retention` before the newest has a checkpoint.
        const oldest = r.oldest().?;
        try testing.expect(oldest <= seq -| 100);
    }
    var cp = (try r.at(gpa, 955)).?;
    defer cp.deinit(gpa);
    try testing.expectEqual(@as(u64, 950), cp.seq);
    try testing.expectEqual(@as(u64, 95), cp.block);
    try testing.expectEqual(@as(u64, 951), cp.lanes[1].offset);
    try testing.expectEqual(@as(u64, 9), cp.shuffle_seed);
    try testing.expectEqual(@as(?Checkpoint, null), try r.at(gpa, 100));

    // Blocks of one item against a room for 13: thinned, never short.
    var short = try Retained.init(gpa, 1, 100, 10);
    defer short.deinit(gpa);
    short.begin(1, 10, 0, 1);
    for (0..1000) |i| {
        short.record(i, i, 0, &.{.{ .shard = 0, .offset = i }});
        try testing.expect(short.oldest().? <= i -| 100);
        try testing.expect(short.len <= short.entries.len);
    }
    var near = (try short.at(gpa, 999)).?;
    defer near.deinit(gpa);
    try testing.expectEqual(@as(u64, 999), near.seq);
}
