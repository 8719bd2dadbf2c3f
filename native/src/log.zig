//! Logging with the reference's levels and `RUST_LOG` rules (spec §8).
//!
//! Lines look like env_logger's:
//!     [2026-11-29T13:23:30Z ERROR datago::files] message
//! The level is fixed when the logger is installed: by `install` (Python's
//! `initialize_logging`) or, failing that, by the first pass that starts,
//! with `warn` as the default. `RUST_LOG` (or `DATAGO_LOG`) wins over the
//! level passed in, as it does for the reference.
const std = @import("std");
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
            .{ "off", .off },     .{ "error", .err }, .{ "warn", .warn },     .{ "warning", .warn },
            .{ "info", .info },   .{ "debug", .debug }, .{ "trace", .trace },
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
var max_level: std.atomic.Value(u8) = .init(@intFromEnum(Level.warn));
var write_mutex: std.Io.Mutex = .init;

pub const InstallError = error{UnknownLevel};

/// Installs the logger once per process. Returns true if this call installed
/// it, false if it was already installed. `level` is used only when neither
/// RUST_LOG nor DATAGO_LOG is set; null means `error`, env_logger's default.
pub fn install(level: ?[]const u8) InstallError!bool {
    var chosen: Level = .err;
    if (level) |text| chosen = Level.parse(text) orelse return error.UnknownLevel;
    if (installed.swap(true, .acq_rel)) return false;
    max_level.store(@intFromEnum(envLevel() orelse chosen), .release);
    return true;
}

/// Installs the logger with the `warn` default if nobody did (spec §8: every
/// start tries to).
pub fn ensureInstalled() void {
    if (installed.swap(true, .acq_rel)) return;
    max_level.store(@intFromEnum(envLevel() orelse .warn), .release);
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
    return @intFromEnum(level) <= max_level.load(.acquire) and level != .off;
}

/// Formats and writes one line to stderr. Lines from several threads never
/// interleave. Never fails: a line that cannot be written is dropped.
pub fn write(level: Level, scope: Scope, comptime fmt: []const u8, args: anytype) void {
    if (!enabled(level)) return;
    var buffer: [2048]u8 = undefined;
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
    const io = std.Io.Threaded.global_single_threaded.io();
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
        day.year,                       month_day.month.numeric(),  month_day.day_index + 1,
        time.getHoursIntoDay(),         time.getMinutesIntoHour(), time.getSecondsIntoMinute(),
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

test "paths are escaped" {
    var buffer: [64]u8 = undefined;
    var w: std.Io.Writer = .fixed(&buffer);
    try w.print("{f}", .{path("a\xffb\n")});
    try testing.expectEqualStrings("a\\xffb\\x0a", w.buffered());
}
