//! JPEG decode and encode through the vendored libjpeg-turbo 3.1.2
//! (native/vendor/libjpeg-turbo), driven by the C shim jpeg_shim.c.
//!
//! Pixels match Pillow 13: decode uses the ISLOW DCT with fancy upsampling (libjpeg's
//! defaults, which Pillow keeps), so a full decode equals `np.asarray(Image.open(f))`
//! (L or RGB) pixel for pixel, a DCT-scaled decode equals Pillow's `draft()` output,
//! and CMYK/YCCK files come out as Pillow's `convert("RGB")`. A crop equals the same
//! window of the full decode. The encoder's bytes equal Pillow's `save(quality=q)`.
//! Evidence: native/vendor/libjpeg-turbo/VENDORED.md, "Verified".
//!
//! Thread-safety: every call owns its libjpeg object; any number of threads may call
//! concurrently. Nothing here prints. libjpeg allocates its working memory with
//! malloc (jmemnobs.c) and frees it before each call returns.
const std = @import("std");

/// Why a call failed. Text for the failure (libjpeg's message) goes to `Diagnostics`.
/// `Truncated`: the data ends before the image does (libjpeg's JWRN_JPEG_EOF or
/// JWRN_HIT_MARKER); `Corrupt` also covers damage warnings (bad Huffman code,
/// a progressive file labelled baseline, ...): both stop the decode.
pub const Error = error{ NotJpeg, Corrupt, Truncated, Unsupported, TooLarge, OutOfMemory };

/// The colour space recorded in the file (libjpeg's `jpeg_color_space`).
pub const ColorSpace = enum { gray, ycbcr, rgb, cmyk, ycck, other };

/// What `readHeader` learns without decoding pixels.
pub const Header = struct {
    width: u32,
    height: u32,
    components: u8,
    color_space: ColorSpace,
    progressive: bool,
    /// The file has an Adobe APP14 marker (which says how CMYK is stored).
    adobe_marker: bool,
    /// The Exif orientation tag (1..8) from the first APP1 Exif block; 1 if absent or
    /// unreadable. Decoding does not apply it.
    exif_orientation: u8,
};

/// libjpeg's message for the last failure or first warning, and the warning count.
pub const Diagnostics = struct {
    message: [200]u8 = undefined,
    len: usize = 0,
    /// Corrupt-data warnings libjpeg recovered from (a truncated file gives at least
    /// one and a grey bottom).
    warnings: u32 = 0,

    /// The message, borrowed from `self`; empty when libjpeg said nothing.
    pub fn text(self: *const Diagnostics) []const u8 {
        return self.message[0..self.len];
    }
};

/// A window in output (scaled) pixels.
pub const Rect = struct { x: u32, y: u32, width: u32, height: u32 };

pub const DecodeOptions = struct {
    /// Output scale is scale_num/8 (libjpeg's DCT scaling), 1..8; 8 is full size.
    scale_num: u8 = 8,
    /// Decode only this window of the scaled output; null decodes all of it. Rows
    /// above the window are still entropy-decoded (skipped, not converted).
    crop: ?Rect = null,
    /// Fail with `error.Corrupt` at the first libjpeg warning (corrupt or truncated
    /// data) instead of returning libjpeg's best effort.
    warnings_are_errors: bool = false,
};

/// Reads the header of `bytes`. Allocates only libjpeg's small header state.
/// Lossless and 12/16-bit JPEGs are `error.Unsupported` (Pillow cannot open the latter
/// either; the former cannot be DCT-scaled).
pub fn readHeader(bytes: []const u8, diag: ?*Diagnostics) Error!Header {
    var header: CHeader = undefined;
    var report: CReport = undefined;
    const status = dg_jpeg_read_header(bytes.ptr, bytes.len, &header, &report);
    try check(status, &report, diag);
    return .{
        .width = header.width,
        .height = header.height,
        // libjpeg caps components at MAX_COMPONENTS (10).
        .components = @intCast(header.components),
        .color_space = colorSpaceFromC(header.color_space),
        .progressive = header.progressive != 0,
        .adobe_marker = header.adobe_marker != 0,
        .exif_orientation = @intCast(header.exif_orientation),
    };
}

