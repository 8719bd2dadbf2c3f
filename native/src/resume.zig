//! The resume state of docs/design.md §3: where each (rank, worker) stands
//! in an epoch, small enough to checkpoint with every training step, and
//! the rules that turn a saved state into the next pass.
//!
//! A state is JSON. It never lists consumed ids: the order function (§2)
//! regenerates every sequence from (listing, seed, epoch, shape), so a part
//! needs only its `position` (every sequence number below it consumed), a
//! bitmap of the consumed ones in `[position, head)` (batch mode: samples
//! waiting in a partial bucket group were delivered by the pipeline but not
//! yet to the caller; the batcher keeps them at most `window_max` behind),
//! and, for streaming sources, the stream's checkpoint.
//!
//! Shapes. A state's `levels` are the (world_size, num_workers) shapes of
//! this epoch so far: the last is the one it was saved with. Loading it
//! with the same shape continues that part exactly. Loading it with
//! another shape (an elastic restart) needs every part of the last level
//! (gather them from all ranks and workers; a list of states merges): the
//! items no part consumed are the rest of the epoch, and the new shape
//! splits them with the order function as if they were the listing
//! (`remainderPlan`). The new level is appended, so the run can be saved
//! and resumed again, or re-shaped again.
const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;

const config_mod = @import("config.zig");
const order = @import("sources/order.zig");

pub const format_version: u32 = 1;

/// How far behind the newest sample the batcher lets a partial group's
/// oldest sample fall before it emits the group early (batcher.zig): the
/// consumed bitmap of a part is at most this many bits, so a state stays
/// under 4 KiB whatever the dataset.
pub const window_max: u64 = 8192;

pub const Part = struct {
    rank: u32,
    worker: u32,
    /// Every sequence number below it was consumed (delivered, or failed).
    position: u64 = 0,
    /// Sequence numbers in [position, head) are consumed where their bit is
    /// set (LSB first), pending otherwise; none at or above `head` is.
    head: u64 = 0,
    consumed: []const u8 = &.{},
    /// Samples handed to the caller in this epoch (for `limit`).
    delivered: u64 = 0,
    /// Batches handed to the caller in this epoch (batch mode).
    batches: u64 = 0,
    /// The part's pass ended (data or limit): its epoch is over.
    done: bool = false,
    /// A streaming source's checkpoint, as JSON text (WebDataset).
    stream: ?[]const u8 = null,
    /// A keyset-paged source's position (Dataroom): the page starts after
    /// `after_key`, and `in_page` of its records come before `position`.
    after_key: ?[]const u8 = null,
    in_page: u32 = 0,

    pub fn isConsumed(p: *const Part, seq: u64) bool {
        if (seq < p.position) return true;
        if (seq >= p.head) return false;
        const i = seq - p.position;
        return (p.consumed[@intCast(i / 8)] >> @intCast(i % 8)) & 1 == 1;
    }
};

pub const Level = struct {
    world_size: u32,
    num_workers: u32,
    parts: []Part,

    fn find(level: *const Level, rank: u32, worker: u32) ?*const Part {
        for (level.parts) |*p| if (p.rank == rank and p.worker == worker) return p;
        return null;
    }

    fn complete(level: *const Level) bool {
        return level.parts.len == @as(usize, level.world_size) * level.num_workers;
    }
};

pub const State = struct {
    source: config_mod.SourceType,
    /// Of the listing (file paths, shard URLs); null when the state was
    /// taken before the listing was read.
    fingerprint: ?u64,
    /// Of the configuration keys that decide the order (`orderKey`).
    order_key: u64,
    seed: ?u64,
    epoch: u64,
    /// At least one; the last is the shape the state was saved with.
    levels: []Level,

    pub fn current(state: *const State) *const Level {
        return &state.levels[state.levels.len - 1];
    }

    pub fn writeJson(state: *const State, w: *Io.Writer) Io.Writer.Error!void {
        try w.print("{{\"datago_state\":{d},\"source\":\"{s}\",\"fingerprint\":", .{ format_version, @tagName(state.source) });
        if (state.fingerprint) |f| try w.print("\"{x:0>16}\"", .{f}) else try w.writeAll("null");
        try w.print(",\"order\":\"{x:0>16}\",\"seed\":", .{state.order_key});
        if (state.seed) |s| try w.print("{d}", .{s}) else try w.writeAll("null");
        try w.print(",\"epoch\":{d},\"levels\":[", .{state.epoch});
        for (state.levels, 0..) |*level, i| {
            if (i > 0) try w.writeByte(',');
            try w.print("{{\"world_size\":{d},\"num_workers\":{d},\"parts\":[", .{ level.world_size, level.num_workers });
            for (level.parts, 0..) |*part, j| {
                if (j > 0) try w.writeByte(',');
                try writePart(part, w);
            }
            try w.writeAll("]}");
        }
        try w.writeAll("]}");
    }
};

