//! The per-sample processing stage: one image from encoded bytes to what a
//! sample carries (compatibility.md §5): decode, orient, fit into a bucket,
//! convert, encode, timing each step for the stats. Runs on worker threads;
//! allocates only the buffers the result needs and the resizer's scratch.
//! The pixel work itself lives in image/ as pure functions.
const std = @import("std");
const Allocator = std.mem.Allocator;

const abi = @import("../abi_types.zig");
const config_mod = @import("../config.zig");
const decoder = @import("../decode/decoder.zig");
const jpeg = @import("../decode/jpeg.zig");
const sample = @import("../sample.zig");
const png = @import("../encode/png.zig");
const bucket = @import("../image/bucket.zig");
const convert = @import("../image/convert.zig");
const orient = @import("../image/orient.zig");
const resize = @import("../image/resize.zig");
const ycc = @import("../image/ycc.zig");
const stats = @import("../stats.zig");
const buffers = @import("../buffers.zig");

pub const Pixels = sample.Pixels;
pub const Error = decoder.Error;

/// What an image is to its sample: masks are never converted to RGB and
/// always encode as PNG; masks and additional images follow the main
/// image's bucket (compatibility.md §5.2).
pub const Role = enum { main, mask, additional };

/// The image configuration of a pass, with its bucket table built once.
pub const Transform = struct {
    config: config_mod.ImageConfig,
    table: ?bucket.Table,

    pub fn init(gpa: Allocator, image: ?config_mod.ImageConfig) Allocator.Error!Transform {
        const config = image orelse config_mod.ImageConfig{};
        const table: ?bucket.Table = if (config.crop_and_resize) try bucket.Table.init(gpa, .{
            .default_image_size = config.default_image_size,
            .downsampling_ratio = config.downsampling_ratio,
            .min_aspect_ratio = config.min_aspect_ratio,
            .max_aspect_ratio = config.max_aspect_ratio,
        }) else null;
        return .{ .config = config, .table = table };
    }

    pub fn deinit(self: *Transform, gpa: Allocator) void {
        if (self.table) |*t| t.deinit(gpa);
        self.* = undefined;
    }
};

pub const Request = struct {
    role: Role = .main,
    /// Bucket key of the sample's main image, for aligned masks and
    /// additional images; null: the image picks its own bucket.
    bucket_key: ?i64 = null,
    max_pixels: u64,
};

/// The processed image and the bucket it went into (for aligning the rest
/// of its sample).
pub const Result = struct {
    pixels: Pixels,
    bucket_key: ?i64,
};

/// Runs every step for one image. `timings` receives per-stage times.
pub fn run(
    gpa: Allocator,
    bytes: []const u8,
    transform: *const Transform,
    request: Request,
    timings: *stats.Timings,
    diag: *decoder.Diagnostics,
) Error!Result {
    const c = &transform.config;
    var clock = timings.start();
    var key: ?i64 = null;
    var image: Pixels = undefined;
    if (try planJpeg(bytes, transform, request, diag)) |plan| {
        // Fast path: decode only the crop window, at the smallest DCT scale
        // that keeps the margin, then resample that window into the bucket.
        image = try decodeJpegPlan(gpa, bytes, plan, timings, &clock, diag);
        key = plan.bucket.key_milli;
    } else {
        image = decoder.decode(gpa, bytes, request.max_pixels, diag) catch |err| {
            timings.lap(.decode, &clock);
            return err;
        };
        timings.lap(.decode, &clock);
        errdefer image.deinit(gpa);
        if (c.exif_transpose) try applyOrientation(gpa, &image, decoder.exifOrientation(bytes));
        if (transform.table) |*table| {
            const chosen = pick(table, image.width, image.height, request.bucket_key);
            key = chosen.key_milli;
            try fitInto(gpa, &image, chosen.size, filterFor(c, request.role));
        }
    }
    errdefer image.deinit(gpa);
    if (c.image_to_rgb8 and request.role != .mask and !(image.channels == 3 and image.bit_depth == 8)) {
        const rgb = convert.toRgb8(gpa, viewOf(&image)) catch return error.NoMemory;
        replace(gpa, &image, rgb, 3, 8);
    }
    timings.lap(.transform, &clock);

    if (c.pre_encode_images) {
        const format: config_mod.EncodeFormat = if (request.role == .mask) .png else c.encode_format;
        try encodeInPlace(gpa, &image, format, c.jpeg_quality, diag);
        timings.lap(.encode, &clock);
    }
    return .{ .pixels = image, .bucket_key = key };
}