/// The size `decode` produces at scale_num/8 without a crop: libjpeg's
/// `jpeg_calc_output_dimensions`, i.e. each side times scale_num/8, rounded up.
pub fn outputSize(header: Header, scale_num: u8) struct { width: u32, height: u32 } {
    std.debug.assert(scale_num >= 1 and scale_num <= 8);
    return .{
        .width = scaleUp(header.width, scale_num),
        .height = scaleUp(header.height, scale_num),
    };
}

fn scaleUp(size: u32, scale_num: u8) u32 {
    // Same as libjpeg's jdiv_round_up(size * scale_num, 8); u64 avoids overflow.
    return @intCast((@as(u64, size) * scale_num + 7) / 8);
}

/// Channels per output pixel: 1 for grayscale files, 3 (RGB) for everything else.
pub fn outputChannels(header: Header) u8 {
    return if (header.color_space == .gray) 1 else 3;
}

/// Decodes `bytes` into `out`, rows tightly packed (width * channels bytes each):
/// the crop window if one is given, else the whole image at scale_num/8.
/// `out.len` must be exactly width * height * outputChannels(header) of that region,
/// and the crop must be non-empty and lie inside `outputSize(header, scale_num)`:
/// both are caller bugs and panic. A file whose `color_space` is `.other` fails with
/// `error.Unsupported`. On error the contents of `out` are unspecified.
pub fn decode(bytes: []const u8, opts: DecodeOptions, out: []u8, diag: ?*Diagnostics) Error!void {
    std.debug.assert(opts.scale_num >= 1 and opts.scale_num <= 8);
    const crop = opts.crop orelse Rect{ .x = 0, .y = 0, .width = 0, .height = 0 };
    const args: CDecodeArgs = .{
        .scale_num = opts.scale_num,
        .has_crop = @intFromBool(opts.crop != null),
        .crop_x = crop.x,
        .crop_y = crop.y,
        .crop_width = crop.width,
        .crop_height = crop.height,
        .warnings_are_errors = @intFromBool(opts.warnings_are_errors),
    };
    var report: CReport = undefined;
    const status = dg_jpeg_decode(bytes.ptr, bytes.len, &args, out.ptr, out.len, &report);
    try check(status, &report, diag);
}

/// Encodes `pixels` (width * height * channels bytes, rows tightly packed; channels 1
/// = gray, 3 = RGB) as a baseline JPEG. `quality` is clamped to 1..100. The settings
/// are Pillow's `save(quality=q)` defaults (4:2:0 for RGB, JFIF header, standard
/// Huffman tables), and the bytes are identical to Pillow's. Caller owns the result
/// (free with `gpa`).
pub fn encode(
    gpa: std.mem.Allocator,
    pixels: []const u8,
    width: u32,
    height: u32,
    channels: u8,
    quality: u8,
    diag: ?*Diagnostics,
) Error![]u8 {
    std.debug.assert(channels == 1 or channels == 3);
    std.debug.assert(width > 0 and height > 0);
    std.debug.assert(pixels.len == @as(u64, width) * height * channels);
    var buffer: CBuffer = .{ .data = null, .size = 0, .capacity = 0 };
    // libjpeg writes into a malloc'd buffer that grows; freed here on every path.
    defer dg_jpeg_free(buffer.data);
    var report: CReport = undefined;
    const status = dg_jpeg_encode(
        pixels.ptr,
        width,
        height,
        channels,
        std.math.clamp(quality, 1, 100),
        &buffer,
        &report,
    );
    try check(status, &report, diag);
    const data = buffer.data orelse unreachable; // libjpeg wrote at least SOI and EOI.
    // One copy, so that the caller frees with its own allocator (~10 us per 100 KB,
    // against milliseconds of encoding).
    return gpa.dupe(u8, data[0..buffer.size]);
}

