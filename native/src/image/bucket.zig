//! Aspect-ratio buckets and the cover-resize + centre-crop geometry of the
//! reference (compatibility.md §5.1, §5.3), as pure functions. Pixel work lives in
//! resize.zig; this file only decides sizes and boxes.
const std = @import("std");
const Allocator = std.mem.Allocator;

pub const Size = struct { width: u32, height: u32 };

pub const Bucket = struct {
    /// The aspect ratio key formatted with three decimals, times 1000
    /// ("1.370" is 1370).
    key_milli: i64,
    size: Size,

    /// The key parsed back to a float, as the reference compares against it.
    pub fn key(self: Bucket) f64 {
        return @as(f64, @floatFromInt(self.key_milli)) / 1000.0;
    }
};

pub const Params = struct {
    default_image_size: u32,
    downsampling_ratio: u32,
    min_aspect_ratio: f64,
    max_aspect_ratio: f64,
};

/// The bucket table: one size per 3-decimal aspect-ratio key, sorted by key.
pub const Table = struct {
    buckets: []Bucket,

    /// Generates the table as the reference does (compatibility.md §5.1): sizes from two
    /// sweeps, keyed by `%.3f` of w/h, a later size replacing an earlier one
    /// with the same key. Asserts what config.zig validated (positive sizes,
    /// ratio <= size, 0 < min <= max <= bounded).
    pub fn init(gpa: Allocator, params: Params) Allocator.Error!Table {
        std.debug.assert(params.downsampling_ratio > 0 and params.downsampling_ratio <= params.default_image_size);
        std.debug.assert(params.min_aspect_ratio > 0 and params.min_aspect_ratio <= params.max_aspect_ratio);
        const ratio: u64 = params.downsampling_ratio;
        const patches: u64 = params.default_image_size / params.downsampling_ratio;
        const area: f64 = @floatFromInt(patches * patches);

        var map: std.AutoArrayHashMapUnmanaged(i64, Size) = .empty;
        defer map.deinit(gpa);
        // Sweep widths, then heights (in patches).
        const w_lo = @ceil(@sqrt(area * params.min_aspect_ratio));
        const w_hi = @floor(@sqrt(area * params.max_aspect_ratio));
        var pw = w_lo;
        while (pw <= w_hi) : (pw += 1) {
            const ph = @floor(area / pw);
            try put(gpa, &map, pw, ph, ratio);
        }
        const h_lo = @ceil(@sqrt(area / params.max_aspect_ratio));
        const h_hi = @floor(@sqrt(area / params.min_aspect_ratio));
        var ph = h_lo;
        while (ph <= h_hi) : (ph += 1) {
            const pw2 = @floor(area / ph);
            try put(gpa, &map, pw2, ph, ratio);
        }

        const buckets = try gpa.alloc(Bucket, map.count());
        for (map.keys(), map.values(), buckets) |k, size, *b| b.* = .{ .key_milli = k, .size = size };
        std.sort.pdq(Bucket, buckets, {}, struct {
            fn lessThan(_: void, a: Bucket, b: Bucket) bool {
                return a.key_milli < b.key_milli;
            }
        }.lessThan);
        return .{ .buckets = buckets };
    }

    fn put(gpa: Allocator, map: *std.AutoArrayHashMapUnmanaged(i64, Size), pw: f64, ph: f64, ratio: u64) Allocator.Error!void {
        if (pw < 1 or ph < 1) return; // A zero side is no bucket (never with validated params).
        const size: Size = .{
            .width = @intCast(@as(u64, @intFromFloat(pw)) * ratio),
            .height = @intCast(@as(u64, @intFromFloat(ph)) * ratio),
        };
        const k = keyMilli(@as(f64, @floatFromInt(size.width)) / @as(f64, @floatFromInt(size.height)));
        try map.put(gpa, k, size);
    }

    pub fn deinit(self: *Table, gpa: Allocator) void {
        gpa.free(self.buckets);
        self.* = undefined;
    }

    /// The bucket of a width x height image (compatibility.md §5.1 "Choice"): binary
    /// search of w/h among the parsed keys; below the first or above the last
    /// clamps; between two keys the nearer wins and a tie goes to the higher.
    pub fn choose(self: *const Table, width: u32, height: u32) Bucket {
        std.debug.assert(self.buckets.len > 0 and width > 0 and height > 0);
        const t = @as(f64, @floatFromInt(width)) / @as(f64, @floatFromInt(height));
        var lo: usize = 0;
        var hi: usize = self.buckets.len;
        while (lo < hi) {
            const mid = lo + (hi - lo) / 2;
            const k = self.buckets[mid].key();
            if (k == t) return self.buckets[mid];
            if (k < t) lo = mid + 1 else hi = mid;
        }
        // `lo` is the insertion point: keys[lo - 1] < t < keys[lo].
        if (lo == 0) return self.buckets[0];
        if (lo == self.buckets.len) return self.buckets[self.buckets.len - 1];
        const below = self.buckets[lo - 1];
        const above = self.buckets[lo];
        return if (t - below.key() < above.key() - t) below else above;
    }

    /// The bucket with this key, for masks and additional images aligned to
    /// their sample's main image.
    pub fn byKey(self: *const Table, key_milli: i64) ?Bucket {
        for (self.buckets) |b| if (b.key_milli == key_milli) return b;
        return null;
    }
};

