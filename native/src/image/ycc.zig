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
const H = @Vector(lanes, i16);

/// libjpeg's formulas, in the 16-bit form of libjpeg-turbo's SIMD code
/// (jdcolext-avx2.asm), which gives the same integers:
///   (FIX(1.402) x + ONE_HALF) >> 16 = x + ((mulhi(2x, FIX(0.402)) + 1) >> 1)
/// (FIX(1.402) = 2^16 + FIX(0.402); mulhi(2x, c) = floor(c x / 2^15), and
/// floor((floor(t) + 1) / 2) = floor((t + 1) / 2)); B likewise with
/// 2x + FIX(-0.228); G through 32 bits as x_cr's multiple of 2^16 is taken
/// out. The exhaustive test below checks every (Y, Cb, Cr).
inline fn convert(y: @Vector(lanes, u8), cb: @Vector(lanes, u8), cr: @Vector(lanes, u8)) [3]@Vector(lanes, u8) {
    const y16: H = y;
    const x_cb = @as(H, cb) - @as(H, @splat(128));
    const x_cr = @as(H, cr) - @as(H, @splat(128));
    const one: H = @splat(1);
    const r_frac = (mulhi(x_cr + x_cr, fix_1_40200 - (1 << 16)) + one) >> @splat(1);
    const b_frac = (mulhi(x_cb + x_cb, fix_1_77200 - (2 << 16)) + one) >> @splat(1);
    const g_wide = @as(V, x_cb) * @as(V, @splat(-fix_0_34414)) + @as(V, x_cr) * @as(V, @splat((1 << 16) - fix_0_71414)) + @as(V, @splat(one_half));
    const g_frac: H = @intCast(g_wide >> @splat(scale_bits));
    return .{ clamp8(y16 + x_cr + r_frac), clamp8(y16 - x_cr + g_frac), clamp8(y16 + x_cb + x_cb + b_frac) };
}

/// The high half of each 16 x 16-bit product (pmulhw).
inline fn mulhi(a: H, comptime c: i32) H {
    const product = @as(V, a) * @as(V, @splat(c));
    return @intCast(product >> @splat(16));
}

inline fn clamp8(v: H) @Vector(lanes, u8) {
    return @intCast(@min(@max(v, @as(H, @splat(0))), @as(H, @splat(255))));
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
        const out = convert(yv, bv, rv);
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