// ---- The C shim's interface (jpeg_shim.c; keep both sides in step). ----

const Status = enum(c_int) {
    ok = 0,
    not_jpeg = 1,
    corrupt = 2,
    unsupported = 3,
    too_large = 4,
    no_memory = 5,
    bad_argument = 6,
    truncated = 7,
    _,
};

const CReport = extern struct {
    message: [200]u8, // JMSG_LENGTH_MAX
    message_len: u32,
    warnings: u32,
    status: i32,
};

const CHeader = extern struct {
    width: u32,
    height: u32,
    components: u32,
    color_space: i32,
    progressive: u32,
    adobe_marker: u32,
    exif_orientation: u32,
};

const CDecodeArgs = extern struct {
    scale_num: u32,
    has_crop: u32,
    crop_x: u32,
    crop_y: u32,
    crop_width: u32,
    crop_height: u32,
    warnings_are_errors: u32,
};

const CBuffer = extern struct {
    data: ?[*]u8,
    size: usize,
    capacity: usize,
};

extern fn dg_jpeg_read_header(
    data: [*]const u8,
    len: usize,
    header: *CHeader,
    report: *CReport,
) c_int;
extern fn dg_jpeg_decode(
    data: [*]const u8,
    len: usize,
    args: *const CDecodeArgs,
    out: [*]u8,
    out_len: usize,
    report: *CReport,
) c_int;
extern fn dg_jpeg_encode(
    pixels: [*]const u8,
    width: u32,
    height: u32,
    channels: u32,
    quality: u32,
    buffer: *CBuffer,
    report: *CReport,
) c_int;
extern fn dg_jpeg_free(data: ?[*]u8) void;
extern fn dg_jpeg_struct_size(which: c_int) usize;

/// Copies the shim's report into `diag` and maps the status to an error.
fn check(status_code: c_int, report: *const CReport, diag: ?*Diagnostics) Error!void {
    const len = @min(report.message_len, report.message.len);
    if (diag) |d| {
        @memcpy(d.message[0..len], report.message[0..len]);
        d.len = len;
        d.warnings = report.warnings;
    }
    return switch (@as(Status, @fromBackingInt(@intCast(status_code)))) {
        .ok => {},
        .not_jpeg => error.NotJpeg,
        .corrupt => error.Corrupt,
        .truncated => error.Truncated,
        .unsupported => error.Unsupported,
        .too_large => error.TooLarge,
        .no_memory => error.OutOfMemory,
        .bad_argument => std.debug.panic("jpeg: caller bug: {s}", .{report.message[0..len]}),
        _ => std.debug.panic("jpeg: unknown shim status {d}", .{status_code}),
    };
}

fn colorSpaceFromC(value: i32) ColorSpace {
    // J_COLOR_SPACE in jpeglib.h.
    return switch (value) {
        1 => .gray,
        2 => .rgb,
        3 => .ycbcr,
        4 => .cmyk,
        5 => .ycck,
        else => .other,
    };
}

// ---- Tests: images are made in memory with our own encoder or embedded. ----

const testing = std.testing;

fn testImage(gpa: std.mem.Allocator, width: u32, height: u32, channels: u8) ![]u8 {
    const pixels = try gpa.alloc(u8, @as(usize, width) * height * channels);
    for (0..height) |y| for (0..width) |x| for (0..channels) |c| {
        // Smooth gradients plus a faint luma checkerboard: JPEG-friendly, not flat.
        const v = x * 160 / width + y * 64 / height + c * 10 + (x / 8 + y / 8) % 2 * 8;
        pixels[(y * width + x) * channels + c] = @intCast(v);
    };
    return pixels;
}

fn meanAbsDiff(a: []const u8, b: []const u8) f64 {
    var sum: u64 = 0;
    for (a, b) |x, y| sum += @abs(@as(i32, x) - @as(i32, y));
    return @as(f64, @floatFromInt(sum)) / @as(f64, @floatFromInt(a.len));
}