fn writePart(part: *const Part, w: *Io.Writer) Io.Writer.Error!void {
    try w.print("{{\"rank\":{d},\"worker\":{d},\"position\":{d},\"head\":{d},\"consumed\":\"", .{ part.rank, part.worker, part.position, part.head });
    try std.base64.standard.Encoder.encodeWriter(w, part.consumed);
    try w.print("\",\"delivered\":{d},\"batches\":{d},\"done\":{}", .{ part.delivered, part.batches, part.done });
    if (part.stream) |s| try w.print(",\"stream\":{s}", .{s});
    if (part.after_key) |key| {
        try w.writeAll(",\"after_key\":");
        try std.json.Stringify.encodeJsonString(key, .{}, w);
        try w.print(",\"in_page\":{d}", .{part.in_page});
    }
    try w.writeByte('}');
}

/// Why a state was refused, in words.
pub const Diagnostics = struct {
    buffer: [512]u8 = undefined,
    len: usize = 0,

    pub fn fail(d: *Diagnostics, comptime fmt: []const u8, args: anytype) error{Invalid} {
        const written = std.fmt.bufPrint(&d.buffer, "state: " ++ fmt, args) catch d.buffer[0..];
        d.len = written.len;
        return error.Invalid;
    }

    pub fn text(d: *const Diagnostics) []const u8 {
        return d.buffer[0..d.len];
    }
};

pub const Error = error{ Invalid, OutOfMemory };

/// Parses a state, or a JSON array of states of one run (every rank's and
/// worker's, for an elastic restart), merged into one. Everything is
/// allocated in `arena`.
pub fn parse(arena: Allocator, text: []const u8, diag: *Diagnostics) Error!State {
    const root = std.json.parseFromSliceLeaky(std.json.Value, arena, text, .{}) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        else => return diag.fail("not valid JSON ({s})", .{@errorName(err)}),
    };
    switch (root) {
        .object => return parseOne(arena, root, diag),
        .array => |items| {
            if (items.items.len == 0) return diag.fail("an empty list of states", .{});
            var merged = try parseOne(arena, items.items[0], diag);
            for (items.items[1..], 1..) |item, i| {
                const other = try parseOne(arena, item, diag);
                try mergeInto(arena, &merged, &other, i, diag);
            }
            return merged;
        },
        else => return diag.fail("expected an object (or a list of them) from state_dict(), got {s}", .{@tagName(root)}),
    }
}

fn mergeInto(arena: Allocator, merged: *State, other: *const State, index: usize, diag: *Diagnostics) Error!void {
    if (other.source != merged.source or other.order_key != merged.order_key or other.seed != merged.seed or other.epoch != merged.epoch)
        return diag.fail("item {d} of the list belongs to another run or epoch (source, order, seed or epoch differ)", .{index});
    if (other.fingerprint) |f| {
        if (merged.fingerprint) |g| {
            if (f != g) return diag.fail("item {d} of the list was saved over another listing", .{index});
        } else merged.fingerprint = f;
    }
    if (other.levels.len != merged.levels.len)
        return diag.fail("item {d} of the list has another resume history ({d} shapes, not {d})", .{ index, other.levels.len, merged.levels.len });
    for (other.levels, merged.levels) |a, b| if (a.world_size != b.world_size or a.num_workers != b.num_workers)
        return diag.fail("item {d} of the list has another resume history (shapes differ)", .{index});
    const target = &merged.levels[merged.levels.len - 1];
    var parts: std.ArrayList(Part) = .fromOwnedSlice(target.parts);
    for (other.current().parts) |part| {
        if (target.find(part.rank, part.worker) != null) {
            // The same part twice: fine if identical (a state repeated), else ambiguous.
            const existing = target.find(part.rank, part.worker).?;
            if (existing.position != part.position or existing.head != part.head or existing.delivered != part.delivered)
                return diag.fail("two different states for rank {d} worker {d}", .{ part.rank, part.worker });
            continue;
        }
        try parts.append(arena, part);
    }
    target.parts = parts.items;
}

