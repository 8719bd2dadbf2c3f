//! Which WebDataset shards a (rank, DataLoader worker) reads, in which order,
//! and which samples inside them it keeps (compatibility.md §6.2, issue 17).
//!
//! Two levels, each split by shard when there are enough shards, else by a
//! hash of the sample key:
//!
//! 1. Ranks. Mode `.shard` (the default) with `shard_count >= world_size`:
//!    every rank derives the same permutation of the shards,
//!    `order.plan(shard_count, .{ .shuffle_seed = split_seed, .epoch = e })`,
//!    with `split_seed = seed orelse default_split_seed` (so unseeded ranks
//!    agree) and `e = epoch` under `random_sampling`, else 0 (a fixed split:
//!    a node re-reads the shards it has cached). Rank r takes positions r,
//!    r + W, r + 2W, ... of it and so fetches about 1/W of the bytes.
//!    Otherwise (mode `.sample_hash`, or fewer shards than ranks) every rank
//!    reads every shard in that order and keeps the samples whose hash falls
//!    on it: the reference's rule.
//! 2. Workers split the shards their rank reads (all of them when ranks hash)
//!    the same way, positions w, w + k, ..., when there are at least k of
//!    them, else by hash. So a rank reads each of its shards once in total.
//!
//! The hash rule: `h = SipHash-1-3(k0 = 0, k1 = 0, key ‖ 0xFF)` (Rust's
//! `DefaultHasher` over a `str`, compatibility.md §6.2). With M = the product of the
//! hashed levels' sizes and s = the slot of this (rank, worker) among them,
//! a sample is kept iff `h mod M == s`. For the rank level alone that is the
//! reference's `h mod W == rank`; with both levels hashed it is
//! `h mod (W·k) == rank + W·worker`, which also gives `h mod W == rank`.
//! In mode `.sample_hash` the key is the reference's per-member key (file name
//! without directories and last extension, `memberKey`) and members are
//! filtered before grouping, as the reference does; the fallback of mode
//! `.shard` hashes the sample's group key instead, so a sample's members stay
//! together.
//!
//! Read order of the part: ascending shard index (the expansion order)
//! without `random_sampling`; with it, the permutation's order when seeded,
//! else the part permuted once more by the caller's fresh `entropy`. That
//! last shuffle happens after the split, so ranks stay disjoint without a
//! seed (compatibility.md §13).
const std = @import("std");
const assert = std.debug.assert;
const Allocator = std.mem.Allocator;
const order = @import("order.zig");

/// The split seed of unseeded clients: every rank must use the same one.
/// Changing it reassigns shards to ranks; treat it as part of the format.
pub const default_split_seed: u64 = 0x6461_7461_676f_5731; // "datagoW1"
/// Most shards one client may list; order.plan indexes them with u32.
pub const shards_max = 1 << 24;

comptime {
    assert(shards_max <= std.math.maxInt(u32));
}

pub const Mode = enum {
    /// Ranks take whole shards when there are at least world_size of them.
    shard,
    /// Every rank reads every shard and keeps members by hash (reference).
    sample_hash,
};

pub const Params = struct {
    shard_count: usize,
    rank: u32 = 0,
    world_size: u32 = 1,
    worker: u32 = 0,
    num_workers: u32 = 1,
    seed: ?u64 = null,
    epoch: u64 = 0,
    random_sampling: bool = false,
    /// Fresh entropy for `random_sampling` without `seed`; ignored otherwise.
    entropy: u64 = 0,
    mode: Mode = .shard,
};

/// Which key a `Filter` hashes.
pub const KeyKind = enum {
    /// `memberKey(member path)`, before grouping (mode `.sample_hash`).
    member,
    /// The group key of a whole sample, after grouping (fallback of `.shard`).
    group,
};

