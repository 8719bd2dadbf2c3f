//! PNG, GIF and BMP decode through the vendored Wuffs v0.3.4
//! (native/vendor/wuffs), driven by the C shim wuffs_shim.c.
//!
//! Wuffs is memory-safe by construction (its compiler proves bounds) and
//! never allocates: every byte it writes is in buffers sized here from the
//! header, before any pixel data is read. It verifies PNG chunk CRC-32s and
//! the zlib Adler-32, stops a zlib stream that would inflate past the
//! declared image ("too much data"), and reports a file that ends early as
//! truncated instead of painting the rest.
//!
//! Channels come out as Pillow's mode for the same file (16-bit samples are
//! native-endian u16), except that GIF is always RGBA (Pillow: P) and palette
//! BMPs are RGB (Pillow: P; `convert("RGB")` gives the same pixels):
//!
//! | file                           | channels | bit_depth |
//! |--------------------------------|----------|-----------|
//! | PNG L (1/2/4/8-bit, scaled)    | 1        | 8         |
//! | PNG LA                         | 2        | 8         |
//! | PNG P without / with tRNS      | 3 / 4    | 8         |
//! | PNG RGB / RGBA                 | 3 / 4    | 8         |
//! | PNG 16-bit L / LA / RGB / RGBA | 1/2/3/4  | 16        |
//! | PNG L or RGB with a tRNS key   | 1 / 3 (the key is ignored, as Pillow's mode does) |
//! | GIF (first frame)              | 4 (RGBA) | 8         |
//! | BMP 24-bit, 32-bit BI_RGB      | 3        | 8 (the 4th byte is padding, as in Pillow) |
//! | BMP 32-bit with an alpha mask  | 4        | 8         |
//! | BMP 1/4/8-bit palette, RLE     | 3        | 8         |
//!
//! Memory per image, all freed before `decode` returns except the output:
//! the output buffer (`Header.decode_bytes`: the final pixels, or more while
//! Wuffs' layout is wider than ours, see `Plan`), the PNG work buffer
//! (`Header.work_bytes` = height × (1 + bytes per filtered row), about the
//! size of the image in the file's own bit depth; 0 for GIF and BMP) and the
//! decoder state (`dg_wuffs_decoder_size()`: 65,040 bytes, the GIF decoder
//! being the largest of the three).
//!
//! Thread-safety: every call owns its decoder state; any number of threads
//! may decode at once.
const std = @import("std");
const builtin = @import("builtin");
const Allocator = std.mem.Allocator;

pub const Format = enum(c_int) { png = 0, gif = 1, bmp = 2 };

pub const Error = error{ Corrupt, Truncated, Unsupported, OutOfMemory };

/// Wuffs' status text for the last failure (e.g. "#png: bad checksum"), or
/// ours for a check made before Wuffs runs.
pub const Diagnostics = struct {
    message: [96]u8 = undefined,
    len: usize = 0,

    pub fn text(self: *const Diagnostics) []const u8 {
        return self.message[0..self.len];
    }

    fn set(self: *Diagnostics, comptime fmt: []const u8, args: anytype) void {
        const written: []const u8 = std.fmt.bufPrint(&self.message, fmt, args) catch &self.message;
        self.len = written.len;
    }
};

/// How Wuffs' output becomes ours: the pixel format Wuffs writes, and the
/// in-place narrowing that follows (Wuffs has no LA or 3×16-bit layouts, and
/// its RGB from a keyed or alpha source would blend; we keep Pillow's mode).
const Plan = enum {
    /// Wuffs writes exactly our layout.
    direct_y,
    direct_rgb,
    direct_rgba,
    /// Wuffs writes RGBA; keep R (grey), R and A, or RGB.
    rgba_to_l,
    rgba_to_la,
    rgba_to_rgb,
    /// Wuffs writes BGRA, 16 bits little-endian each; keep `channels` of them.
    bgra16,

    fn pixelFormat(plan: Plan) PixelFormat {
        return switch (plan) {
            .direct_y => .y,
            .direct_rgb => .rgb,
            .direct_rgba, .rgba_to_l, .rgba_to_la, .rgba_to_rgb => .rgba,
            .bgra16 => .bgra_4x16le,
        };
    }
};

