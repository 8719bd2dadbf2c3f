//! Logging with the reference's levels and `RUST_LOG` rules (compatibility.md §8).
//!
//! Lines look like env_logger's:
//!     [2026-11-29T13:23:30Z ERROR datago::files] message
//! The level is fixed when the logger is installed: by `install` (Python's
//! `initialize_logging`) or, failing that, by the first pass that starts,
//! with `warn` as the default. `RUST_LOG` (or `DATAGO_LOG`) wins over the
//! level passed in, as it does for the reference.
const std = @import("std");
const builtin = @import("builtin");
const runtime = @import("runtime.zig");

pub const Level = enum(u8) {
    off = 0,
    err = 1,
    warn = 2,
    info = 3,
    debug = 4,
    trace = 5,

    pub fn parse(text: []const u8) ?Level {
        const names = [_]struct { []const u8, Level }{
            .{ "off", .off },   .{ "error", .err },   .{ "warn", .warn },   .{ "warning", .warn },
            .{ "info", .info }, .{ "debug", .debug }, .{ "trace", .trace },
        };
        for (names) |entry| if (std.ascii.eqlIgnoreCase(text, entry[0])) return entry[1];
        return null;
    }

    pub fn label(self: Level) []const u8 {
        return switch (self) {
            .off => "OFF  ",
            .err => "ERROR",
            .warn => "WARN ",
            .info => "INFO ",
            .debug => "DEBUG",
            .trace => "TRACE",
        };
    }
};

pub const Scope = enum { loader, files, decode, pipeline, image };

var installed: std.atomic.Value(bool) = .init(false);
var max_level: std.atomic.Value(u8) = .init(@backingInt(Level.warn));
var write_mutex: std.Io.Mutex = .init;

/// Captured lines wait here for the host (Python forwards them to its
/// `logging`), so native threads never block on the host: when the host
/// does not keep up, the oldest lines are dropped and counted.
const Captured = struct {
    level: Level,
    scope: Scope,
    len: u16,
    text: [capture_line_bytes]u8,
};
const capture_line_bytes = 512;
const capture_lines_max = 1024;
var capture_enabled: std.atomic.Value(bool) = .init(false);
var capture_ring: [capture_lines_max]Captured = undefined;
var capture_head: usize = 0;
var capture_len: usize = 0;
var capture_dropped: u64 = 0;
var capture_cond: std.Io.Condition = .init;
/// Set by `wakeReaders`, cleared by the next `readCaptured` that would wait
/// (so a wake that comes just before the wait is not lost); guarded by
/// `write_mutex`.
var wake_pending: bool = false;

fn boot() std.Io {
    return std.Io.Threaded.global_single_threaded.io();
}

/// A thread that held `write_mutex` at fork() does not exist in the child:
/// reset the lock there (the child's queue starts empty).
fn resetInChild() callconv(.c) void {
    write_mutex = .init;
    capture_cond = .init;
    capture_head = 0;
    capture_len = 0;
    capture_dropped = 0;
    wake_pending = false;
}

var fork_handler_installed: std.atomic.Value(bool) = .init(false);

fn installForkHandler() void {
    if (fork_handler_installed.swap(true, .acq_rel)) return;
    _ = std.c.pthread_atfork(null, null, resetInChild);
}

/// Sends lines to the capture queue (true) or to stderr (false). Turning
/// capture off wakes every `readCaptured` waiter, so the host can stop its
/// reading thread at exit without waiting out a timeout; lines already
/// queued stay readable.
pub fn setCapture(on: bool) void {
    installForkHandler();
    const io = boot();
    write_mutex.lockUncancelable(io);
    defer write_mutex.unlock(io);
    capture_enabled.store(on, .release);
    if (!on) capture_cond.broadcast(io);
}

