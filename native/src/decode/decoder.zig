//! Picks a codec by content (never by file name: a PNG named .jpg decodes)
//! and returns the decoded image in the layout of compatibility.md §3.2.
const std = @import("std");
const Allocator = std.mem.Allocator;
const buffers = @import("../buffers.zig");
const sample = @import("../sample.zig");
const jpeg = @import("jpeg.zig");
const wuffs = @import("wuffs.zig");
const png_fast = @import("png_fast.zig");
const webp = @import("webp.zig");

pub const Format = enum { jpeg, png, gif, bmp, webp, unknown };

pub fn sniff(bytes: []const u8) Format {
    if (std.mem.startsWith(u8, bytes, "\xff\xd8\xff")) return .jpeg;
    if (std.mem.startsWith(u8, bytes, "\x89PNG\r\n\x1a\n")) return .png;
    if (std.mem.startsWith(u8, bytes, "GIF87a") or std.mem.startsWith(u8, bytes, "GIF89a")) return .gif;
    if (std.mem.startsWith(u8, bytes, "BM")) return .bmp;
    if (bytes.len >= 12 and std.mem.eql(u8, bytes[0..4], "RIFF") and std.mem.eql(u8, bytes[8..12], "WEBP")) return .webp;
    return .unknown;
}

/// Why an image was not delivered; also the keys of the error counters.
pub const Cause = enum {
    /// The file could not be opened or read.
    io,
    /// Zero bytes.
    empty,
    /// Not a format we decode (by content).
    not_image,
    /// The codec refused the data.
    corrupt,
    /// The data ends before the image does.
    truncated,
    /// The header claims more than max_pixels (refused before allocating).
    too_large,
    /// A format or variant this build does not decode.
    unsupported,
    /// An allocation failed.
    no_memory,
};

pub const Error = error{ Io, Empty, NotImage, Corrupt, Truncated, TooLarge, Unsupported, NoMemory };

pub fn causeOf(err: Error) Cause {
    return switch (err) {
        error.Io => .io,
        error.Empty => .empty,
        error.NotImage => .not_image,
        error.Corrupt => .corrupt,
        error.Truncated => .truncated,
        error.TooLarge => .too_large,
        error.Unsupported => .unsupported,
        error.NoMemory => .no_memory,
    };
}

pub const Diagnostics = struct {
    buffer: [256]u8 = undefined,
    len: usize = 0,

    pub fn text(self: *const Diagnostics) []const u8 {
        return self.buffer[0..self.len];
    }

    pub fn set(self: *Diagnostics, comptime fmt: []const u8, args: anytype) void {
        const written: []const u8 = std.fmt.bufPrint(&self.buffer, fmt, args) catch &self.buffer;
        self.len = written.len;
    }
};

/// Decodes `bytes`; the result's buffer comes from `gpa`. Every decoder
/// checks the header's size against `max_pixels` before it allocates pixels,
/// and refuses a file whose image is not all there or fails an integrity
/// check (docs/decoding.md).
pub fn decode(gpa: Allocator, bytes: []const u8, max_pixels: u64, diag: *Diagnostics) Error!sample.Pixels {
    if (bytes.len == 0) {
        diag.set("empty file", .{});
        return error.Empty;
    }
    return switch (sniff(bytes)) {
        .unknown => {
            diag.set("not a JPEG, PNG, GIF, BMP or WebP file", .{});
            return error.NotImage;
        },
        .jpeg => decodeJpeg(gpa, bytes, max_pixels, diag),
        .webp => decodeWebp(gpa, bytes, max_pixels, diag),
        .png => decodePng(gpa, bytes, max_pixels, diag),
        .gif => decodeWuffs(gpa, .gif, bytes, max_pixels, diag),
        .bmp => decodeWuffs(gpa, .bmp, bytes, max_pixels, diag),
    };
}

/// The EXIF orientation (1..8) of a JPEG; 1 for anything else.
pub fn exifOrientation(bytes: []const u8) u8 {
    if (sniff(bytes) != .jpeg) return 1;
    const header = jpeg.readHeader(bytes, null) catch return 1;
    return header.exif_orientation;
}