const PixelFormat = enum(c_int) {
    y = 0,
    rgb = 1,
    rgba = 2,
    bgra_4x16le = 3,

    fn bytesPerPixel(f: PixelFormat) u8 {
        return switch (f) {
            .y => 1,
            .rgb => 3,
            .rgba => 4,
            .bgra_4x16le => 8,
        };
    }
};

/// What `readHeader` learns; everything `decode` needs to size its buffers.
pub const Header = struct {
    format: Format,
    width: u32,
    height: u32,
    /// Delivered channels (1..4) and bits per sample (8 or 16).
    channels: u8,
    bit_depth: u8,
    /// Bytes `decode` needs in `out`: the delivered pixels come first.
    decode_bytes: u64,
    /// Bytes `decode` needs in `work`.
    work_bytes: u64,
    plan: Plan,
    /// A PNG's tRNS colour key (grey, or R G B) in delivered sample values.
    /// Wuffs turns keyed pixels into transparent black; Pillow's L and RGB
    /// modes keep their colour, so `decode` puts the key back.
    key: ?[3]u16 = null,

    /// The delivered image's length in bytes (a prefix of `out`).
    pub fn pixelBytes(h: Header) u64 {
        return @as(u64, h.width) * h.height * h.channels * (h.bit_depth / 8);
    }
};

/// Reads the header and, for PNG and BMP, checks that the file is long
/// enough to hold the image it declares (so a 57 KB file that claims
/// 13000×13000 is refused before 500 MB are allocated). Allocates only the
/// decoder state, freed before returning.
pub fn readHeader(gpa: Allocator, format: Format, bytes: []const u8, diag: *Diagnostics) Error!Header {
    const state = try DecoderState.alloc(gpa);
    defer state.free(gpa);
    var info: CInfo = undefined;
    var report: CReport = undefined;
    try check(dg_wuffs_read_info(@backingInt(format), state.ptr, bytes.ptr, bytes.len, &info, &report), &report, diag);
    if (info.width == 0 or info.height == 0) {
        diag.set("#{s}: empty image ({d}x{d})", .{ @tagName(format), info.width, info.height });
        return error.Corrupt;
    }
    var header: Header = .{
        .format = format,
        .width = info.width,
        .height = info.height,
        .channels = 4,
        .bit_depth = 8,
        .decode_bytes = 0,
        .work_bytes = info.workbuf_len,
        .plan = .direct_rgba,
    };
    switch (format) {
        .png => try planPng(bytes, &header, diag),
        .gif => {},
        .bmp => try planBmp(bytes, &header, diag),
    }
    const pixels = @as(u64, info.width) * info.height;
    header.decode_bytes = pixels * header.plan.pixelFormat().bytesPerPixel();
    std.debug.assert(header.pixelBytes() <= header.decode_bytes);
    return header;
}

/// Decodes the first image (GIF: first frame) into `out` (`header.decode_bytes`
/// long) using `work` (`header.work_bytes` long); the delivered pixels are then
/// the first `header.pixelBytes()` bytes of `out`, rows tightly packed. Pixels
/// a GIF's first frame does not cover keep what `out` held (zero it first).
pub fn decode(gpa: Allocator, header: Header, bytes: []const u8, out: []u8, work: []u8, diag: *Diagnostics) Error!void {
    std.debug.assert(out.len == header.decode_bytes);
    std.debug.assert(work.len == header.work_bytes);
    const state = try DecoderState.alloc(gpa);
    defer state.free(gpa);
    var report: CReport = undefined;
    const pixfmt = header.plan.pixelFormat();
    try check(dg_wuffs_decode(
        @backingInt(header.format),
        state.ptr,
        bytes.ptr,
        bytes.len,
        @backingInt(pixfmt),
        out.ptr,
        out.len,
        work.ptr,
        work.len,
        &report,
    ), &report, diag);
    narrow(header.plan, header.channels, header.key, out, @as(usize, header.width) * header.height);
}