/// Keeps a sample (or member) iff `sampleHash(key) % modulus == residue`.
pub const Filter = struct {
    modulus: u64 = 1,
    residue: u64 = 0,
    key_kind: KeyKind = .group,

    /// True when every sample is kept and nothing needs hashing.
    pub fn keepsAll(filter: Filter) bool {
        return filter.modulus == 1;
    }

    pub fn keeps(filter: Filter, key: []const u8) bool {
        assert(filter.residue < filter.modulus);
        if (filter.modulus == 1) return true;
        return sampleHash(key) % filter.modulus == filter.residue;
    }
};

pub const Plan = struct {
    /// Indices into the shard list, in read order. Owned by the plan.
    shards: []u32,
    filter: Filter,

    pub fn deinit(self: *Plan, gpa: Allocator) void {
        gpa.free(self.shards);
        self.* = undefined;
    }
};

pub const Error = Allocator.Error || error{
    /// More than `shards_max` shards.
    TooMany,
};

/// Builds the plan of one (rank, worker). Asserts rank < world_size and
/// worker < num_workers (config.zig validates them). Caller owns the result.
pub fn plan(gpa: Allocator, params: Params) Error!Plan {
    assert(params.rank < params.world_size);
    assert(params.worker < params.num_workers);
    if (params.shard_count > shards_max) return error.TooMany;
    const n: u32 = @intCast(params.shard_count);
    const split_epoch = if (params.random_sampling) params.epoch else 0;
    const permutation = try order.plan(gpa, n, .{
        .shuffle_seed = params.seed orelse default_split_seed,
        .epoch = split_epoch,
    });
    defer gpa.free(permutation);

    var filter: Filter = .{ .key_kind = if (params.mode == .sample_hash) .member else .group };
    const rank_by_shard = params.mode == .shard and n >= params.world_size;
    const rank_share_len: u64 = if (rank_by_shard)
        order.rankShareLen(n, params.rank, params.world_size)
    else
        n;
    if (!rank_by_shard) {
        filter.modulus = params.world_size;
        filter.residue = params.rank;
    }
    const worker_by_shard = rank_share_len >= params.num_workers;
    const part_len: u64 = if (worker_by_shard)
        order.rankShareLen(rank_share_len, params.worker, params.num_workers)
    else
        rank_share_len;
    if (!worker_by_shard) {
        filter.residue += filter.modulus * params.worker;
        filter.modulus *= params.num_workers;
    }

    const shards = try gpa.alloc(u32, @intCast(part_len));
    errdefer gpa.free(shards);
    const rank_stride: u64 = if (rank_by_shard) params.world_size else 1;
    const rank_first: u64 = if (rank_by_shard) params.rank else 0;
    const worker_stride: u64 = if (worker_by_shard) params.num_workers else 1;
    const worker_first: u64 = if (worker_by_shard) params.worker else 0;
    for (shards, 0..) |*shard, i| {
        const share_position = worker_first + i * worker_stride;
        shard.* = permutation[@intCast(rank_first + share_position * rank_stride)];
    }
    try arrange(gpa, shards, params);
    return .{ .shards = shards, .filter = filter };
}

/// Puts the part in read order (see the file comment).
fn arrange(gpa: Allocator, shards: []u32, params: Params) Allocator.Error!void {
    if (!params.random_sampling) {
        std.mem.sortUnstable(u32, shards, {}, std.sort.asc(u32));
        return;
    }
    if (params.seed != null) return;
    const local = try order.plan(gpa, shards.len, .{ .shuffle_seed = params.entropy });
    defer gpa.free(local);
    const original = try gpa.dupe(u32, shards);
    defer gpa.free(original);
    for (shards, local) |*shard, from| shard.* = original[from];
}

/// SipHash-1-3 with a zero key over `key ‖ 0xFF`: Rust's
/// `DefaultHasher::new()` after `str::hash` (compatibility.md §6.2).
pub fn sampleHash(key: []const u8) u64 {
    const zero_key: [16]u8 = @splat(0);
    var hasher = std.crypto.auth.siphash.SipHash64(1, 3).init(&zero_key);
    hasher.update(key);
    hasher.update(&.{0xff});
    return hasher.finalInt();
}