/// Processes the images that go with a sample's main image (masks or
/// additional images, per `role`) into the main image's bucket
/// (`bucket_key`; null: each picks its own), writing them to
/// `out[done.*..]` and advancing `done`. On failure `diag` names the image
/// ("mask 'm': ..."); what was written stays owned by the caller, up to
/// `done.*`. Per-image timings are not recorded in `timings`' laps.
pub fn runNamed(
    gpa: Allocator,
    transform: *const Transform,
    inputs: []const sample.EncodedNamed,
    role: Role,
    bucket_key: ?i64,
    max_pixels: u64,
    timings: *stats.Timings,
    out: []sample.Named,
    done: *usize,
    diag: *decoder.Diagnostics,
) Error!void {
    std.debug.assert(role != .main);
    std.debug.assert(out.len - done.* >= inputs.len);
    for (inputs) |input| {
        const request: Request = .{ .role = role, .bucket_key = bucket_key, .max_pixels = max_pixels };
        const result = run(gpa, input.bytes, transform, request, timings, diag) catch |err| {
            prefixReason(diag, "{s} '{s}'", .{ if (role == .mask) "mask" else "additional image", input.name });
            return err;
        };
        out[done.*] = .{ .name = input.name, .pixels = result.pixels };
        done.* += 1;
    }
}

/// Puts "<what>: " in front of the reason in `diag`.
pub fn prefixReason(diag: *decoder.Diagnostics, comptime what: []const u8, args: anytype) void {
    var copy: [256]u8 = undefined;
    const text = diag.text();
    const n = @min(text.len, copy.len);
    @memcpy(copy[0..n], text[0..n]);
    var label: [160]u8 = undefined;
    const prefix = std.fmt.bufPrint(&label, what, args) catch label[0..];
    diag.set("{s}: {s}", .{ prefix, copy[0..n] });
}

/// A decision to decode a JPEG straight into its bucket.
const JpegPlan = struct {
    header: jpeg.Header,
    bucket: bucket.Bucket,
    geometry: bucket.Fit,
    scale_num: u8,
    window: jpeg.Rect,
    /// The geometry's box in window pixels.
    box: resize.Box,
};