fn tooLarge(diag: *Diagnostics, width: u32, height: u32, max_pixels: u64) Error {
    diag.set("{d}x{d} pixels is more than max_pixels ({d})", .{ width, height, max_pixels });
    return error.TooLarge;
}

fn allocPixels(gpa: Allocator, width: u32, height: u32, channels: u8, diag: *Diagnostics) Error!sample.Pixels {
    const len = @as(usize, width) * height * channels;
    const buffer = sample.Pixels.alloc(gpa, len) catch {
        diag.set("out of memory for {d}x{d} pixels", .{ width, height });
        return error.NoMemory;
    };
    return .{
        .data = buffer,
        .backing = buffer,
        .width = width,
        .height = height,
        .channels = channels,
        .bit_depth = 8,
        .original_width = width,
        .original_height = height,
        .crop = .{ 0, 0, @floatFromInt(width), @floatFromInt(height) },
    };
}

fn decodeJpeg(gpa: Allocator, bytes: []const u8, max_pixels: u64, diag: *Diagnostics) Error!sample.Pixels {
    var jdiag: jpeg.Diagnostics = .{};
    const header = jpeg.readHeader(bytes, &jdiag) catch |err| return jpegError(err, &jdiag, diag);
    if (@as(u64, header.width) * header.height > max_pixels) return tooLarge(diag, header.width, header.height, max_pixels);
    var pixels = try allocPixels(gpa, header.width, header.height, jpeg.outputChannels(header), diag);
    errdefer pixels.deinit(gpa);
    jpeg.decode(bytes, .{}, pixels.data, &jdiag) catch |err| return jpegError(err, &jdiag, diag);
    return pixels;
}

/// libjpeg's message, with what it means for the file in front: damage
/// warnings stop the decode (jpeg_shim.c), so a grey-painted or garbled
/// image never reaches training as if it were the image.
pub fn jpegError(err: jpeg.Error, jdiag: *const jpeg.Diagnostics, diag: *Diagnostics) Error {
    const text = if (jdiag.text().len > 0) jdiag.text() else @errorName(err);
    switch (err) {
        error.Truncated => diag.set("truncated: the JPEG data ends before the image does ({s})", .{text}),
        error.Corrupt => diag.set("corrupt JPEG: {s}", .{text}),
        else => diag.set("{s}", .{text}),
    }
    return switch (err) {
        error.NotJpeg, error.Corrupt => error.Corrupt,
        error.Truncated => error.Truncated,
        error.Unsupported => error.Unsupported,
        error.TooLarge => error.TooLarge,
        error.OutOfMemory => error.NoMemory,
    };
}

fn decodeWebp(gpa: Allocator, bytes: []const u8, max_pixels: u64, diag: *Diagnostics) Error!sample.Pixels {
    // libwebp's animation decoder (which also reads still files) says only
    // "failed" for a cut file; the RIFF header says how long the file is.
    std.debug.assert(bytes.len >= 12); // sniff() saw "RIFF....WEBP"
    const riff_bytes = @as(u64, std.mem.readInt(u32, bytes[4..8], .little)) + 8;
    if (bytes.len < riff_bytes) {
        diag.set("truncated: the WebP file has {d} bytes, its RIFF header declares {d}", .{ bytes.len, riff_bytes });
        return error.Truncated;
    }
    const info = webp.readInfo(bytes) catch |err| return webpError(err, diag);
    if (@as(u64, info.width) * info.height > max_pixels) return tooLarge(diag, info.width, info.height, max_pixels);
    const channels: u8 = if (info.has_alpha) 4 else 3;
    var pixels = try allocPixels(gpa, info.width, info.height, channels, diag);
    errdefer pixels.deinit(gpa);
    webp.decode(bytes, channels, pixels.data) catch |err| return webpError(err, diag);
    return pixels;
}