/// The reference's per-member key (compatibility.md §6.2): the file name without its
/// directories and without its last extension, as Rust's `Path::file_stem`
/// (`a/b/x.seg.png` → `x.seg`, `noext` → `noext`, `.hidden` → `.hidden`).
pub fn memberKey(path: []const u8) []const u8 {
    const trimmed = std.mem.trimEnd(u8, path, "/");
    const slash = std.mem.findScalarLast(u8, trimmed, '/');
    const name = if (slash) |s| trimmed[s + 1 ..] else trimmed;
    const dot = std.mem.findScalarLast(u8, name, '.') orelse return name;
    if (dot == 0) return name;
    return name[0..dot];
}

const testing = std.testing;

test "compatibility.md §6.2 SipHash test vectors and their ranks" {
    const Vector = struct { key: []const u8, hash: u64, rank_of_2: u64, rank_of_3: u64 };
    const vectors = [_]Vector{
        .{ .key = "", .hash = 0x30406ea523c53def, .rank_of_2 = 1, .rank_of_3 = 1 },
        .{ .key = "a", .hash = 0x719b50b9a4f0e9f3, .rank_of_2 = 1, .rank_of_3 = 0 },
        .{ .key = "000000", .hash = 0x28992646e392cc19, .rank_of_2 = 1, .rank_of_3 = 0 },
        .{ .key = "x1", .hash = 0x269aa754e8f8fe41, .rank_of_2 = 1, .rank_of_3 = 0 },
        .{ .key = "x1.seg", .hash = 0xef9d6349df715e4d, .rank_of_2 = 1, .rank_of_3 = 1 },
        .{ .key = "img-42", .hash = 0x612d25c34bc4b1f8, .rank_of_2 = 0, .rank_of_3 = 2 },
        .{ .key = "sample_0001", .hash = 0x956f092a4370d0e7, .rank_of_2 = 1, .rank_of_3 = 2 },
        .{ .key = "s00_0000", .hash = 0x1e1e3b346effc0e5, .rank_of_2 = 1, .rank_of_3 = 0 },
        .{ .key = "s00_0001", .hash = 0xfa8c376a0847ddda, .rank_of_2 = 0, .rank_of_3 = 1 },
        .{ .key = "s01_0007", .hash = 0xc52f13d589a45941, .rank_of_2 = 1, .rank_of_3 = 1 },
    };
    for (vectors) |v| {
        try testing.expectEqual(v.hash, sampleHash(v.key));
        for ([_]u32{ 2, 3 }, [_]u64{ v.rank_of_2, v.rank_of_3 }) |world_size, rank| {
            for (0..world_size) |r| {
                var p = try plan(testing.allocator, .{
                    .shard_count = 4,
                    .rank = @intCast(r),
                    .world_size = world_size,
                    .mode = .sample_hash,
                });
                defer p.deinit(testing.allocator);
                try testing.expectEqual(r == rank, p.filter.keeps(v.key));
                try testing.expectEqual(KeyKind.member, p.filter.key_kind);
                try testing.expectEqualSlices(u32, &.{ 0, 1, 2, 3 }, p.shards);
            }
        }
    }
}

test "memberKey drops directories and the last extension only" {
    try testing.expectEqualStrings("x.seg", memberKey("a/b/x.seg.png"));
    try testing.expectEqualStrings("x1", memberKey("x1.jpg"));
    try testing.expectEqualStrings("noext", memberKey("noext"));
    try testing.expectEqualStrings(".hidden", memberKey("dir/.hidden"));
    try testing.expectEqualStrings("x", memberKey("x."));
    try testing.expectEqualStrings("", memberKey(""));
}

/// Samples per synthetic shard in the coverage tests.
const samples_per_shard = 7;

