//! WebP decode through the vendored libwebp 1.2.4 (Debian 1.2.4-0.2+deb12u1, with
//! the CVE-2023-4863 fix), driven by the C shim webp_shim.c.
//!
//! Lossy, lossless and alpha files decode to the same pixels as Pillow (which links
//! libwebp too). Animated files give their first frame, composited on the canvas by
//! libwebp's WebPAnimDecoder (the demuxer is vendored), as Pillow's frame 0.
//!
//! Thread-safety: no shared state; any number of threads may call concurrently.
//! libwebp allocates its working memory with malloc and frees it before each call
//! returns; still images decode straight into the caller's buffer.
const std = @import("std");

pub const Error = error{ NotWebp, Corrupt, Unsupported, TooLarge, OutOfMemory };

pub const Info = struct {
    /// For an animation, the canvas size.
    width: u32,
    height: u32,
    has_alpha: bool,
    has_animation: bool,
};

/// Reads the size and flags from the file's headers; allocates nothing.
/// `error.NotWebp` unless the bytes start with a RIFF "WEBP" container (Pillow's test).
/// WebP caps each side at 16383, so `TooLarge` is not returned today; callers still
/// check width * height against their own limit.
pub fn readInfo(bytes: []const u8) Error!Info {
    var info: CInfo = undefined;
    try check(dg_webp_info(bytes.ptr, bytes.len, &info));
    return .{
        .width = info.width,
        .height = info.height,
        .has_alpha = info.has_alpha != 0,
        .has_animation = info.has_animation != 0,
    };
}

/// Decodes `bytes` into `out` as RGB (channels 3) or non-premultiplied RGBA
/// (channels 4), rows tightly packed; alpha is dropped for RGB. An animation yields
/// its first frame. `out.len` must be width * height * channels from `readInfo`: a
/// mismatch is a caller bug and panics. On error `out` is unspecified.
pub fn decode(bytes: []const u8, channels: u8, out: []u8) Error!void {
    std.debug.assert(channels == 3 or channels == 4);
    try check(dg_webp_decode(bytes.ptr, bytes.len, channels, out.ptr, out.len));
}

// ---- The C shim's interface (webp_shim.c; keep both sides in step). ----

const Status = enum(c_int) {
    ok = 0,
    not_webp = 1,
    corrupt = 2,
    unsupported = 3,
    no_memory = 4,
    bad_argument = 5,
    _,
};

const CInfo = extern struct {
    width: u32,
    height: u32,
    has_alpha: u32,
    has_animation: u32,
};

extern fn dg_webp_info(data: [*]const u8, len: usize, info: *CInfo) c_int;
extern fn dg_webp_decode(
    data: [*]const u8,
    len: usize,
    channels: u32,
    out: [*]u8,
    out_len: usize,
) c_int;
extern fn dg_webp_info_size() usize;

fn check(status_code: c_int) Error!void {
    return switch (@as(Status, @fromBackingInt(@intCast(status_code)))) {
        .ok => {},
        .not_webp => error.NotWebp,
        .corrupt => error.Corrupt,
        .unsupported => error.Unsupported,
        .no_memory => error.OutOfMemory,
        .bad_argument => std.debug.panic("webp: caller bug: out.len does not match the image", .{}),
        _ => std.debug.panic("webp: unknown shim status {d}", .{status_code}),
    };
}

// ---- Tests: tiny files made by Pillow 13 (libwebp 1.6.0), embedded. ----

const testing = std.testing;

test "shim struct layout matches" {
    try testing.expectEqual(@sizeOf(CInfo), dg_webp_info_size());
}