/// Makes a `readCaptured` waiting now, or the next one about to wait,
/// return at once (with what is queued, possibly nothing), so a host's flush
/// need not wait out its reading thread's timeout.
pub fn wakeReaders() void {
    const io = boot();
    write_mutex.lockUncancelable(io);
    defer write_mutex.unlock(io);
    wake_pending = true;
    capture_cond.broadcast(io);
}

/// Waits up to `timeout_ms` (< 0: no limit) for captured lines and writes
/// whole lines "<level digit>\t<scope>\t<message>\n" into `out` while they
/// fit. Returns the bytes written; `dropped` receives (and resets) the count
/// of lines lost to a full queue.
pub fn readCaptured(timeout_ms: i64, out: []u8, dropped: *u64) usize {
    const io = boot();
    write_mutex.lockUncancelable(io);
    defer write_mutex.unlock(io);
    if (capture_len == 0 and timeout_ms != 0) {
        const deadline: std.Io.Timeout = if (timeout_ms < 0) .none else std.Io.Timeout.toDeadline(.{ .duration = .{
            .raw = .fromMilliseconds(timeout_ms),
            .clock = .awake,
        } }, io);
        while (capture_len == 0 and capture_enabled.load(.acquire) and !wake_pending)
            capture_cond.waitTimeout(io, &write_mutex, deadline) catch break;
        wake_pending = false;
    }
    var written: usize = 0;
    while (capture_len > 0) {
        const line = &capture_ring[capture_head];
        const scope = @tagName(line.scope);
        const need = 2 + scope.len + 1 + line.len + 1;
        if (written + need > out.len) break;
        var w: std.Io.Writer = .fixed(out[written..]);
        w.print("{d}\t{s}\t{s}\n", .{ @backingInt(line.level), scope, line.text[0..line.len] }) catch break;
        written += need;
        capture_head = (capture_head + 1) % capture_lines_max;
        capture_len -= 1;
    }
    dropped.* = capture_dropped;
    capture_dropped = 0;
    return written;
}

fn capture(level: Level, scope: Scope, message: []const u8) void {
    const io = boot();
    write_mutex.lockUncancelable(io);
    defer write_mutex.unlock(io);
    if (capture_len == capture_lines_max) {
        capture_head = (capture_head + 1) % capture_lines_max;
        capture_len -= 1;
        capture_dropped += 1;
    }
    const slot = &capture_ring[(capture_head + capture_len) % capture_lines_max];
    const n = @min(message.len, capture_line_bytes);
    slot.level = level;
    slot.scope = scope;
    slot.len = @intCast(n);
    // Newlines would split the line on the host side.
    for (slot.text[0..n], message[0..n]) |*d, c| d.* = if (c == '\n') ' ' else c;
    capture_len += 1;
    capture_cond.signal(io);
}

pub const InstallError = error{UnknownLevel};

/// Installs the logger once per process. Returns true if this call installed
/// it, false if it was already installed. `level` is used only when neither
/// RUST_LOG nor DATAGO_LOG is set; null means `error`, env_logger's default.
pub fn install(level: ?[]const u8) InstallError!bool {
    var chosen: Level = .err;
    if (level) |text| chosen = Level.parse(text) orelse return error.UnknownLevel;
    if (installed.swap(true, .acq_rel)) return false;
    max_level.store(@backingInt(envLevel() orelse chosen), .release);
    return true;
}

/// Installs the logger with the `warn` default if nobody did (compatibility.md §8: every
/// start tries to).
pub fn ensureInstalled() void {
    if (installed.swap(true, .acq_rel)) return;
    max_level.store(@backingInt(envLevel() orelse .warn), .release);
}

fn envLevel() ?Level {
    const text = runtime.getenv("DATAGO_LOG") orelse runtime.getenv("RUST_LOG") orelse return null;
    return parseFilter(text);
}