/// Wuffs' decoder state: one heap block per call (tens of KiB: too much for
/// a host thread's stack), freed before the call returns.
const DecoderState = struct {
    ptr: *anyopaque,
    memory: []align(16) u8,

    fn alloc(gpa: Allocator) Error!DecoderState {
        const memory = gpa.alignedAlloc(u8, .@"16", dg_wuffs_decoder_size()) catch return error.OutOfMemory;
        return .{ .ptr = memory.ptr, .memory = memory };
    }

    fn free(state: DecoderState, gpa: Allocator) void {
        gpa.free(state.memory);
    }
};

/// Narrows Wuffs' layout to ours in place, front to back: each output pixel
/// is no wider than its input, so a write never overtakes an unread input.
/// A transparent pixel of a keyed grey or RGB image takes the key's colour.
fn narrow(plan: Plan, channels: u8, key: ?[3]u16, out: []u8, pixel_count: usize) void {
    const key8: [3]u8 = if (key) |k| .{ @truncate(k[0]), @truncate(k[1]), @truncate(k[2]) } else .{ 0, 0, 0 };
    switch (plan) {
        .direct_y, .direct_rgb, .direct_rgba => {},
        .rgba_to_l => for (0..pixel_count) |i| {
            out[i] = if (out[i * 4 + 3] == 0) key8[0] else out[i * 4];
        },
        .rgba_to_la => for (0..pixel_count) |i| {
            out[i * 2] = out[i * 4];
            out[i * 2 + 1] = out[i * 4 + 3];
        },
        .rgba_to_rgb => for (0..pixel_count) |i| {
            const px = if (key != null and out[i * 4 + 3] == 0) key8 else out[i * 4 ..][0..3].*;
            out[i * 3 ..][0..3].* = px;
        },
        .bgra16 => {
            // Wuffs' little-endian BGRA to our native-endian samples in
            // Pillow's order: L = G (B = G = R for grey), LA, RGB, RGBA.
            const order: []const u8 = switch (channels) {
                1 => &.{1},
                2 => &.{ 1, 3 },
                3 => &.{ 2, 1, 0 },
                4 => &.{ 2, 1, 0, 3 },
                else => unreachable, // planPng only makes 1..4
            };
            for (0..pixel_count) |i| {
                var px: [4]u16 = undefined;
                for (&px, 0..) |*v, c| v.* = std.mem.readInt(u16, out[i * 8 + c * 2 ..][0..2], .little);
                if (key) |k| {
                    if (px[3] == 0) px = .{ k[2], k[1], k[0], 0 };
                }
                for (order, 0..) |from, c| {
                    std.mem.writeInt(u16, out[(i * channels + c) * 2 ..][0..2], px[from], builtin.cpu.arch.endian());
                }
            }
        },
    }
}

/// PNG: Pillow's mode from IHDR and tRNS, and the least compressed data that
/// could hold the declared image.
fn planPng(bytes: []const u8, header: *Header, diag: *Diagnostics) Error!void {
    // dg_wuffs_read_info accepted the signature and IHDR: bytes 8..33 exist.
    std.debug.assert(bytes.len >= 33);
    const depth = bytes[24];
    const color_type = bytes[25];
    const scan = scanPngChunks(bytes);
    header.bit_depth = if (depth == 16) 16 else 8;
    if (scan.transparency and (color_type == 0 or color_type == 2)) header.key = pngKey(scan, color_type, depth);
    if (depth == 16) {
        header.plan = .bgra16;
        header.channels = switch (color_type) {
            0 => 1,
            4 => 2,
            2 => 3,
            6 => 4,
            else => return unsupported(diag, "#png: 16-bit palette"),
        };
    } else {
        header.plan, header.channels = switch (color_type) {
            0 => if (scan.transparency) .{ .rgba_to_l, 1 } else .{ .direct_y, 1 },
            2 => if (scan.transparency) .{ .rgba_to_rgb, 3 } else .{ .direct_rgb, 3 },
            3 => if (scan.transparency) .{ .direct_rgba, 4 } else .{ .direct_rgb, 3 },
            4 => .{ .rgba_to_la, 2 },
            6 => .{ .direct_rgba, 4 },
            else => return unsupported(diag, "#png: unknown colour type"),
        };
    }
    // Deflate cannot expand more than 1032:1 (a 258-byte match in two bits),
    // so image data shorter than this cannot hold the declared pixels.
    const samples_per_pixel: u64 = switch (color_type) {
        0, 3 => 1,
        4 => 2,
        2 => 3,
        else => 4,
    };
    const pixel_bits = @as(u64, header.width) * header.height * samples_per_pixel * depth;
    const least_compressed = pixel_bits / 8 / deflate_ratio_max;
    if (scan.idat_bytes < least_compressed) {
        diag.set("#png: {d} bytes of image data cannot hold {d}x{d} pixels (at least {d} needed)", .{
            scan.idat_bytes, header.width, header.height, least_compressed,
        });
        return error.Truncated;
    }
}