/// Whether (and how) to take the JPEG fast path: bucketing on, DCT scaling
/// allowed, a Lanczos resample (nearest-neighbour masks keep exact labels)
/// and no EXIF rotation to apply first.
fn planJpeg(bytes: []const u8, transform: *const Transform, request: Request, diag: *decoder.Diagnostics) Error!?JpegPlan {
    const c = &transform.config;
    const table = if (transform.table) |*t| t else return null;
    if (!c.dct_scaling or filterFor(c, request.role) != .lanczos3 or decoder.sniff(bytes) != .jpeg) return null;
    var jdiag: jpeg.Diagnostics = .{};
    const header = jpeg.readHeader(bytes, &jdiag) catch |err| return decoder.jpegError(err, &jdiag, diag);
    if (@as(u64, header.width) * header.height > request.max_pixels) {
        diag.set("{d}x{d} pixels is more than max_pixels ({d})", .{ header.width, header.height, request.max_pixels });
        return error.TooLarge;
    }
    if (c.exif_transpose and header.exif_orientation != 1) return null;
    const chosen = pick(table, header.width, header.height, request.bucket_key);
    const geometry = bucket.fit(header.width, header.height, chosen.size);
    if (geometry.identity) return null;
    const box_w = geometry.box[2] - geometry.box[0];
    const box_h = geometry.box[3] - geometry.box[1];
    const need = c.dct_scale_margin * @max(@as(f64, @floatFromInt(chosen.size.width)) / box_w, @as(f64, @floatFromInt(chosen.size.height)) / box_h);
    const scale_num = scaleFor(need);
    const scaled = jpeg.outputSize(header, scale_num);
    // Map the box with the rounded-up scaled size, as libjpeg scales.
    const sx = @as(f64, @floatFromInt(scaled.width)) / @as(f64, @floatFromInt(header.width));
    const sy = @as(f64, @floatFromInt(scaled.height)) / @as(f64, @floatFromInt(header.height));
    const l = geometry.box[0] * sx;
    const t = geometry.box[1] * sy;
    const r = geometry.box[2] * sx;
    const b = geometry.box[3] * sy;
    // Keep every Lanczos tap of every output pixel inside the window, so the
    // window resamples exactly like the whole scaled image would.
    const margin_x = @ceil(3.0 * @max((r - l) / @as(f64, @floatFromInt(chosen.size.width)), 1.0)) + 1;
    const margin_y = @ceil(3.0 * @max((b - t) / @as(f64, @floatFromInt(chosen.size.height)), 1.0)) + 1;
    const x0: u32 = @intFromFloat(@max(0, @floor(l - margin_x)));
    const y0: u32 = @intFromFloat(@max(0, @floor(t - margin_y)));
    const x1: u32 = @intFromFloat(@min(@as(f64, @floatFromInt(scaled.width)), @ceil(r + margin_x)));
    const y1: u32 = @intFromFloat(@min(@as(f64, @floatFromInt(scaled.height)), @ceil(b + margin_y)));
    if (x1 <= x0 or y1 <= y0) return null;
    const fx0: f64 = @floatFromInt(x0);
    const fy0: f64 = @floatFromInt(y0);
    return .{
        .header = header,
        .bucket = chosen,
        .geometry = geometry,
        .scale_num = scale_num,
        .window = .{ .x = x0, .y = y0, .width = x1 - x0, .height = y1 - y0 },
        .box = .{ .left = l - fx0, .top = t - fy0, .right = r - fx0, .bottom = b - fy0 },
    };
}

/// The smallest of libjpeg's power-of-two scales (1/8, 1/4, 1/2, 1) that is
/// at least `need`. The other M/8 scales use slower generic IDCTs: on the
/// 1 MP corpus 7/8 took 5.9 ms and 5/8 3.8 ms against 2.7 ms full size.
fn scaleFor(need: f64) u8 {
    for ([_]u8{ 1, 2, 4 }) |m| {
        if (@as(f64, @floatFromInt(m)) / 8.0 >= need) return m;
    }
    return 8;
}

fn decodeJpegPlan(gpa: Allocator, bytes: []const u8, plan: JpegPlan, timings: *stats.Timings, clock: *u64, diag: *decoder.Diagnostics) Error!Pixels {
    // Subsampled files go through their planes: no chroma upsampling or
    // colour conversion at full size, chroma resampled with a triangle.
    // On jpeg1mp it saved ~0.3 ms per image going to 512 and ~0.2 ms going
    // to 1024 (a slight upscale), within the deviation bounds
    // (bench/dct_scaling.py).
    if (plan.header.color_space == .ycbcr and plan.header.components == 3) {
        if (try decodePlanar(gpa, bytes, plan, timings, clock, diag)) |pixels| return pixels;
    }
    const channels = jpeg.outputChannels(plan.header);
    const window_len = @as(usize, plan.window.width) * plan.window.height * channels;
    const window = Pixels.alloc(gpa, window_len) catch return error.NoMemory;
    defer buffers.free(gpa, window);
    var jdiag: jpeg.Diagnostics = .{};
    jpeg.decode(bytes, .{ .scale_num = plan.scale_num, .crop = plan.window }, window, &jdiag) catch |err| {
        timings.lap(.decode, clock);
        return decoder.jpegError(err, &jdiag, diag);
    };
    timings.lap(.decode, clock);
    const size = plan.bucket.size;
    const out = Pixels.alloc(gpa, @as(usize, size.width) * size.height * channels) catch return error.NoMemory;
    errdefer buffers.free(gpa, out);
    // Off the Pillow-exact road already: take the cheaper pass order.
    resize.resizeOrdered(gpa, .{
        .pixels = window,
        .width = plan.window.width,
        .height = plan.window.height,
        .channels = channels,
        .bit_depth = 8,
        .stride_bytes = @as(usize, plan.window.width) * channels,
    }, plan.box, size.width, size.height, .lanczos3, .straight, .cheapest, out) catch return error.NoMemory;
    return .{
        .data = out,
        .backing = out,
        .width = size.width,
        .height = size.height,
        .channels = channels,
        .bit_depth = 8,
        .original_width = plan.header.width,
        .original_height = plan.header.height,
        .crop = plan.geometry.box,
        .scale = plan.geometry.scale,
    };
}

