//! Allocation hooks for vendored C (stb_image's STBI_MALLOC and friends), so
//! its memory goes through a Zig allocator: counted in tests, and freeable by
//! Zig code that adopts a buffer the C code returned.
//!
//! Each block carries a 16-byte header holding its size (the C interface
//! passes no size to free), which keeps the payload 16-byte aligned.
const std = @import("std");
const runtime = @import("runtime.zig");
const Allocator = std.mem.Allocator;

const header_bytes = 16;
const alignment: std.mem.Alignment = .@"16";

/// The allocator behind the hooks on this thread; tests swap in
/// std.testing.allocator to catch leaks in C code.
pub threadlocal var allocator: ?Allocator = null;

fn current() Allocator {
    return allocator orelse runtime.gpa;
}

fn malloc(size: usize) callconv(.c) ?*anyopaque {
    const total = std.math.add(usize, size, header_bytes) catch return null;
    const block = current().alignedAlloc(u8, alignment, total) catch return null;
    std.mem.writeInt(usize, block[0..@sizeOf(usize)], size, .little);
    return block.ptr + header_bytes;
}

fn free(ptr: ?*anyopaque) callconv(.c) void {
    const payload = ptr orelse return;
    current().free(backing(payload));
}

fn realloc(ptr: ?*anyopaque, size: usize) callconv(.c) ?*anyopaque {
    const old = ptr orelse return malloc(size);
    const old_block = backing(old);
    const fresh = malloc(size) orelse return null;
    const keep = @min(size, old_block.len - header_bytes);
    @memcpy(@as([*]u8, @ptrCast(fresh))[0..keep], old_block[header_bytes..][0..keep]);
    current().free(old_block);
    return fresh;
}

/// The whole block behind a payload pointer returned by the hooks: what the
/// hooks' allocator must free.
pub fn backing(payload: *anyopaque) []align(16) u8 {
    const base: [*]align(16) u8 = @alignCast(@as([*]u8, @ptrCast(payload)) - header_bytes);
    const size = std.mem.readInt(usize, base[0..@sizeOf(usize)], .little);
    return base[0 .. size + header_bytes];
}

comptime {
    @export(&malloc, .{ .name = "dg_c_malloc", .visibility = .hidden });
    @export(&free, .{ .name = "dg_c_free", .visibility = .hidden });
    @export(&realloc, .{ .name = "dg_c_realloc", .visibility = .hidden });
}

test "hooks round-trip through the testing allocator" {
    allocator = std.testing.allocator;
    defer allocator = null;
    const p = malloc(10) orelse return error.OutOfMemory;
    @memset(@as([*]u8, @ptrCast(p))[0..10], 7);
    const q = realloc(p, 100) orelse return error.OutOfMemory;
    try std.testing.expectEqual(@as(u8, 7), @as([*]u8, @ptrCast(q))[9]);
    try std.testing.expectEqual(@as(usize, 116), backing(q).len);
    try std.testing.expectEqual(@as(usize, 0), @intFromPtr(q) % 16);
    free(q);
    free(null);
}