const deflate_ratio_max = 1032;

const PngScan = struct {
    transparency: bool = false,
    /// The first bytes of tRNS (a grey key is 2 bytes, an RGB key 6).
    trns: [6]u8 = @splat(0),
    trns_len: usize = 0,
    idat_bytes: u64 = 0,
};

/// The colour key in delivered sample values: low bit depths scale to 8 bits
/// as the pixels do (×255, ×85, ×17 for 1, 2, 4 bits), only the low `depth`
/// bits count, as in Wuffs and Pillow.
fn pngKey(scan: PngScan, color_type: u8, depth: u8) [3]u16 {
    const samples: usize = if (color_type == 0) 1 else 3;
    const depth_mask: u16 = if (depth == 16) 0xffff else (@as(u16, 1) << @intCast(depth)) - 1;
    const scale: u16 = if (depth >= 8) 1 else 255 / depth_mask;
    var key: [3]u16 = @splat(0);
    for (0..samples) |c| {
        const raw = if (scan.trns_len >= 2 * (c + 1)) std.mem.readInt(u16, scan.trns[c * 2 ..][0..2], .big) else 0;
        key[c] = (raw & depth_mask) * scale;
    }
    if (samples == 1) key = .{ key[0], key[0], key[0] };
    return key;
}

/// Walks the chunk headers (each step advances at least 12 bytes, so at most
/// len / 12 steps): whether tRNS comes before the image data, and how many
/// IDAT bytes the file really holds (a chunk may claim more than is there).
fn scanPngChunks(bytes: []const u8) PngScan {
    var scan: PngScan = .{};
    var at: u64 = 8;
    var seen_idat = false;
    while (at + 8 <= bytes.len) {
        const length = std.mem.readInt(u32, bytes[@intCast(at)..][0..4], .big);
        const kind = bytes[@intCast(at + 4)..][0..4];
        const body = at + 8;
        if (std.mem.eql(u8, kind, "IDAT")) {
            seen_idat = true;
            scan.idat_bytes += @min(length, bytes.len - body);
        } else if (std.mem.eql(u8, kind, "tRNS") and !seen_idat) {
            scan.transparency = true;
            scan.trns_len = @intCast(@min(length, scan.trns.len, bytes.len - body));
            @memcpy(scan.trns[0..scan.trns_len], bytes[@intCast(body)..][0..scan.trns_len]);
        } else if (std.mem.eql(u8, kind, "IEND")) {
            break;
        }
        at = body + @as(u64, length) + 4;
    }
    return scan;
}

/// BMP: RGBA only for 32-bit BITFIELDS with an alpha mask (as Pillow), and
/// for uncompressed pixels, whether the file holds every row it declares.
fn planBmp(bytes: []const u8, header: *Header, diag: *Diagnostics) Error!void {
    header.plan = .rgba_to_rgb;
    header.channels = 3;
    if (bytes.len < 34) return; // Wuffs accepted it: an OS/2 core header.
    const header_size = std.mem.readInt(u32, bytes[14..18], .little);
    if (header_size < 40) return;
    const data_offset = std.mem.readInt(u32, bytes[10..14], .little);
    const bits_per_pixel = std.mem.readInt(u16, bytes[28..30], .little);
    const compression = std.mem.readInt(u32, bytes[30..34], .little);
    const bitfields = compression == 3 or compression == 6;
    if (bits_per_pixel == 32 and bitfields and bytes.len >= 70 and (header_size >= 56 or compression == 6)) {
        if (std.mem.readInt(u32, bytes[66..70], .little) != 0) {
            header.plan = .direct_rgba;
            header.channels = 4;
        }
    }
    if (compression == 0 or bitfields) {
        const row_bytes = (@as(u64, header.width) * bits_per_pixel + 31) / 32 * 4;
        const needed = @as(u64, data_offset) + row_bytes * header.height;
        if (bytes.len < needed) {
            diag.set("#bmp: the file has {d} bytes, its {d}x{d} pixels need {d}", .{
                bytes.len, header.width, header.height, needed,
            });
            return error.Truncated;
        }
    }
}

