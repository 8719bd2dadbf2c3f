//! PNG, BMP and GIF decode (and a JPEG fallback) through the vendored stb_image v2.27
//! (native/vendor/stb, configured in stb_impl.c).
//!
//! Channels come out as Pillow's mode for the same file, except that GIF is always
//! RGBA (Pillow: P) and palette BMPs are RGB (Pillow: P, or L for an identity grey
//! palette; `convert("RGB")` gives the same pixels). Verified against Pillow 13,
//! pixels identical unless noted (details in vendor/stb/VENDORED.md):
//!
//! | file                          | channels | bit_depth |
//! |-------------------------------|----------|-----------|
//! | PNG L (1/2/4/8-bit, scaled)   | 1        | 8         |
//! | PNG LA                        | 2        | 8         |
//! | PNG P without tRNS            | 3 (RGB)  | 8         |
//! | PNG P with tRNS               | 4 (RGBA) | 8         |
//! | PNG RGB / RGBA                | 3 / 4    | 8         |
//! | PNG 16-bit L / LA / RGB / RGBA| 1/2/3/4  | 16        |
//! | PNG L or RGB with tRNS key    | 1 / 3 (the key is ignored, as Pillow's mode does) |
//! | GIF (first frame)             | 4 (RGBA) | 8 (*)     |
//! | BMP 24-bit, 32-bit BI_RGB     | 3        | 8 (the 4th byte is padding, as in Pillow) |
//! | BMP 32-bit with alpha mask    | 4        | 8         |
//! | BMP 1/4/8-bit palette         | 3        | 8         |
//!
//! (*) Transparent GIF pixels come out (0, 0, 0, 0); Pillow keeps the palette colour
//! with alpha 0, so only their RGB differs.
//!
//! 16-bit samples are native-endian u16 (little-endian on x86-64 and aarch64).
//!
//! Thread-safety: any number of threads may decode at once; stb's failure reason is
//! thread-local. stb allocates through dg_c_malloc/dg_c_realloc/dg_c_free (Zig hooks).
const std = @import("std");

pub const Error = error{ Unsupported, Corrupt, TooLarge, OutOfMemory };

pub const Info = struct {
    width: u32,
    height: u32,
    /// Channels as `decode` delivers them (1..4), see the table above.
    channels: u8,
    /// 8 or 16.
    bit_depth: u8,
};

/// Reads the header only; allocates no pixel memory.
pub fn readInfo(bytes: []const u8) Error!Info {
    reason_override = null;
    if (bytes.len > std.math.maxInt(c_int)) return tooLarge("file larger than 2 GiB");
    const len: c_int = @intCast(bytes.len);
    var width: c_int = 0;
    var height: c_int = 0;
    var channels: c_int = 0;
    if (stbi_info_from_memory(bytes.ptr, len, &width, &height, &channels) == 0) {
        // stb tries every format in turn and ends on "unknown image type", which
        // hides that a PNG (say) was recognised but its header is broken.
        if (sniff(bytes)) |format| {
            reason_override = switch (format) {
                .png => "corrupt PNG header",
                .gif => "corrupt GIF header",
                .bmp => "corrupt or unsupported BMP header",
                .jpeg => "corrupt JPEG header",
            };
            // BMP headers also fail for variants stb does not decode (RLE, ...).
            return if (format == .bmp) error.Unsupported else error.Corrupt;
        }
        return classify();
    }
    // stb's BMP info reports a top-down BMP's height as stored: negative (its
    // loader takes the absolute value).
    if (height < 0 and height != std.math.minInt(c_int) and sniff(bytes) == .bmp) height = -height;
    if (width <= 0 or height <= 0 or channels < 1 or channels > 4) {
        reason_override = "bad header values";
        return error.Corrupt;
    }
    return .{
        .width = @intCast(width),
        .height = @intCast(height),
        .channels = if (channels == 4 and bmpAlphaIsPadding(bytes)) 3 else @intCast(channels),
        .bit_depth = if (stbi_is_16_bit_from_memory(bytes.ptr, len) != 0) 16 else 8,
    };
}

/// A 32-bit BI_RGB BMP: stb reads the fourth byte as alpha, Pillow (like the BMP
/// spec) as padding and opens the file as RGB. Asking stb for 3 channels matches
/// Pillow. BITFIELDS files with an alpha mask stay RGBA in both.
fn bmpAlphaIsPadding(bytes: []const u8) bool {
    if (sniff(bytes) != .bmp or bytes.len < 34) return false;
    const header_size = std.mem.readInt(u32, bytes[14..18], .little);
    if (header_size < 40) return false; // OS/2 core headers have no 32-bit form.
    const bits_per_pixel = std.mem.readInt(u16, bytes[28..30], .little);
    const compression = std.mem.readInt(u32, bytes[30..34], .little);
    return bits_per_pixel == 32 and compression == 0;
}