/// The level RUST_LOG gives to datago: the last directive naming `datago`
/// (or a `datago::` module), else the last bare level. Other crates'
/// directives are ignored. An unparsable filter means `error`.
pub fn parseFilter(text: []const u8) Level {
    var bare: ?Level = null;
    var ours: ?Level = null;
    var directives = std.mem.tokenizeScalar(u8, text, ',');
    while (directives.next()) |raw| {
        const directive = std.mem.trim(u8, raw, " \t");
        if (std.mem.indexOfScalar(u8, directive, '=')) |eq| {
            const target = directive[0..eq];
            const level = Level.parse(directive[eq + 1 ..]) orelse continue;
            if (std.mem.eql(u8, target, "datago") or std.mem.startsWith(u8, target, "datago::")) ours = level;
        } else if (Level.parse(directive)) |level| {
            bare = level;
        } else if (std.mem.eql(u8, directive, "datago") or std.mem.startsWith(u8, directive, "datago::")) {
            ours = .trace;
        }
    }
    return ours orelse bare orelse .err;
}

pub fn enabled(level: Level) bool {
    return @backingInt(level) <= max_level.load(.acquire) and level != .off;
}

/// Formats one line and writes it to stderr, or to the capture queue when
/// the host asked for it. Lines from several threads never interleave.
/// Never fails: a line that cannot be written is dropped.
pub fn write(level: Level, scope: Scope, comptime fmt: []const u8, args: anytype) void {
    if (!enabled(level)) return;
    var buffer: [2048]u8 = undefined;
    if (capture_enabled.load(.acquire)) {
        var w: std.Io.Writer = .fixed(&buffer);
        w.print(fmt, args) catch {};
        capture(level, scope, w.buffered());
        return;
    }
    // The unit tests provoke hundreds of expected errors; on stderr they
    // would bury the runner's report. DATAGO_LOG=... shows them.
    if (builtin.is_test and runtime.getenv("DATAGO_LOG") == null) return;
    var w: std.Io.Writer = .fixed(&buffer);
    var ts: std.c.timespec = undefined;
    _ = std.c.clock_gettime(.REALTIME, &ts);
    writeTimestamp(&w, @intCast(@max(ts.sec, 0))) catch {};
    w.print(" {s} datago::{s}] ", .{ level.label(), @tagName(scope) }) catch {};
    w.print(fmt, args) catch {
        // Truncated: mark it and keep what fits.
        const marker = "...";
        w.end = buffer.len - marker.len - 1;
        w.writeAll(marker) catch {};
    };
    w.writeByte('\n') catch {};
    const io = boot();
    write_mutex.lockUncancelable(io);
    defer write_mutex.unlock(io);
    const line = w.buffered();
    var written: usize = 0;
    while (written < line.len) {
        const n = std.c.write(2, line[written..].ptr, line.len - written);
        if (n <= 0) return;
        written += @intCast(n);
    }
}

pub fn err(scope: Scope, comptime fmt: []const u8, args: anytype) void {
    write(.err, scope, fmt, args);
}
pub fn warn(scope: Scope, comptime fmt: []const u8, args: anytype) void {
    write(.warn, scope, fmt, args);
}
pub fn info(scope: Scope, comptime fmt: []const u8, args: anytype) void {
    write(.info, scope, fmt, args);
}
pub fn debug(scope: Scope, comptime fmt: []const u8, args: anytype) void {
    write(.debug, scope, fmt, args);
}

fn writeTimestamp(w: *std.Io.Writer, unix_seconds: u64) !void {
    const epoch_seconds: std.time.epoch.EpochSeconds = .{ .secs = unix_seconds };
    const day = epoch_seconds.getEpochDay().calculateYearDay();
    const month_day = day.calculateMonthDay();
    const time = epoch_seconds.getDaySeconds();
    try w.print("[{d:0>4}-{d:0>2}-{d:0>2}T{d:0>2}:{d:0>2}:{d:0>2}Z", .{
        day.year,               month_day.month.numeric(), month_day.day_index + 1,
        time.getHoursIntoDay(), time.getMinutesIntoHour(), time.getSecondsIntoMinute(),
    });
}