fn parseOne(arena: Allocator, value: std.json.Value, diag: *Diagnostics) Error!State {
    const object = switch (value) {
        .object => |o| o,
        else => return diag.fail("expected an object from state_dict(), got {s}", .{@tagName(value)}),
    };
    const version = try int(u32, object, "datago_state", diag);
    if (version != format_version) return diag.fail("format {d} is not understood by this version of datago (it reads format {d})", .{ version, format_version });
    const source_name = try string(object, "source", diag);
    const source = std.meta.stringToEnum(config_mod.SourceType, source_name) orelse return diag.fail("source: unknown source '{s}'", .{source_name});
    const fingerprint: ?u64 = switch (object.get("fingerprint") orelse .null) {
        .null => null,
        else => try hex(object, "fingerprint", diag),
    };
    const levels_value = object.get("levels") orelse return diag.fail("levels: missing", .{});
    const levels_array = switch (levels_value) {
        .array => |a| a,
        else => return diag.fail("levels: expected a list", .{}),
    };
    if (levels_array.items.len == 0) return diag.fail("levels: empty", .{});
    const levels = try arena.alloc(Level, levels_array.items.len);
    for (levels, levels_array.items) |*level, item| level.* = try parseLevel(arena, item, diag);
    return .{
        .source = source,
        .fingerprint = fingerprint,
        .order_key = try hex(object, "order", diag),
        .seed = switch (object.get("seed") orelse .null) {
            .null => null,
            else => try int(u64, object, "seed", diag),
        },
        .epoch = try int(u64, object, "epoch", diag),
        .levels = levels,
    };
}

fn parseLevel(arena: Allocator, value: std.json.Value, diag: *Diagnostics) Error!Level {
    const object = switch (value) {
        .object => |o| o,
        else => return diag.fail("levels: expected objects", .{}),
    };
    const world_size = try int(u32, object, "world_size", diag);
    const num_workers = try int(u32, object, "num_workers", diag);
    if (world_size == 0 or num_workers == 0) return diag.fail("levels: world_size and num_workers must be positive", .{});
    const parts_array = switch (object.get("parts") orelse return diag.fail("parts: missing", .{})) {
        .array => |a| a,
        else => return diag.fail("parts: expected a list", .{}),
    };
    const parts = try arena.alloc(Part, parts_array.items.len);
    for (parts, parts_array.items) |*part, item| {
        part.* = try parsePart(arena, item, diag);
        if (part.rank >= world_size or part.worker >= num_workers)
            return diag.fail("a part for rank {d} worker {d} in a run of {d} ranks x {d} workers", .{ part.rank, part.worker, world_size, num_workers });
    }
    return .{ .world_size = world_size, .num_workers = num_workers, .parts = parts };
}

fn parsePart(arena: Allocator, value: std.json.Value, diag: *Diagnostics) Error!Part {
    const object = switch (value) {
        .object => |o| o,
        else => return diag.fail("parts: expected objects", .{}),
    };
    var part: Part = .{
        .rank = try int(u32, object, "rank", diag),
        .worker = try int(u32, object, "worker", diag),
        .position = try int(u64, object, "position", diag),
        .head = try int(u64, object, "head", diag),
        .delivered = try int(u64, object, "delivered", diag),
        .batches = if (object.get("batches") != null) try int(u64, object, "batches", diag) else 0,
        .done = switch (object.get("done") orelse .null) {
            .bool => |b| b,
            else => return diag.fail("done: expected true or false", .{}),
        },
    };
    if (part.head < part.position or part.head - part.position > window_max + 1)
        return diag.fail("head {d} and position {d} are inconsistent", .{ part.head, part.position });
    const encoded = try string(object, "consumed", diag);
    const decoder = std.base64.standard.Decoder;
    const size = decoder.calcSizeForSlice(encoded) catch return diag.fail("consumed: not base64", .{});
    const bits = try arena.alloc(u8, size);
    decoder.decode(bits, encoded) catch return diag.fail("consumed: not base64", .{});
    if (@as(u64, bits.len) * 8 < part.head - part.position) return diag.fail("consumed: {d} bits for a window of {d}", .{ bits.len * 8, part.head - part.position });
    part.consumed = bits;
    if (object.get("stream")) |stream| {
        var out: Io.Writer.Allocating = .init(arena);
        std.json.Stringify.value(stream, .{}, &out.writer) catch return error.OutOfMemory;
        part.stream = out.written();
    }
    if (object.get("after_key")) |key| {
        part.after_key = switch (key) {
            .string => |s| s,
            else => return diag.fail("after_key: expected a string", .{}),
        };
        part.in_page = try int(u32, object, "in_page", diag);
    }
    return part;
}