fn webpError(err: webp.Error, diag: *Diagnostics) Error {
    diag.set("WebP: {s}", .{switch (err) {
        error.NotWebp => "not a WebP file",
        error.Corrupt => "corrupt or truncated data",
        error.Unsupported => "unsupported WebP feature",
        error.TooLarge => "too large",
        error.OutOfMemory => "out of memory",
    }});
    return switch (err) {
        error.NotWebp, error.Corrupt => error.Corrupt,
        error.Unsupported => error.Unsupported,
        error.TooLarge => error.TooLarge,
        error.OutOfMemory => error.NoMemory,
    };
}

/// PNG: the fast path (png_fast.zig: 8-bit grey, LA, RGB, RGBA, not
/// interlaced) when it takes the file, else Wuffs, which also gives the cause
/// and reason for every refusal. `DATAGO_PNG_PATH` picks one path for tests.
fn decodePng(gpa: Allocator, bytes: []const u8, max_pixels: u64, diag: *Diagnostics) Error!sample.Pixels {
    const mode = png_fast.mode();
    if (mode == .wuffs) return decodeWuffs(gpa, .png, bytes, max_pixels, diag);
    var why: png_fast.Declined = .{};
    if (decodePngFast(gpa, bytes, max_pixels, &why, diag)) |pixels| {
        return pixels;
    } else |err| switch (err) {
        error.Declined => {},
        error.TooLarge => return error.TooLarge,
        error.NoMemory => return error.NoMemory,
    }
    if (mode == .fast) {
        diag.set("unsupported PNG variant (the fast path declined it: {s})", .{why.reason});
        return error.Unsupported;
    }
    return decodeWuffs(gpa, .png, bytes, max_pixels, diag);
}

/// Memory: the delivered pixels, the inflated image and (for split IDAT) a
/// copy of the image data, sized by `png_fast.probe` before any is allocated.
fn decodePngFast(
    gpa: Allocator,
    bytes: []const u8,
    max_pixels: u64,
    why: *png_fast.Declined,
    diag: *Diagnostics,
) error{ Declined, TooLarge, NoMemory }!sample.Pixels {
    var plan: png_fast.Plan = undefined;
    try png_fast.probe(bytes, &plan, why);
    if (@as(u64, plan.width) * plan.height > max_pixels) {
        tooLarge(diag, plan.width, plan.height, max_pixels) catch return error.TooLarge;
    }
    const buffer = sample.Pixels.alloc(gpa, @intCast(plan.pixelBytes())) catch {
        diag.set("out of memory for {d}x{d} pixels", .{ plan.width, plan.height });
        return error.NoMemory;
    };
    var pixels: sample.Pixels = .{
        .data = buffer,
        .backing = buffer,
        .width = plan.width,
        .height = plan.height,
        .channels = plan.channels,
        .bit_depth = 8,
        .original_width = plan.width,
        .original_height = plan.height,
        .crop = .{ 0, 0, @floatFromInt(plan.width), @floatFromInt(plan.height) },
    };
    errdefer pixels.deinit(gpa);
    const work = buffers.alloc(gpa, @intCast(plan.filteredBytes())) catch {
        diag.set("out of memory for the {d}x{d} image's work buffer", .{ plan.width, plan.height });
        return error.NoMemory;
    };
    defer buffers.free(gpa, work);
    png_fast.decode(gpa, &plan, bytes, buffer, work, why) catch |err| switch (err) {
        error.Declined => return error.Declined,
        error.OutOfMemory => {
            diag.set("out of memory decoding a PNG file", .{});
            return error.NoMemory;
        },
    };
    return pixels;
}

