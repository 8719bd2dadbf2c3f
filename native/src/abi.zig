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
const batcher = @import("batcher.zig");

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
fn startError(err: error{ OutOfMemory, ThreadSpawnFailed }, comptime call: []const u8) Status {
    return switch (err) {
        error.OutOfMemory => fail(.err_no_memory, call ++ ": out of memory", .{}),
        error.ThreadSpawnFailed => fail(.err_no_memory, call ++ ": could not start any worker thread", .{}),
    };
}

fn internalError() Status {
    return fail(.err_internal, "a datago worker thread hit an internal safety check (a bug in libdatago; its message is on stderr); this pass is lost", .{});
}

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
    l.start() catch |err| return startError(err, "datago_loader_start");
    return .ok;
}

fn failureStatus(kind: @import("sources/source.zig").FailureKind) Status {
    return switch (kind) {
        .source => .err_source,
        .config => .err_config,
        .auth => .err_auth,
    };
}

export fn datago_loader_next(loader: ?*Loader, timeout_ms: i64, sample_out: ?*?*types.Sample) Status {
    const out = sample_out orelse return fail(.err_argument, "datago_loader_next: sample_out is NULL", .{});
    out.* = null;
    var status: Status = .ok;
    const l = checkLoader(loader, "datago_loader_next", &status) orelse return status;
    if (l.config().batch_size != null) return fail(.err_misuse, "datago_loader_next: this loader makes batches (batch_size); use datago_loader_next_batch", .{});
    var message: [1024]u8 = undefined;
    const result = l.next(timeout_ms, &message) catch |err| return startError(err, "datago_loader_next");
    switch (result) {
        .sample => |s| {
            out.* = s.handOut();
            return .ok;
        },
        .end => return .end,
        .timeout => return .timeout,
        .source_error => |f| return fail(failureStatus(f.kind), "{s}", .{f.text}),
        .internal_error => return internalError(),
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
        // Before the first pass: only the seed, which is fixed at open.
        const source = &l.config().file;
        if (source.random_sampling) w.print("{{\"seed\":{d}}}", .{source.seed.?}) catch unreachable else w.writeAll("{\"seed\":null}") catch unreachable;
    }
    const text = w.buffered();
    if (length_out) |out| out.* = text.len;
    const out = buffer orelse return fail(.err_argument, "datago_loader_stats: buffer is NULL", .{});
    if (capacity < text.len + 1) return fail(.err_argument, "datago_loader_stats: buffer of {d} bytes is too small ({d} needed)", .{ capacity, text.len + 1 });
    @memcpy(out[0..text.len], text);
    out[text.len] = 0;
    return .ok;
}

export fn datago_loader_state(loader: ?*Loader, buffer: ?[*]u8, capacity: usize, length_out: ?*usize) Status {
    var status: Status = .ok;
    const l = checkLoader(loader, "datago_loader_state", &status) orelse return status;
    var text: std.Io.Writer.Allocating = .init(runtime.gpa);
    defer text.deinit();
    l.writeState(&text.writer) catch |err| return switch (err) {
        error.WriteFailed, error.OutOfMemory => fail(.err_no_memory, "datago_loader_state: out of memory", .{}),
        error.Unavailable => fail(.err_misuse, "datago_loader_state: the stream no longer keeps a checkpoint for its position (a state must be taken within a few thousand samples of the last one handed out)", .{}),
    };
    const written = text.written();
    if (length_out) |out| out.* = written.len;
    const out = buffer orelse return fail(.err_argument, "datago_loader_state: buffer is NULL", .{});
    if (capacity < written.len + 1) return fail(.err_argument, "datago_loader_state: buffer of {d} bytes is too small ({d} needed)", .{ capacity, written.len + 1 });
    @memcpy(out[0..written.len], written);
    out[written.len] = 0;
    return .ok;
}

export fn datago_loader_restore(loader: ?*Loader, state_json: ?[*]const u8, state_len: usize) Status {
    var status: Status = .ok;
    const l = checkLoader(loader, "datago_loader_restore", &status) orelse return status;
    const text = state_json orelse return fail(.err_argument, "datago_loader_restore: state_json is NULL", .{});
    var diag: @import("resume.zig").Diagnostics = .{};
    l.restore(text[0..state_len], &diag) catch |err| return switch (err) {
        error.Invalid => fail(.err_config, "{s}", .{diag.text()}),
        error.OutOfMemory => fail(.err_no_memory, "datago_loader_restore: out of memory", .{}),
        error.Busy => fail(.err_misuse, "datago_loader_restore: a pass is running; restore before the first pass, or after stop or the end of a pass", .{}),
    };
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
    const s = sample_mod.Owned.fromC(sample orelse return);
    // A sample of a batch lives and dies with its batch.
    if (s.in_batch) return;
    s.destroy();
}

