//! The WebDataset sample shuffle buffer (`source_config.shuffle_buffer`):
//! a bounded reservoir between the grouper's items and the reader stage.
//! `random_sampling` permutes the shard order; this mixes samples across
//! neighbouring shards, as webdataset's `shuffle(n)` does.
//!
//! It fills up to `capacity` items; from then on each new item makes it emit
//! one uniformly chosen held item and keep the new one; when the stream's
//! last shard has ended, `drain` emits what is held in random order. Every
//! item is emitted exactly once, and the delivered order (the stage's put
//! order) is a pure function of the shard contents and the RNG seed, which
//! is drawn from (seed, epoch, rank, worker): with a `seed` a run repeats,
//! and each epoch mixes differently. Without a `seed` (only possible when
//! `random_sampling` is off: the loader draws one otherwise) the seed comes
//! from fresh entropy.
//!
//! Memory: held items are encoded samples (image bytes plus the other
//! members), so the buffer is bounded twice: at most `capacity` items
//! (`items_max` at most) and at most `bytes_max` bytes (`bytes_max_default`,
//! 256 MiB per reader): past the byte bound it emits before it keeps, and
//! mixes fewer items. That is on top of the reader stage's
//! `prefetch_buffer_size` items.
//!
//! `Sink` is the one place the WebDataset reader puts items: it remembers
//! each item's shard and key under the sequence number it gets when it is
//! put (what `describeItem` answers for a failed decode), so shuffled items
//! are still named right. Ownership: held items belong to the buffer until
//! emitted; `deinit` releases what is still held (a stopped pass).
const std = @import("std");
const assert = std.debug.assert;
const Allocator = std.mem.Allocator;

const config_mod = @import("../config.zig");
const log = @import("../log.zig");
const runtime = @import("../runtime.zig");
const order = @import("order.zig");
const prefetch = @import("prefetch.zig");
const source = @import("source.zig");

/// Items mixed when `random_sampling` is on and `shuffle_buffer` absent:
/// webdataset's customary buffer.
pub const items_default: u32 = 1000;
/// Largest `shuffle_buffer`: its slots are allocated when the stream starts.
pub const items_max: u32 = 1 << 16;
/// Bytes of held items per reader (per rank and DataLoader worker).
pub const bytes_max_default: u64 = 256 * 1024 * 1024;
/// Bytes of a sample's key kept to describe it (the description holds at
/// most 192 bytes of "url#key" anyway).
pub const key_bytes_max = 192;

comptime {
    assert(items_max <= std.math.maxInt(u32));
    assert(key_bytes_max <= std.math.maxInt(u8));
}

pub const Params = struct {
    /// 0: no buffer, items go straight to the stage.
    capacity: u32 = 0,
    bytes_max: u64 = bytes_max_default,
    /// The RNG's starting state (`rngSeed`).
    rng_seed: u64 = 0,
};

/// The buffer of one stream from the configuration: `shuffle_buffer`, else
/// `items_default` under `random_sampling`, else none.
pub fn paramsFor(config: *const config_mod.Config, epoch: u64) Params {
    const capacity = config.webdataset.shuffle_buffer orelse if (config.file.random_sampling) items_default else 0;
    if (capacity == 0) return .{};
    const seed = config.file.seed orelse runtime.entropy64();
    return .{ .capacity = capacity, .rng_seed = rngSeed(seed, epoch, config.file.rank, config.worker_id) };
}

/// Independent streams per (seed, epoch, rank, worker), and independent of
/// the shard permutation drawn from the same seed.
pub fn rngSeed(seed: u64, epoch: u64, rank: u32, worker: u32) u64 {
    const domain: u64 = 0x7368_7566_666c_6531; // "shuffle1"
    const gamma: u64 = 0x9e3779b97f4a7c15;
    const s = order.streamSeed(seed ^ domain, epoch, rank);
    return order.mix64(s +% gamma *% (@as(u64, worker) +% 1));
}

/// An item and the key it is described by.
pub const Held = struct {
    item: source.Item,
    key_len: u8,
    key_buffer: [key_bytes_max]u8,

    pub fn key(held: *const Held) []const u8 {
        return held.key_buffer[0..held.key_len];
    }
};

