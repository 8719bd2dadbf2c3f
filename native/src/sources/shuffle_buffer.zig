//! The WebDataset sample shuffle (`source_config.shuffle_buffer`): a block
//! shuffle between the lanes' merged items and the reader stage.
//! `random_sampling` permutes the shard order; this mixes samples across
//! neighbouring shards, as webdataset's `shuffle(n)` does.
//!
//! The items, in the lanes' round-robin order, fill a block of `capacity`
//! items; the block is permuted (Fisher–Yates drawn from
//! `SplitMix64(blockSeed(rng_seed, block_index))`, order.zig's generator)
//! and emitted whole, then the next block fills; the last block is whatever
//! remains. Every item is emitted exactly once, and the put order is a pure
//! function of the items and the seed, which is drawn from (seed, epoch,
//! rank, worker): with a `seed` a run repeats, and each epoch mixes
//! differently. Without a `seed` (only possible when `random_sampling` is
//! off: the loader draws one otherwise) the seed comes from fresh entropy.
//!
//! Why blocks and not a reservoir (which emits a random held item for each
//! new one, and mixes a little further): a reservoir's state is the items
//! it holds, so a stream could only be resumed mid-epoch from a copy of up
//! to `capacity` samples. A block's order depends only on where the lanes
//! stood when it started filling and on its index, so the checkpoint of a
//! stream is a few bytes per lane (wds_checkpoint.zig), and a resume
//! re-reads at most one block.
//!
//! Without a shuffle, items go straight to the stage; they still count in
//! blocks of `identity_block_items` (the identity permutation), which is
//! where the stream takes its checkpoints.
//!
//! Memory: held items are encoded samples (image bytes plus the other
//! members), so a block is bounded twice: at most `capacity` items
//! (`items_max` at most), and it closes early once its items hold
//! `bytes_max` bytes (`bytes_max_default`, 256 MiB per reader; a block can
//! exceed it by its last item). Where a block closes depends only on the
//! items, so the order stays a function of the data. That is on top of the
//! reader stage's `prefetch_buffer_size` items.
//!
//! `Sink` is the one place the WebDataset reader puts items: it remembers
//! each item's shard and key under the sequence number it gets when it is
//! put (what `describeItem` answers for a failed decode), so shuffled items
//! are still named right. Ownership: held items belong to the sink until
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
/// Block length without a shuffle: a checkpoint every this many items.
pub const identity_block_items: u32 = 64;

comptime {
    assert(items_max <= std.math.maxInt(u32));
    assert(key_bytes_max <= std.math.maxInt(u8));
}