fn int(comptime T: type, object: std.json.ObjectMap, key: []const u8, diag: *Diagnostics) error{Invalid}!T {
    const value = object.get(key) orelse return diag.fail("{s}: missing", .{key});
    return switch (value) {
        .integer => |i| std.math.cast(T, i) orelse diag.fail("{s}: {d} is out of range", .{ key, i }),
        // Integers beyond i64 (a seed up to 2^64 - 1).
        .number_string => |s| std.fmt.parseInt(T, s, 10) catch diag.fail("{s}: '{s}' is not an integer in range", .{ key, s }),
        else => diag.fail("{s}: expected an integer", .{key}),
    };
}

fn string(object: std.json.ObjectMap, key: []const u8, diag: *Diagnostics) error{Invalid}![]const u8 {
    const value = object.get(key) orelse return diag.fail("{s}: missing", .{key});
    return switch (value) {
        .string => |s| s,
        else => diag.fail("{s}: expected a string", .{key}),
    };
}

fn hex(object: std.json.ObjectMap, key: []const u8, diag: *Diagnostics) error{Invalid}!u64 {
    const text = try string(object, key, diag);
    return std.fmt.parseInt(u64, text, 16) catch diag.fail("{s}: '{s}' is not 16 hex digits", .{ key, text });
}

/// Hash of the configuration keys that decide the order of a source, so a
/// state is never applied to a run that would order items differently.
pub fn orderKey(config: *const config_mod.Config) u64 {
    var h = std.hash.XxHash3.init(0x64617461676f); // "datago"
    const file = &config.file;
    h.update(@tagName(config.source_type));
    h.update(&[_]u8{@intFromBool(file.random_sampling)});
    switch (config.source_type) {
        .file => {},
        .webdataset => {
            const wds = &config.webdataset;
            h.update(wds.url);
            h.update(std.mem.asBytes(&wds.concurrent_downloads));
            const buffer: u64 = if (wds.shuffle_buffer) |b| b + 1 else 0;
            h.update(std.mem.asBytes(&buffer));
            h.update(@tagName(wds.rank_split));
        },
        .db => {
            // The whole first-page query (filters, fields, page size).
            var buffer: [16 * 1024]u8 = undefined;
            var w: Io.Writer = .fixed(&buffer);
            @import("sources/dataroom_query.zig").writeFirstPageQuery(&config.dataroom, .{ .index = 0, .count = 1 }, &w) catch {};
            h.update(w.buffered());
        },
    }
    return h.final();
}

/// What a state means for one client: see `apply`.
pub const Applied = struct {
    /// The epoch of the client's first pass.
    epoch: u64,
    /// False: the part had finished its epoch, so the first pass is the
    /// next epoch from its start and nothing of the state applies to it.
    resumes: bool,
    /// Levels whose consumption comes off the listing first (elastic: all
    /// of the state's; exact: all but the last).
    consumed_levels: []const Level,
    /// This part's progress in the current shape; null: from the start of
    /// a new shape (elastic).
    part: ?Part,
    /// Samples this part still hands out under `limit` (null: no limit).
    limit: ?u64,
    /// The levels a state saved by this client carries before its own.
    history: []const Level,
};

