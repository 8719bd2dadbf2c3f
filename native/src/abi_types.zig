//! Zig mirrors of the types in native/include/datago.h. abi_header_test.zig
//! @cImports the header and checks every size, offset and constant against
//! these definitions.
const std = @import("std");

pub const abi_version: u32 = 2;

pub const Status = enum(c_int) {
    ok = 0,
    end = 1,
    timeout = 2,
    err_argument = -1,
    err_config = -2,
    err_source = -3,
    err_decode = -4,
    err_no_memory = -5,
    err_misuse = -7,
    err_auth = -9,
    err_internal = -8,
};

pub const Encoding = enum(i32) { raw = 0, png = 1, jpeg = 2 };

pub const SourceKind = enum(i32) { file = 0, webdataset = 1, dataroom = 2, memory = 3 };

pub const Encoded = extern struct {
    name: Str = .{},
    data: ?[*]const u8 = null,
    len: u64 = 0,
};

pub const Bucket = extern struct {
    width: i32,
    height: i32,
    aspect_ratio: f64,
};

pub const Fit = extern struct {
    width: i32,
    height: i32,
    crop_left: f64,
    crop_top: f64,
    crop_right: f64,
    crop_bottom: f64,
    scale: f64,
    aspect_ratio: f64,
};

pub const Str = extern struct {
    ptr: ?[*]const u8 = null,
    len: u64 = 0,

    pub fn of(bytes: []const u8) Str {
        return .{ .ptr = if (bytes.len == 0) null else bytes.ptr, .len = bytes.len };
    }

    pub fn slice(self: Str) []const u8 {
        const p = self.ptr orelse return &.{};
        return p[0..self.len];
    }
};

pub const Image = extern struct {
    data: ?[*]const u8 = null,
    data_len: u64 = 0,
    width: i32 = 0,
    height: i32 = 0,
    original_width: i32 = 0,
    original_height: i32 = 0,
    channels: i32 = 0,
    bit_depth: i32 = 0,
    encoding: i32 = @backingInt(Encoding.raw),
    stride_bytes: u32 = 0,
    crop_left: f64 = 0,
    crop_top: f64 = 0,
    crop_right: f64 = 0,
    crop_bottom: f64 = 0,
    scale: f64 = 0,
};

pub const NamedImage = extern struct {
    name: Str = .{},
    image: Image = .{},
};

pub const Latent = extern struct {
    name: Str = .{},
    data: ?[*]const u8 = null,
    len: u64 = 0,
};

pub const Sample = extern struct {
    size: u32 = @sizeOf(Sample),
    source_kind: i32 = @backingInt(SourceKind.file),
    id: Str = .{},
    source: Str = .{},
    attributes_json: Str = .{},
    duplicate_state: i64 = 0,
    index: u64 = 0,
    epoch: u64 = 0,
    image: Image = .{},
    masks: ?[*]const NamedImage = null,
    mask_count: u64 = 0,
    additional_images: ?[*]const NamedImage = null,
    additional_image_count: u64 = 0,
    latents: ?[*]const Latent = null,
    latent_count: u64 = 0,
    tags: ?[*]const Str = null,
    tag_count: u64 = 0,
    coca_embedding: ?[*]const f32 = null,
    coca_embedding_len: u64 = 0,
    // ABI version 2.
    padded: u32 = 0,
    reserved: u32 = 0,
};

pub const Batch = extern struct {
    size: u32 = @sizeOf(Batch),
    count: u32,
    width: i32,
    height: i32,
    channels: i32,
    bit_depth: i32,
    images: [*]const u8,
    images_len: u64,
    samples: [*]const *Sample,
    epoch: u64,
};

comptime {
    std.debug.assert(@sizeOf(Batch) == 56);
    std.debug.assert(@sizeOf(Str) == 16);
    std.debug.assert(@sizeOf(Image) == 88);
    std.debug.assert(@sizeOf(NamedImage) == 104);
    std.debug.assert(@sizeOf(Latent) == 32);
    std.debug.assert(@sizeOf(Encoded) == 32);
    std.debug.assert(@sizeOf(Bucket) == 16);
    std.debug.assert(@sizeOf(Fit) == 56);
    std.debug.assert(@sizeOf(Sample) == 256);
    std.debug.assert(@sizeOf(Status) == @sizeOf(c_int));
}