/// Decoded pixels, rows tightly packed, `channels` interleaved samples per pixel of
/// `bit_depth` bits (16-bit samples are native-endian u16). Owned; call `deinit`.
pub const Image = struct {
    /// Allocated by stb through the dg_c_* hooks.
    pixels: []u8,
    width: u32,
    height: u32,
    channels: u8,
    bit_depth: u8,

    /// Frees `pixels` (stbi_image_free, i.e. dg_c_free).
    pub fn deinit(self: *Image) void {
        stbi_image_free(self.pixels.ptr);
        self.* = undefined;
    }
};

/// Decodes the first image (GIF: first frame) of `bytes`. Checks width * height
/// against `max_pixels` from the header before anything is allocated
/// (`error.TooLarge`). 16-bit PNGs stay 16-bit.
pub fn decode(bytes: []const u8, max_pixels: u64) Error!Image {
    const info = try readInfo(bytes);
    const pixel_count = @as(u64, info.width) * info.height;
    if (pixel_count > max_pixels) return tooLarge("more pixels than max_pixels");
    const len: c_int = @intCast(bytes.len); // readInfo checked the range.
    // Ask for the header's channel count: stb would otherwise add an alpha channel
    // for a tRNS colour key in L/RGB PNGs, where Pillow keeps L/RGB.
    const desired: c_int = info.channels;
    var width: c_int = 0;
    var height: c_int = 0;
    var channels_in_file: c_int = 0;
    const pixels: ?[*]u8 = if (info.bit_depth == 16)
        @ptrCast(stbi_load_16_from_memory(bytes.ptr, len, &width, &height, &channels_in_file, desired))
    else
        stbi_load_from_memory(bytes.ptr, len, &width, &height, &channels_in_file, desired);
    const data = pixels orelse return classify();
    if (width != info.width or height != info.height) {
        stbi_image_free(data);
        reason_override = "image size differs from its header";
        return error.Corrupt;
    }
    const size = @as(usize, info.width) * info.height * info.channels * (info.bit_depth / 8);
    return .{
        .pixels = data[0..size],
        .width = info.width,
        .height = info.height,
        .channels = info.channels,
        .bit_depth = info.bit_depth,
    };
}

/// Why the last `readInfo`/`decode` on this thread failed: stb's short reason
/// (e.g. "bad png sig", "outofmem") or ours. Static string; empty if none.
pub fn failureReason() []const u8 {
    if (reason_override) |text| return text;
    const text = stbi_failure_reason() orelse return "";
    return std.mem.span(text);
}

/// Our own reason for failures stb does not describe (or describes misleadingly).
threadlocal var reason_override: ?[]const u8 = null;

fn tooLarge(text: []const u8) Error {
    reason_override = text;
    return error.TooLarge;
}

/// stb's reasons for files that are well formed but use a feature it lacks.
const unsupported_reasons = [_][]const u8{
    "1/2/4/8/16-bit only", "bad bits_per_channel", "BMP JPEG/PNG", "BMP RLE",            "unknown BMP",
    "no header height",    "only 8-bit",           "unsupported",  "unknown image type",
};

/// Maps stb's failure reason to an error.
fn classify() Error {
    const reason = failureReason();
    if (std.mem.eql(u8, reason, "outofmem")) return error.OutOfMemory;
    if (std.mem.eql(u8, reason, "too large")) return error.TooLarge;
    for (unsupported_reasons) |unsupported| {
        if (std.mem.eql(u8, reason, unsupported)) return error.Unsupported;
    }
    return error.Corrupt;
}

const Format = enum { png, gif, bmp, jpeg };

fn sniff(bytes: []const u8) ?Format {
    if (std.mem.startsWith(u8, bytes, "\x89PNG\r\n\x1a\n")) return .png;
    if (std.mem.startsWith(u8, bytes, "GIF8")) return .gif;
    if (std.mem.startsWith(u8, bytes, "BM")) return .bmp;
    if (std.mem.startsWith(u8, bytes, "\xFF\xD8")) return .jpeg;
    return null;
}

