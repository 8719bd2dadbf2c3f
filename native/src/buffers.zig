//! Pixel buffers, recycled: a decoded frame or an output image freed when
//! Python drops its sample goes back to a free list of its size class and
//! serves the next image of a similar size, so steady state touches no fresh
//! pages (a fresh 4 MB buffer costs ~1000 page faults) and never memsets.
//!
//! Size classes are four per octave (a buffer is at most 19 % larger than
//! asked); buffers below `pooled_bytes_min` go straight to malloc, and the
//! pool keeps at most `pooled_bytes_max` bytes, freeing the rest.
//! Only buffers from `runtime.gpa` are pooled; other allocators (the tests'
//! leak-checking one) get plain allocations, so leaks stay visible.
const std = @import("std");
const runtime = @import("runtime.zig");
const Allocator = std.mem.Allocator;

pub const alignment: std.mem.Alignment = .@"16";
pub const pooled_bytes_min = 4 * 1024;
pub const pooled_bytes_max = 64 * 1024 * 1024;
const class_count = 4 * 48;

const Node = struct { next: ?*Node };

var mutex: std.Io.Mutex = .init;
var free_lists: [class_count]?*Node = @splat(null);
var pooled_bytes: usize = 0;
/// Buffers served from the pool / freshly allocated, for the memory test
/// and the stats.
pub var hits: std.atomic.Value(u64) = .init(0);
pub var misses: std.atomic.Value(u64) = .init(0);

fn boot() std.Io {
    return std.Io.Threaded.global_single_threaded.io();
}

/// The class of a request of `len` bytes (len >= pooled_bytes_min).
fn classOf(len: usize) usize {
    const octave: usize = 63 - @clz(@as(u64, len));
    const quarter: usize = @intCast((len >> @intCast(octave - 2)) & 3);
    // Round up: a length above the class's lower edge needs the next class.
    const lower = (@as(usize, 4) + quarter) << @intCast(octave - 2);
    const index = octave * 4 + quarter + @intFromBool(len > lower);
    return index;
}

fn classBytes(class: usize) usize {
    const octave = class / 4;
    const quarter = class % 4;
    return (@as(usize, 4) + quarter) << @intCast(octave - 2);
}

fn isPoolable(gpa: Allocator, len: usize) bool {
    return len >= pooled_bytes_min and gpa.vtable == runtime.gpa.vtable and classOf(len) < class_count;
}

/// A 16-aligned buffer of exactly `len` bytes, contents undefined. Free it
/// with `free` and the same allocator.
pub fn alloc(gpa: Allocator, len: usize) Allocator.Error![]align(16) u8 {
    if (!isPoolable(gpa, len)) return rawAlloc(gpa, len);
    const class = classOf(len);
    const bytes = classBytes(class);
    {
        const io = boot();
        mutex.lockUncancelable(io);
        defer mutex.unlock(io);
        if (free_lists[class]) |node| {
            free_lists[class] = node.next;
            pooled_bytes -= bytes;
            _ = hits.fetchAdd(1, .monotonic);
            const base: [*]align(16) u8 = @ptrCast(@alignCast(node));
            return base[0..len];
        }
    }
    _ = misses.fetchAdd(1, .monotonic);
    const block = try rawAlloc(gpa, bytes);
    return block[0..len];
}

/// Returns a buffer from `alloc`. Threadsafe.
pub fn free(gpa: Allocator, buffer: []align(16) u8) void {
    if (buffer.len == 0) return;
    if (!isPoolable(gpa, buffer.len)) return rawFree(gpa, buffer);
    const class = classOf(buffer.len);
    const bytes = classBytes(class);
    const block = buffer.ptr[0..bytes];
    const io = boot();
    mutex.lockUncancelable(io);
    if (pooled_bytes + bytes <= pooled_bytes_max) {
        const node: *Node = @ptrCast(@alignCast(block.ptr));
        node.next = free_lists[class];
        free_lists[class] = node;
        pooled_bytes += bytes;
        mutex.unlock(io);
        return;
    }
    mutex.unlock(io);
    rawFree(gpa, block);
}

/// Frees a 16-aligned buffer that did not come from `alloc` (a C decoder's),
/// without the safe-mode memset.
pub fn freeUnpooled(gpa: Allocator, buffer: []align(16) u8) void {
    rawFree(gpa, buffer);
}

/// Allocation without the safe-mode memset of Allocator.alloc/free: pixel
/// buffers are megabytes, always fully written before they are read.
fn rawAlloc(gpa: Allocator, len: usize) Allocator.Error![]align(16) u8 {
    if (len == 0) return &.{};
    const ptr = gpa.rawAlloc(len, alignment, @returnAddress()) orelse return error.OutOfMemory;
    return @alignCast(ptr[0..len]);
}

fn rawFree(gpa: Allocator, buffer: []align(16) u8) void {
    if (buffer.len == 0) return;
    gpa.rawFree(buffer, alignment, @returnAddress());
}

/// Frees every pooled buffer (tests and shutdown).
pub fn trim() void {
    const io = boot();
    mutex.lockUncancelable(io);
    defer mutex.unlock(io);
    for (&free_lists, 0..) |*head, class| {
        while (head.*) |node| {
            head.* = node.next;
            const base: [*]align(16) u8 = @ptrCast(@alignCast(node));
            rawFree(runtime.gpa, base[0..classBytes(class)]);
        }
    }
    pooled_bytes = 0;
}

const testing = std.testing;

test "classes cover their requests within a quarter octave" {
    var len: usize = pooled_bytes_min;
    while (len < (1 << 30)) : (len = len * 9 / 8 + 7) {
        const bytes = classBytes(classOf(len));
        try testing.expect(bytes >= len);
        try testing.expect(bytes <= len + len / 4 + 1);
    }
    try testing.expectEqual(@as(usize, 16384), classBytes(classOf(16384)));
    try testing.expectEqual(@as(usize, 20480), classBytes(classOf(16385)));
}

test "freed buffers are reused by the next request of their class" {
    const a = try alloc(runtime.gpa, 100_000);
    const address = @intFromPtr(a.ptr);
    free(runtime.gpa, a);
    const before = hits.load(.monotonic);
    const b = try alloc(runtime.gpa, 99_000);
    try testing.expectEqual(address, @intFromPtr(b.ptr));
    try testing.expectEqual(before + 1, hits.load(.monotonic));
    free(runtime.gpa, b);
    trim();
    try testing.expectEqual(@as(usize, 0), pooled_bytes);
}

test "other allocators are not pooled (leaks stay visible)" {
    const a = try alloc(testing.allocator, 100_000);
    free(testing.allocator, a);
}