/// Whether `params` give at least one bucket: with tiny sizes and a narrow
/// aspect range both sweeps of compatibility.md §5.1 can be empty (the reference then
/// fails on every image; config.zig refuses such a config instead).
pub fn hasBucket(params: Params) bool {
    if (params.downsampling_ratio == 0 or params.downsampling_ratio > params.default_image_size) return false;
    if (!(params.min_aspect_ratio > 0 and params.min_aspect_ratio <= params.max_aspect_ratio)) return false;
    const patches: u64 = params.default_image_size / params.downsampling_ratio;
    const area: f64 = @floatFromInt(patches * patches);
    var pw = @ceil(@sqrt(area * params.min_aspect_ratio));
    while (pw <= @floor(@sqrt(area * params.max_aspect_ratio))) : (pw += 1) {
        if (pw >= 1 and @floor(area / pw) >= 1) return true;
    }
    var ph = @ceil(@sqrt(area / params.max_aspect_ratio));
    while (ph <= @floor(@sqrt(area / params.min_aspect_ratio))) : (ph += 1) {
        if (ph >= 1 and @floor(area / ph) >= 1) return true;
    }
    return false;
}

/// `x` formatted as "%.3f" and read back as an integer count of thousandths:
/// the exact binary value of `x` rounded to the nearest thousandth, ties to
/// even, as C and Rust formatting do. Exact integer arithmetic, no
/// intermediate float rounding. Requires 0 < x < 2^53.
pub fn keyMilli(x: f64) i64 {
    std.debug.assert(x > 0 and x < 9.0e15);
    const bits: u64 = @bitCast(x);
    const exponent: i32 = @intCast((bits >> 52) & 0x7ff);
    const fraction = bits & ((@as(u64, 1) << 52) - 1);
    // x = mantissa * 2^power exactly.
    const mantissa: u128 = if (exponent == 0) fraction else fraction | (@as(u64, 1) << 52);
    const power: i32 = (if (exponent == 0) 1 else exponent) - 1075;
    const scaled: u128 = mantissa * 1000;
    if (power >= 0) return @intCast(scaled << @intCast(power));
    const shift: u32 = @intCast(-power);
    if (shift >= 120) return 0;
    const quotient = scaled >> @intCast(shift);
    const remainder = scaled - (quotient << @intCast(shift));
    const half = @as(u128, 1) << @intCast(shift - 1);
    const round_up = remainder > half or (remainder == half and quotient & 1 == 1);
    return @intCast(quotient + @intFromBool(round_up));
}

/// How one image is fitted into its bucket (compatibility.md §5.3).
pub const Fit = struct {
    /// The box of the source image (in source pixels, Pillow's box
    /// convention) that becomes the output; also the sample's crop record.
    box: [4]f64,
    /// The scale s of compatibility.md §5.3 (1.0 when passed through).
    scale: f64,
    out: Size,
    /// Source already has the bucket's size: no resampling at all.
    identity: bool,
};