test "shim struct layouts match" {
    try testing.expectEqual(@sizeOf(CReport), dg_jpeg_struct_size(0));
    try testing.expectEqual(@sizeOf(CHeader), dg_jpeg_struct_size(1));
    try testing.expectEqual(@sizeOf(CDecodeArgs), dg_jpeg_struct_size(2));
    try testing.expectEqual(@sizeOf(CBuffer), dg_jpeg_struct_size(3));
    try testing.expectEqual(@sizeOf(CPlanes), dg_jpeg_planes_struct_size());
}

test "planes decode in place and through scratch rows alike, for every scale and row range" {
    const gpa = testing.allocator;
    const width = 83; // Odd sizes: partial blocks at the right and bottom.
    const height = 61;
    const pixels = try testImage(gpa, width, height, 3);
    defer gpa.free(pixels);
    const file = try encode(gpa, pixels, width, height, 3, 90, null); // 4:2:0
    defer gpa.free(file);
    for ([_]u8{ 1, 2, 4, 8 }) |scale_num| {
        const layout = (try planesLayout(file, scale_num, null)).?;
        const v = layout.v_factor;
        const luma_h = layout.height[0];
        for ([_][2]u32{ .{ 0, luma_h }, .{ 0, 1 }, .{ luma_h / 3 / v * v, luma_h / 2 + 1 }, .{ (luma_h - 1) / v * v, luma_h } }) |range| {
            const first, const last = range;
            if (first >= last) continue;
            const chroma_rows = (last + v - 1) / v - first / v;
            const rows = [3]u32{ last - first, @min(chroma_rows, layout.height[1]), @min(chroma_rows, layout.height[2]) };
            // malloc'd, exactly sized: valgrind (which .ci/run has) sees a
            // write past them.
            const heap = std.heap.c_allocator;
            var copied: [3][]u8 = undefined;
            var direct: [3][]u8 = undefined;
            for (0..3) |c| {
                copied[c] = try heap.alloc(u8, @as(usize, layout.width[c]) * rows[c]);
                direct[c] = try heap.alloc(u8, @as(usize, layout.padded_width[c]) * rows[c]);
            }
            defer for (0..3) |c| {
                heap.free(copied[c]);
                heap.free(direct[c]);
            };
            try decodePlanes(file, scale_num, layout, first, last, copied, .{ layout.width[0], layout.width[1], layout.width[2] }, null);
            try decodePlanes(file, scale_num, layout, first, last, direct, .{ layout.padded_width[0], layout.padded_width[1], layout.padded_width[2] }, null);
            for (0..3) |c| for (0..rows[c]) |r| {
                try testing.expectEqualSlices(u8, copied[c][r * layout.width[c] ..][0..layout.width[c]], direct[c][r * layout.padded_width[c] ..][0..layout.width[c]]);
            };
        }
    }
}

test "encode then decode RGB and gray round trip" {
    const gpa = testing.allocator;
    inline for (.{ 1, 3 }) |channels| {
        const width = 67;
        const height = 45;
        const pixels = try testImage(gpa, width, height, channels);
        defer gpa.free(pixels);
        const file = try encode(gpa, pixels, width, height, channels, 95, null);
        defer gpa.free(file);
        try testing.expectEqualSlices(u8, &.{ 0xFF, 0xD8 }, file[0..2]);

        const header = try readHeader(file, null);
        try testing.expectEqual(@as(u32, width), header.width);
        try testing.expectEqual(@as(u32, height), header.height);
        try testing.expectEqual(@as(u8, channels), header.components);
        try testing.expectEqual(if (channels == 1) ColorSpace.gray else ColorSpace.ycbcr, header.color_space);
        try testing.expect(!header.progressive);
        try testing.expect(!header.adobe_marker);
        try testing.expectEqual(@as(u8, 1), header.exif_orientation);
        try testing.expectEqual(@as(u8, channels), outputChannels(header));

        const out = try gpa.alloc(u8, pixels.len);
        defer gpa.free(out);
        var diag: Diagnostics = .{};
        try decode(file, .{}, out, &diag);
        try testing.expectEqual(@as(u32, 0), diag.warnings);
        // q95 on this image: Pillow measures a mean error of 0.18 for gray and RGB.
        try testing.expect(meanAbsDiff(pixels, out) < 1.5);
    }
}

