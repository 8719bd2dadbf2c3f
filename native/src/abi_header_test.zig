//! The public header and the Zig mirrors must agree: every size, offset and
//! constant of datago.h is checked against abi_types.zig.
const std = @import("std");
const types = @import("abi_types.zig");
const c = @import("datago_h");

fn expectSameLayout(comptime Zig: type, comptime C: type) !void {
    try std.testing.expectEqual(@sizeOf(C), @sizeOf(Zig));
    try std.testing.expectEqual(@alignOf(C), @alignOf(Zig));
    inline for (comptime std.meta.fieldNames(Zig)) |name| {
        try std.testing.expectEqual(@offsetOf(C, name), @offsetOf(Zig, name));
    }
}

test "structs have the same layout in C and Zig" {
    try expectSameLayout(types.Str, c.datago_str);
    try expectSameLayout(types.Image, c.datago_image);
    try expectSameLayout(types.NamedImage, c.datago_named_image);
    try expectSameLayout(types.Latent, c.datago_latent);
    try expectSameLayout(types.Sample, c.datago_sample);
    try expectSameLayout(types.Batch, c.datago_batch);
    try expectSameLayout(types.Encoded, c.datago_encoded);
    try expectSameLayout(types.Bucket, c.datago_bucket);
    try expectSameLayout(types.Fit, c.datago_fit);
}

test "constants agree" {
    try std.testing.expectEqual(@as(u32, c.DATAGO_ABI_VERSION), types.abi_version);
    inline for (comptime std.meta.tags(types.Status)) |tag| {
        const name = comptime blk: {
            const lower = @tagName(tag);
            var upper: [lower.len]u8 = undefined;
            for (lower, 0..) |ch, i| upper[i] = std.ascii.toUpper(ch);
            break :blk "DATAGO_" ++ upper;
        };
        try std.testing.expectEqual(@as(c_int, @field(c, name)), @backingInt(tag));
    }
    try std.testing.expectEqual(@as(c_int, c.DATAGO_ENCODING_JPEG), @backingInt(types.Encoding.jpeg));
    try std.testing.expectEqual(@as(c_int, c.DATAGO_ENCODING_PNG), @backingInt(types.Encoding.png));
    try std.testing.expectEqual(@as(c_int, c.DATAGO_SOURCE_MEMORY), @backingInt(types.SourceKind.memory));
    try std.testing.expectEqual(@as(c_int, c.DATAGO_SOURCE_FILE), @backingInt(types.SourceKind.file));
    try std.testing.expectEqual(@sizeOf(c_int), @sizeOf(c.datago_status));
}
