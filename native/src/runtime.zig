//! The library-wide runtime that loaders borrow: the allocator, the one
//! `std.Io` instance of the process, library-wide counters, and the CPU budget.
//!
//! Only this file and pipeline.zig create threads; every thread takes an `Io`
//! reference when it starts and drops it when it ends, so closing the last
//! loader never tears the `Io` down under a running worker.
const std = @import("std");
const builtin = @import("builtin");
const Io = std.Io;

/// Every native allocation that outlives a call goes through this allocator:
/// buffers are freed on whatever thread Python's GC runs, and glibc malloc is
/// thread-safe and shared with the host.
pub const gpa = std.heap.c_allocator;

var io_mutex: Io.Mutex = .init;
var io_refs: usize = 0;
var io_threaded: Io.Threaded = undefined;

/// Takes a reference on the process-wide `Io` and returns it. `Threaded.init`
/// installs process-wide SIGIO/SIGPIPE handlers, so there is exactly one,
/// created by the first user and destroyed (handlers restored) by the last.
/// Threadsafe.
pub fn acquireIo() Io {
    const boot = Io.Threaded.global_single_threaded.io();
    io_mutex.lockUncancelable(boot);
    defer io_mutex.unlock(boot);
    if (io_refs == 0) io_threaded = Io.Threaded.init(gpa, .{});
    io_refs += 1;
    return io_threaded.io();
}

/// Drops a reference taken by `acquireIo`. Threadsafe.
pub fn releaseIo() void {
    const boot = Io.Threaded.global_single_threaded.io();
    io_mutex.lockUncancelable(boot);
    defer io_mutex.unlock(boot);
    std.debug.assert(io_refs > 0);
    io_refs -= 1;
    if (io_refs == 0) io_threaded.deinit();
}

/// Samples handed to the caller and not yet freed (`datago_live_samples`).
pub var live_samples: std.atomic.Value(i64) = .init(0);

/// Stopped or closed passes whose threads are still finishing
/// (`datago_live_cleanup_threads`).
pub var live_cleanups: std.atomic.Value(i64) = .init(0);

/// Passes not yet freed (their threads may still run), for tests.
pub var live_passes: std.atomic.Value(i64) = .init(0);

/// Stack of every worker thread. Decoders and resizers keep their buffers on
/// the heap; 4 MiB leaves a wide margin for libjpeg's and libwebp's frames.
pub const thread_stack_bytes = 4 * 1024 * 1024;

/// The number of CPUs this process may use: the affinity mask, further capped
/// by a cgroup v2 CPU quota when one is set. Never less than 1.
pub fn usableCpuCount() u32 {
    const affinity: u32 = @intCast(@min(std.Thread.getCpuCount() catch 1, std.math.maxInt(u32)));
    const quota = cgroupCpuQuota() orelse affinity;
    return @max(1, @min(affinity, quota));
}

fn cgroupCpuQuota() ?u32 {
    var buffer: [128]u8 = undefined;
    const text = readSmallFile("/sys/fs/cgroup/cpu.max", &buffer) orelse return null;
    return parseCpuMax(text);
}

/// Parses cgroup v2 `cpu.max` ("max 100000" or "150000 100000") into a CPU
/// count, rounding a fractional quota up.
pub fn parseCpuMax(text: []const u8) ?u32 {
    var fields = std.mem.tokenizeAny(u8, text, " \t\r\n");
    const quota_text = fields.next() orelse return null;
    const period_text = fields.next() orelse return null;
    if (std.mem.eql(u8, quota_text, "max")) return null;
    const quota = std.fmt.parseInt(u64, quota_text, 10) catch return null;
    const period = std.fmt.parseInt(u64, period_text, 10) catch return null;
    if (quota == 0 or period == 0) return null;
    const cpus = std.math.divCeil(u64, quota, period) catch return null;
    return @intCast(@min(cpus, std.math.maxInt(u32)));
}

fn readSmallFile(path: [*:0]const u8, buffer: []u8) ?[]const u8 {
    const fd = std.c.open(path, .{ .ACCMODE = .RDONLY, .CLOEXEC = true });
    if (fd < 0) return null;
    defer _ = std.c.close(fd);
    const n = std.c.read(fd, buffer.ptr, buffer.len);
    if (n <= 0) return null;
    return buffer[0..@intCast(n)];
}

/// Reads an environment variable of the host process. The returned slice
/// borrows the environment block; do not keep it across a `setenv`.
pub fn getenv(name: [*:0]const u8) ?[]const u8 {
    const value = std.c.getenv(name) orelse return null;
    return std.mem.span(value);
}

/// The process id, to detect handles inherited across `fork()`. Cached:
/// glibc no longer caches getpid, and `next` checks it on every call; a
/// pthread_atfork handler refreshes it in the child.
pub fn processId() i32 {
    const cached = cached_pid.load(.acquire);
    if (cached != 0) return cached;
    if (!atfork_installed.swap(true, .acq_rel)) _ = std.c.pthread_atfork(null, null, forgetPid);
    const pid: i32 = @intCast(std.c.getpid());
    cached_pid.store(pid, .release);
    return pid;
}

var cached_pid: std.atomic.Value(i32) = .init(0);
var atfork_installed: std.atomic.Value(bool) = .init(false);

fn forgetPid() callconv(.c) void {
    cached_pid.store(0, .release);
}

/// Fresh entropy for unseeded shuffles.
pub fn entropy64() u64 {
    var bytes: [8]u8 = undefined;
    const io = Io.Threaded.global_single_threaded.io();
    io.random(&bytes);
    return std.mem.readInt(u64, &bytes, .little);
}

/// Monotonic milliseconds, for timings and deadlines that need no `Io`.
pub fn monotonicNs() u64 {
    var ts: std.c.timespec = undefined;
    _ = std.c.clock_gettime(.MONOTONIC, &ts);
    return @as(u64, @intCast(ts.sec)) * std.time.ns_per_s + @as(u64, @intCast(ts.nsec));
}

test "parseCpuMax reads cgroup v2 quotas" {
    try std.testing.expectEqual(@as(?u32, null), parseCpuMax("max 100000\n"));
    try std.testing.expectEqual(@as(?u32, 2), parseCpuMax("150000 100000\n"));
    try std.testing.expectEqual(@as(?u32, 1), parseCpuMax("50000 100000"));
    try std.testing.expectEqual(@as(?u32, 4), parseCpuMax("400000 100000"));
    try std.testing.expectEqual(@as(?u32, null), parseCpuMax("garbage"));
    try std.testing.expectEqual(@as(?u32, null), parseCpuMax("0 100000"));
}

test "usableCpuCount is at least one" {
    try std.testing.expect(usableCpuCount() >= 1);
}

test "io references nest" {
    const a = acquireIo();
    const b = acquireIo();
    _ = a;
    _ = b;
    releaseIo();
    releaseIo();
    try std.testing.expectEqual(@as(usize, 0), io_refs);
}