extern fn stbi_info_from_memory(
    buffer: [*]const u8,
    len: c_int,
    x: *c_int,
    y: *c_int,
    comp: *c_int,
) c_int;
extern fn stbi_is_16_bit_from_memory(buffer: [*]const u8, len: c_int) c_int;
extern fn stbi_load_from_memory(
    buffer: [*]const u8,
    len: c_int,
    x: *c_int,
    y: *c_int,
    channels_in_file: *c_int,
    desired_channels: c_int,
) ?[*]u8;
extern fn stbi_load_16_from_memory(
    buffer: [*]const u8,
    len: c_int,
    x: *c_int,
    y: *c_int,
    channels_in_file: *c_int,
    desired_channels: c_int,
) ?[*]u16;
extern fn stbi_image_free(retval_from_stbi_load: ?*anyopaque) void;
extern fn stbi_failure_reason() ?[*:0]const u8;

// ---- Tests: PNG and BMP files are built in memory; one GIF is embedded. ----

const testing = std.testing;

/// A minimal PNG encoder for tests: unfiltered rows in stored (uncompressed)
/// deflate blocks. `rows` holds the packed scanlines without filter bytes.
fn makePng(
    gpa: std.mem.Allocator,
    width: u32,
    height: u32,
    bit_depth: u8,
    color_type: u8,
    rows: []const u8,
    palette: ?[]const u8,
    transparency: ?[]const u8,
) ![]u8 {
    var png: std.ArrayList(u8) = .empty;
    errdefer png.deinit(gpa);
    try png.appendSlice(gpa, "\x89PNG\r\n\x1a\n");

    var ihdr: [13]u8 = undefined;
    std.mem.writeInt(u32, ihdr[0..4], width, .big);
    std.mem.writeInt(u32, ihdr[4..8], height, .big);
    ihdr[8] = bit_depth;
    ihdr[9] = color_type;
    ihdr[10] = 0; // deflate
    ihdr[11] = 0; // adaptive filtering
    ihdr[12] = 0; // no interlace
    try appendChunk(gpa, &png, "IHDR", &ihdr);
    if (palette) |p| try appendChunk(gpa, &png, "PLTE", p);
    if (transparency) |t| try appendChunk(gpa, &png, "tRNS", t);

    const stride = rows.len / height;
    var raw: std.ArrayList(u8) = .empty;
    defer raw.deinit(gpa);
    for (0..height) |y| {
        try raw.append(gpa, 0); // filter: none
        try raw.appendSlice(gpa, rows[y * stride ..][0..stride]);
    }
    var zlib: std.ArrayList(u8) = .empty;
    defer zlib.deinit(gpa);
    try zlib.appendSlice(gpa, &.{ 0x78, 0x01 });
    var rest = raw.items;
    while (true) {
        const n: u16 = @intCast(@min(rest.len, 65535));
        const final = n == rest.len;
        var header: [5]u8 = undefined;
        header[0] = @intFromBool(final); // BFINAL, BTYPE = stored
        std.mem.writeInt(u16, header[1..3], n, .little);
        std.mem.writeInt(u16, header[3..5], ~n, .little);
        try zlib.appendSlice(gpa, &header);
        try zlib.appendSlice(gpa, rest[0..n]);
        rest = rest[n..];
        if (final) break;
    }
    var adler: [4]u8 = undefined;
    std.mem.writeInt(u32, &adler, std.hash.Adler32.hash(raw.items), .big);
    try zlib.appendSlice(gpa, &adler);
    try appendChunk(gpa, &png, "IDAT", zlib.items);
    try appendChunk(gpa, &png, "IEND", "");
    return png.toOwnedSlice(gpa);
}

fn appendChunk(gpa: std.mem.Allocator, png: *std.ArrayList(u8), kind: *const [4]u8, data: []const u8) !void {
    var word: [4]u8 = undefined;
    std.mem.writeInt(u32, &word, @intCast(data.len), .big);
    try png.appendSlice(gpa, &word);
    try png.appendSlice(gpa, kind);
    try png.appendSlice(gpa, data);
    var crc = std.hash.Crc32.init();
    crc.update(kind);
    crc.update(data);
    std.mem.writeInt(u32, &word, crc.final(), .big);
    try png.appendSlice(gpa, &word);
}

const no_limit = std.math.maxInt(u64);

fn expectDecoded(file: []const u8, channels: u8, bit_depth: u8, expected: []const u8) !void {
    const info = try readInfo(file);
    try testing.expectEqual(channels, info.channels);
    try testing.expectEqual(bit_depth, info.bit_depth);
    var image = try decode(file, no_limit);
    defer image.deinit();
    try testing.expectEqual(info.width, image.width);
    try testing.expectEqual(channels, image.channels);
    try testing.expectEqual(bit_depth, image.bit_depth);
    try testing.expectEqualSlices(u8, expected, image.pixels);
}

