//! Counters and latency histograms of a pass, cheap enough to leave on: a
//! worker adds its timings under the lock it already takes to hand in its
//! result, and histograms are fixed arrays of log-spaced buckets.
const std = @import("std");
const decoder = @import("decode/decoder.zig");
const files = @import("sources/files.zig");
const source = @import("sources/source.zig");
const runtime = @import("runtime.zig");

/// Stages a sample goes through on a worker.
pub const Stage = enum { read, decode, transform, encode };

/// Latencies in nanoseconds, in buckets four per octave (each bucket spans
/// 19 % of its lower edge), from 1 ns to about 2^64 ns.
pub const Histogram = struct {
    const per_octave = 4;
    const bucket_count = 64 * per_octave;

    counts: [bucket_count]u32 = @splat(0),
    total: u64 = 0,
    sum_ns: u64 = 0,

    fn bucketOf(ns: u64) usize {
        if (ns < 2) return 0;
        const octave: usize = 63 - @clz(ns);
        // The two bits below the leading one select the quarter-octave.
        const fraction: usize = if (octave >= 2) @intCast((ns >> @intCast(octave - 2)) & 3) else @intCast((ns << @intCast(2 - octave)) & 3);
        return octave * per_octave + fraction;
    }

    /// Upper edge of a bucket, the value reported for a quantile in it.
    fn upperEdge(bucket: usize) u64 {
        const octave = bucket / per_octave;
        const fraction = bucket % per_octave;
        const base = @as(u128, 1) << @intCast(octave);
        const edge = base + base * (fraction + 1) / per_octave;
        return @intCast(@min(edge, std.math.maxInt(u64)));
    }

    pub fn add(self: *Histogram, ns: u64) void {
        self.counts[bucketOf(ns)] +|= 1;
        self.total += 1;
        self.sum_ns +|= ns;
    }

    pub fn merge(self: *Histogram, other: *const Histogram) void {
        for (&self.counts, other.counts) |*a, b| a.* +|= b;
        self.total += other.total;
        self.sum_ns +|= other.sum_ns;
    }

    /// The value at quantile q (0..1), to within a bucket (+19 %); 0 if empty.
    pub fn quantile(self: *const Histogram, q: f64) u64 {
        if (self.total == 0) return 0;
        const rank: u64 = @intFromFloat(@ceil(q * @as(f64, @floatFromInt(self.total))));
        var seen: u64 = 0;
        for (self.counts, 0..) |count, bucket| {
            seen += count;
            if (seen >= @max(rank, 1)) return upperEdge(bucket);
        }
        return upperEdge(bucket_count - 1);
    }

    pub fn meanNs(self: *const Histogram) u64 {
        return if (self.total == 0) 0 else self.sum_ns / self.total;
    }
};

/// Timings of one sample on a worker, handed in with its result; null for
/// a stage that did not run.
pub const Timings = struct {
    ns: std.EnumArray(Stage, ?u64) = .initFill(null),
    bytes_read: u64 = 0,
    /// collect_stats: false skips the clock reads (bench/stats_cost.py
    /// measures what they cost).
    enabled: bool = true,

    /// A clock to lap from (0 when disabled).
    pub fn start(self: *const Timings) u64 {
        return if (self.enabled) runtime.monotonicNs() else 0;
    }

    /// Records the time since `clock` for `stage` and restarts the clock.
    pub fn lap(self: *Timings, stage: Stage, clock: *u64) void {
        if (!self.enabled) return;
        const t = runtime.monotonicNs();
        self.ns.set(stage, t - clock.*);
        clock.* = t;
    }
};

pub const Counters = struct {
    attempted: u64 = 0,
    delivered: u64 = 0,
    failed: u64 = 0,
    by_cause: std.EnumArray(decoder.Cause, u64) = .initFill(0),
    bytes_read: u64 = 0,
    bytes_delivered: u64 = 0,
    stages: std.EnumArray(Stage, Histogram) = .initFill(.{}),
    /// Time callers of `next` spent waiting for a sample.
    consumer_wait: Histogram = .{},
    /// Of that, time waited for the item due while a later one was ready:
    /// the cost of delivering in plan order rather than completion order.
    ordered_wait_ns: u64 = 0,
    listed: u64 = 0,
    listing_ns: u64 = 0,
    /// equal_per_rank: samples delivered that repeat an earlier item (`pad`,
    /// or standing in for failed items), and items of the share left
    /// undelivered because the equal count was reached (`drop`).
    padded: u64 = 0,
    equal_dropped: u64 = 0,
    /// Listing entries named like images that are not readable files.
    skipped: std.EnumArray(files.SkipCause, u64) = .initFill(0),

    pub fn addTimings(self: *Counters, timings: *const Timings) void {
        self.bytes_read += timings.bytes_read;
        for (std.enums.values(Stage)) |stage| {
            if (timings.ns.get(stage)) |ns| self.stages.getPtr(stage).add(ns);
        }
    }
};

