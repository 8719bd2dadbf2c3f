//! The order function of docs/design.md: which items of a sorted listing a
//! (rank, worker) receives, and in which order, as a pure function of
//! (listing length, seed, epoch, rank, world_size, worker, num_workers).
//!
//! The generator and the shuffle are written out here rather than taken from
//! std.Random, so that the order cannot change with a Zig upgrade and can be
//! reproduced bit for bit from the description in docs/design.md (the Python
//! tests do exactly that).
const std = @import("std");
const Allocator = std.mem.Allocator;

pub const Params = struct {
    rank: u32 = 0,
    world_size: u32 = 1,
    worker: u32 = 0,
    num_workers: u32 = 1,
    /// null: no shuffle, sorted order.
    shuffle_seed: ?u64 = null,
    epoch: u64 = 0,
};

const golden_gamma: u64 = 0x9e3779b97f4a7c15;

/// SplitMix64's output function (Steele, Lea, Flood 2014).
pub fn mix64(input: u64) u64 {
    var z = input;
    z = (z ^ (z >> 30)) *% 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) *% 0x94d049bb133111eb;
    return z ^ (z >> 31);
}

/// A SplitMix64 stream.
pub const SplitMix64 = struct {
    state: u64,

    pub fn next(self: *SplitMix64) u64 {
        self.state +%= golden_gamma;
        return mix64(self.state);
    }

    /// Uniform in [0, bound), bound > 0: Lemire's multiply-shift with rejection.
    pub fn below(self: *SplitMix64, bound: u64) u64 {
        std.debug.assert(bound > 0);
        var product: u128 = @as(u128, self.next()) * bound;
        var low: u64 = @truncate(product);
        if (low < bound) {
            const threshold = (0 -% bound) % bound;
            while (low < threshold) {
                product = @as(u128, self.next()) * bound;
                low = @truncate(product);
            }
        }
        return @intCast(product >> 64);
    }
};

/// The shuffle stream of one (seed, epoch, rank): each pass and each rank
/// draws an independent permutation.
pub fn streamSeed(seed: u64, epoch: u64, rank: u32) u64 {
    var s = mix64(seed);
    s = mix64(s +% golden_gamma *% (epoch +% 1));
    s = mix64(s +% golden_gamma *% (@as(u64, rank) +% 1));
    return s;
}

/// Number of listing items in the share of `rank`: items i with
/// i mod world_size == rank.
pub fn rankShareLen(listing_len: u64, rank: u32, world_size: u32) u64 {
    std.debug.assert(rank < world_size);
    if (listing_len <= rank) return 0;
    return (listing_len - rank - 1) / world_size + 1;
}

/// Number of samples worker `worker` of `num_workers` hands out when its rank
/// hands out `limit`: limit // k, plus one for the first limit % k workers.
pub fn workerLimit(limit: u64, worker: u32, num_workers: u32) u64 {
    std.debug.assert(worker < num_workers);
    return limit / num_workers + @intFromBool(worker < limit % num_workers);
}

/// Builds the plan of one (rank, worker): indices into the sorted listing, in
/// delivery order. Caller owns the result.
///
/// 1. The rank's share: listing positions rank, rank + W, rank + 2W, ...
///    (computed on the sorted listing alone, so ranks are disjoint and
///    complete whether or not they shuffle, and agree wherever the data is
///    mounted, since the listing is of paths relative to root_path).
/// 2. With a seed: a Fisher-Yates shuffle of that share, drawn from
///    SplitMix64(streamSeed(seed, epoch, rank)) for i = n-1 down to 1:
///    j = below(i + 1), swap(i, j).
/// 3. The worker's part: positions worker, worker + k, ... of the result.
pub fn plan(gpa: Allocator, listing_len: u64, params: Params) Allocator.Error![]u32 {
    std.debug.assert(listing_len <= std.math.maxInt(u32));
    std.debug.assert(params.worker < params.num_workers);
    const share_len = rankShareLen(listing_len, params.rank, params.world_size);
    const share = try gpa.alloc(u32, share_len);
    defer gpa.free(share);
    for (share, 0..) |*item, i| item.* = @intCast(params.rank + i * params.world_size);
    if (params.shuffle_seed) |seed| {
        var rng: SplitMix64 = .{ .state = streamSeed(seed, params.epoch, params.rank) };
        var i: u64 = share_len;
        while (i > 1) {
            i -= 1;
            const j = rng.below(i + 1);
            std.mem.swap(u32, &share[i], &share[j]);
        }
    }
    const part_len = rankShareLen(share_len, params.worker, params.num_workers);
    const part = try gpa.alloc(u32, part_len);
    for (part, 0..) |*item, i| item.* = share[params.worker + i * params.num_workers];
    return part;
}