test "quality is clamped and changes the size" {
    const gpa = testing.allocator;
    const pixels = try testImage(gpa, 64, 64, 3);
    defer gpa.free(pixels);
    const low = try encode(gpa, pixels, 64, 64, 3, 0, null);
    defer gpa.free(low);
    const high = try encode(gpa, pixels, 64, 64, 3, 255, null);
    defer gpa.free(high);
    try testing.expect(low.len < high.len);
}

test "outputSize matches libjpeg for every scale, and crops equal the full decode" {
    const gpa = testing.allocator;
    const width = 83; // Odd sizes exercise the rounding and partial iMCUs.
    const height = 61;
    const pixels = try testImage(gpa, width, height, 3);
    defer gpa.free(pixels);
    const file = try encode(gpa, pixels, width, height, 3, 90, null);
    defer gpa.free(file);
    const header = try readHeader(file, null);

    var scale_num: u8 = 1;
    while (scale_num <= 8) : (scale_num += 1) {
        const size = outputSize(header, scale_num);
        try testing.expectEqual((width * @as(u32, scale_num) + 7) / 8, size.width);
        const full = try gpa.alloc(u8, @as(usize, size.width) * size.height * 3);
        defer gpa.free(full);
        // The shim rejects (panics on) a buffer of the wrong size, so success
        // proves outputSize agrees with jpeg_calc_output_dimensions.
        try decode(file, .{ .scale_num = scale_num }, full, null);

        const windows = [_]Rect{
            .{ .x = 0, .y = 0, .width = size.width, .height = 1 },
            .{ .x = size.width / 3, .y = size.height / 4, .width = (size.width + 1) / 2, .height = (size.height + 2) / 3 },
            .{ .x = size.width - 1, .y = size.height - 1, .width = 1, .height = 1 },
            .{ .x = 1, .y = 2, .width = size.width - 2, .height = size.height - 2 },
        };
        for (windows) |window| {
            if (window.width == 0 or window.height == 0) continue;
            const part = try gpa.alloc(u8, @as(usize, window.width) * window.height * 3);
            defer gpa.free(part);
            try decode(file, .{ .scale_num = scale_num, .crop = window }, part, null);
            for (0..window.height) |row| {
                const start = ((window.y + row) * size.width + window.x) * 3;
                const expected = full[start..][0 .. window.width * 3];
                try testing.expectEqualSlices(u8, expected, part[row * window.width * 3 ..][0 .. window.width * 3]);
            }
        }
    }
}

test "bad input fails with the right error and a message" {
    const gpa = testing.allocator;
    var diag: Diagnostics = .{};
    try testing.expectError(error.NotJpeg, readHeader("GIF89a....", &diag));
    try testing.expectEqualStrings("Not a JPEG file: starts with 0x47 0x49", diag.text());
    try testing.expectError(error.NotJpeg, readHeader("", &diag));

    const pixels = try testImage(gpa, 64, 48, 3);
    defer gpa.free(pixels);
    const file = try encode(gpa, pixels, 64, 48, 3, 90, null);
    defer gpa.free(file);
    // Cut inside the header: no frame at all, and libjpeg says the file ended.
    try testing.expectError(error.Truncated, readHeader(file[0..30], &diag));

    // Cut inside the scan: libjpeg's JWRN_JPEG_EOF stops the decode, strict or not.
    const scan_start = std.mem.find(u8, file, "\xff\xda").?;
    const truncated = file[0 .. scan_start + (file.len - scan_start) / 2];
    const out = try gpa.alloc(u8, pixels.len);
    defer gpa.free(out);
    try testing.expectError(error.Truncated, decode(truncated, .{}, out, &diag));
    try testing.expectEqual(@as(u32, 1), diag.warnings);
    try testing.expectEqualStrings("Premature end of JPEG file", diag.text());
    try testing.expectError(error.Truncated, decode(truncated, .{ .warnings_are_errors = true }, out, &diag));

    // A scan cut by a marker: JWRN_HIT_MARKER, whose text is lower-case.
    const cut = try std.mem.concat(gpa, u8, &.{ truncated, "\xff\xd9" });
    defer gpa.free(cut);
    try testing.expectError(error.Truncated, decode(cut, .{}, out, &diag));
    try testing.expectEqualStrings("Corrupt JPEG data: premature end of data segment", diag.text());

    // Stray bytes between markers (JWRN_EXTRANEOUS_DATA) leave the pixels whole.
    const clean = try gpa.alloc(u8, pixels.len);
    defer gpa.free(clean);
    try decode(file, .{}, clean, &diag);
    const stray = try std.mem.concat(gpa, u8, &.{ file[0..scan_start], "\x00\x00", file[scan_start..] });
    defer gpa.free(stray);
    try decode(stray, .{}, out, &diag);
    try testing.expectEqual(@as(u32, 1), diag.warnings);
    try testing.expectEqualSlices(u8, clean, out);
    try testing.expectError(error.Corrupt, decode(stray, .{ .warnings_are_errors = true }, out, &diag));
}