/// A point-in-time view of a pass for `datago_loader_stats`.
pub const Snapshot = struct {
    counters: Counters,
    epoch: u64,
    threads: u32,
    running: bool,
    /// Outcomes decoded and waiting in the ready ring / its capacity.
    ready: u64,
    ready_capacity: u64,
    /// Items claimed by workers and not yet handed in.
    in_flight: u64,
    plan_len: u64,
    elapsed_ns: u64,
    batches: u64 = 0,
    partial_batches: u64 = 0,
    /// Samples of partial batches dropped by drop_last.
    dropped_samples: u64 = 0,
    /// The shuffle seed in use (given or drawn); null without random_sampling.
    seed: ?u64 = null,
    /// Where this (rank, worker) stands; null for sources without one yet.
    cursor: ?source.Cursor = null,
    /// A sharded (WebDataset) source's counters; null for other sources.
    shards: ?source.ShardCounts = null,
    /// A Dataroom source's counters; null for other sources.
    dataroom: ?source.DataroomCounts = null,
    /// What the next delivery waits for, while the pass runs (for timeout
    /// messages); empty when nothing is awaited.
    waiting_for_buffer: [waiting_for_bytes_max]u8 = undefined,
    waiting_for_len: usize = 0,

    pub const waiting_for_bytes_max = 512;

    pub fn waitingFor(s: *const Snapshot) []const u8 {
        return s.waiting_for_buffer[0..s.waiting_for_len];
    }
};

/// Writes a snapshot as one JSON object.
pub fn writeJson(w: *std.Io.Writer, s: *const Snapshot) std.Io.Writer.Error!void {
    const c = &s.counters;
    try w.print("{{\"epoch\":{d},\"running\":{},\"threads\":{d},\"elapsed_s\":{d:.3},", .{
        s.epoch, s.running, s.threads, nsToS(s.elapsed_ns),
    });
    try w.print("\"listed\":{d},\"listing_s\":{d:.3},\"planned\":{d},", .{ c.listed, nsToS(c.listing_ns), s.plan_len });
    try w.print("\"padded\":{d},\"equal_dropped\":{d},\"ordered_wait_s\":{d:.6},", .{ c.padded, c.equal_dropped, nsToS(c.ordered_wait_ns) });
    if (s.seed) |seed| try w.print("\"seed\":{d},", .{seed}) else try w.writeAll("\"seed\":null,");
    try w.writeAll("\"waiting_for\":");
    if (s.waiting_for_len > 0) try std.json.Stringify.encodeJsonString(s.waitingFor(), .{}, w) else try w.writeAll("null");
    try w.writeAll(",\"cursor\":");
    if (s.cursor) |*cursor| try cursor.writeJson(w) else try w.writeAll("null");
    try w.writeAll(",\"shards\":");
    if (s.shards) |sh| {
        try w.print("{{\"planned\":{d},\"read\":{d},\"failed\":{d},\"groups_without_image\":{d},\"groups_too_large\":{d},\"cache\":", .{
            sh.planned, sh.read, sh.failed, sh.groups_without_image, sh.groups_too_large,
        });
        if (sh.cache) |*cache| try cache.writeJson(w) else try w.writeAll("null");
        try w.writeAll("}");
    } else try w.writeAll("null");
    try w.writeAll(",\"dataroom\":");
    if (s.dataroom) |d| {
        try w.writeByte('{');
        inline for (comptime std.meta.fieldNames(source.DataroomCounts), 0..) |name, i| {
            try w.print("{s}\"{s}\":{d}", .{ if (i == 0) "" else ",", name, @field(d, name) });
        }
        try w.writeByte('}');
    } else try w.writeAll("null");
    try w.writeAll(",\"skipped\":{");
    for (std.enums.values(files.SkipCause), 0..) |cause, i| {
        try w.print("{s}\"{s}\":{d}", .{ if (i == 0) "" else ",", @tagName(cause), c.skipped.get(cause) });
    }
    try w.writeAll("},");
    try w.print("\"attempted\":{d},\"delivered\":{d},\"failed\":{d},\"bytes_read\":{d},\"bytes_delivered\":{d},", .{
        c.attempted, c.delivered, c.failed, c.bytes_read, c.bytes_delivered,
    });
    try w.writeAll("\"errors\":{");
    for (std.enums.values(decoder.Cause), 0..) |cause, i| {
        try w.print("{s}\"{s}\":{d}", .{ if (i == 0) "" else ",", @tagName(cause), c.by_cause.get(cause) });
    }
    try w.print("}},\"batches\":{d},\"partial_batches\":{d},\"dropped_samples\":{d}", .{ s.batches, s.partial_batches, s.dropped_samples });
    try w.print(",\"queues\":{{\"ready\":{d},\"ready_capacity\":{d},\"in_flight\":{d}}},", .{ s.ready, s.ready_capacity, s.in_flight });
    try w.writeAll("\"stages\":{");
    for (std.enums.values(Stage), 0..) |stage, i| {
        try w.print("{s}\"{s}\":", .{ if (i == 0) "" else ",", @tagName(stage) });
        try writeHistogram(w, c.stages.getPtrConst(stage));
    }
    try w.writeAll("},\"consumer_wait\":");
    try writeHistogram(w, &c.consumer_wait);
    try w.writeAll("}");
}