export fn datago_loader_next_batch(loader: ?*Loader, timeout_ms: i64, batch_out: ?*?*types.Batch) Status {
    const out = batch_out orelse return fail(.err_argument, "datago_loader_next_batch: batch_out is NULL", .{});
    out.* = null;
    var status: Status = .ok;
    const l = checkLoader(loader, "datago_loader_next_batch", &status) orelse return status;
    if (l.config().batch_size == null) return fail(.err_misuse, "datago_loader_next_batch: this loader has no batch_size; use datago_loader_next", .{});
    var message: [1024]u8 = undefined;
    const result = l.nextBatch(timeout_ms, &message) catch |err| return startError(err, "datago_loader_next_batch");
    switch (result) {
        .batch => |b| {
            out.* = b.handOut();
            return .ok;
        },
        .end => return .end,
        .timeout => return .timeout,
        .source_error => |f| return fail(failureStatus(f.kind), "{s}", .{f.text}),
        .internal_error => return internalError(),
    }
}

export fn datago_batch_free(batch: ?*types.Batch) void {
    batcher.Batch.fromC(batch orelse return).destroy();
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

const oneshot = @import("stages/oneshot.zig");
const bucket = @import("image/bucket.zig");
const decoder = @import("decode/decoder.zig");

fn parseImageConfig(text: ?[*]const u8, len: usize, comptime call: []const u8, status: *Status) ?config_mod.ImageConfig {
    const bytes = text orelse {
        status.* = fail(.err_argument, call ++ ": image_config_json is NULL", .{});
        return null;
    };
    var diag: config_mod.Diagnostics = .{};
    return config_mod.parseImageConfig(runtime.gpa, bytes[0..len], &diag) catch |err| {
        status.* = switch (err) {
            error.Invalid => fail(.err_config, "{s}", .{diag.text()}),
            error.OutOfMemory => fail(.err_no_memory, call ++ ": out of memory", .{}),
        };
        return null;
    };
}

fn inputs(gpa: std.mem.Allocator, list: ?[*]const types.Encoded, count: usize) error{ OutOfMemory, Null }![]oneshot.Input {
    if (count == 0) return &.{};
    const items = list orelse return error.Null;
    const out = try gpa.alloc(oneshot.Input, count);
    for (out, items[0..count]) |*o, e| {
        const data = e.data orelse if (e.len == 0) @as([*]const u8, "") else {
            gpa.free(out);
            return error.Null;
        };
        o.* = .{ .name = e.name.slice(), .bytes = data[0..e.len] };
    }
    return out;
}

export fn datago_transform(
    image_config_json: ?[*]const u8,
    config_len: usize,
    image: ?[*]const u8,
    image_len: usize,
    masks: ?[*]const types.Encoded,
    mask_count: usize,
    additional_images: ?[*]const types.Encoded,
    additional_count: usize,
    sample_out: ?*?*types.Sample,
) Status {
    const out = sample_out orelse return fail(.err_argument, "datago_transform: sample_out is NULL", .{});
    out.* = null;
    var status: Status = .ok;
    const image_config = parseImageConfig(image_config_json, config_len, "datago_transform", &status) orelse return status;
    const gpa = runtime.gpa;
    const mask_inputs = inputs(gpa, masks, mask_count) catch |err| return switch (err) {
        error.Null => fail(.err_argument, "datago_transform: masks (or one of their data pointers) is NULL", .{}),
        error.OutOfMemory => fail(.err_no_memory, "datago_transform: out of memory", .{}),
    };
    defer if (mask_count > 0) gpa.free(mask_inputs);
    const additional_inputs = inputs(gpa, additional_images, additional_count) catch |err| return switch (err) {
        error.Null => fail(.err_argument, "datago_transform: additional_images (or one of their data pointers) is NULL", .{}),
        error.OutOfMemory => fail(.err_no_memory, "datago_transform: out of memory", .{}),
    };
    defer if (additional_count > 0) gpa.free(additional_inputs);
    const main: ?[]const u8 = if (image) |p| p[0..image_len] else null;
    var diag: decoder.Diagnostics = .{};
    const owned = oneshot.transform(gpa, image_config, main, mask_inputs, additional_inputs, &diag) catch |err| return switch (err) {
        error.OutOfMemory, error.NoMemory => fail(.err_no_memory, "datago_transform: out of memory", .{}),
        else => fail(.err_decode, "{s} ({s})", .{ diag.text(), @tagName(decoder.causeOf(@errorCast(err))) }),
    };
    out.* = owned.handOut();
    return .ok;
}

fn bucketTable(image_config: config_mod.ImageConfig, comptime call: []const u8, status: *Status) ?bucket.Table {
    if (!image_config.crop_and_resize) {
        status.* = fail(.err_config, "image_config.crop_and_resize: buckets exist only with crop_and_resize true", .{});
        return null;
    }
    return bucket.Table.init(runtime.gpa, .{
        .default_image_size = image_config.default_image_size,
        .downsampling_ratio = image_config.downsampling_ratio,
        .min_aspect_ratio = image_config.min_aspect_ratio,
        .max_aspect_ratio = image_config.max_aspect_ratio,
    }) catch {
        status.* = fail(.err_no_memory, call ++ ": out of memory", .{});
        return null;
    };
}

export fn datago_buckets(image_config_json: ?[*]const u8, config_len: usize, buckets_out: ?[*]types.Bucket, capacity: usize, count_out: ?*usize) Status {
    var status: Status = .ok;
    const image_config = parseImageConfig(image_config_json, config_len, "datago_buckets", &status) orelse return status;
    var table = bucketTable(image_config, "datago_buckets", &status) orelse return status;
    defer table.deinit(runtime.gpa);
    if (count_out) |c| c.* = table.buckets.len;
    if (capacity > 0) {
        const out = buckets_out orelse return fail(.err_argument, "datago_buckets: buckets_out is NULL", .{});
        for (table.buckets[0..@min(capacity, table.buckets.len)], 0..) |b, i| {
            out[i] = .{ .width = @intCast(b.size.width), .height = @intCast(b.size.height), .aspect_ratio = b.key() };
        }
    }
    return .ok;
}

export fn datago_fit_image(image_config_json: ?[*]const u8, config_len: usize, width: i32, height: i32, fit_out: ?*types.Fit) Status {
    const out = fit_out orelse return fail(.err_argument, "datago_fit_image: fit_out is NULL", .{});
    if (width <= 0 or height <= 0) return fail(.err_argument, "datago_fit_image: size {d}x{d} is not positive", .{ width, height });
    var status: Status = .ok;
    const image_config = parseImageConfig(image_config_json, config_len, "datago_fit_image", &status) orelse return status;
    const w: u32 = @intCast(width);
    const h: u32 = @intCast(height);
    if (!image_config.crop_and_resize) {
        out.* = .{ .width = width, .height = height, .crop_left = 0, .crop_top = 0, .crop_right = @floatFromInt(w), .crop_bottom = @floatFromInt(h), .scale = 1, .aspect_ratio = 0 };
        return .ok;
    }
    var table = bucketTable(image_config, "datago_fit_image", &status) orelse return status;
    defer table.deinit(runtime.gpa);
    const chosen = table.choose(w, h);
    const geometry = bucket.fit(w, h, chosen.size);
    out.* = .{
        .width = @intCast(chosen.size.width),
        .height = @intCast(chosen.size.height),
        .crop_left = geometry.box[0],
        .crop_top = geometry.box[1],
        .crop_right = geometry.box[2],
        .crop_bottom = geometry.box[3],
        .scale = geometry.scale,
        .aspect_ratio = chosen.key(),
    };
    return .ok;
}

export fn datago_log_capture(enabled: i32) void {
    log.setCapture(enabled != 0);
}

export fn datago_log_wake() void {
    log.wakeReaders();
}

export fn datago_log_read(timeout_ms: i64, buffer: ?[*]u8, capacity: usize, length_out: ?*usize, dropped_out: ?*u64) Status {
    const out = buffer orelse return fail(.err_argument, "datago_log_read: buffer is NULL", .{});
    const length = length_out orelse return fail(.err_argument, "datago_log_read: length_out is NULL", .{});
    var dropped: u64 = 0;
    length.* = log.readCaptured(timeout_ms, out[0..capacity], &dropped);
    if (dropped_out) |d| d.* = dropped;
    return .ok;
}

const build_options = @import("build_options");
const builtin = @import("builtin");

threadlocal var build_info_buffer: [512]u8 = undefined;

export fn datago_build_info() [*:0]const u8 {
    var w: std.Io.Writer = .fixed(build_info_buffer[0 .. build_info_buffer.len - 1]);
    w.print("{{\"version\":\"{s}\",\"abi\":{d},\"optimize\":\"{s}\",\"cpu\":\"{s}\"," ++
        "\"jpeg\":\"libjpeg-turbo 3.1.2\",\"jpeg_simd_built\":{},\"jpeg_simd\":\"{s}\"," ++
        "\"png\":\"libdeflate 1.25 + datago unfilter (8-bit L/LA/RGB/RGBA), else Wuffs 0.3.4\"," ++
        "\"gif\":\"Wuffs 0.3.4\",\"bmp\":\"Wuffs 0.3.4\"," ++
        "\"webp\":\"libwebp 1.2.4 (Debian 1.2.4-0.2+deb12u1)\",\"png_encoder\":\"datago\"}}", .{
        version,                types.abi_version,       @tagName(builtin.mode),
        builtin.cpu.model.name, build_options.jpeg_simd, @import("decode/jpeg.zig").simdLevel(),
    }) catch {};
    const n = w.buffered().len;
    build_info_buffer[n] = 0;
    return @ptrCast(&build_info_buffer);
}