/// Checks a state against this client's configuration and decides how it
/// resumes. No I/O: the listing's fingerprint is checked when the pass
/// lists (`checkFingerprint`).
pub fn apply(state: *const State, config: *const config_mod.Config, diag: *Diagnostics) error{Invalid}!Applied {
    if (state.source != config.source_type)
        return diag.fail("saved from a '{s}' source, but this config reads a '{s}' source", .{ @tagName(state.source), @tagName(config.source_type) });
    if (state.order_key != orderKey(config))
        return diag.fail("saved with a configuration that orders samples differently (random_sampling, and for WebDataset url, concurrent_downloads, shuffle_buffer, rank_split; for Dataroom the query's filters, must match)", .{});
    const file = &config.file;
    const seed: ?u64 = if (file.random_sampling) file.seed else null;
    if (state.seed != seed) return diag.fail("saved with seed {?d}, but this config uses seed {?d}", .{ state.seed, seed });
    const current = state.current();
    const rank = file.rank;
    const worker = config.worker_id;
    if (current.world_size == file.world_size and current.num_workers == config.num_workers) {
        const part = current.find(rank, worker) orelse return diag.fail(
            "it has no part for rank {d} worker {d} (it holds {d} of the {d} parts of its run): load this rank's own state, or a list of every rank's states",
            .{ rank, worker, current.parts.len, @as(u64, current.world_size) * current.num_workers },
        );
        const history = state.levels[0 .. state.levels.len - 1];
        if (part.done) return .{ .epoch = state.epoch + 1, .resumes = false, .consumed_levels = &.{}, .part = null, .limit = null, .history = &.{} };
        const limit: ?u64 = if (config.limit) |l| order.workerLimit(l, worker, config.num_workers) -| part.delivered else null;
        return .{ .epoch = state.epoch, .resumes = true, .consumed_levels = history, .part = part.*, .limit = limit, .history = history };
    }
    // Another shape: the rest of the epoch is what no part consumed.
    if (config.source_type != .file)
        return diag.fail("saved with {d} ranks x {d} workers; a {s} source resumes mid-epoch only with the same world_size and num_workers (start the next epoch with the new shape instead)", .{ current.world_size, current.num_workers, @tagName(config.source_type) });
    for (state.levels) |*level| if (!level.complete()) return diag.fail(
        "saved with {d} ranks x {d} workers and loaded with {d} x {d}: an elastic restart needs the states of every rank and worker ({d} of {d} here); gather them and pass the list",
        .{ level.world_size, level.num_workers, file.world_size, config.num_workers, level.parts.len, @as(u64, level.world_size) * level.num_workers },
    );
    var all_done = true;
    for (current.parts) |*p| all_done = all_done and p.done;
    if (all_done) return .{ .epoch = state.epoch + 1, .resumes = false, .consumed_levels = &.{}, .part = null, .limit = null, .history = &.{} };
    var limit: ?u64 = null;
    if (config.limit) |l| {
        if (current.world_size != file.world_size) return diag.fail("limit with a new world_size mid-epoch is not supported (each rank's limit counts its own samples); resume with {d} ranks or start the next epoch", .{current.world_size});
        var rank_delivered: u64 = 0;
        for (current.parts) |*p| if (p.rank == rank) {
            rank_delivered += p.delivered;
        };
        limit = order.workerLimit(l -| rank_delivered, worker, config.num_workers);
    }
    return .{ .epoch = state.epoch, .resumes = true, .consumed_levels = state.levels, .part = null, .limit = limit, .history = state.levels };
}

/// The sequence of (rank, worker) of `params` over what the `levels` left
/// of a listing of `listing_len` items: each level's parts consumed their
/// items of the level's own plans (over what the levels before left), and
/// the remainder, in listing order, is split by the order function as if it
/// were the listing. With no levels this is `order.plan`. Caller owns it.
pub fn remainderPlan(gpa: Allocator, listing_len: u64, levels: []const Level, params: order.Params, remainder_len: *u64) Allocator.Error![]u32 {
    std.debug.assert(listing_len <= std.math.maxInt(u32));
    var remainder = try gpa.alloc(u32, @intCast(listing_len));
    defer gpa.free(remainder);
    for (remainder, 0..) |*item, i| item.* = @intCast(i);
    var len: usize = remainder.len;
    const taken = try std.DynamicBitSetUnmanaged.initEmpty(gpa, remainder.len);
    var consumed = taken;
    defer consumed.deinit(gpa);
    for (levels) |*level| {
        consumed.unsetAll();
        for (level.parts) |*part| {
            const plan = try order.plan(gpa, len, .{
                .rank = part.rank,
                .world_size = level.world_size,
                .worker = part.worker,
                .num_workers = level.num_workers,
                .shuffle_seed = params.shuffle_seed,
                .epoch = params.epoch,
            });
            defer gpa.free(plan);
            for (plan, 0..) |at, seq| if (part.isConsumed(seq)) consumed.set(at);
        }
        var kept: usize = 0;
        for (remainder[0..len], 0..) |item, i| {
            if (consumed.isSet(i)) continue;
            remainder[kept] = item;
            kept += 1;
        }
        len = kept;
    }
    const plan = try order.plan(gpa, len, params);
    for (plan) |*at| at.* = remainder[at.*];
    remainder_len.* = len;
    return plan;
}

