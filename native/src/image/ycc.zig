//! YCbCr -> RGB with libjpeg's fixed-point formula (jdcolor.c: 16 fraction
//! bits, ONE_HALF rounding, arithmetic shifts), so planes resampled at the
//! output size convert like libjpeg converts at full size.
const std = @import("std");

const scale_bits = 16;
const one_half: i32 = 1 << (scale_bits - 1);
/// FIX(x) = round(x * 2^16) for libjpeg's constants.
const fix_1_40200: i32 = 91881;
const fix_1_77200: i32 = 116130;
const fix_0_71414: i32 = 46802;
const fix_0_34414: i32 = 22554;

const lanes = 16;
const V = @Vector(lanes, i32);

inline fn convert(y: V, cb: V, cr: V) [3]@Vector(lanes, u8) {
    const x_cb = cb - @as(V, @splat(128));
    const x_cr = cr - @as(V, @splat(128));
    const half: V = @splat(one_half);
    const r = y + ((@as(V, @splat(fix_1_40200)) * x_cr + half) >> @splat(scale_bits));
    const b = y + ((@as(V, @splat(fix_1_77200)) * x_cb + half) >> @splat(scale_bits));
    const g = y + ((@as(V, @splat(-fix_0_34414)) * x_cb + half - @as(V, @splat(fix_0_71414)) * x_cr) >> @splat(scale_bits));
    return .{ clamp8(r), clamp8(g), clamp8(b) };
}

inline fn clamp8(v: V) @Vector(lanes, u8) {
    return @intCast(@min(@max(v, @as(V, @splat(0))), @as(V, @splat(255))));
}

/// Interleaving masks, per 16 output bytes (byte p is channel p % 3 of
/// pixel p / 3) and per channel: the pixel, or a zero (`~0`) where another
/// channel goes. Three one-source shuffles ORed compile to pshufb; shuffles
/// of two sources came out as byte inserts.
const interleave: [3][3]@Vector(16, i32) = blk: {
    std.debug.assert(lanes == 16);
    var masks: [3][3]@Vector(16, i32) = undefined;
    for (&masks, 0..) |*chunk_masks, chunk| {
        for (chunk_masks, 0..) |*mask, channel| {
            var m: [16]i32 = undefined;
            for (0..16) |q| {
                const p = chunk * 16 + q;
                m[q] = if (p % 3 == channel) @intCast(p / 3) else ~@as(i32, 0);
            }
            mask.* = m;
        }
    }
    break :blk masks;
};

/// Writes interleaved RGB (3 bytes per pixel) from equally sized Y, Cb, Cr
/// planes. `rgb.len` must be 3 * y.len.
pub fn toRgb(y: []const u8, cb: []const u8, cr: []const u8, rgb: []u8) void {
    std.debug.assert(cb.len == y.len and cr.len == y.len and rgb.len == 3 * y.len);
    var i: usize = 0;
    while (i + lanes <= y.len) : (i += lanes) {
        const yv: @Vector(lanes, u8) = y[i..][0..lanes].*;
        const bv: @Vector(lanes, u8) = cb[i..][0..lanes].*;
        const rv: @Vector(lanes, u8) = cr[i..][0..lanes].*;
        const out = convert(@intCast(yv), @intCast(bv), @intCast(rv));
        const dst = rgb[i * 3 ..][0 .. lanes * 3];
        const zero: @Vector(16, u8) = @splat(0);
        inline for (interleave, 0..) |m, chunk| {
            dst[chunk * 16 ..][0..16].* = @shuffle(u8, out[0], zero, m[0]) |
                @shuffle(u8, out[1], zero, m[1]) | @shuffle(u8, out[2], zero, m[2]);
        }
    }
    while (i < y.len) : (i += 1) {
        const out = convert(@splat(y[i]), @splat(cb[i]), @splat(cr[i]));
        rgb[i * 3 ..][0..3].* = .{ out[0][0], out[1][0], out[2][0] };
    }
}

test "matches libjpeg's conversion on reference values" {
    // Values computed with libjpeg's C formulas (jdcolor.c) by hand.
    const y = [_]u8{ 0, 255, 128, 76, 29, 150, 200, 10, 90, 33, 44, 55, 66, 77, 88, 99, 111 };
    const cb = [_]u8{ 128, 128, 128, 85, 255, 44, 0, 255, 128, 1, 2, 3, 4, 5, 6, 7, 200 };
    const cr = [_]u8{ 128, 128, 128, 255, 107, 21, 255, 0, 128, 250, 249, 248, 247, 246, 245, 244, 30 };
    var rgb: [y.len * 3]u8 = undefined;
    toRgb(&y, &cb, &cr, &rgb);
    for (0..y.len) |i| {
        const yi: i32 = y[i];
        const xb: i32 = @as(i32, cb[i]) - 128;
        const xr: i32 = @as(i32, cr[i]) - 128;
        const r = std.math.clamp(yi + ((fix_1_40200 * xr + one_half) >> scale_bits), 0, 255);
        const g = std.math.clamp(yi + ((-fix_0_34414 * xb + one_half - fix_0_71414 * xr) >> scale_bits), 0, 255);
        const b = std.math.clamp(yi + ((fix_1_77200 * xb + one_half) >> scale_bits), 0, 255);
        try std.testing.expectEqual(@as(u8, @intCast(r)), rgb[i * 3]);
        try std.testing.expectEqual(@as(u8, @intCast(g)), rgb[i * 3 + 1]);
        try std.testing.expectEqual(@as(u8, @intCast(b)), rgb[i * 3 + 2]);
    }
    // Neutral grey stays grey; pure red in YCbCr comes out red.
    try std.testing.expectEqualSlices(u8, &.{ 128, 128, 128 }, rgb[2 * 3 ..][0..3]);
    try std.testing.expect(rgb[3 * 3] > 200 and rgb[3 * 3 + 1] < 30);
}

test "equals libjpeg's formula for every Y, Cb, Cr" {
    const gpa = std.testing.allocator;
    const n = 1 << 16;
    const y = try gpa.alloc(u8, n);
    defer gpa.free(y);
    const cb = try gpa.alloc(u8, n);
    defer gpa.free(cb);
    const cr = try gpa.alloc(u8, n);
    defer gpa.free(cr);
    const rgb = try gpa.alloc(u8, 3 * n);
    defer gpa.free(rgb);
    for (0..n) |i| {
        cb[i] = @truncate(i);
        cr[i] = @truncate(i >> 8);
    }
    for (0..256) |luma| {
        @memset(y, @intCast(luma));
        toRgb(y, cb, cr, rgb);
        for (0..n) |i| {
            const xb: i32 = @as(i32, cb[i]) - 128;
            const xr: i32 = @as(i32, cr[i]) - 128;
            const yi: i32 = @intCast(luma);
            const expected = [3]i32{
                std.math.clamp(yi + ((fix_1_40200 * xr + one_half) >> scale_bits), 0, 255),
                std.math.clamp(yi + ((-fix_0_34414 * xb + one_half - fix_0_71414 * xr) >> scale_bits), 0, 255),
                std.math.clamp(yi + ((fix_1_77200 * xb + one_half) >> scale_bits), 0, 255),
            };
            for (expected, rgb[3 * i ..][0..3]) |e, got| {
                if (e != got) {
                    std.debug.print("Y {d} Cb {d} Cr {d}: {d} != {d}\n", .{ luma, cb[i], cr[i], got, e });
                    return error.TestExpectedEqual;
                }
            }
        }
    }
}
