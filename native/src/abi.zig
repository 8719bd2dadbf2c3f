//! Every `export fn datago_*` of native/include/datago.h. Only this file
//! speaks C: it checks pointers, maps Zig errors to statuses with exhaustive
//! switches and formats the thread-local last error.
const std = @import("std");
const types = @import("abi_types.zig");
const config_mod = @import("config.zig");
const loader_mod = @import("loader.zig");
const runtime = @import("runtime.zig");
const sample_mod = @import("sample.zig");
const log = @import("log.zig");
const stats = @import("stats.zig");

const Status = types.Status;
const Loader = loader_mod.Loader;

pub const version = "0.1.0";

threadlocal var last_error_buffer: [1024]u8 = undefined;
threadlocal var last_error_len: usize = 0;

fn setError(comptime fmt: []const u8, args: anytype) void {
    const limit = last_error_buffer.len - 1;
    const written = std.fmt.bufPrint(last_error_buffer[0..limit], fmt, args) catch last_error_buffer[0..limit];
    last_error_len = written.len;
    last_error_buffer[last_error_len] = 0;
}

fn fail(status: Status, comptime fmt: []const u8, args: anytype) Status {
    setError(fmt, args);
    return status;
}

export fn datago_abi_version() u32 {
    return types.abi_version;
}

export fn datago_version() [*:0]const u8 {
    return version;
}

export fn datago_last_error() [*:0]const u8 {
    if (last_error_len == 0) return "";
    return @ptrCast(&last_error_buffer);
}

export fn datago_loader_open(config_json: ?[*]const u8, config_len: usize, loader_out: ?*?*Loader) Status {
    const out = loader_out orelse return fail(.err_argument, "datago_loader_open: loader_out is NULL", .{});
    out.* = null;
    const text = config_json orelse return fail(.err_argument, "datago_loader_open: config_json is NULL", .{});
    var diag: config_mod.Diagnostics = .{};
    const loader = Loader.open(runtime.gpa, text[0..config_len], &diag) catch |err| return switch (err) {
        error.Invalid => fail(.err_config, "{s}", .{diag.text()}),
        error.OutOfMemory => fail(.err_no_memory, "datago_loader_open: out of memory", .{}),
    };
    out.* = loader;
    return .ok;
}

/// Checks a handle passed by the caller; null when it is NULL or inherited
/// across fork (its threads do not exist in this process).
fn checkLoader(loader: ?*Loader, comptime call: []const u8, status: *Status) ?*Loader {
    const l = loader orelse {
        status.* = fail(.err_argument, call ++ ": loader is NULL", .{});
        return null;
    };
    const pid = runtime.processId();
    if (l.owner_pid != pid) {
        status.* = fail(.err_misuse, call ++ ": this loader was opened by process {d} and cannot be used in process {d} (after fork); open a new loader in the child", .{ l.owner_pid, pid });
        return null;
    }
    return l;
}

export fn datago_loader_start(loader: ?*Loader) Status {
    var status: Status = .ok;
    const l = checkLoader(loader, "datago_loader_start", &status) orelse return status;
    l.start() catch |err| return switch (err) {
        error.OutOfMemory => fail(.err_no_memory, "datago_loader_start: out of memory", .{}),
        error.ThreadSpawnFailed => fail(.err_no_memory, "datago_loader_start: could not start any worker thread", .{}),
    };
    return .ok;
}

export fn datago_loader_next(loader: ?*Loader, timeout_ms: i64, sample_out: ?*?*types.Sample) Status {
    const out = sample_out orelse return fail(.err_argument, "datago_loader_next: sample_out is NULL", .{});
    out.* = null;
    var status: Status = .ok;
    const l = checkLoader(loader, "datago_loader_next", &status) orelse return status;
    var message: [1024]u8 = undefined;
    const result = l.next(timeout_ms, &message) catch |err| return switch (err) {
        error.OutOfMemory => fail(.err_no_memory, "datago_loader_next: out of memory", .{}),
        error.ThreadSpawnFailed => fail(.err_no_memory, "datago_loader_next: could not start any worker thread", .{}),
    };
    switch (result) {
        .sample => |s| {
            out.* = s.handOut();
            return .ok;
        },
        .end => return .end,
        .timeout => return .timeout,
        .source_error => |text| return fail(.err_source, "{s}", .{text}),
        .internal_error => return fail(.err_internal, "a datago worker thread hit an internal safety check (a bug in libdatago; its message is on stderr); this pass is lost", .{}),
    }
}

export fn datago_loader_stats(loader: ?*Loader, buffer: ?[*]u8, capacity: usize, length_out: ?*usize) Status {
    var status: Status = .ok;
    const l = checkLoader(loader, "datago_loader_stats", &status) orelse return status;
    var json: [8192]u8 = undefined;
    var w: std.Io.Writer = .fixed(&json);
    if (l.snapshot()) |snapshot| {
        stats.writeJson(&w, &snapshot) catch return fail(.err_internal, "datago_loader_stats: document too large", .{});
    } else {
        w.writeAll("{}") catch unreachable;
    }
    const text = w.buffered();
    if (length_out) |out| out.* = text.len;
    const out = buffer orelse return fail(.err_argument, "datago_loader_stats: buffer is NULL", .{});
    if (capacity < text.len + 1) return fail(.err_argument, "datago_loader_stats: buffer of {d} bytes is too small ({d} needed)", .{ capacity, text.len + 1 });
    @memcpy(out[0..text.len], text);
    out[text.len] = 0;
    return .ok;
}

export fn datago_loader_stop(loader: ?*Loader) void {
    const l = loader orelse return;
    if (l.owner_pid != runtime.processId()) return;
    l.stop();
}

export fn datago_loader_close(loader: ?*Loader) void {
    const l = loader orelse return;
    // Inherited across fork: the threads it would stop do not exist here, and
    // its memory belongs to the parent's state. Abandon it.
    if (l.owner_pid != runtime.processId()) return;
    l.close();
}

export fn datago_sample_free(sample: ?*types.Sample) void {
    const s = sample orelse return;
    sample_mod.Owned.fromC(s).destroy();
}

export fn datago_live_samples() i64 {
    return runtime.live_samples.load(.monotonic);
}

export fn datago_live_cleanup_threads() i64 {
    return runtime.live_cleanups.load(.monotonic);
}

export fn datago_log_init(level: ?[*:0]const u8, installed_out: ?*i32) Status {
    const text: ?[]const u8 = if (level) |l| std.mem.span(l) else null;
    const installed = log.install(text) catch
        return fail(.err_argument, "unknown log level '{s}' (expected error, warn, info, debug, trace or off)", .{text.?});
    if (installed_out) |out| out.* = @intFromBool(installed);
    return .ok;
}