pub const ShuffleBuffer = struct {
    /// `capacity` slots; the first `len` are held.
    slots: []Held,
    len: u32 = 0,
    held_bytes: u64 = 0,
    bytes_max: u64,
    rng: order.SplitMix64,
    /// Most items held at once in this stream.
    len_peak: u32 = 0,
    /// The byte bound made it emit early at least once.
    bytes_bound_hit: bool = false,

    /// Asserts `params.capacity` is in 1..items_max.
    pub fn init(gpa: Allocator, params: Params) Allocator.Error!ShuffleBuffer {
        assert(params.capacity > 0 and params.capacity <= items_max);
        return .{
            .slots = try gpa.alloc(Held, params.capacity),
            .bytes_max = params.bytes_max,
            .rng = .{ .state = params.rng_seed },
        };
    }

    /// Releases the items still held.
    pub fn deinit(b: *ShuffleBuffer, gpa: Allocator) void {
        for (b.slots[0..b.len]) |*held| held.item.release(gpa);
        gpa.free(b.slots);
        b.* = undefined;
    }

    /// Whether one held item must go before an item of `incoming_bytes`
    /// may be kept.
    pub fn mustEmit(b: *ShuffleBuffer, incoming_bytes: u64) bool {
        if (b.len == 0) return false;
        if (b.len == b.slots.len) return true;
        if (b.held_bytes + incoming_bytes > b.bytes_max) {
            b.bytes_bound_hit = true;
            return true;
        }
        return false;
    }

    /// Removes and returns one held item, uniformly chosen. Asserts one is held.
    pub fn takeRandom(b: *ShuffleBuffer) Held {
        assert(b.len > 0);
        const index: u32 = @intCast(b.rng.below(b.len));
        const taken = b.slots[index];
        b.len -= 1;
        b.slots[index] = b.slots[b.len];
        b.held_bytes -= itemBytes(&taken.item);
        return taken;
    }

    /// Keeps `item`. Asserts there is room (`mustEmit` said no).
    pub fn keep(b: *ShuffleBuffer, item: source.Item, key: []const u8) void {
        assert(b.len < b.slots.len);
        const slot = &b.slots[b.len];
        slot.item = item;
        slot.key_len = @intCast(@min(key.len, key_bytes_max));
        @memcpy(slot.key_buffer[0..slot.key_len], key[0..slot.key_len]);
        b.len += 1;
        b.held_bytes += itemBytes(&item);
        b.len_peak = @max(b.len_peak, b.len);
        assert(b.len <= b.slots.len);
    }
};

/// The memory an item holds.
pub fn itemBytes(item: *const source.Item) u64 {
    const bytes: u64 = if (item.backing) |backing| backing.len else item.bytes.len;
    const additional: u64 = if (item.additional_backing) |a| a.len * @sizeOf(source.Item.Named) else 0;
    return bytes + additional;
}

/// Puts items into a reader stage, through a shuffle buffer when one is
/// configured. `Owner` has `remember(seq: u64, url: []const u8, key: []const
/// u8) void` (WdsSource). Used by the stream's one reader thread.
pub fn Sink(comptime Owner: type) type {
    return struct {
        const Self = @This();

        owner: *Owner,
        gpa: Allocator,
        buffer: ?ShuffleBuffer,
        capacity: u32,

        pub fn init(gpa: Allocator, owner: *Owner, params: Params) Allocator.Error!Self {
            return .{
                .owner = owner,
                .gpa = gpa,
                .buffer = if (params.capacity > 0) try ShuffleBuffer.init(gpa, params) else null,
                .capacity = params.capacity,
            };
        }

        /// Releases held items (a stream that ended early).
        pub fn deinit(sink: *Self) void {
            if (sink.buffer) |*b| b.deinit(sink.gpa);
            sink.* = undefined;
        }

        /// Takes `item` (shard `url`, sample `key`). Returns error.Closed once
        /// the stage is closed; `item` is released then.
        pub fn put(sink: *Self, stage: *prefetch.Prefetch, item: source.Item, url: []const u8, key: []const u8) error{Closed}!void {
            const b = if (sink.buffer) |*buffer| buffer else return sink.emit(stage, item, url, key);
            const incoming = itemBytes(&item);
            while (b.mustEmit(incoming)) {
                const held = b.takeRandom();
                sink.emit(stage, held.item, held.item.source_name, held.key()) catch |err| {
                    var dropped = item;
                    dropped.release(sink.gpa);
                    return err;
                };
            }
            b.keep(item, key);
        }

        /// Emits every held item in random order: the stream's last shard ended.
        pub fn drain(sink: *Self, stage: *prefetch.Prefetch) error{Closed}!void {
            const b = if (sink.buffer) |*buffer| buffer else return;
            if (b.bytes_bound_hit) log.info(.files, "shuffle buffer: its byte bound ({d} MiB) held it to {d} of shuffle_buffer's {d} items", .{
                b.bytes_max / (1024 * 1024), b.len_peak, sink.capacity,
            });
            while (b.len > 0) {
                const held = b.takeRandom();
                try sink.emit(stage, held.item, held.item.source_name, held.key());
            }
        }

        fn emit(sink: *Self, stage: *prefetch.Prefetch, item: source.Item, url: []const u8, key: []const u8) error{Closed}!void {
            // Only this thread puts: the item gets this sequence number.
            sink.owner.remember(stage.put_seq, url, key);
            try stage.put(item);
        }
    };
}