pub const Params = struct {
    /// 0: no shuffle, items go straight to the stage.
    capacity: u32 = 0,
    bytes_max: u64 = bytes_max_default,
    /// The seed of every block's permutation (`rngSeed`).
    rng_seed: u64 = 0,

    /// Items per block.
    pub fn blockItems(params: Params) u32 {
        return if (params.capacity == 0) identity_block_items else params.capacity;
    }
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

/// The generator state of block `block`'s permutation.
pub fn blockSeed(rng_seed: u64, block: u64) u64 {
    const gamma: u64 = 0x9e3779b97f4a7c15;
    return order.mix64(rng_seed +% gamma *% (block +% 1));
}

/// Permutes `held` as block `block` of a stream seeded `rng_seed`.
pub fn permute(comptime T: type, held: []T, rng_seed: u64, block: u64) void {
    var rng: order.SplitMix64 = .{ .state = blockSeed(rng_seed, block) };
    var i = held.len;
    while (i > 1) {
        i -= 1;
        const j: usize = @intCast(rng.below(i + 1));
        std.mem.swap(T, &held[i], &held[j]);
    }
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

/// The memory an item holds.
pub fn itemBytes(item: *const source.Item) u64 {
    const bytes: u64 = if (item.backing) |backing| backing.len else item.bytes.len;
    const additional: u64 = if (item.additional_backing) |a| a.len * @sizeOf(source.Item.Named) else 0;
    return bytes + additional;
}

/// Puts items into a reader stage, block by block. `Owner` has
/// `remember(seq: u64, url: []const u8, key: []const u8) void` (WdsSource).
/// Used by the stream's one reader thread.
pub fn Sink(comptime Owner: type) type {
    return struct {
        const Self = @This();

        owner: *Owner,
        gpa: Allocator,
        params: Params,
        /// `capacity` slots (none without a shuffle); the first `len` hold
        /// the block being filled.
        slots: []Held,
        /// Items of the block being filled (for the identity too).
        len: u32 = 0,
        held_bytes: u64 = 0,
        /// Index of the block being filled.
        block: u64 = 0,
        /// Most items a block held in this stream.
        len_peak: u32 = 0,
        /// The byte bound closed a block early at least once.
        bytes_bound_hit: bool = false,

        /// Blocks are numbered from `first_block` (a resumed stream's).
        pub fn init(gpa: Allocator, owner: *Owner, params: Params, first_block: u64) Allocator.Error!Self {
            assert(params.capacity <= items_max);
            return .{
                .owner = owner,
                .gpa = gpa,
                .params = params,
                .slots = if (params.capacity > 0) try gpa.alloc(Held, params.capacity) else &.{},
                .block = first_block,
            };
        }

        /// Releases held items (a stream that ended early).
        pub fn deinit(sink: *Self) void {
            if (sink.params.capacity > 0) {
                for (sink.slots[0..sink.len]) |*held| held.item.release(sink.gpa);
                sink.gpa.free(sink.slots);
            }
            sink.* = undefined;
        }

        /// Whether the next `put` starts a block (where a checkpoint is).
        pub fn atBlockStart(sink: *const Self) bool {
            return sink.len == 0;
        }

        /// Takes `item` (shard `url`, sample `key`). Returns error.Closed once
        /// the stage is closed; `item` is released then.
        pub fn put(sink: *Self, stage: *prefetch.Prefetch, item: source.Item, url: []const u8, key: []const u8) error{Closed}!void {
            if (sink.params.capacity == 0) {
                try sink.emit(stage, item, url, key);
                sink.len += 1;
                if (sink.len == identity_block_items) sink.closeBlock();
                return;
            }
            const slot = &sink.slots[sink.len];
            slot.item = item;
            slot.key_len = @intCast(@min(key.len, key_bytes_max));
            @memcpy(slot.key_buffer[0..slot.key_len], key[0..slot.key_len]);
            sink.len += 1;
            sink.held_bytes += itemBytes(&item);
            sink.len_peak = @max(sink.len_peak, sink.len);
            if (sink.len == sink.slots.len) return sink.flush(stage);
            if (sink.held_bytes >= sink.params.bytes_max) {
                sink.bytes_bound_hit = true;
                return sink.flush(stage);
            }
        }

        /// Emits the last block: the stream's items are all in.
        pub fn drain(sink: *Self, stage: *prefetch.Prefetch) error{Closed}!void {
            if (sink.bytes_bound_hit) log.info(.files, "shuffle buffer: its byte bound ({d} MiB) closed blocks early, the largest held {d} of shuffle_buffer's {d} items", .{
                sink.params.bytes_max / (1024 * 1024), sink.len_peak, sink.params.capacity,
            });
            if (sink.len == 0) return;
            if (sink.params.capacity == 0) return sink.closeBlock();
            try sink.flush(stage);
        }

        /// Permutes the block and emits it whole.
        fn flush(sink: *Self, stage: *prefetch.Prefetch) error{Closed}!void {
            const block = sink.slots[0..sink.len];
            permute(Held, block, sink.params.rng_seed, sink.block);
            for (block, 0..) |*held, i| {
                sink.emit(stage, held.item, held.item.source_name, held.key()) catch |err| {
                    for (block[i + 1 ..]) |*rest| rest.item.release(sink.gpa);
                    sink.len = 0;
                    sink.held_bytes = 0;
                    return err;
                };
            }
            sink.closeBlock();
        }

        fn closeBlock(sink: *Self) void {
            sink.len = 0;
            sink.held_bytes = 0;
            sink.block += 1;
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
    var sink = try Sink(FakeOwner).init(gpa, &owner, params, 0);
    defer sink.deinit();
    for (0..count) |i| {
        var key_buffer: [16]u8 = undefined;
        try sink.put(&stage, try testItem(i, 1 + i % 8), "test", try std.fmt.bufPrint(&key_buffer, "k{d}", .{i}));
        try testing.expect(sink.len <= params.blockItems());
    }
    try sink.drain(&stage);
    stage.finish();
    if (peak) |p| p.* = sink.len_peak;
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
    // Blocks of 16: each is a permutation of its own 16 items, drawn from
    // the block's seed; the order is mixed.
    var identity: usize = 0;
    for (a, 0..) |id, position| {
        identity += @intFromBool(id == position);
        try testing.expectEqual(position / 16, id / 16);
    }
    try testing.expect(identity < 50);
    var block: [16]u32 = undefined;
    for (0..300 / 16 + 1) |k| {
        const n = @min(16, 300 - k * 16);
        for (block[0..n], 0..) |*slot, i| slot.* = @intCast(k * 16 + i);
        permute(u32, block[0..n], params.rng_seed, k);
        try testing.expectEqualSlices(u32, block[0..n], a[k * 16 ..][0..n]);
    }
}

test "a sink started at a later block emits the rest of the stream as the whole one did" {
    const gpa = testing.allocator;
    const params: Params = .{ .capacity = 10, .rng_seed = 99 };
    const whole = try shuffled(params, 95, null);
    defer gpa.free(whole);
    // Blocks 3.. are items 30..94: the same permutations as in the whole.
    var stage = try prefetch.Prefetch.init(gpa, testing.io, 128);
    defer stage.deinit();
    stage.setFirstSeq(30);
    var owner: FakeOwner = .{};
    var sink = try Sink(FakeOwner).init(gpa, &owner, params, 3);
    defer sink.deinit();
    for (30..95) |i| {
        try testing.expectEqual(i % 10 == 0, sink.atBlockStart());
        var key_buffer: [16]u8 = undefined;
        try sink.put(&stage, try testItem(i, 3), "test", try std.fmt.bufPrint(&key_buffer, "k{d}", .{i}));
    }
    try sink.drain(&stage);
    stage.finish();
    for (30..95) |seq| {
        var item = stage.take(seq).item;
        defer item.release(gpa);
        try testing.expectEqualStrings(item.id.plain, owner.keyAt(seq));
        try testing.expectEqual(whole[seq], try std.fmt.parseInt(u32, item.id.plain[1..], 10));
    }
    try testing.expect(stage.take(95) == .end);
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
    var sink = try Sink(FakeOwner).init(gpa, &owner, .{ .capacity = 8, .rng_seed = 1 }, 0);
    defer sink.deinit();
    for (0..20) |i| try sink.put(&stage, try testItem(i, 4), "test", "k");
    stage.close();
    // The block fills without the stage; the put that completes it fails.
    for (20..23) |i| try sink.put(&stage, try testItem(i, 4), "test", "k");
    try testing.expectError(error.Closed, sink.put(&stage, try testItem(23, 4), "test", "k"));
    try sink.put(&stage, try testItem(24, 4), "test", "k");
    try testing.expectError(error.Closed, sink.drain(&stage));
    try sink.put(&stage, try testItem(25, 4), "test", "k");
    try testing.expect(sink.len > 0);
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