/// Subsampled YCbCr (4:2:0, 4:2:2): decode the planes as stored (no chroma
/// upsampling, no colour conversion at full size), resample each plane
/// straight into the bucket, convert colour at the output size. Null for
/// files the planar path does not take.
fn decodePlanar(gpa: Allocator, bytes: []const u8, plan: JpegPlan, timings: *stats.Timings, clock: *u64, diag: *decoder.Diagnostics) Error!?Pixels {
    var jdiag: jpeg.Diagnostics = .{};
    const layout = (jpeg.planesLayout(bytes, plan.scale_num, &jdiag) catch |err| return decoder.jpegError(err, &jdiag, diag)) orelse return null;
    const size = plan.bucket.size;
    const hf: f64 = @floatFromInt(layout.h_factor);
    const vf: f64 = @floatFromInt(layout.v_factor);
    // The box in luma pixels of the scaled image.
    const wx: f64 = @floatFromInt(plan.window.x);
    const wy: f64 = @floatFromInt(plan.window.y);
    const l = plan.box.left + wx;
    const t = plan.box.top + wy;
    const r = plan.box.right + wx;
    const b = plan.box.bottom + wy;
    // Rows every luma and chroma tap reaches, in luma rows, aligned to the
    // chroma rows they start at.
    const out_h: f64 = @floatFromInt(size.height);
    const margin_y = @ceil(3.0 * @max((b - t) / out_h, 1.0)) + 1;
    const margin_c = @ceil(3.0 * @max((b - t) / vf / out_h, 1.0)) + 1;
    const luma_h: f64 = @floatFromInt(layout.height[0]);
    const top = @max(0, @min(t - margin_y, (t / vf - margin_c) * vf));
    const bottom = @min(luma_h, @max(b + margin_y, (b / vf + margin_c) * vf));
    const v = layout.v_factor;
    const y0: u32 = @as(u32, @intFromFloat(@floor(top))) / v * v;
    const y1: u32 = @intFromFloat(@ceil(bottom));
    if (y1 <= y0) return null;
    const c0 = y0 / v;
    const chroma_rows = @min((y1 + v - 1) / v, layout.height[1]) - c0;

    const widths = layout.width;
    // Rows as wide as libjpeg's whole blocks: it decodes into them in place.
    const strides = layout.padded_width;
    const row_counts = [3]u32{ y1 - y0, chroma_rows, chroma_rows };
    var planes: [3][]align(16) u8 = .{ &.{}, &.{}, &.{} };
    defer for (planes) |plane| buffers.free(gpa, plane);
    for (&planes, strides, row_counts) |*plane, stride, rows| plane.* = buffers.alloc(gpa, @as(usize, stride) * rows) catch return error.NoMemory;
    jpeg.decodePlanes(bytes, plan.scale_num, layout, y0, y1, .{ planes[0], planes[1], planes[2] }, .{ strides[0], strides[1], strides[2] }, &jdiag) catch |err| {
        timings.lap(.decode, clock);
        return decoder.jpegError(err, &jdiag, diag);
    };
    timings.lap(.decode, clock);

    const out_len = @as(usize, size.width) * size.height;
    var resized: [3][]align(16) u8 = .{ &.{}, &.{}, &.{} };
    defer for (resized) |plane| buffers.free(gpa, plane);
    const fy0: f64 = @floatFromInt(y0);
    const fc0: f64 = @floatFromInt(c0);
    const boxes = [3]resize.Box{
        .{ .left = l, .top = t - fy0, .right = r, .bottom = b - fy0 },
        .{ .left = l / hf, .top = t / vf - fc0, .right = r / hf, .bottom = b / vf - fc0 },
        .{ .left = l / hf, .top = t / vf - fc0, .right = r / hf, .bottom = b / vf - fc0 },
    };
    // Chroma comes from half resolution: a triangle there is what libjpeg's
    // fancy upsampling does before the full-size path's Lanczos, at a third
    // of the taps, and it is closer to that path than Lanczos on the chroma
    // (jpeg1mp -> 512, 60 images: mean deviation 0.266 against 0.296).
    const filters = [3]resize.Filter{ .lanczos3, .bilinear, .bilinear };
    for (&resized, planes, widths, strides, row_counts, boxes, filters) |*out, plane, w, stride, rows, box, filter| {
        out.* = buffers.alloc(gpa, out_len) catch return error.NoMemory;
        resize.resizeOrdered(gpa, .{ .pixels = plane, .width = w, .height = rows, .channels = 1, .bit_depth = 8, .stride_bytes = stride }, box, size.width, size.height, filter, .straight, .cheapest, out.*) catch return error.NoMemory;
    }
    const rgb = Pixels.alloc(gpa, out_len * 3) catch return error.NoMemory;
    ycc.toRgb(resized[0], resized[1], resized[2], rgb);
    return .{
        .data = rgb,
        .backing = rgb,
        .width = size.width,
        .height = size.height,
        .channels = 3,
        .bit_depth = 8,
        .original_width = plan.header.width,
        .original_height = plan.header.height,
        .crop = plan.geometry.box,
        .scale = plan.geometry.scale,
    };
}