/// A deep copy of `levels` in `arena` (a pass may outlive the state's owner).
pub fn cloneLevels(arena: Allocator, levels: []const Level) Allocator.Error![]Level {
    const out = try arena.alloc(Level, levels.len);
    for (out, levels) |*o, level| {
        o.* = level;
        o.parts = try arena.alloc(Part, level.parts.len);
        for (o.parts, level.parts) |*q, part| {
            q.* = part;
            q.consumed = try arena.dupe(u8, part.consumed);
            q.stream = null;
            q.after_key = null;
        }
    }
    return out;
}

/// Hash of a listing: its items in order, each followed by a 0 byte.
pub const Fingerprint = struct {
    hasher: std.hash.XxHash3 = .init(0),

    pub fn add(f: *Fingerprint, item: []const u8) void {
        f.hasher.update(item);
        f.hasher.update(&[_]u8{0});
    }

    pub fn final(f: *Fingerprint) u64 {
        return f.hasher.final();
    }
};

const testing = std.testing;

test "a state round-trips through JSON" {
    var arena_state: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena_state.deinit();
    const arena = arena_state.allocator();
    var parts = [_]Part{.{ .rank = 1, .worker = 0, .position = 5, .head = 9, .consumed = &.{0b0101}, .delivered = 7, .after_key = "k\"1", .in_page = 3 }};
    var levels = [_]Level{.{ .world_size = 2, .num_workers = 1, .parts = &parts }};
    const state: State = .{ .source = .file, .fingerprint = 0xabc, .order_key = 0x123, .seed = std.math.maxInt(u64), .epoch = 4, .levels = &levels };
    var out: Io.Writer.Allocating = .init(arena);
    try state.writeJson(&out.writer);
    var diag: Diagnostics = .{};
    const back = try parse(arena, out.written(), &diag);
    try testing.expectEqual(@as(?u64, std.math.maxInt(u64)), back.seed);
    try testing.expectEqual(@as(?u64, 0xabc), back.fingerprint);
    const p = back.current().parts[0];
    try testing.expectEqual(@as(u64, 5), p.position);
    try testing.expect(p.isConsumed(4) and p.isConsumed(5) and !p.isConsumed(6) and p.isConsumed(7) and !p.isConsumed(8) and !p.isConsumed(9));
    try testing.expectEqualStrings("k\"1", p.after_key.?);
    try testing.expectEqual(@as(u32, 3), p.in_page);
}

test "bad states are refused with the field named" {
    var arena_state: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena_state.deinit();
    var diag: Diagnostics = .{};
    try testing.expectError(error.Invalid, parse(arena_state.allocator(), "[]", &diag));
    try testing.expectError(error.Invalid, parse(arena_state.allocator(), "{\"datago_state\":2}", &diag));
    try testing.expect(std.mem.indexOf(u8, diag.text(), "format 2") != null);
    try testing.expectError(error.Invalid, parse(arena_state.allocator(), "{\"datago_state\":1,\"source\":\"file\",\"order\":\"zz\"}", &diag));
}

