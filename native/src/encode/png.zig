//! A PNG encoder for pre-encoded payloads: gray, gray+alpha, RGB, RGBA at 8
//! or 16 bits, fast deflate (std's level 1) and the adaptive per-row filter
//! choice (minimum sum of absolute differences), as the reference's encoder
//! is configured (fast compression, adaptive filter).
const std = @import("std");
const Allocator = std.mem.Allocator;
const flate = std.compress.flate;

pub const Error = error{OutOfMemory};

pub const Image = struct {
    /// Interleaved samples; 16-bit ones little-endian.
    pixels: []const u8,
    width: u32,
    height: u32,
    channels: u8,
    bit_depth: u8,
};

const signature = "\x89PNG\r\n\x1a\n";

/// Encodes `image` as a complete PNG file. Caller owns the result.
pub fn encode(gpa: Allocator, image: Image) Error![]u8 {
    std.debug.assert(image.channels >= 1 and image.channels <= 4);
    std.debug.assert(image.bit_depth == 8 or image.bit_depth == 16);
    const bytes_per_pixel: usize = @as(usize, image.channels) * (image.bit_depth / 8);
    const row_bytes = bytes_per_pixel * image.width;
    std.debug.assert(image.pixels.len == row_bytes * image.height);

    var out: std.Io.Writer.Allocating = .init(gpa);
    defer out.deinit();
    writeAll(&out.writer, signature) catch return error.OutOfMemory;
    var ihdr: [13]u8 = undefined;
    std.mem.writeInt(u32, ihdr[0..4], image.width, .big);
    std.mem.writeInt(u32, ihdr[4..8], image.height, .big);
    ihdr[8] = image.bit_depth;
    ihdr[9] = switch (image.channels) {
        1 => 0, // grey
        2 => 4, // grey + alpha
        3 => 2, // RGB
        else => 6, // RGBA
    };
    ihdr[10] = 0; // deflate
    ihdr[11] = 0; // adaptive filtering
    ihdr[12] = 0; // no interlace
    chunk(&out.writer, "IHDR", &ihdr) catch return error.OutOfMemory;

    const idat = try compressRows(gpa, image, row_bytes, bytes_per_pixel);
    defer gpa.free(idat);
    chunk(&out.writer, "IDAT", idat) catch return error.OutOfMemory;
    chunk(&out.writer, "IEND", "") catch return error.OutOfMemory;
    return out.toOwnedSlice() catch error.OutOfMemory;
}

fn writeAll(w: *std.Io.Writer, bytes: []const u8) std.Io.Writer.Error!void {
    try w.writeAll(bytes);
}

fn chunk(w: *std.Io.Writer, kind: *const [4]u8, data: []const u8) std.Io.Writer.Error!void {
    var length: [4]u8 = undefined;
    std.mem.writeInt(u32, &length, @intCast(data.len), .big);
    try w.writeAll(&length);
    try w.writeAll(kind);
    try w.writeAll(data);
    var crc = std.hash.Crc32.init();
    crc.update(kind);
    crc.update(data);
    var sum: [4]u8 = undefined;
    std.mem.writeInt(u32, &sum, crc.final(), .big);
    try w.writeAll(&sum);
}

/// Filters every row (choosing the filter per row) and deflates the result
/// into a zlib stream.
fn compressRows(gpa: Allocator, image: Image, row_bytes: usize, bpp: usize) Error![]u8 {
    var compressed: std.Io.Writer.Allocating = try .initCapacity(gpa, image.pixels.len / 2 + 64);
    defer compressed.deinit();
    const window = try gpa.alloc(u8, flate.max_window_len);
    defer gpa.free(window);
    const compressor = try gpa.create(flate.Compress);
    defer gpa.destroy(compressor);
    compressor.* = flate.Compress.init(&compressed.writer, window, .zlib, .level_1) catch return error.OutOfMemory;

    // Row buffers: the previous and current raw rows (big-endian for 16 bit),
    // and one candidate output per filter type.
    const scratch = try gpa.alloc(u8, row_bytes * 2 + (row_bytes + 1) * 5);
    defer gpa.free(scratch);
    var previous = scratch[0..row_bytes];
    var current = scratch[row_bytes..][0..row_bytes];
    @memset(previous, 0);
    const candidates = scratch[row_bytes * 2 ..];
    for (0..image.height) |y| {
        const raw = image.pixels[y * row_bytes ..][0..row_bytes];
        if (image.bit_depth == 16) {
            // PNG stores 16-bit samples big-endian.
            var i: usize = 0;
            while (i < row_bytes) : (i += 2) {
                current[i] = raw[i + 1];
                current[i + 1] = raw[i];
            }
        } else {
            @memcpy(current, raw);
        }
        const best = filterRow(current, previous, bpp, candidates, row_bytes + 1);
        compressor.writer.writeAll(best) catch return error.OutOfMemory;
        std.mem.swap([]u8, &previous, &current);
    }
    compressor.finish() catch return error.OutOfMemory;
    return compressed.toOwnedSlice() catch error.OutOfMemory;
}