test "8-bit PNG colour types decode with Pillow's channels and values" {
    const gpa = testing.allocator;
    const rgb = [_]u8{ 255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30, 40, 50, 60, 70, 80, 90 };
    const cases = .{
        .{ 0, "\x00\x40\x80\xff\x01\x02", 1, "\x00\x40\x80\xff\x01\x02" }, // L
        .{ 4, "\x00\x10\x40\x20\x80\x30\xff\x40\x01\x50\x02\x60", 2, "\x00\x10\x40\x20\x80\x30\xff\x40\x01\x50\x02\x60" }, // LA
        .{ 2, &rgb, 3, &rgb }, // RGB
    };
    inline for (cases) |case| {
        const file = try makePng(gpa, 3, 2, 8, case[0], case[1], null, null);
        defer gpa.free(file);
        try expectDecoded(file, case[2], 8, case[3]);
    }
    var rgba: [24]u8 = undefined;
    for (&rgba, 0..) |*v, i| v.* = @intCast(i * 10);
    const file = try makePng(gpa, 3, 2, 8, 6, &rgba, null, null);
    defer gpa.free(file);
    try expectDecoded(file, 4, 8, &rgba);
}

test "low bit depths scale to 0..255, 1-bit to 0/255" {
    const gpa = testing.allocator;
    // 8x1 at 1 bit: 0b10110001.
    const one = try makePng(gpa, 8, 1, 1, 0, "\xb1", null, null);
    defer gpa.free(one);
    try expectDecoded(one, 1, 8, &.{ 255, 0, 255, 255, 0, 0, 0, 255 });
    // 4x1 at 2 bits: 0, 1, 2, 3 -> 0, 85, 170, 255.
    const two = try makePng(gpa, 4, 1, 2, 0, "\x1b", null, null);
    defer gpa.free(two);
    try expectDecoded(two, 1, 8, &.{ 0, 85, 170, 255 });
}

test "palette PNG gives RGB, or RGBA with tRNS" {
    const gpa = testing.allocator;
    const palette = "\xff\x00\x00\x00\xff\x00\x00\x00\xff";
    const indices = "\x00\x01\x02\x01";
    const plain = try makePng(gpa, 4, 1, 8, 3, indices, palette, null);
    defer gpa.free(plain);
    try expectDecoded(plain, 3, 8, "\xff\x00\x00\x00\xff\x00\x00\x00\xff\x00\xff\x00");
    const keyed = try makePng(gpa, 4, 1, 8, 3, indices, palette, "\x80\x00");
    defer gpa.free(keyed);
    try expectDecoded(keyed, 4, 8, "\xff\x00\x00\x80\x00\xff\x00\x00\x00\x00\xff\xff\x00\xff\x00\x00");
}

test "a tRNS colour key on L and RGB adds no channel" {
    const gpa = testing.allocator;
    const gray = try makePng(gpa, 2, 1, 8, 0, "\x05\x07", null, "\x00\x05");
    defer gpa.free(gray);
    try expectDecoded(gray, 1, 8, "\x05\x07");
    const rgb = try makePng(gpa, 2, 1, 8, 2, "\x01\x02\x03\x04\x05\x06", null, "\x00\x01\x00\x02\x00\x03");
    defer gpa.free(rgb);
    try expectDecoded(rgb, 3, 8, "\x01\x02\x03\x04\x05\x06");
}

test "16-bit PNG stays 16-bit, native-endian" {
    const gpa = testing.allocator;
    inline for (.{ .{ 0, 1 }, .{ 4, 2 }, .{ 2, 3 }, .{ 6, 4 } }) |case| {
        const channels: u8 = case[1];
        const count = 3 * 2 * @as(usize, channels);
        const big = try gpa.alloc(u8, count * 2);
        defer gpa.free(big);
        const native = try gpa.alloc(u16, count);
        defer gpa.free(native);
        for (native, 0..) |*v, i| {
            v.* = @intCast((i * 4099 + 17) % 65536);
            std.mem.writeInt(u16, big[i * 2 ..][0..2], v.*, .big);
        }
        const file = try makePng(gpa, 3, 2, 16, case[0], big, null, null);
        defer gpa.free(file);
        try expectDecoded(file, channels, 16, std.mem.sliceAsBytes(native));
    }
}