test "an elastic remainder is what no part consumed, split again without overlap" {
    const n = 97;
    const seed: ?u64 = 5;
    // Two ranks x two workers consumed the first 3, 0, 7, 11 items of their plans.
    const positions = [_]u64{ 3, 0, 7, 11 };
    var parts: [4]Part = undefined;
    var seen: [n]u8 = @splat(0);
    for (&parts, 0..) |*p, i| {
        p.* = .{ .rank = @intCast(i / 2), .worker = @intCast(i % 2), .position = positions[i], .head = positions[i] };
        const plan = try order.plan(testing.allocator, n, .{ .rank = p.rank, .world_size = 2, .worker = p.worker, .num_workers = 2, .shuffle_seed = seed, .epoch = 1 });
        defer testing.allocator.free(plan);
        for (plan[0..@intCast(p.position)]) |at| seen[at] += 1;
    }
    const levels = [_]Level{.{ .world_size = 2, .num_workers = 2, .parts = &parts }};
    for (0..3) |r| {
        var m: u64 = 0;
        const plan = try remainderPlan(testing.allocator, n, &levels, .{ .rank = @intCast(r), .world_size = 3, .shuffle_seed = seed, .epoch = 1 }, &m);
        try testing.expectEqual(@as(u64, n - 21), m);
        defer testing.allocator.free(plan);
        for (plan) |at| seen[at] += 1;
    }
    for (seen) |count| try testing.expectEqual(@as(u8, 1), count);
}

test "with no levels the remainder plan is the plan" {
    var m: u64 = 0;
    const a = try remainderPlan(testing.allocator, 50, &.{}, .{ .rank = 1, .world_size = 3, .shuffle_seed = 9 }, &m);
    defer testing.allocator.free(a);
    const b = try order.plan(testing.allocator, 50, .{ .rank = 1, .world_size = 3, .shuffle_seed = 9 });
    defer testing.allocator.free(b);
    try testing.expectEqualSlices(u32, b, a);
}

test "elastic chains over many shapes deliver every item exactly once" {
    var prng: std.Random.DefaultPrng = .init(0x5eed);
    const random = prng.random();
    const sizes = [_]u64{ 0, 1, 2, 7, 31, 100 };
    const shapes = [_][2]u32{ .{ 1, 1 }, .{ 2, 1 }, .{ 3, 1 }, .{ 8, 1 }, .{ 1, 2 }, .{ 2, 3 }, .{ 8, 3 } };
    for (0..300) |_| {
        var arena_state: std.heap.ArenaAllocator = .init(testing.allocator);
        defer arena_state.deinit();
        const arena = arena_state.allocator();
        const n = sizes[random.uintLessThan(usize, sizes.len)];
        const seed: ?u64 = if (random.boolean()) random.int(u64) else null;
        const epoch = random.uintLessThan(u64, 3);
        const delivered = try testing.allocator.alloc(u8, @intCast(n));
        defer testing.allocator.free(delivered);
        @memset(delivered, 0);
        // Up to three shapes in one epoch; each part stops at a random
        // position with a random window of pending items behind its head.
        var levels: std.ArrayList(Level) = .empty;
        const depth = 1 + random.uintLessThan(usize, 3);
        for (0..depth) |level_index| {
            const shape = shapes[random.uintLessThan(usize, shapes.len)];
            const last = level_index + 1 == depth;
            var parts: std.ArrayList(Part) = .empty;
            for (0..shape[0]) |r| for (0..shape[1]) |w| {
                var remainder_len: u64 = 0;
                const params: order.Params = .{ .rank = @intCast(r), .world_size = shape[0], .worker = @intCast(w), .num_workers = shape[1], .shuffle_seed = seed, .epoch = epoch };
                const plan = try remainderPlan(testing.allocator, n, levels.items, params, &remainder_len);
                defer testing.allocator.free(plan);
                if (last) {
                    for (plan) |at| delivered[at] += 1;
                    continue;
                }
                const head = random.uintAtMost(u64, plan.len);
                const position = head - random.uintAtMost(u64, @min(head, 5));
                const bits = try arena.alloc(u8, @intCast((head - position + 7) / 8));
                for (bits) |*b| b.* = random.int(u8);
                const part: Part = .{ .rank = @intCast(r), .worker = @intCast(w), .position = position, .head = head, .consumed = bits };
                for (plan, 0..) |at, seq| if (part.isConsumed(seq)) {
                    delivered[at] += 1;
                };
                try parts.append(arena, part);
            };
            if (!last) try levels.append(arena, .{ .world_size = shape[0], .num_workers = shape[1], .parts = parts.items });
        }
        for (delivered) |count| try testing.expectEqual(@as(u8, 1), count);
    }
}