/// Escapes a file path for a log line: printable ASCII as is, anything else
/// as \xNN, so a hostile name cannot forge lines or terminal sequences.
pub const PathFormatter = struct {
    bytes: []const u8,

    pub fn format(self: PathFormatter, w: *std.Io.Writer) std.Io.Writer.Error!void {
        for (self.bytes) |b| {
            if (b >= 0x20 and b < 0x7f and b != '\\') try w.writeByte(b) else try w.print("\\x{x:0>2}", .{b});
        }
    }
};

pub fn path(bytes: []const u8) PathFormatter {
    return .{ .bytes = bytes };
}

const testing = std.testing;

test "RUST_LOG filters" {
    try testing.expectEqual(Level.info, parseFilter("info"));
    try testing.expectEqual(Level.debug, parseFilter("warn,datago=debug"));
    try testing.expectEqual(Level.debug, parseFilter("datago::worker_files=debug,hyper=info"));
    try testing.expectEqual(Level.err, parseFilter("hyper=info"));
    try testing.expectEqual(Level.err, parseFilter("nonsense"));
    try testing.expectEqual(Level.trace, parseFilter("datago"));
}

test "levels parse case-insensitively" {
    try testing.expectEqual(@as(?Level, .warn), Level.parse("WARN"));
    try testing.expectEqual(@as(?Level, null), Level.parse("nonsense"));
}

test "timestamps are ISO 8601 in UTC" {
    var buffer: [64]u8 = undefined;
    var w: std.Io.Writer = .fixed(&buffer);
    try writeTimestamp(&w, 1_796_044_410);
    try testing.expectEqualStrings("[2026-11-30T13:13:30Z", w.buffered());
}

test "captured lines queue, drop the oldest when full, and read back whole" {
    setCapture(true);
    defer setCapture(false);
    const saved = max_level.swap(@backingInt(Level.info), .acq_rel);
    defer max_level.store(saved, .release);
    for (0..capture_lines_max + 3) |i| write(.info, .files, "line {d}\nsplit", .{i});
    var out: [50]u8 = undefined; // room for two 21-byte lines
    var dropped: u64 = 0;
    const n = readCaptured(0, &out, &dropped);
    try testing.expectEqual(@as(u64, 3), dropped);
    try testing.expectEqualStrings("3\tfiles\tline 3 split\n3\tfiles\tline 4 split\n", out[0..n]);
    var big: [1 << 16]u8 = undefined;
    var total: usize = 2;
    while (true) {
        const m = readCaptured(0, &big, &dropped);
        if (m == 0) break;
        total += std.mem.count(u8, big[0..m], "\n");
    }
    try testing.expectEqual(@as(usize, capture_lines_max), total);
}

test "a wake ends a reader's wait, even one that starts after it" {
    setCapture(true);
    defer setCapture(false);
    var out: [64]u8 = undefined;
    var dropped: u64 = 0;
    // Before the wait: kept, so this read without a time limit returns.
    wakeReaders();
    try testing.expectEqual(@as(usize, 0), readCaptured(-1, &out, &dropped));
    // During the wait, from another thread.
    const Waker = struct {
        fn run() void {
            std.Io.Threaded.global_single_threaded.io().sleep(.fromMilliseconds(20), .awake) catch {};
            wakeReaders();
        }
    };
    const waker = try std.Thread.spawn(.{}, Waker.run, .{});
    try testing.expectEqual(@as(usize, 0), readCaptured(-1, &out, &dropped));
    waker.join();
}

test "paths are escaped" {
    var buffer: [64]u8 = undefined;
    var w: std.Io.Writer = .fixed(&buffer);
    try w.print("{f}", .{path("a\xffb\n")});
    try testing.expectEqualStrings("a\\xffb\\x0a", w.buffered());
}