const testing = std.testing;

/// Records what the sink remembered, by sequence number.
const FakeOwner = struct {
    keys: [512][16]u8 = undefined,
    lens: [512]u8 = @splat(0),

    pub fn remember(owner: *FakeOwner, seq: u64, url: []const u8, key: []const u8) void {
        std.debug.assert(std.mem.eql(u8, url, "test"));
        @memcpy(owner.keys[seq][0..key.len], key);
        owner.lens[seq] = @intCast(key.len);
    }

    fn keyAt(owner: *const FakeOwner, seq: u64) []const u8 {
        return owner.keys[seq][0..owner.lens[seq]];
    }
};

fn testItem(i: usize, size: usize) !source.Item {
    var id_buffer: [16]u8 = undefined;
    const id = try std.fmt.bufPrint(&id_buffer, "k{d}", .{i});
    var bytes: [64]u8 = @splat('x');
    return prefetch.ownedItem(testing.allocator, bytes[0..size], id, .webdataset, "test");
}

/// Streams items k0..k<count-1> through a sink of `params` into a stage that
/// holds them all; returns their ids in delivered order (caller frees).
fn shuffled(params: Params, count: usize, peak: ?*u32) ![]u32 {
    const gpa = testing.allocator;
    var stage = try prefetch.Prefetch.init(gpa, testing.io, @intCast(count));
    defer stage.deinit();
    var owner: FakeOwner = .{};
    var sink = try Sink(FakeOwner).init(gpa, &owner, params);
    defer sink.deinit();
    for (0..count) |i| {
        var key_buffer: [16]u8 = undefined;
        try sink.put(&stage, try testItem(i, 1 + i % 8), "test", try std.fmt.bufPrint(&key_buffer, "k{d}", .{i}));
        if (sink.buffer) |b| try testing.expect(b.len <= params.capacity);
    }
    try sink.drain(&stage);
    stage.finish();
    if (peak) |p| p.* = if (sink.buffer) |b| b.len_peak else 0;
    const delivered = try gpa.alloc(u32, count);
    errdefer gpa.free(delivered);
    for (delivered, 0..) |*d, seq| {
        var item = stage.take(seq).item;
        defer item.release(gpa);
        // The description made at put time names the item at that seq.
        try testing.expectEqualStrings(item.id.plain, owner.keyAt(seq));
        d.* = try std.fmt.parseInt(u32, item.id.plain[1..], 10);
    }
    try testing.expect(stage.take(count) == .end);
    return delivered;
}

fn expectPermutation(ids: []const u32) !void {
    var seen = try std.DynamicBitSet.initEmpty(testing.allocator, ids.len);
    defer seen.deinit();
    for (ids) |id| {
        try testing.expect(!seen.isSet(id));
        seen.set(id);
    }
    try testing.expectEqual(ids.len, seen.count());
}

test "every item exactly once, never more than capacity held, reproducible from the seed" {
    const gpa = testing.allocator;
    const params: Params = .{ .capacity = 16, .rng_seed = rngSeed(7, 0, 0, 0) };
    var peak: u32 = 0;
    const a = try shuffled(params, 300, &peak);
    defer gpa.free(a);
    try expectPermutation(a);
    try testing.expectEqual(@as(u32, 16), peak);
    const b = try shuffled(params, 300, null);
    defer gpa.free(b);
    try testing.expectEqualSlices(u32, a, b);
    // No item leaves before it arrived (position >= id - capacity), and the
    // order is mixed.
    var identity: usize = 0;
    for (a, 0..) |id, position| {
        identity += @intFromBool(id == position);
        try testing.expect(id <= position + 16);
    }
    try testing.expect(identity < 50);
}