test "24-bit BMP decodes to RGB" {
    // 2x2, bottom-up rows of BGR padded to 4 bytes.
    const bmp = "BM" ++ "\x46\x00\x00\x00" ++ "\x00\x00\x00\x00" ++ "\x36\x00\x00\x00" ++
        "\x28\x00\x00\x00" ++ "\x02\x00\x00\x00" ++ "\x02\x00\x00\x00" ++ "\x01\x00" ++ "\x18\x00" ++
        "\x00\x00\x00\x00" ++ "\x10\x00\x00\x00" ++ "\x13\x0b\x00\x00" ++ "\x13\x0b\x00\x00" ++
        "\x00\x00\x00\x00" ++ "\x00\x00\x00\x00" ++
        "\x03\x02\x01" ++ "\x06\x05\x04" ++ "\x00\x00" ++ // bottom row: (1,2,3) (4,5,6)
        "\x00\x00\xff" ++ "\xff\x00\x00" ++ "\x00\x00"; // top row: red, blue
    try expectDecoded(bmp, 3, 8, "\xff\x00\x00\x00\x00\xff\x01\x02\x03\x04\x05\x06");
}

test "32-bit BI_RGB BMP drops the padding byte, like Pillow; top-down rows" {
    // 1x2, top-down (negative height): stored rows are top first. BGRX, X = 0x40.
    const bmp = "BM" ++ "\x3e\x00\x00\x00" ++ "\x00\x00\x00\x00" ++ "\x36\x00\x00\x00" ++
        "\x28\x00\x00\x00" ++ "\x01\x00\x00\x00" ++ "\xfe\xff\xff\xff" ++ "\x01\x00" ++ "\x20\x00" ++
        "\x00\x00\x00\x00" ++ "\x08\x00\x00\x00" ++ "\x13\x0b\x00\x00" ++ "\x13\x0b\x00\x00" ++
        "\x00\x00\x00\x00" ++ "\x00\x00\x00\x00" ++ "\x30\x20\x10\x40" ++ "\x60\x50\x40\x40";
    try expectDecoded(bmp, 3, 8, "\x10\x20\x30\x40\x50\x60");
}

/// 2x2 GIF, palette black/white/red/green with index 3 transparent, pixels
/// 0, 1 / 2, 3, made by Pillow 13 (`save(transparency=3)`).
const tiny_gif = [_]u8{
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x02, 0x00, 0x02, 0x00, 0x81, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0xff, 0x00, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x03,
    0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x02, 0x00, 0x00, 0x08, 0x07, 0x00, 0x01, 0x04,
    0x10, 0x30, 0x20, 0x20, 0x00, 0x3b,
};

test "GIF gives RGBA of the first frame" {
    const info = try readInfo(&tiny_gif);
    try testing.expectEqual(Info{ .width = 2, .height = 2, .channels = 4, .bit_depth = 8 }, info);
    var image = try decode(&tiny_gif, no_limit);
    defer image.deinit();
    try testing.expectEqualSlices(u8, &.{ 0, 0, 0, 255, 255, 255, 255, 255, 255, 0, 0, 255 }, image.pixels[0..12]);
    try testing.expectEqual(@as(u8, 0), image.pixels[15]); // transparent
}

test "max_pixels is checked before decoding" {
    const gpa = testing.allocator;
    const file = try makePng(gpa, 3, 2, 8, 0, "\x01\x02\x03\x04\x05\x06", null, null);
    defer gpa.free(file);
    try testing.expectError(error.TooLarge, decode(file, 5));
    try testing.expectEqualStrings("more pixels than max_pixels", failureReason());
    var image = try decode(file, 6);
    image.deinit();
}

test "bad input fails with a reason" {
    const gpa = testing.allocator;
    try testing.expectError(error.Unsupported, readInfo("not an image at all"));
    try testing.expectEqualStrings("unknown image type", failureReason());
    try testing.expectError(error.Unsupported, readInfo(""));

    const file = try makePng(gpa, 3, 2, 8, 0, "\x01\x02\x03\x04\x05\x06", null, null);
    defer gpa.free(file);
    // Cut inside IHDR: recognised as PNG, so Corrupt rather than Unsupported.
    try testing.expectError(error.Corrupt, decode(file[0..20], no_limit));
    try testing.expectEqualStrings("corrupt PNG header", failureReason());
    // Pixel data cut short.
    try testing.expectError(error.Corrupt, decode(file[0 .. file.len - 20], no_limit));
    try testing.expect(failureReason().len > 0);
}