fn pick(table: *const bucket.Table, width: u32, height: u32, key: ?i64) bucket.Bucket {
    if (key) |k| if (table.byKey(k)) |b| return b;
    return table.choose(width, height);
}

fn filterFor(c: *const config_mod.ImageConfig, role: Role) resize.Filter {
    return if (role == .mask and c.mask_resample == .nearest) .nearest else .lanczos3;
}

fn viewOf(image: *const Pixels) convert.View {
    return .{ .pixels = image.data, .width = image.width, .height = image.height, .channels = image.channels, .bit_depth = image.bit_depth };
}

/// Swaps the image's buffer for `fresh` with new channels/depth (same size).
fn replace(gpa: Allocator, image: *Pixels, fresh: []align(16) u8, channels: u8, bit_depth: u8) void {
    image.adopt(gpa, fresh);
    image.channels = channels;
    image.bit_depth = bit_depth;
}

fn applyOrientation(gpa: Allocator, image: *Pixels, orientation: u8) Error!void {
    const bpp = @as(usize, image.channels) * (image.bit_depth / 8);
    const turned = orient.apply(gpa, image.data, image.width, image.height, bpp, orientation) catch return error.NoMemory;
    const fresh = turned orelse return;
    image.adopt(gpa, fresh);
    if (orient.swapsAxes(orientation)) std.mem.swap(u32, &image.width, &image.height);
    image.original_width = image.width;
    image.original_height = image.height;
    image.crop = .{ 0, 0, @floatFromInt(image.width), @floatFromInt(image.height) };
}