fn unsupported(diag: *Diagnostics, text: []const u8) Error {
    diag.set("{s}", .{text});
    return error.Unsupported;
}

// ---- The C shim's interface (wuffs_shim.c; keep both sides in step). ----

const Status = enum(c_int) {
    ok = 0,
    corrupt = 1,
    truncated = 2,
    unsupported = 3,
    bad_argument = 4,
    _,
};

const CInfo = extern struct {
    width: u32,
    height: u32,
    workbuf_len: u64,
};

const CReport = extern struct {
    message: [96]u8,
    message_len: u32,
    status: i32,
};

extern fn dg_wuffs_decoder_size() usize;
extern fn dg_wuffs_struct_size(which: c_int) usize;
extern fn dg_wuffs_read_info(
    format: c_int,
    decoder: *anyopaque,
    data: [*]const u8,
    len: usize,
    info: *CInfo,
    report: *CReport,
) c_int;
extern fn dg_wuffs_decode(
    format: c_int,
    decoder: *anyopaque,
    data: [*]const u8,
    len: usize,
    pixfmt: c_int,
    out: [*]u8,
    out_len: usize,
    work: [*]u8,
    work_len: usize,
    report: *CReport,
) c_int;

fn check(status_code: c_int, report: *const CReport, diag: *Diagnostics) Error!void {
    const len = @min(report.message_len, report.message.len);
    const text = report.message[0..len];
    return switch (@as(Status, @fromBackingInt(@intCast(status_code)))) {
        .ok => {},
        .corrupt => {
            diag.set("{s}", .{text});
            return error.Corrupt;
        },
        .truncated => {
            diag.set("{s}", .{text});
            return error.Truncated;
        },
        .unsupported => {
            diag.set("{s}", .{text});
            return error.Unsupported;
        },
        .bad_argument => std.debug.panic("wuffs: caller bug: {s}", .{text}),
        _ => std.debug.panic("wuffs: unknown shim status {d}", .{status_code}),
    };
}

// ---- Tests: files from our PNG encoder and test_images.zig's BMP writer. ----

const testing = std.testing;
const png_encoder = @import("../encode/png.zig");
const test_images = @import("../test_images.zig");

/// Decodes with exactly sized, separately allocated buffers (a write past
/// them trips the testing allocator and valgrind).
fn decodeAll(gpa: Allocator, format: Format, file: []const u8) ![]u8 {
    var diag: Diagnostics = .{};
    const header = try readHeader(gpa, format, file, &diag);
    const out = try gpa.alloc(u8, @intCast(header.decode_bytes));
    errdefer gpa.free(out);
    const work = try gpa.alloc(u8, @intCast(header.work_bytes));
    defer gpa.free(work);
    try decode(gpa, header, file, out, work, &diag);
    return gpa.realloc(out, @intCast(header.pixelBytes()));
}

test "shim struct layouts match" {
    try testing.expectEqual(@sizeOf(CInfo), dg_wuffs_struct_size(0));
    try testing.expectEqual(@sizeOf(CReport), dg_wuffs_struct_size(1));
    // The memory bound in the file comment and docs/decoding.md.
    try testing.expectEqual(@as(usize, 65040), dg_wuffs_decoder_size());
}