/// Checks that every sample of `shard_count` synthetic shards is kept by
/// exactly one (rank, worker), and returns the most shards any rank reads.
fn expectPartition(shard_count: usize, world_size: u32, num_workers: u32, base: Params) !u64 {
    const seen = try testing.allocator.alloc(u8, shard_count * samples_per_shard);
    defer testing.allocator.free(seen);
    @memset(seen, 0);
    var rank_shards_max: u64 = 0;
    for (0..world_size) |r| {
        var rank_reads = try std.DynamicBitSet.initEmpty(testing.allocator, shard_count);
        defer rank_reads.deinit();
        for (0..num_workers) |w| {
            var params = base;
            params.shard_count = shard_count;
            params.rank = @intCast(r);
            params.world_size = world_size;
            params.worker = @intCast(w);
            params.num_workers = num_workers;
            var p = try plan(testing.allocator, params);
            defer p.deinit(testing.allocator);
            for (p.shards) |shard| {
                rank_reads.set(shard);
                for (0..samples_per_shard) |i| {
                    var key_buffer: [32]u8 = undefined;
                    const key = try std.fmt.bufPrint(&key_buffer, "s{d}_{d}", .{ shard, i });
                    if (p.filter.keeps(key)) seen[shard * samples_per_shard + i] += 1;
                }
            }
        }
        rank_shards_max = @max(rank_shards_max, rank_reads.count());
    }
    for (seen) |count| try testing.expectEqual(@as(u8, 1), count);
    return rank_shards_max;
}

test "every sample lands on exactly one (rank, worker) in every regime" {
    const modes = [_]Mode{ .shard, .sample_hash };
    for (modes) |mode| {
        for ([_]usize{ 0, 1, 2, 3, 5, 8, 13, 40 }) |n| {
            for (1..5) |ws| {
                for (1..4) |k| {
                    const bases = [_]Params{
                        .{ .shard_count = 0, .mode = mode },
                        .{ .shard_count = 0, .mode = mode, .seed = 99, .random_sampling = true, .epoch = 3 },
                        .{ .shard_count = 0, .mode = mode, .random_sampling = true, .entropy = 12345 },
                    };
                    for (bases) |base| _ = try expectPartition(n, @intCast(ws), @intCast(k), base);
                }
            }
        }
    }
}

test "with enough shards each rank reads about 1/W of them" {
    // 40 shards over 4 ranks of 3 workers: 10 shards per rank, none shared.
    try testing.expectEqual(@as(u64, 10), try expectPartition(40, 4, 3, .{ .shard_count = 0 }));
    // Fewer shards than ranks × workers but not than ranks: ranks still split shards.
    try testing.expectEqual(@as(u64, 2), try expectPartition(8, 4, 3, .{ .shard_count = 0 }));
    // Fewer shards than ranks: every rank reads every shard (the reference's traffic).
    try testing.expectEqual(@as(u64, 3), try expectPartition(3, 4, 2, .{ .shard_count = 0 }));
    // The reference's mode always reads everything.
    try testing.expectEqual(@as(u64, 40), try expectPartition(40, 4, 1, .{ .shard_count = 0, .mode = .sample_hash }));
}

test "the fallback filters are the hash rules of the file comment" {
    // 1 shard, 4 ranks of 2 workers: both levels hash, slot rank + W·worker.
    var p = try plan(testing.allocator, .{ .shard_count = 1, .rank = 2, .world_size = 4, .worker = 1, .num_workers = 2 });
    defer p.deinit(testing.allocator);
    try testing.expectEqual(Filter{ .modulus = 8, .residue = 6, .key_kind = .group }, p.filter);
    try testing.expectEqualSlices(u32, &.{0}, p.shards);
    // 3 shards, 4 ranks of 2 workers: ranks hash, but each rank reads all 3
    // shards, which its workers split.
    var r = try plan(testing.allocator, .{ .shard_count = 3, .rank = 2, .world_size = 4, .worker = 1, .num_workers = 2 });
    defer r.deinit(testing.allocator);
    try testing.expectEqual(Filter{ .modulus = 4, .residue = 2, .key_kind = .group }, r.filter);
    try testing.expectEqual(@as(usize, 1), r.shards.len);
    // 5 shards, 2 ranks of 3 workers: rank 1 has 2 shards, so its workers hash.
    var q = try plan(testing.allocator, .{ .shard_count = 5, .rank = 1, .world_size = 2, .worker = 2, .num_workers = 3 });
    defer q.deinit(testing.allocator);
    try testing.expectEqual(Filter{ .modulus = 3, .residue = 2, .key_kind = .group }, q.filter);
    try testing.expectEqual(@as(usize, 2), q.shards.len);
    // Enough shards everywhere: nothing to hash.
    var all = try plan(testing.allocator, .{ .shard_count = 6, .rank = 1, .world_size = 2, .worker = 2, .num_workers = 3 });
    defer all.deinit(testing.allocator);
    try testing.expect(all.filter.keepsAll());
    try testing.expectEqual(@as(usize, 1), all.shards.len);
}