/// Cover-resize + centre-crop into `size` in one resampling pass from the
/// source (compatibility.md §5.3; no intermediate of the cover size is ever allocated).
fn fitInto(gpa: Allocator, image: *Pixels, size: bucket.Size, filter: resize.Filter) Error!void {
    const geometry = bucket.fit(image.width, image.height, size);
    image.crop = geometry.box;
    image.scale = geometry.scale;
    if (geometry.identity) return;
    const bytes_per_sample: usize = image.bit_depth / 8;
    const len = @as(usize, size.width) * size.height * image.channels * bytes_per_sample;
    const out = sample.Pixels.alloc(gpa, len) catch return error.NoMemory;
    errdefer buffers.free(gpa, out);
    const alpha: resize.AlphaMode = if (image.bit_depth == 8 and (image.channels == 2 or image.channels == 4)) .premultiply else .straight;
    resize.resize(gpa, .{
        .pixels = image.data,
        .width = image.width,
        .height = image.height,
        .channels = image.channels,
        .bit_depth = image.bit_depth,
        .stride_bytes = @as(usize, image.width) * image.channels * bytes_per_sample,
    }, .{ .left = geometry.box[0], .top = geometry.box[1], .right = geometry.box[2], .bottom = geometry.box[3] }, size.width, size.height, filter, alpha, out) catch return error.NoMemory;
    image.adopt(gpa, out);
    image.width = size.width;
    image.height = size.height;
}

/// Replaces the pixels by a PNG or JPEG file of them. JPEG takes 8-bit L or
/// RGB: alpha is composited on grey 128 and 16-bit reduced first, instead of
/// dropping the image as the reference does (compatibility.md §11.10).
fn encodeInPlace(gpa: Allocator, image: *Pixels, format: config_mod.EncodeFormat, quality: u8, diag: *decoder.Diagnostics) Error!void {
    const file: []u8 = switch (format) {
        .png => png.encode(gpa, .{
            .pixels = image.data,
            .width = image.width,
            .height = image.height,
            .channels = image.channels,
            .bit_depth = image.bit_depth,
        }) catch return error.NoMemory,
        .jpeg => blk: {
            const converted = convert.toJpegInput(gpa, viewOf(image)) catch return error.NoMemory;
            defer if (converted) |cv| gpa.free(cv.pixels);
            const pixels = if (converted) |cv| cv.pixels else image.data;
            const channels = if (converted) |cv| cv.channels else image.channels;
            var jdiag: jpeg.Diagnostics = .{};
            const encoded = jpeg.encode(gpa, pixels, image.width, image.height, channels, quality, &jdiag) catch |err| {
                diag.set("JPEG encoding failed: {s} {s}", .{ @errorName(err), jdiag.text() });
                return error.NoMemory;
            };
            if (converted != null) image.bit_depth = 8;
            break :blk encoded;
        },
    };
    // Re-home the file in a 16-aligned block: samples own 16-aligned buffers.
    defer gpa.free(file);
    const owned = sample.Pixels.alloc(gpa, file.len) catch return error.NoMemory;
    @memcpy(owned, file);
    image.adopt(gpa, owned);
    image.encoding = if (format == .png) .png else .jpeg;
}

const testing = std.testing;

test "bucketed, converted and encoded without leaks" {
    var buffer: [54 + 64 * 31]u8 = undefined;
    const file = @import("../test_images.zig").bmp(&buffer, 21, 31, .gradient);
    var transform = try Transform.init(testing.allocator, .{
        .crop_and_resize = true,
        .default_image_size = 64,
        .downsampling_ratio = 16,
        .min_aspect_ratio = 0.5,
        .max_aspect_ratio = 2.0,
        .pre_encode_images = true,
    });
    defer transform.deinit(testing.allocator);
    var timings: stats.Timings = .{};
    var diag: decoder.Diagnostics = .{};
    var result = try run(testing.allocator, file, &transform, .{ .max_pixels = 1 << 20 }, &timings, &diag);
    defer result.pixels.deinit(testing.allocator);
    try testing.expectEqual(abi.Encoding.png, result.pixels.encoding);
    try testing.expect(std.mem.startsWith(u8, result.pixels.data, "\x89PNG"));
    try testing.expectEqual(@as(u32, 21), result.pixels.original_width);
    // 21x31 (0.677) -> the 0.667 bucket of 64/16: 48x80? check it is in the table.
    try testing.expect(transform.table.?.byKey(result.bucket_key.?) != null);
}