test "PNG grey, LA, RGB, RGBA at 8 and 16 bits round-trip through our encoder" {
    const gpa = testing.allocator;
    for ([_]u8{ 8, 16 }) |bit_depth| for (1..5) |channels| {
        const len = 5 * 3 * channels * (bit_depth / 8);
        const pixels = try gpa.alloc(u8, len);
        defer gpa.free(pixels);
        for (pixels, 0..) |*b, i| b.* = @intCast((i * 37 + 11) % 256);
        // Our encoder takes 16-bit samples little-endian; the decoder gives
        // them native-endian (little on every target we build).
        const file = try png_encoder.encode(gpa, .{ .pixels = pixels, .width = 5, .height = 3, .channels = @intCast(channels), .bit_depth = bit_depth });
        defer gpa.free(file);
        var diag: Diagnostics = .{};
        const header = try readHeader(gpa, .png, file, &diag);
        try testing.expectEqual(@as(u8, @intCast(channels)), header.channels);
        try testing.expectEqual(bit_depth, header.bit_depth);
        const got = try decodeAll(gpa, .png, file);
        defer gpa.free(got);
        try testing.expectEqualSlices(u8, pixels, got);
    };
}

test "a flipped bit in the image data is refused by its checksum" {
    const gpa = testing.allocator;
    var pixels: [4 * 4 * 3]u8 = undefined;
    for (&pixels, 0..) |*b, i| b.* = @intCast(i * 5);
    const file = try png_encoder.encode(gpa, .{ .pixels = &pixels, .width = 4, .height = 4, .channels = 3, .bit_depth = 8 });
    defer gpa.free(file);
    const idat = std.mem.find(u8, file, "IDAT").?;
    file[idat + 6] ^= 0x10;
    try testing.expectError(error.Corrupt, decodeAll(gpa, .png, file));
}

test "a PNG whose header outgrows its data is truncated before any allocation" {
    const gpa = testing.allocator;
    var pixels: [8 * 8]u8 = @splat(7);
    const file = try png_encoder.encode(gpa, .{ .pixels = &pixels, .width = 8, .height = 8, .channels = 1, .bit_depth = 8 });
    defer gpa.free(file);
    // 60000 x 60000 grey, with a valid IHDR CRC.
    std.mem.writeInt(u32, file[16..20], 60000, .big);
    std.mem.writeInt(u32, file[20..24], 60000, .big);
    std.mem.writeInt(u32, file[29..33], std.hash.Crc32.hash(file[12..29]), .big);
    var diag: Diagnostics = .{};
    try testing.expectError(error.Truncated, readHeader(gpa, .png, file, &diag));
    try testing.expect(std.mem.find(u8, diag.text(), "cannot hold 60000x60000") != null);
}

test "BMP decodes to RGB; a cut one is truncated from its header" {
    const gpa = testing.allocator;
    var buffer: [54 + 12 * 3]u8 = undefined;
    const file = test_images.bmp(&buffer, 3, 3, .gradient);
    const got = try decodeAll(gpa, .bmp, file);
    defer gpa.free(got);
    // Bottom-up BGR rows: the first delivered pixel is the last stored row's first, reversed.
    const last_row = file[54 + 2 * 12 ..][0..3];
    try testing.expectEqualSlices(u8, &.{ last_row[2], last_row[1], last_row[0] }, got[0..3]);
    var diag: Diagnostics = .{};
    try testing.expectError(error.Truncated, readHeader(gpa, .bmp, file[0 .. file.len - 5], &diag));
}

test "narrowing restores a colour key and reorders 16-bit BGRA" {
    // Two RGBA pixels: the second keyed (transparent black from Wuffs).
    var rgba = [_]u8{ 1, 2, 3, 255, 0, 0, 0, 0 };
    narrow(.rgba_to_rgb, 3, .{ 9, 8, 7 }, &rgba, 2);
    try testing.expectEqualSlices(u8, &.{ 1, 2, 3, 9, 8, 7 }, rgba[0..6]);
    var wide: [8]u8 = undefined;
    for (0..4) |c| std.mem.writeInt(u16, wide[c * 2 ..][0..2], @intCast(1000 * (c + 1)), .little); // B G R A
    narrow(.bgra16, 3, null, &wide, 1);
    const rgb = std.mem.bytesAsSlice(u16, wide[0..6]);
    try testing.expectEqual(@as(u16, 3000), rgb[0]);
    try testing.expectEqual(@as(u16, 2000), rgb[1]);
    try testing.expectEqual(@as(u16, 1000), rgb[2]);
}
