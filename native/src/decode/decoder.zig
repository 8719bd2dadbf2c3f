//! Picks a codec by content (never by file name: a PNG named .jpg decodes)
//! and returns the decoded image in the layout of compatibility.md §3.2.
const std = @import("std");
const Allocator = std.mem.Allocator;
const alloc_hooks = @import("../alloc_hooks.zig");
const sample = @import("../sample.zig");
const jpeg = @import("jpeg.zig");
const stb = @import("stb.zig");
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

/// Decodes `bytes`. The result's buffer comes from `gpa`, which must be the
/// allocator behind alloc_hooks on this thread (runtime.gpa in the library).
/// Every decoder checks the header's size against `max_pixels` before it
/// allocates pixels.
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
        .png, .gif, .bmp => decodeStb(gpa, bytes, max_pixels, diag),
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
    try checkJpegWarnings(&jdiag, diag);
    return pixels;
}

/// libjpeg recovers from damaged data with warnings; a premature end leaves
/// a grey bottom that must not reach training as if it were the image.
pub fn checkJpegWarnings(jdiag: *const jpeg.Diagnostics, diag: *Diagnostics) Error!void {
    if (jdiag.warnings == 0) return;
    if (std.mem.indexOf(u8, jdiag.text(), "Premature end") != null) {
        diag.set("truncated: {s}", .{jdiag.text()});
        return error.Truncated;
    }
}

pub fn jpegError(err: jpeg.Error, jdiag: *const jpeg.Diagnostics, diag: *Diagnostics) Error {
    diag.set("{s}", .{if (jdiag.text().len > 0) jdiag.text() else @errorName(err)});
    return switch (err) {
        error.NotJpeg, error.Corrupt => error.Corrupt,
        error.Unsupported => error.Unsupported,
        error.TooLarge => error.TooLarge,
        error.OutOfMemory => error.NoMemory,
    };
}

fn decodeWebp(gpa: Allocator, bytes: []const u8, max_pixels: u64, diag: *Diagnostics) Error!sample.Pixels {
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

fn decodeStb(gpa: Allocator, bytes: []const u8, max_pixels: u64, diag: *Diagnostics) Error!sample.Pixels {
    std.debug.assert(alloc_hooks.allocator == null or alloc_hooks.allocator.?.ptr == gpa.ptr);
    const image = stb.decode(bytes, max_pixels) catch |err| {
        switch (err) {
            error.TooLarge => {
                const info = stb.readInfo(bytes) catch stb.Info{ .width = 0, .height = 0, .channels = 0, .bit_depth = 0 };
                diag.set("{d}x{d} pixels is more than max_pixels ({d})", .{ info.width, info.height, max_pixels });
                return error.TooLarge;
            },
            error.OutOfMemory => {
                diag.set("out of memory", .{});
                return error.NoMemory;
            },
            error.Unsupported => {
                diag.set("{s}", .{stb.failureReason()});
                return error.Unsupported;
            },
            error.Corrupt => {
                diag.set("{s}", .{stb.failureReason()});
                return error.Corrupt;
            },
        }
    };
    const bytes_per_sample: usize = image.bit_depth / 8;
    const len = @as(usize, image.width) * image.height * image.channels * bytes_per_sample;
    std.debug.assert(image.pixels.len == len);
    return .{
        .data = image.pixels,
        .backing = alloc_hooks.backing(image.pixels.ptr),
        .pooled = false,
        .width = image.width,
        .height = image.height,
        .channels = image.channels,
        .bit_depth = image.bit_depth,
        .original_width = image.width,
        .original_height = image.height,
        .crop = .{ 0, 0, @floatFromInt(image.width), @floatFromInt(image.height) },
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