/// 4x2 lossless RGB: row 0 red, green, blue, white; row 1 black, (10,20,30),
/// (200,100,50), (1,2,3). `Image.new("RGB",(4,2)).putdata(...).save(lossless=True)`.
const lossless_rgb = [_]u8{
    0x52, 0x49, 0x46, 0x46, 0x48, 0x00, 0x00, 0x00, 0x57, 0x45, 0x42, 0x50, 0x56, 0x50, 0x38, 0x4c,
    0x3c, 0x00, 0x00, 0x00, 0x2f, 0x03, 0x40, 0x00, 0x00, 0x3f, 0xa0, 0x90, 0x6d, 0x04, 0xe8, 0x1e,
    0x83, 0x23, 0x3b, 0x7f, 0x99, 0x69, 0x90, 0x49, 0xdb, 0x84, 0x7d, 0xf3, 0xef, 0x67, 0xd6, 0xa6,
    0x26, 0x00, 0x01, 0xc6, 0x8a, 0xe0, 0xd3, 0x3f, 0xa7, 0xf9, 0x0f, 0x41, 0x39, 0x90, 0x0f, 0xb8,
    0x26, 0xd6, 0xf9, 0x0a, 0x42, 0x01, 0x34, 0x06, 0x13, 0x49, 0x14, 0xdd, 0x22, 0xfa, 0x1f, 0x78,
};
const lossless_rgb_pixels = [_]u8{
    255, 0, 0, 0,  255, 0,  0,   0,   255, 255, 255, 255,
    0,   0, 0, 10, 20,  30, 200, 100, 50,  1,   2,   3,
};

test "lossless decodes exactly, as RGB and RGBA" {
    const info = try readInfo(&lossless_rgb);
    try testing.expectEqual(Info{ .width = 4, .height = 2, .has_alpha = false, .has_animation = false }, info);
    var rgb: [4 * 2 * 3]u8 = undefined;
    try decode(&lossless_rgb, 3, &rgb);
    try testing.expectEqualSlices(u8, &lossless_rgb_pixels, &rgb);
    var rgba: [4 * 2 * 4]u8 = undefined;
    try decode(&lossless_rgb, 4, &rgba);
    for (0..8) |i| {
        try testing.expectEqualSlices(u8, lossless_rgb_pixels[i * 3 ..][0..3], rgba[i * 4 ..][0..3]);
        try testing.expectEqual(@as(u8, 255), rgba[i * 4 + 3]);
    }
}

/// 4x4 lossless RGBA, pixel i = (16 * i, 255 - 16 * i, 7 * i, 17 * i).
const lossless_rgba = [_]u8{
    0x52, 0x49, 0x46, 0x46, 0x36, 0x00, 0x00, 0x00, 0x57, 0x45, 0x42, 0x50, 0x56, 0x50, 0x38, 0x4c,
    0x29, 0x00, 0x00, 0x00, 0x2f, 0x03, 0xc0, 0x00, 0x10, 0x7f, 0x20, 0x16, 0x4c, 0xfc, 0x6d, 0x67,
    0xd0, 0x99, 0xc2, 0x40, 0xcc, 0xc1, 0x44, 0x64, 0xf0, 0x03, 0x41, 0x00, 0xc4, 0x82, 0x16, 0x2d,
    0x5a, 0xb4, 0x68, 0xd1, 0xa2, 0x45, 0x47, 0x44, 0xff, 0x03, 0x94, 0xd3, 0x1d, 0x00,
};

test "lossless alpha keeps straight (non-premultiplied) alpha" {
    const info = try readInfo(&lossless_rgba);
    try testing.expect(info.has_alpha);
    try testing.expect(!info.has_animation);
    var rgba: [4 * 4 * 4]u8 = undefined;
    try decode(&lossless_rgba, 4, &rgba);
    for (0..16) |i| {
        const expected = [4]u8{ @intCast(16 * i), @intCast(255 - 16 * i), @intCast(7 * i), @intCast(17 * i) };
        try testing.expectEqualSlices(u8, &expected, rgba[i * 4 ..][0..4]);
    }
}

