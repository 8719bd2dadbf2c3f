//! One sample's images processed outside any loader (`datago_transform`):
//! the main image picks its bucket, masks and additional images follow it
//! (compatibility.md §5.2), exactly as a loader would process them.
const std = @import("std");
const Allocator = std.mem.Allocator;

const config_mod = @import("../config.zig");
const decoder = @import("../decode/decoder.zig");
const sample = @import("../sample.zig");
const stats = @import("../stats.zig");
const process = @import("process.zig");

pub const Input = sample.EncodedNamed;

pub const Error = decoder.Error || Allocator.Error;

/// Decodes and transforms `main` (may be null: then each other image picks
/// its own bucket), `masks` and `additional`. On failure `diag` names the
/// image at fault. Caller owns the sample.
pub fn transform(
    gpa: Allocator,
    image_config: config_mod.ImageConfig,
    main: ?[]const u8,
    masks: []const Input,
    additional: []const Input,
    diag: *decoder.Diagnostics,
) Error!*sample.Owned {
    var t = try process.Transform.init(gpa, image_config);
    defer t.deinit(gpa);
    var timings: stats.Timings = .{};
    const max_pixels = config_mod.max_pixels_default;

    var main_pixels: ?sample.Pixels = null;
    errdefer if (main_pixels) |*p| p.deinit(gpa);
    var key: ?i64 = null;
    if (main) |bytes| {
        const result = process.run(gpa, bytes, &t, .{ .max_pixels = max_pixels }, &timings, diag) catch |err| {
            process.prefixReason(diag, "image", .{});
            return err;
        };
        main_pixels = result.pixels;
        key = result.bucket_key;
    }
    const named = try gpa.alloc(sample.Named, masks.len + additional.len);
    defer gpa.free(named);
    var done: usize = 0;
    errdefer for (named[0..done]) |*n| n.pixels.deinit(gpa);
    try process.runNamed(gpa, &t, masks, .mask, key, max_pixels, &timings, named, &done, diag);
    try process.runNamed(gpa, &t, additional, .additional, key, max_pixels, &timings, named, &done, diag);
    const built = sample.build(gpa, .{
        .kind = .memory,
        .id = .{ .plain = "" },
        .source = "memory",
        .image = main_pixels,
        .masks = named[0..masks.len],
        .additional = named[masks.len..],
    });
    // build took ownership of every image, also on failure.
    main_pixels = null;
    done = 0;
    return built;
}