/// Cover-resize then centre-crop, without the intermediate: the reference
/// resizes w x h to round(w*s) x round(h*s) and crops the centred box with
/// the bucket's aspect ratio; mapping that box back through the
/// intermediate's scale gives the source box to resample in one pass.
pub fn fit(width: u32, height: u32, bucket: Size) Fit {
    std.debug.assert(width > 0 and height > 0 and bucket.width > 0 and bucket.height > 0);
    const w: f64 = @floatFromInt(width);
    const h: f64 = @floatFromInt(height);
    const bw: f64 = @floatFromInt(bucket.width);
    const bh: f64 = @floatFromInt(bucket.height);
    if (width == bucket.width and height == bucket.height) {
        return .{ .box = .{ 0, 0, w, h }, .scale = 1.0, .out = bucket, .identity = true };
    }
    const s = @max(bw / w, bh / h);
    const nw = @max(1.0, @round(w * s));
    const nh = @max(1.0, @round(h * s));
    var cw: f64 = undefined;
    var ch: f64 = undefined;
    if (nw / nh > bw / bh) {
        cw = nh * bw / bh;
        ch = nh;
    } else {
        cw = nw;
        ch = nw * bh / bw;
    }
    const left = (nw - cw) / 2;
    const top = (nh - ch) / 2;
    const sx = w / nw;
    const sy = h / nh;
    return .{
        .box = .{ left * sx, top * sy, (left + cw) * sx, (top + ch) * sy },
        .scale = s,
        .out = bucket,
        .identity = false,
    };
}

const testing = std.testing;

fn expectTable(params: Params, expected: []const struct { i64, u32, u32 }) !void {
    var table = try Table.init(testing.allocator, params);
    defer table.deinit(testing.allocator);
    try testing.expectEqual(expected.len, table.buckets.len);
    for (expected, table.buckets) |e, b| {
        try testing.expectEqual(e[0], b.key_milli);
        try testing.expectEqual(e[1], b.size.width);
        try testing.expectEqual(e[2], b.size.height);
    }
}

test "the 1024/32 table of compatibility.md §5.1" {
    try expectTable(.{ .default_image_size = 1024, .downsampling_ratio = 32, .min_aspect_ratio = 0.5, .max_aspect_ratio = 2.0 }, &.{
        .{ 489, 704, 1440 },  .{ 523, 736, 1408 },   .{ 535, 736, 1376 },  .{ 571, 768, 1344 },
        .{ 585, 768, 1312 },  .{ 625, 800, 1280 },   .{ 667, 832, 1248 },  .{ 684, 832, 1216 },
        .{ 730, 864, 1184 },  .{ 778, 896, 1152 },   .{ 829, 928, 1120 },  .{ 882, 960, 1088 },
        .{ 939, 992, 1056 },  .{ 1000, 1024, 1024 }, .{ 1065, 1056, 992 }, .{ 1133, 1088, 960 },
        .{ 1207, 1120, 928 }, .{ 1286, 1152, 896 },  .{ 1370, 1184, 864 }, .{ 1462, 1216, 832 },
        .{ 1500, 1248, 832 }, .{ 1600, 1280, 800 },  .{ 1708, 1312, 768 }, .{ 1750, 1344, 768 },
        .{ 1870, 1376, 736 }, .{ 1913, 1408, 736 },  .{ 2045, 1440, 704 },
    });
}

test "the 512/16 table is the 1024/32 one halved" {
    var big = try Table.init(testing.allocator, .{ .default_image_size = 1024, .downsampling_ratio = 32, .min_aspect_ratio = 0.5, .max_aspect_ratio = 2.0 });
    defer big.deinit(testing.allocator);
    var small = try Table.init(testing.allocator, .{ .default_image_size = 512, .downsampling_ratio = 16, .min_aspect_ratio = 0.5, .max_aspect_ratio = 2.0 });
    defer small.deinit(testing.allocator);
    for (big.buckets, small.buckets) |b, s| {
        try testing.expectEqual(b.key_milli, s.key_milli);
        try testing.expectEqual(b.size.width, 2 * s.size.width);
        try testing.expectEqual(b.size.height, 2 * s.size.height);
    }
}

test "choice follows the reference's verified cases" {
    var table = try Table.init(testing.allocator, .{ .default_image_size = 1024, .downsampling_ratio = 32, .min_aspect_ratio = 0.5, .max_aspect_ratio = 2.0 });
    defer table.deinit(testing.allocator);
    try testing.expectEqual(@as(i64, 1600), table.choose(31, 20).key_milli); // tie 1.500 / 1.600 → higher
    try testing.expectEqual(@as(i64, 1870), table.choose(181, 100).key_milli);
    try testing.expectEqual(@as(i64, 1286), table.choose(130, 100).key_milli);
    try testing.expectEqual(@as(i64, 489), table.choose(1, 2000).key_milli);
    try testing.expectEqual(@as(i64, 2045), table.choose(2000, 1).key_milli);
    try testing.expectEqual(@as(i64, 1000), table.choose(1, 1).key_milli);
    try testing.expectEqual(@as(i64, 1370), table.choose(1000, 750).key_milli);
}