test "epochs, ranks and workers draw different orders" {
    const gpa = testing.allocator;
    const base = try shuffled(.{ .capacity = 32, .rng_seed = rngSeed(7, 0, 0, 0) }, 200, null);
    defer gpa.free(base);
    for ([_]u64{ rngSeed(7, 1, 0, 0), rngSeed(7, 0, 1, 0), rngSeed(7, 0, 0, 1), rngSeed(8, 0, 0, 0) }) |seed| {
        const other = try shuffled(.{ .capacity = 32, .rng_seed = seed }, 200, null);
        defer gpa.free(other);
        try expectPermutation(other);
        try testing.expect(!std.mem.eql(u32, base, other));
    }
}

test "fewer items than the capacity come out shuffled by the drain; no buffer keeps the order" {
    const gpa = testing.allocator;
    const drained = try shuffled(.{ .capacity = 1000, .rng_seed = 3 }, 100, null);
    defer gpa.free(drained);
    try expectPermutation(drained);
    var in_order = true;
    for (drained, 0..) |id, i| in_order = in_order and id == i;
    try testing.expect(!in_order);
    const straight = try shuffled(.{}, 50, null);
    defer gpa.free(straight);
    for (straight, 0..) |id, i| try testing.expectEqual(@as(u32, @intCast(i)), id);
}

test "the byte bound holds fewer items than the capacity" {
    const gpa = testing.allocator;
    // Items of 1..8 bytes plus ids: at most 40 bytes hold a handful.
    var peak: u32 = 0;
    const ids = try shuffled(.{ .capacity = 64, .bytes_max = 40, .rng_seed = 5 }, 120, &peak);
    defer gpa.free(ids);
    try expectPermutation(ids);
    try testing.expect(peak >= 2 and peak < 16);
}

test "a closed stage releases the emitted, the incoming and the held items" {
    const gpa = testing.allocator;
    var stage = try prefetch.Prefetch.init(gpa, testing.io, 64);
    defer stage.deinit();
    var owner: FakeOwner = .{};
    var sink = try Sink(FakeOwner).init(gpa, &owner, .{ .capacity = 8, .rng_seed = 1 });
    defer sink.deinit();
    for (0..20) |i| try sink.put(&stage, try testItem(i, 4), "test", "k");
    stage.close();
    try testing.expectError(error.Closed, sink.put(&stage, try testItem(20, 4), "test", "k"));
    try testing.expectError(error.Closed, sink.drain(&stage));
    try testing.expect(sink.buffer.?.len > 0);
    // The testing allocator fails the test if deinit leaves any behind.
}

test "an unseeded buffer follows the config: off without random_sampling, default with it" {
    var diag: config_mod.Diagnostics = .{};
    const head = "{\"source_type\": \"webdataset\", \"source_config\": {\"url\": \"a.tar\"";
    var plain = try config_mod.parse(testing.allocator, head ++ "}}", &diag);
    defer plain.deinit();
    try testing.expectEqual(@as(u32, 0), paramsFor(&plain.config, 0).capacity);
    var sampled = try config_mod.parse(testing.allocator, head ++ ", \"random_sampling\": true, \"seed\": 4}}", &diag);
    defer sampled.deinit();
    const p = paramsFor(&sampled.config, 2);
    try testing.expectEqual(items_default, p.capacity);
    try testing.expectEqual(rngSeed(4, 2, 0, 0), p.rng_seed);
    var off = try config_mod.parse(testing.allocator, head ++ ", \"random_sampling\": true, \"shuffle_buffer\": 0}}", &diag);
    defer off.deinit();
    try testing.expectEqual(@as(u32, 0), paramsFor(&off.config, 0).capacity);
    var explicit = try config_mod.parse(testing.allocator, head ++ ", \"shuffle_buffer\": 5}}", &diag);
    defer explicit.deinit();
    try testing.expectEqual(@as(u32, 5), paramsFor(&explicit.config, 0).capacity);
}