const testing = std.testing;

test "mix64 matches SplitMix64 reference values" {
    // First outputs of SplitMix64 seeded with 0 (Vigna's reference code).
    var rng: SplitMix64 = .{ .state = 0 };
    try testing.expectEqual(@as(u64, 0xe220a8397b1dcdaf), rng.next());
    try testing.expectEqual(@as(u64, 0x6e789e6aa1b965f4), rng.next());
    try testing.expectEqual(@as(u64, 0x06c45d188009454f), rng.next());
}

test "ranks are disjoint and complete for world sizes 1..5" {
    const n = 103;
    for (1..6) |ws| {
        var seen: [n]u8 = @splat(0);
        for (0..ws) |r| {
            const p = try plan(testing.allocator, n, .{ .rank = @intCast(r), .world_size = @intCast(ws), .shuffle_seed = 7 });
            defer testing.allocator.free(p);
            try testing.expectEqual(rankShareLen(n, @intCast(r), @intCast(ws)), p.len);
            for (p) |i| seen[i] += 1;
        }
        for (seen) |count| try testing.expectEqual(@as(u8, 1), count);
    }
}

test "workers split a rank's share disjointly" {
    const n = 50;
    var seen: [n]u8 = @splat(0);
    for (0..3) |w| {
        const p = try plan(testing.allocator, n, .{ .rank = 1, .world_size = 2, .worker = @intCast(w), .num_workers = 3, .shuffle_seed = 1 });
        defer testing.allocator.free(p);
        for (p) |i| {
            try testing.expectEqual(@as(u32, 1), i % 2);
            seen[i] += 1;
        }
    }
    for (seen, 0..) |count, i| try testing.expectEqual(@as(u8, @intFromBool(i % 2 == 1)), count);
}

test "the same seed and epoch give the same order, another epoch another" {
    const a = try plan(testing.allocator, 200, .{ .shuffle_seed = 42, .epoch = 0 });
    defer testing.allocator.free(a);
    const b = try plan(testing.allocator, 200, .{ .shuffle_seed = 42, .epoch = 0 });
    defer testing.allocator.free(b);
    const c = try plan(testing.allocator, 200, .{ .shuffle_seed = 42, .epoch = 1 });
    defer testing.allocator.free(c);
    try testing.expectEqualSlices(u32, a, b);
    try testing.expect(!std.mem.eql(u32, a, c));
}

test "no seed keeps the sorted order" {
    const p = try plan(testing.allocator, 10, .{ .rank = 1, .world_size = 3 });
    defer testing.allocator.free(p);
    try testing.expectEqualSlices(u32, &.{ 1, 4, 7 }, p);
}

test "below is unbiased enough and in range" {
    var rng: SplitMix64 = .{ .state = 5 };
    var counts: [3]u32 = @splat(0);
    for (0..30_000) |_| counts[rng.below(3)] += 1;
    for (counts) |c| try testing.expect(c > 9_500 and c < 10_500);
}

test "worker limits add up to the rank's limit" {
    for (1..8) |k| {
        var total: u64 = 0;
        for (0..k) |w| total += workerLimit(23, @intCast(w), @intCast(k));
        try testing.expectEqual(@as(u64, 23), total);
    }
}
