//! EXIF orientation (`exif_transpose`): the eight orientations of the TIFF
//! tag, applied as Pillow's `ImageOps.exif_transpose` does.
const std = @import("std");
const Allocator = std.mem.Allocator;
const buffers = @import("../buffers.zig");

/// Whether orientation `o` swaps width and height (5..8 are transposes).
pub fn swapsAxes(o: u8) bool {
    return o >= 5 and o <= 8;
}

/// Returns the oriented copy of an interleaved image, or null for
/// orientation 1 (or an invalid tag). `bytes_per_pixel` covers every
/// channel and sample width. Caller owns the result.
pub fn apply(
    gpa: Allocator,
    pixels: []const u8,
    width: u32,
    height: u32,
    bytes_per_pixel: usize,
    orientation: u8,
) Allocator.Error!?[]align(16) u8 {
    if (orientation < 2 or orientation > 8) return null;
    const out = try buffers.alloc(gpa, pixels.len);
    const out_width = if (swapsAxes(orientation)) height else width;
    const out_height = if (swapsAxes(orientation)) width else height;
    const w = width;
    const h = height;
    for (0..out_height) |y| {
        for (0..out_width) |x| {
            const xs: u32 = @intCast(x);
            const ys: u32 = @intCast(y);
            const source: [2]u32 = switch (orientation) {
                2 => .{ w - 1 - xs, ys }, // mirror horizontally
                3 => .{ w - 1 - xs, h - 1 - ys }, // rotate 180
                4 => .{ xs, h - 1 - ys }, // mirror vertically
                5 => .{ ys, xs }, // transpose
                6 => .{ ys, h - 1 - xs }, // rotate 90 clockwise
                7 => .{ w - 1 - ys, h - 1 - xs }, // transverse
                8 => .{ w - 1 - ys, xs }, // rotate 90 counter-clockwise
                else => unreachable,
            };
            const from = (@as(usize, source[1]) * w + source[0]) * bytes_per_pixel;
            const to = (y * out_width + x) * bytes_per_pixel;
            @memcpy(out[to..][0..bytes_per_pixel], pixels[from..][0..bytes_per_pixel]);
        }
    }
    return out;
}

test "the eight orientations of a 3x2 image" {
    // a b c
    // d e f
    const src = "abcdef";
    const expected = [_][]const u8{ "cbafed", "fedcba", "defabc", "adbecf", "daebfc", "fcebda", "cfbead" };
    for (expected, 2..) |want, o| {
        const got = (try apply(std.testing.allocator, src, 3, 2, 1, @intCast(o))).?;
        defer buffers.free(std.testing.allocator, got);
        try std.testing.expectEqualStrings(want, got);
    }
    try std.testing.expect(try apply(std.testing.allocator, src, 3, 2, 1, 1) == null);
    try std.testing.expect(try apply(std.testing.allocator, src, 3, 2, 1, 9) == null);
}