/// Inserts an APP1 Exif block carrying `orientation` right after SOI.
fn withExif(gpa: std.mem.Allocator, file: []const u8, big_endian: bool, orientation: u16) ![]u8 {
    var exif: [6 + 8 + 2 + 12 + 4]u8 = undefined;
    @memcpy(exif[0..6], "Exif\x00\x00");
    const endian: std.lang.Endian = if (big_endian) .big else .little;
    @memcpy(exif[6..8], if (big_endian) "MM" else "II");
    std.mem.writeInt(u16, exif[8..10], 42, endian);
    std.mem.writeInt(u32, exif[10..14], 8, endian); // IFD0 right after the TIFF header
    std.mem.writeInt(u16, exif[14..16], 1, endian); // one entry
    std.mem.writeInt(u16, exif[16..18], 0x0112, endian); // Orientation
    std.mem.writeInt(u16, exif[18..20], 3, endian); // SHORT
    std.mem.writeInt(u32, exif[20..24], 1, endian); // count
    std.mem.writeInt(u16, exif[24..26], orientation, endian);
    @memset(exif[26..28], 0);
    std.mem.writeInt(u32, exif[28..32], 0, endian); // no next IFD
    const segment_len = exif.len + 2;
    const result = try gpa.alloc(u8, file.len + 2 + segment_len);
    @memcpy(result[0..2], file[0..2]);
    result[2] = 0xFF;
    result[3] = 0xE1;
    std.mem.writeInt(u16, result[4..6], segment_len, .big);
    @memcpy(result[6..][0..exif.len], &exif);
    @memcpy(result[6 + exif.len ..], file[2..]);
    return result;
}

test "Exif orientation is read from APP1, both byte orders" {
    const gpa = testing.allocator;
    const pixels = try testImage(gpa, 16, 8, 3);
    defer gpa.free(pixels);
    const file = try encode(gpa, pixels, 16, 8, 3, 75, null);
    defer gpa.free(file);
    for ([_]bool{ false, true }) |big_endian| {
        for ([_]u16{ 1, 3, 6, 8 }) |orientation| {
            const tagged = try withExif(gpa, file, big_endian, orientation);
            defer gpa.free(tagged);
            const header = try readHeader(tagged, null);
            try testing.expectEqual(@as(u8, @intCast(orientation)), header.exif_orientation);
        }
        // Out-of-range values read as "no rotation".
        const bad = try withExif(gpa, file, big_endian, 9);
        defer gpa.free(bad);
        try testing.expectEqual(@as(u8, 1), (try readHeader(bad, null)).exif_orientation);
    }
}

