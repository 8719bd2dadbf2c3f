//! Images written by hand for the native tests (no codec or file needed).
const std = @import("std");

pub const Fill = union(enum) {
    /// Every byte this value (a grey image).
    value: u8,
    /// A deterministic gradient, different in every channel.
    gradient,
};

/// A 24-bit BMP of w x h into `buffer` (54 + padded rows bytes); returns the file.
pub fn bmp(buffer: []u8, w: u32, h: u32, fill: Fill) []u8 {
    const row = (w * 3 + 3) & ~@as(u32, 3);
    const size = 54 + row * h;
    @memset(buffer[0..size], 0);
    @memcpy(buffer[0..2], "BM");
    std.mem.writeInt(u32, buffer[2..6], size, .little);
    std.mem.writeInt(u32, buffer[10..14], 54, .little);
    std.mem.writeInt(u32, buffer[14..18], 40, .little);
    std.mem.writeInt(i32, buffer[18..22], @intCast(w), .little);
    std.mem.writeInt(i32, buffer[22..26], @intCast(h), .little);
    std.mem.writeInt(u16, buffer[26..28], 1, .little);
    std.mem.writeInt(u16, buffer[28..30], 24, .little);
    for (0..h) |y| {
        const pixels = buffer[54 + y * row ..][0 .. w * 3];
        switch (fill) {
            .value => |v| @memset(pixels, v),
            .gradient => for (pixels, 0..) |*b, i| {
                b.* = @intCast((y * 7 + i * 13) % 256);
            },
        }
    }
    return buffer[0..size];
}