/// Applies the five PNG filters and returns the one with the smallest sum of
/// absolute values (as signed bytes), the usual adaptive heuristic.
fn filterRow(row: []const u8, above: []const u8, bpp: usize, candidates: []u8, stride: usize) []const u8 {
    var best_index: usize = 0;
    var best_cost: u64 = std.math.maxInt(u64);
    for (0..5) |filter| {
        const out = candidates[filter * stride ..][0..stride];
        out[0] = @intCast(filter);
        var cost: u64 = 0;
        for (row, 0..) |x, i| {
            const a: u8 = if (i >= bpp) row[i - bpp] else 0;
            const b: u8 = above[i];
            const c: u8 = if (i >= bpp) above[i - bpp] else 0;
            const predicted: u8 = switch (filter) {
                0 => 0,
                1 => a,
                2 => b,
                3 => @intCast((@as(u16, a) + b) / 2),
                else => paeth(a, b, c),
            };
            const v = x -% predicted;
            out[i + 1] = v;
            cost += if (v < 128) v else 256 - @as(u64, v);
        }
        if (cost < best_cost) {
            best_cost = cost;
            best_index = filter;
        }
    }
    return candidates[best_index * stride ..][0..stride];
}

fn paeth(a: u8, b: u8, c: u8) u8 {
    const p = @as(i16, a) + b - c;
    const pa = @abs(p - a);
    const pb = @abs(p - b);
    const pc = @abs(p - c);
    if (pa <= pb and pa <= pc) return a;
    if (pb <= pc) return b;
    return c;
}

const testing = std.testing;

test "a PNG round-trips through std's inflate" {
    var pixels: [4 * 3 * 2]u8 = undefined;
    for (&pixels, 0..) |*p, i| p.* = @intCast(i * 37 % 256);
    const png = try encode(testing.allocator, .{ .pixels = &pixels, .width = 3, .height = 2, .channels = 4, .bit_depth = 8 });
    defer testing.allocator.free(png);
    try testing.expect(std.mem.startsWith(u8, png, signature));
    try testing.expectEqualStrings("IHDR", png[12..16]);
    // Inflate the IDAT and undo the filters.
    const idat_len = std.mem.readInt(u32, png[33..37], .big);
    try testing.expectEqualStrings("IDAT", png[37..41]);
    var reader: std.Io.Reader = .fixed(png[41..][0..idat_len]);
    var window: [flate.max_window_len]u8 = undefined;
    var inflate: flate.Decompress = .init(&reader, .zlib, &window);
    var raw: [2 * (1 + 12)]u8 = undefined;
    try inflate.reader.readSliceAll(&raw);
    var previous: [12]u8 = @splat(0);
    for (0..2) |y| {
        const line = raw[y * 13 ..][0..13];
        var row: [12]u8 = undefined;
        for (0..12) |i| {
            const a: u8 = if (i >= 4) row[i - 4] else 0;
            const b = previous[i];
            const c: u8 = if (i >= 4) previous[i - 4] else 0;
            const predicted: u8 = switch (line[0]) {
                0 => 0,
                1 => a,
                2 => b,
                3 => @intCast((@as(u16, a) + b) / 2),
                4 => paeth(a, b, c),
                else => return error.TestUnexpectedResult,
            };
            row[i] = line[i + 1] +% predicted;
        }
        try testing.expectEqualSlices(u8, pixels[y * 12 ..][0..12], &row);
        previous = row;
    }
}

test "16-bit samples are written big-endian" {
    const pixels = [_]u8{ 0x34, 0x12 }; // one gray sample 0x1234, little-endian
    const png = try encode(testing.allocator, .{ .pixels = &pixels, .width = 1, .height = 1, .channels = 1, .bit_depth = 16 });
    defer testing.allocator.free(png);
    try testing.expectEqual(@as(u8, 16), png[24]);
    try testing.expectEqual(@as(u8, 0), png[25]);
}