/// An 8x8 CMYK JPEG of the Pillow colour CMYK (0, 100, 200, 0), saved by Pillow 13
/// with quality=90 (Adobe marker, inverted samples). Pillow's convert("RGB") gives (255, 155, 55).
const cmyk_jpeg = [_]u8{
    0xff, 0xd8, 0xff, 0xee, 0x00, 0x0e, 0x41, 0x64, 0x6f, 0x62, 0x65, 0x00, 0x64, 0x00, 0x00, 0x00,
    0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x03, 0x02, 0x02, 0x03, 0x02, 0x02, 0x03, 0x03, 0x03,
    0x03, 0x04, 0x03, 0x03, 0x04, 0x05, 0x08, 0x05, 0x05, 0x04, 0x04, 0x05, 0x0a, 0x07, 0x07, 0x06,
    0x08, 0x0c, 0x0a, 0x0c, 0x0c, 0x0b, 0x0a, 0x0b, 0x0b, 0x0d, 0x0e, 0x12, 0x10, 0x0d, 0x0e, 0x11,
    0x0e, 0x0b, 0x0b, 0x10, 0x16, 0x10, 0x11, 0x13, 0x14, 0x15, 0x15, 0x15, 0x0c, 0x0f, 0x17, 0x18,
    0x16, 0x14, 0x18, 0x12, 0x14, 0x15, 0x14, 0xff, 0xc0, 0x00, 0x14, 0x08, 0x00, 0x08, 0x00, 0x08,
    0x04, 0x43, 0x11, 0x00, 0x4d, 0x11, 0x00, 0x59, 0x11, 0x00, 0x4b, 0x11, 0x00, 0xff, 0xc4, 0x00,
    0x1f, 0x00, 0x00, 0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0xff, 0xc4,
    0x00, 0xb5, 0x10, 0x00, 0x02, 0x01, 0x03, 0x03, 0x02, 0x04, 0x03, 0x05, 0x05, 0x04, 0x04, 0x00,
    0x00, 0x01, 0x7d, 0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13,
    0x51, 0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15,
    0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
    0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46,
    0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66,
    0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86,
    0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4,
    0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2,
    0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9,
    0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5,
    0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xff, 0xda, 0x00, 0x0e, 0x04, 0x43, 0x00, 0x4d, 0x00, 0x59, 0x00,
    0x4b, 0x00, 0x00, 0x3f, 0x00, 0xfd, 0x53, 0xaf, 0x48, 0xaf, 0x8f, 0x2b, 0xf5, 0x4e, 0xbf, 0xff,
    0xd9,
};

test "CMYK converts to RGB like Pillow" {
    const header = try readHeader(&cmyk_jpeg, null);
    try testing.expectEqual(ColorSpace.cmyk, header.color_space);
    try testing.expectEqual(@as(u8, 4), header.components);
    try testing.expect(header.adobe_marker);
    try testing.expectEqual(@as(u8, 3), outputChannels(header));
    var out: [8 * 8 * 3]u8 = undefined;
    try decode(&cmyk_jpeg, .{}, &out, null);
    for (0..64) |i| try testing.expectEqualSlices(u8, &.{ 255, 155, 55 }, out[i * 3 ..][0..3]);
}

fn encodeForAllocationTest(gpa: std.mem.Allocator, pixels: []const u8) !void {
    const file = try encode(gpa, pixels, 16, 16, 3, 80, null);
    gpa.free(file);
}

test "encode reports allocation failure without leaking" {
    const gpa = testing.allocator;
    const pixels = try testImage(gpa, 16, 16, 3);
    defer gpa.free(pixels);
    try testing.checkAllAllocationFailures(gpa, encodeForAllocationTest, .{pixels});
}

extern fn dg_jpeg_simd_flags() c_uint;

const CPlanes = extern struct {
    width: [3]u32,
    height: [3]u32,
    rows: [3]u32,
    h_ratio: u32,
    v_ratio: u32,
    eligible: u32,
    padded_width: [3]u32,
};