/// 16x16 lossy (quality 90) of a flat (40, 120, 200).
const lossy_flat = [_]u8{
    0x52, 0x49, 0x46, 0x46, 0x3e, 0x00, 0x00, 0x00, 0x57, 0x45, 0x42, 0x50, 0x56, 0x50, 0x38, 0x20,
    0x32, 0x00, 0x00, 0x00, 0xd0, 0x01, 0x00, 0x9d, 0x01, 0x2a, 0x10, 0x00, 0x10, 0x00, 0x00, 0xc0,
    0x12, 0x25, 0xa0, 0x02, 0x74, 0xba, 0x01, 0xf8, 0x00, 0x03, 0xb0, 0x00, 0xfe, 0xf0, 0x9b, 0x43,
    0xff, 0x8c, 0xa9, 0xf1, 0x21, 0x7e, 0x24, 0x2f, 0xfc, 0x65, 0x4f, 0xfd, 0xf7, 0xc3, 0xde, 0xf8,
    0x7b, 0xdf, 0x0f, 0xf2, 0x50, 0x00,
};

test "lossy decodes close to the source colour" {
    const info = try readInfo(&lossy_flat);
    try testing.expectEqual(Info{ .width = 16, .height = 16, .has_alpha = false, .has_animation = false }, info);
    var rgb: [16 * 16 * 3]u8 = undefined;
    try decode(&lossy_flat, 3, &rgb);
    const source = [3]u8{ 40, 120, 200 };
    for (0..256) |i| for (0..3) |c| {
        // YUV 4:2:0 quantisation of a flat colour: within a few levels.
        try testing.expect(@abs(@as(i32, rgb[i * 3 + c]) - source[c]) <= 4);
    };
}

/// A 2-frame 4x4 animation (lossless): frame 0 solid (255, 0, 0, 255), frame 1
/// solid (0, 0, 255, 128).
const animated = [_]u8{
    0x52, 0x49, 0x46, 0x46, 0x84, 0x00, 0x00, 0x00, 0x57, 0x45, 0x42, 0x50, 0x56, 0x50, 0x38, 0x58,
    0x0a, 0x00, 0x00, 0x00, 0x12, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x00, 0x41, 0x4e,
    0x49, 0x4d, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x41, 0x4e, 0x4d, 0x46,
    0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x00,
    0x64, 0x00, 0x00, 0x02, 0x56, 0x50, 0x38, 0x4c, 0x0f, 0x00, 0x00, 0x00, 0x2f, 0x03, 0xc0, 0x00,
    0x00, 0x07, 0x10, 0xfd, 0x8f, 0xfe, 0x07, 0x22, 0xa2, 0xff, 0x01, 0x00, 0x41, 0x4e, 0x4d, 0x46,
    0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x00,
    0x64, 0x00, 0x00, 0x02, 0x56, 0x50, 0x38, 0x4c, 0x0f, 0x00, 0x00, 0x00, 0x2f, 0x03, 0xc0, 0x00,
    0x10, 0x07, 0x10, 0xd1, 0xff, 0x02, 0x06, 0x22, 0xa2, 0xff, 0x01, 0x00,
};

test "animation gives its first frame" {
    const info = try readInfo(&animated);
    try testing.expect(info.has_animation);
    try testing.expectEqual(@as(u32, 4), info.width);
    var rgba: [4 * 4 * 4]u8 = undefined;
    try decode(&animated, 4, &rgba);
    for (0..16) |i| try testing.expectEqualSlices(u8, &.{ 255, 0, 0, 255 }, rgba[i * 4 ..][0..4]);
    var rgb: [4 * 4 * 3]u8 = undefined;
    try decode(&animated, 3, &rgb);
    for (0..16) |i| try testing.expectEqualSlices(u8, &.{ 255, 0, 0 }, rgb[i * 3 ..][0..3]);
}

test "bad input fails cleanly" {
    try testing.expectError(error.NotWebp, readInfo(""));
    try testing.expectError(error.NotWebp, readInfo("\x89PNG\r\n\x1a\n...."));
    // Truncated inside the header.
    try testing.expectError(error.Corrupt, readInfo(lossless_rgb[0..20]));
    // Header intact, bitstream cut short.
    var rgb: [4 * 2 * 3]u8 = undefined;
    try testing.expectError(error.Corrupt, decode(lossless_rgb[0 .. lossless_rgb.len - 12], 3, &rgb));
    // Bitstream damaged.
    var damaged = lossless_rgb;
    @memset(damaged[26..40], 0xFF);
    try testing.expectError(error.Corrupt, decode(&damaged, 3, &rgb));
}