test "one rank, one worker, no random_sampling reads the expansion order" {
    var p = try plan(testing.allocator, .{ .shard_count = 6 });
    defer p.deinit(testing.allocator);
    try testing.expectEqualSlices(u32, &.{ 0, 1, 2, 3, 4, 5 }, p.shards);
    try testing.expect(p.filter.keepsAll());
}

test "unseeded ranks agree; the seed and, under random_sampling, the epoch move the split" {
    const Probe = struct {
        fn rankZero(params: Params) ![]u32 {
            const p = try plan(testing.allocator, params);
            return p.shards;
        }
    };
    const base: Params = .{ .shard_count = 64, .world_size = 4 };
    const a = try Probe.rankZero(base);
    defer testing.allocator.free(a);
    const b = try Probe.rankZero(base);
    defer testing.allocator.free(b);
    try testing.expectEqualSlices(u32, a, b);
    // The default split is a shuffle, not the first 16 shards or every 4th.
    try testing.expect(!std.mem.eql(u32, a, &.{ 0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60 }));

    var seeded = base;
    seeded.seed = 7;
    const c = try Probe.rankZero(seeded);
    defer testing.allocator.free(c);
    try testing.expect(!std.mem.eql(u32, a, c));

    var fixed_epoch = base;
    fixed_epoch.epoch = 5;
    const d = try Probe.rankZero(fixed_epoch);
    defer testing.allocator.free(d);
    try testing.expectEqualSlices(u32, a, d);

    var shuffled = seeded;
    shuffled.random_sampling = true;
    const e0 = try Probe.rankZero(shuffled);
    defer testing.allocator.free(e0);
    shuffled.epoch = 1;
    const e1 = try Probe.rankZero(shuffled);
    defer testing.allocator.free(e1);
    try testing.expect(!std.mem.eql(u32, e0, e1));
}

test "fresh entropy permutes only this worker's own shards" {
    var base: Params = .{ .shard_count = 50, .rank = 1, .world_size = 3, .worker = 1, .num_workers = 2 };
    var sorted = try plan(testing.allocator, base);
    defer sorted.deinit(testing.allocator);
    base.random_sampling = true;
    base.entropy = 1;
    var one = try plan(testing.allocator, base);
    defer one.deinit(testing.allocator);
    base.entropy = 2;
    var two = try plan(testing.allocator, base);
    defer two.deinit(testing.allocator);
    try testing.expect(!std.mem.eql(u32, one.shards, two.shards));
    for ([_][]u32{ one.shards, two.shards }) |shards| {
        const copy = try testing.allocator.dupe(u32, shards);
        defer testing.allocator.free(copy);
        std.mem.sortUnstable(u32, copy, {}, std.sort.asc(u32));
        try testing.expectEqualSlices(u32, sorted.shards, copy);
    }
}

test "too many shards is an error, not an allocation" {
    try testing.expectError(error.TooMany, plan(testing.allocator, .{ .shard_count = shards_max + 1 }));
}

test "plan survives every allocation failure without leaking" {
    try testing.checkAllAllocationFailures(testing.allocator, struct {
        fn run(gpa: Allocator) !void {
            var p = try plan(gpa, .{ .shard_count = 9, .world_size = 2, .random_sampling = true, .entropy = 3 });
            defer p.deinit(gpa);
            try testing.expectEqual(@as(usize, 5), p.shards.len);
        }
    }.run, .{});
}