/// PNG, GIF, BMP. Memory: the header's image (`decode_bytes`, sized before
/// any pixel data is read) and the PNG work buffer, both pooled, plus
/// Wuffs' fixed decoder state; see wuffs.zig.
fn decodeWuffs(gpa: Allocator, format: wuffs.Format, bytes: []const u8, max_pixels: u64, diag: *Diagnostics) Error!sample.Pixels {
    var wdiag: wuffs.Diagnostics = .{};
    const header = wuffs.readHeader(gpa, format, bytes, &wdiag) catch |err| return wuffsError(format, err, &wdiag, diag);
    if (@as(u64, header.width) * header.height > max_pixels) return tooLarge(diag, header.width, header.height, max_pixels);
    const buffer = sample.Pixels.alloc(gpa, @intCast(header.decode_bytes)) catch {
        diag.set("out of memory for {d}x{d} pixels", .{ header.width, header.height });
        return error.NoMemory;
    };
    var pixels: sample.Pixels = .{
        .data = buffer[0..@intCast(header.pixelBytes())],
        .backing = buffer,
        .width = header.width,
        .height = header.height,
        .channels = header.channels,
        .bit_depth = header.bit_depth,
        .original_width = header.width,
        .original_height = header.height,
        .crop = .{ 0, 0, @floatFromInt(header.width), @floatFromInt(header.height) },
    };
    errdefer pixels.deinit(gpa);
    // A GIF's first frame may cover only part of its screen: the rest is
    // transparent, not what the buffer held before.
    if (format == .gif) @memset(buffer, 0);
    const work: []align(16) u8 = if (header.work_bytes == 0) &.{} else buffers.alloc(gpa, @intCast(header.work_bytes)) catch {
        diag.set("out of memory for the {d}x{d} image's work buffer", .{ header.width, header.height });
        return error.NoMemory;
    };
    defer if (work.len > 0) buffers.free(gpa, work);
    wuffs.decode(gpa, header, bytes, buffer, work, &wdiag) catch |err| return wuffsError(format, err, &wdiag, diag);
    return pixels;
}

/// Wuffs' terse words for the failures a person is most likely to meet.
fn plainWords(words: []const u8) []const u8 {
    const table = [_][2][]const u8{
        .{ "too much data", "it inflates to more than its declared image" },
        .{ "bad checksum", "a checksum does not match: the bytes were altered" },
        .{ "short read", "the file ends early" },
        .{ "truncated input", "the file ends early" },
        .{ "bad header", "its header is invalid" },
    };
    for (table) |entry| {
        if (std.mem.eql(u8, words, entry[0])) return entry[1];
    }
    return words;
}

/// Turns Wuffs' status ("#png: bad checksum") into a reason that says what
/// happened to the file, keeping Wuffs' words for the detail.
fn wuffsError(format: wuffs.Format, err: wuffs.Error, wdiag: *const wuffs.Diagnostics, diag: *Diagnostics) Error {
    const name = switch (format) {
        .png => "PNG",
        .gif => "GIF",
        .bmp => "BMP",
    };
    const raw = wdiag.text();
    // Wuffs' texts start with a kind sigil and a package: "#png: ", "$base: ".
    const wuffs_words = if (std.mem.indexOf(u8, raw, ": ")) |at| raw[at + 2 ..] else raw;
    const detail = plainWords(wuffs_words);
    switch (err) {
        error.Truncated => diag.set("truncated: the {s} data ends before the image does ({s})", .{ name, detail }),
        error.Corrupt => diag.set("corrupt: the {s} data is damaged ({s})", .{ name, detail }),
        error.Unsupported => diag.set("unsupported {s} variant ({s})", .{ name, detail }),
        error.OutOfMemory => diag.set("out of memory decoding a {s} file", .{name}),
    }
    return switch (err) {
        error.Truncated => error.Truncated,
        error.Corrupt => error.Corrupt,
        error.Unsupported => error.Unsupported,
        error.OutOfMemory => error.NoMemory,
    };
}

test "sniff recognises formats by content" {
    try std.testing.expectEqual(Format.jpeg, sniff("\xff\xd8\xff\xe0rest"));
    try std.testing.expectEqual(Format.png, sniff("\x89PNG\r\n\x1a\nrest"));
    try std.testing.expectEqual(Format.webp, sniff("RIFF\x00\x00\x00\x00WEBPVP8 "));
    try std.testing.expectEqual(Format.unknown, sniff("hello"));
    try std.testing.expectEqual(Format.unknown, sniff(""));
}

test "garbage and empty input fail with a cause" {
    var diag: Diagnostics = .{};
    try std.testing.expectError(error.Empty, decode(std.testing.allocator, "", 1000, &diag));
    try std.testing.expectError(error.NotImage, decode(std.testing.allocator, "plain text", 1000, &diag));
}