fn writeHistogram(w: *std.Io.Writer, h: *const Histogram) std.Io.Writer.Error!void {
    try w.print("{{\"count\":{d},\"total_s\":{d:.6},\"mean_ms\":{d:.4},\"p50_ms\":{d:.4},\"p99_ms\":{d:.4}}}", .{
        h.total, nsToS(h.sum_ns), nsToMs(h.meanNs()), nsToMs(h.quantile(0.5)), nsToMs(h.quantile(0.99)),
    });
}

fn nsToS(ns: u64) f64 {
    return @as(f64, @floatFromInt(ns)) / std.time.ns_per_s;
}

fn nsToMs(ns: u64) f64 {
    return @as(f64, @floatFromInt(ns)) / std.time.ns_per_ms;
}

const testing = std.testing;

test "histogram quantiles land within a bucket" {
    var h: Histogram = .{};
    for (1..1001) |i| h.add(i * 1000);
    const p50 = h.quantile(0.5);
    try testing.expect(p50 >= 500_000 and p50 <= 500_000 * 120 / 100);
    const p99 = h.quantile(0.99);
    try testing.expect(p99 >= 990_000 and p99 <= 990_000 * 120 / 100);
    try testing.expectEqual(@as(u64, 500_500), h.meanNs());
    var empty: Histogram = .{};
    try testing.expectEqual(@as(u64, 0), empty.quantile(0.5));
}

test "bucket edges are increasing" {
    var previous: u64 = 0;
    for (0..Histogram.bucket_count - 8) |b| {
        const edge = Histogram.upperEdge(b);
        try testing.expect(edge >= previous);
        previous = edge;
    }
    for ([_]u64{ 2, 3, 5, 100, 1 << 40 }) |ns| try testing.expect(Histogram.upperEdge(Histogram.bucketOf(ns)) >= ns);
}

test "stats serialise as JSON" {
    var snapshot: Snapshot = .{
        .counters = .{},
        .epoch = 1,
        .threads = 2,
        .running = true,
        .ready = 3,
        .ready_capacity = 8,
        .in_flight = 1,
        .plan_len = 10,
        .elapsed_ns = 1_500_000_000,
    };
    snapshot.counters.by_cause.set(.corrupt, 3);
    snapshot.counters.stages.getPtr(.decode).add(2_000_000);
    snapshot.counters.skipped.set(.link_loop, 2);
    snapshot.seed = 7;
    const waiting = "item 4, 'a\"b.jpg'";
    @memcpy(snapshot.waiting_for_buffer[0..waiting.len], waiting);
    snapshot.waiting_for_len = waiting.len;
    var buffer: [4096]u8 = undefined;
    var w: std.Io.Writer = .fixed(&buffer);
    try writeJson(&w, &snapshot);
    const parsed = try std.json.parseFromSlice(std.json.Value, testing.allocator, w.buffered(), .{});
    defer parsed.deinit();
    try testing.expectEqual(@as(i64, 3), parsed.value.object.get("errors").?.object.get("corrupt").?.integer);
    try testing.expectEqual(@as(i64, 1), parsed.value.object.get("stages").?.object.get("decode").?.object.get("count").?.integer);
    try testing.expectEqual(@as(i64, 2), parsed.value.object.get("skipped").?.object.get("link_loop").?.integer);
    try testing.expectEqual(@as(i64, 7), parsed.value.object.get("seed").?.integer);
    try testing.expectEqualStrings(waiting, parsed.value.object.get("waiting_for").?.string);
}
