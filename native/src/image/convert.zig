//! Channel and depth conversions of compatibility.md §5.4: `image_to_rgb8` (alpha
//! composited on grey 128 with the reference's truncation), 16 -> 8 bit
//! (value / 257, rounded), and the 8-bit forms JPEG encoding needs.
const std = @import("std");
const Allocator = std.mem.Allocator;
const buffers = @import("../buffers.zig");

/// An interleaved image. 16-bit samples are little-endian u16.
pub const View = struct {
    pixels: []const u8,
    width: u32,
    height: u32,
    channels: u8,
    bit_depth: u8,

    pub fn sampleCount(self: View) usize {
        return @as(usize, self.width) * self.height * self.channels;
    }
};

/// 16 -> 8 bit as the reference does: round(v / 257).
pub fn to8(v: u16) u8 {
    return @intCast((@as(u32, v) * 2 + 257) / 514);
}

/// The reference's compositing of colour `c` with alpha `a` on opaque grey
/// 128, computed in f32 and truncated (compatibility.md §5.4):
/// trunc(255 * (c/255 * a/255 + 128/255 * (1 - a/255))).
fn compositeExact(c: u8, a: u8) u8 {
    const cf: f32 = @floatFromInt(c);
    const af: f32 = @floatFromInt(a);
    const alpha = af / 255.0;
    const value = 255.0 * (cf / 255.0 * alpha + 128.0 / 255.0 * (1.0 - alpha));
    return @intFromFloat(@trunc(@min(@max(value, 0.0), 255.0)));
}

/// compositeExact for every (alpha, colour) pair: 64 KiB, built at compile
/// time so the hot loop is one load per sample.
const composite_table: [256][256]u8 = blk: {
    @setEvalBranchQuota(2_000_000);
    var table: [256][256]u8 = undefined;
    for (0..256) |a| {
        for (0..256) |c| table[a][c] = compositeExact(@intCast(c), @intCast(a));
    }
    break :blk table;
};

pub fn composite(c: u8, a: u8) u8 {
    return composite_table[a][c];
}

/// Converts any image to 8-bit RGB (`image_to_rgb8`). Gray is replicated;
/// alpha (LA, RGBA, 8 or 16 bit) is composited on grey 128; 16-bit is
/// reduced first. Caller owns the result (width * height * 3 bytes).
pub fn toRgb8(gpa: Allocator, src: View) Allocator.Error![]align(16) u8 {
    const n = @as(usize, src.width) * src.height;
    const out = try buffers.alloc(gpa, n * 3);
    for (0..n) |i| {
        const px = readPixel8(src, i);
        const rgb: [3]u8 = switch (src.channels) {
            1 => .{ px[0], px[0], px[0] },
            2 => blk: {
                const v = composite(px[0], px[1]);
                break :blk .{ v, v, v };
            },
            3 => .{ px[0], px[1], px[2] },
            4 => .{ composite(px[0], px[3]), composite(px[1], px[3]), composite(px[2], px[3]) },
            else => unreachable,
        };
        out[i * 3 ..][0..3].* = rgb;
    }
    return out;
}

/// Converts to what a JPEG encoder takes: 8-bit L (from L or LA) or RGB (from
/// RGB or RGBA), alpha composited on grey 128, 16-bit reduced. Returns null
/// when `src` already is 8-bit L or RGB. Caller owns the result.
pub fn toJpegInput(gpa: Allocator, src: View) Allocator.Error!?struct { pixels: []align(16) u8, channels: u8 } {
    if (src.bit_depth == 8 and (src.channels == 1 or src.channels == 3)) return null;
    if (src.channels >= 3) return .{ .pixels = try toRgb8(gpa, src), .channels = 3 };
    const n = @as(usize, src.width) * src.height;
    const out = try buffers.alloc(gpa, n);
    for (0..n) |i| {
        const px = readPixel8(src, i);
        out[i] = if (src.channels == 2) composite(px[0], px[1]) else px[0];
    }
    return .{ .pixels = out, .channels = 1 };
}

/// Pixel `i` of `src` as 8-bit samples (16-bit reduced with `to8`).
fn readPixel8(src: View, i: usize) [4]u8 {
    var px: [4]u8 = .{ 0, 0, 0, 0 };
    const c = src.channels;
    if (src.bit_depth == 8) {
        for (0..c) |k| px[k] = src.pixels[i * c + k];
    } else {
        for (0..c) |k| px[k] = to8(std.mem.readInt(u16, src.pixels[(i * c + k) * 2 ..][0..2], .little));
    }
    return px;
}

const testing = std.testing;

test "compositing matches the reference's verified pixels" {
    const cases = [_][5]u8{
        .{ 200, 100, 50, 128, 0 }, // -> 164, 113, 88
        .{ 10, 20, 30, 0, 0 }, //     -> 128, 128, 128
        .{ 255, 255, 255, 1, 0 }, //  -> 128, 128, 128
        .{ 255, 100, 50, 255, 0 }, // -> 255, 100, 50
    };
    const expected = [_][3]u8{ .{ 164, 113, 88 }, .{ 128, 128, 128 }, .{ 128, 128, 128 }, .{ 255, 100, 50 } };
    for (cases, expected) |c, e| {
        const src: View = .{ .pixels = c[0..4], .width = 1, .height = 1, .channels = 4, .bit_depth = 8 };
        const out = try toRgb8(testing.allocator, src);
        defer buffers.free(testing.allocator, out);
        try testing.expectEqualSlices(u8, &e, out);
    }
}

test "16 to 8 bit rounds as the reference" {
    try testing.expectEqual(@as(u8, 18), to8(0x1234));
    try testing.expectEqual(@as(u8, 86), to8(0x5678));
    try testing.expectEqual(@as(u8, 154), to8(0x9ABC));
    try testing.expectEqual(@as(u8, 199), to8(0xC800));
    try testing.expectEqual(@as(u8, 255), to8(0xFFFF));
    try testing.expectEqual(@as(u8, 0), to8(128));
    try testing.expectEqual(@as(u8, 1), to8(129));
}

test "gray and LA become RGB; JPEG input keeps gray as gray" {
    const la = [_]u8{ 200, 128, 50, 255 };
    const src: View = .{ .pixels = &la, .width = 2, .height = 1, .channels = 2, .bit_depth = 8 };
    const rgb = try toRgb8(testing.allocator, src);
    defer buffers.free(testing.allocator, rgb);
    try testing.expectEqualSlices(u8, &.{ 164, 164, 164, 50, 50, 50 }, rgb);
    const jpeg_input = (try toJpegInput(testing.allocator, src)).?;
    defer buffers.free(testing.allocator, jpeg_input.pixels);
    try testing.expectEqual(@as(u8, 1), jpeg_input.channels);
    try testing.expectEqualSlices(u8, &.{ 164, 50 }, jpeg_input.pixels);
    const rgb8 = [_]u8{ 1, 2, 3 };
    try testing.expect(try toJpegInput(testing.allocator, .{ .pixels = &rgb8, .width = 1, .height = 1, .channels = 3, .bit_depth = 8 }) == null);
}