extern fn dg_jpeg_planes_struct_size() usize;
extern fn dg_jpeg_planes_layout(data: [*]const u8, len: usize, scale_num: u32, planes: *CPlanes, report: *CReport) c_int;
extern fn dg_jpeg_decode_planes(
    data: [*]const u8,
    len: usize,
    scale_num: u32,
    row_begin: u32,
    row_end: u32,
    out: *const [3][*]u8,
    stride: *const [3]usize,
    report: *CReport,
) c_int;

/// The component planes of a subsampled YCbCr JPEG (4:2:0 or 4:2:2) at a
/// DCT scale, as `decodePlanes` returns them: Y then Cb, Cr.
pub const Planes = struct {
    width: [3]u32,
    height: [3]u32,
    /// Luma pixels per chroma pixel of the output planes (1 or 2 each way;
    /// DCT scaling can make chroma full size).
    h_factor: u32,
    v_factor: u32,
    /// Bytes libjpeg writes per row (whole blocks): a stride at least this
    /// wide lets `decodePlanes` decode in place instead of copying rows.
    padded_width: [3]u32,
};

/// The plane layout at scale_num/8, or null for files the planar path does
/// not take (gray, CMYK, 4:4:4, unusual sampling).
pub fn planesLayout(bytes: []const u8, scale_num: u8, diag: ?*Diagnostics) Error!?Planes {
    var c: CPlanes = undefined;
    var report: CReport = undefined;
    try check(dg_jpeg_planes_layout(bytes.ptr, bytes.len, scale_num, &c, &report), &report, diag);
    if (c.eligible == 0) return null;
    return .{ .width = c.width, .height = c.height, .h_factor = c.h_ratio, .v_factor = c.v_ratio, .padded_width = c.padded_width };
}

/// Decodes luma rows [row_begin, row_end) into `out[0]` and the chroma rows
/// covering them ([row_begin / v, ceil(row_end / v))) into `out[1]`,
/// `out[2]`; every row is the plane's full width, `stride[c]` bytes apart.
/// With `stride[c] >= padded_width[c]` rows are decoded in place, each
/// (the last included) `padded_width[c]` bytes long. Asserts (caller bugs)
/// that the buffers hold those rows.
pub fn decodePlanes(
    bytes: []const u8,
    scale_num: u8,
    layout: Planes,
    row_begin: u32,
    row_end: u32,
    out: [3][]u8,
    stride: [3]usize,
    diag: ?*Diagnostics,
) Error!void {
    std.debug.assert(row_begin < row_end and row_end <= layout.height[0]);
    const chroma_rows = (row_end + layout.v_factor - 1) / layout.v_factor - row_begin / layout.v_factor;
    const row_counts = [3]u32{ row_end - row_begin, @min(chroma_rows, layout.height[1]), @min(chroma_rows, layout.height[2]) };
    for (out, stride, row_counts, layout.width, layout.padded_width) |plane, s, rows, width, padded| {
        const last_len = if (s >= padded) padded else width;
        std.debug.assert(plane.len >= (rows - 1) * s + last_len);
    }
    var report: CReport = undefined;
    const pointers: [3][*]u8 = .{ out[0].ptr, out[1].ptr, out[2].ptr };
    try check(dg_jpeg_decode_planes(bytes.ptr, bytes.len, scale_num, row_begin, row_end, &pointers, &stride, &report), &report, diag);
}

/// The SIMD level libjpeg-turbo uses on this CPU: "avx2", "sse2", "neon" or
/// "none" (portable build, or JSIMD_FORCENONE=1; JSIMD_FORCESSE2=1 gives "sse2").
pub fn simdLevel() []const u8 {
    var flags = dg_jpeg_simd_flags();
    if (std.c.getenv("JSIMD_FORCENONE")) |v| if (std.mem.eql(u8, std.mem.span(v), "1")) {
        flags = 0;
    };
    if (std.c.getenv("JSIMD_FORCESSE2")) |v| if (std.mem.eql(u8, std.mem.span(v), "1")) {
        flags &= 0x08;
    };
    if (flags & 0x80 != 0) return "avx2";
    if (flags & 0x08 != 0) return "sse2";
    if (flags & 0x10 != 0) return "neon";
    return "none";
}
