//! Samples as the C ABI hands them out: a `datago_sample` struct at the
//! start of an `Owned` box that also records every buffer the sample owns.
//! A sample never points into loader memory, so it outlives its loader.
const std = @import("std");
const abi = @import("abi_types.zig");
const runtime = @import("runtime.zig");
const Allocator = std.mem.Allocator;

/// A decoded or processed image, owning its buffer.
pub const Pixels = struct {
    /// The bytes the image view exposes (raw pixels or an encoded file).
    data: []u8,
    /// The allocation to free with the sample's allocator (contains `data`).
    backing: []align(16) u8,
    width: u32,
    height: u32,
    /// 1..4 for raw data; ignored when encoded.
    channels: u8,
    bit_depth: u8,
    encoding: abi.Encoding = .raw,
    original_width: u32,
    original_height: u32,
    crop: [4]f64,
    scale: f64 = 1.0,

    pub fn deinit(self: *Pixels, gpa: Allocator) void {
        gpa.free(self.backing);
        self.* = undefined;
    }

    /// Allocates `len` bytes of pixels (16-byte aligned).
    pub fn alloc(gpa: Allocator, len: usize) Allocator.Error![]align(16) u8 {
        return gpa.alignedAlloc(u8, .@"16", len);
    }

    fn view(self: *const Pixels) abi.Image {
        const raw = self.encoding == .raw;
        return .{
            .data = self.data.ptr,
            .data_len = self.data.len,
            .width = @intCast(self.width),
            .height = @intCast(self.height),
            .original_width = @intCast(self.original_width),
            .original_height = @intCast(self.original_height),
            .channels = if (raw) self.channels else -1,
            .bit_depth = self.bit_depth,
            .encoding = @intFromEnum(self.encoding),
            .stride_bytes = if (raw) @intCast(@as(u64, self.width) * self.channels * (self.bit_depth / 8)) else 0,
            .crop_left = self.crop[0],
            .crop_top = self.crop[1],
            .crop_right = self.crop[2],
            .crop_bottom = self.crop[3],
            .scale = self.scale,
        };
    }
};

pub const Owned = struct {
    /// Must stay the first field: `datago_sample *` is a pointer to it.
    c: abi.Sample,
    gpa: Allocator,
    /// Strings of the sample (id, source, attributes), one allocation.
    strings: []u8,
    image: ?Pixels,
    /// Counted in runtime.live_samples once handed to the caller.
    handed_out: bool = false,

    pub fn fromC(ptr: *abi.Sample) *Owned {
        return @fieldParentPtr("c", ptr);
    }

    /// Frees the sample and everything it owns.
    pub fn destroy(self: *Owned) void {
        const gpa = self.gpa;
        if (self.handed_out) _ = runtime.live_samples.fetchSub(1, .monotonic);
        if (self.image) |*image| image.deinit(gpa);
        gpa.free(self.strings);
        gpa.destroy(self);
    }

    /// Marks the sample as the caller's.
    pub fn handOut(self: *Owned) *abi.Sample {
        std.debug.assert(!self.handed_out);
        self.handed_out = true;
        _ = runtime.live_samples.fetchAdd(1, .monotonic);
        return &self.c;
    }
};

const file_source_name = "filesystem";
const empty_attributes = "{}";

/// Builds a file-source sample. Takes ownership of `image` (also on failure).
/// `root_path` and `relative` are joined as spec §7.1.1 builds ids.
pub fn fromFile(
    gpa: Allocator,
    root_path: []const u8,
    relative: []const u8,
    image: Pixels,
    index: u64,
    epoch: u64,
) Allocator.Error!*Owned {
    var pixels = image;
    errdefer pixels.deinit(gpa);
    const files = @import("sources/files.zig");
    const id_len = files.joinedLen(root_path, relative);
    const strings = try gpa.alloc(u8, id_len + file_source_name.len + empty_attributes.len);
    errdefer gpa.free(strings);
    files.joinInto(strings[0..id_len], root_path, relative);
    @memcpy(strings[id_len..][0..file_source_name.len], file_source_name);
    @memcpy(strings[id_len + file_source_name.len ..], empty_attributes);

    const owned = try gpa.create(Owned);
    owned.* = .{ .c = .{}, .gpa = gpa, .strings = strings, .image = pixels };
    owned.c = .{
        .source_kind = @intFromEnum(abi.SourceKind.file),
        .id = .of(strings[0..id_len]),
        .source = .of(strings[id_len..][0..file_source_name.len]),
        .attributes_json = .of(strings[id_len + file_source_name.len ..]),
        .index = index,
        .epoch = epoch,
        .image = owned.image.?.view(),
    };
    return owned;
}

test "a file sample owns its strings and pixels" {
    const gpa = std.testing.allocator;
    const backing = try Pixels.alloc(gpa, 12);
    @memset(backing, 9);
    const s = try fromFile(gpa, "root/", "a/b.png", .{
        .data = backing,
        .backing = backing,
        .width = 2,
        .height = 2,
        .channels = 3,
        .bit_depth = 8,
        .original_width = 2,
        .original_height = 2,
        .crop = .{ 0, 0, 2, 2 },
    }, 5, 1);
    defer s.destroy();
    try std.testing.expectEqualStrings("root/a/b.png", s.c.id.slice());
    try std.testing.expectEqualStrings("filesystem", s.c.source.slice());
    try std.testing.expectEqualStrings("{}", s.c.attributes_json.slice());
    try std.testing.expectEqual(@as(u32, 6), s.c.image.stride_bytes);
    try std.testing.expectEqual(@as(u64, 5), s.c.index);
    try std.testing.expect(Owned.fromC(&s.c) == s);
}