test "other verified configs" {
    var t3 = try Table.init(testing.allocator, .{ .default_image_size = 63, .downsampling_ratio = 16, .min_aspect_ratio = 0.5, .max_aspect_ratio = 2.0 });
    defer t3.deinit(testing.allocator);
    try testing.expect(t3.byKey(1000).?.size.width == 48);
    try testing.expect(t3.byKey(2000).?.size.width == 64 and t3.byKey(2000).?.size.height == 32);
    var t1 = try Table.init(testing.allocator, .{ .default_image_size = 64, .downsampling_ratio = 16, .min_aspect_ratio = 1.0, .max_aspect_ratio = 1.0 });
    defer t1.deinit(testing.allocator);
    try testing.expectEqual(@as(usize, 1), t1.buckets.len);
    try testing.expectEqual(Size{ .width = 64, .height = 64 }, t1.buckets[0].size);
}

test "a narrow aspect range on a one-patch table has no bucket" {
    try testing.expect(!hasBucket(.{ .default_image_size = 16, .downsampling_ratio = 16, .min_aspect_ratio = 0.5, .max_aspect_ratio = 0.6 }));
    try testing.expect(hasBucket(.{ .default_image_size = 16, .downsampling_ratio = 16, .min_aspect_ratio = 0.5, .max_aspect_ratio = 2 }));
}

test "keyMilli rounds the exact binary value half to even" {
    try testing.expectEqual(@as(i64, 1370), keyMilli(1184.0 / 864.0));
    try testing.expectEqual(@as(i64, 489), keyMilli(704.0 / 1440.0));
    try testing.expectEqual(@as(i64, 2045), keyMilli(1440.0 / 704.0));
    // 0.0625 = 62.5 thousandths exactly: ties go to even (62).
    try testing.expectEqual(@as(i64, 62), keyMilli(0.0625));
    try testing.expectEqual(@as(i64, 188), keyMilli(0.1875));
    // 1.0005 is stored slightly below .0005, so it rounds down.
    try testing.expectEqual(@as(i64, 1000), keyMilli(1.0005));
    try testing.expectEqual(@as(i64, 5), keyMilli(0.0045001));
}

test "fit reproduces the worked examples of compatibility.md §5.3" {
    const cases = [_]struct { w: u32, h: u32, bw: u32, bh: u32, scale: f64, left_i: f64, top_i: f64 }{
        .{ .w = 1000, .h = 750, .bw = 1184, .bh = 864, .scale = 1.184, .left_i = 0, .top_i = 12 },
        .{ .w = 640, .h = 480, .bw = 1184, .bh = 864, .scale = 1.85, .left_i = 0, .top_i = 12 },
        .{ .w = 3000, .h = 1000, .bw = 1440, .bh = 704, .scale = 0.704, .left_i = 336, .top_i = 0 },
        .{ .w = 1000, .h = 750, .bw = 592, .bh = 432, .scale = 0.592, .left_i = 0, .top_i = 6 },
        .{ .w = 3000, .h = 1000, .bw = 720, .bh = 352, .scale = 0.352, .left_i = 168, .top_i = 0 },
        .{ .w = 1, .h = 2000, .bw = 704, .bh = 1440, .scale = 704, .left_i = 0, .top_i = 703280 },
    };
    for (cases) |c| {
        const f = fit(c.w, c.h, .{ .width = c.bw, .height = c.bh });
        try testing.expectApproxEqRel(c.scale, f.scale, 1e-12);
        const nw = @round(@as(f64, @floatFromInt(c.w)) * f.scale);
        const nh = @round(@as(f64, @floatFromInt(c.h)) * f.scale);
        // Back to intermediate coordinates: the offsets compatibility.md §5.3 lists.
        try testing.expectApproxEqAbs(c.left_i, f.box[0] * nw / @as(f64, @floatFromInt(c.w)), 1e-6);
        try testing.expectApproxEqAbs(c.top_i, f.box[1] * nh / @as(f64, @floatFromInt(c.h)), 1e-6);
        try testing.expect(f.box[2] <= @as(f64, @floatFromInt(c.w)) + 1e-9 and f.box[3] <= @as(f64, @floatFromInt(c.h)) + 1e-9);
    }
    const same = fit(64, 32, .{ .width = 64, .height = 32 });
    try testing.expect(same.identity and same.scale == 1.0);
}
