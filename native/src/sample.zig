//! Samples as the C ABI hands them out: a `datago_sample` struct at the
//! start of an `Owned` box that also records every buffer the sample owns.
//! A sample never points into loader memory, so it outlives its loader.
const std = @import("std");
const abi = @import("abi_types.zig");
const runtime = @import("runtime.zig");
const buffers = @import("buffers.zig");
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
    /// `backing` came from buffers.alloc (else from a C decoder's malloc).
    pooled: bool = true,

    pub fn deinit(self: *Pixels, gpa: Allocator) void {
        self.freeBacking(gpa);
        self.* = undefined;
    }

    /// Allocates `len` bytes of pixels (16-byte aligned, recycled: buffers.zig).
    pub fn alloc(gpa: Allocator, len: usize) Allocator.Error![]align(16) u8 {
        return buffers.alloc(gpa, len);
    }

    /// Releases the buffer (to the pool, or to the C allocator it came from).
    pub fn freeBacking(self: *Pixels, gpa: Allocator) void {
        if (self.pooled) buffers.free(gpa, self.backing) else buffers.freeUnpooled(gpa, self.backing);
    }

    /// Replaces the buffer by `fresh` (from `alloc`), releasing the old one.
    pub fn adopt(self: *Pixels, gpa: Allocator, fresh: []align(16) u8) void {
        self.freeBacking(gpa);
        self.data = fresh;
        self.backing = fresh;
        self.pooled = true;
    }

    pub fn view(self: *const Pixels) abi.Image {
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
            .encoding = @backingInt(self.encoding),
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
    /// Strings of the sample (id, source, attributes, image names), one allocation.
    strings: []u8,
    image: ?Pixels,
    /// Masks then additional images, and the C views of them.
    extras: []Pixels,
    named: []abi.NamedImage,
    /// Latent bytes, one allocation; the C views of latents and tags (their
    /// names and texts live in `strings`); the embedding.
    latent_bytes: []u8 = &.{},
    latent_views: []abi.Latent = &.{},
    tag_views: []abi.Str = &.{},
    coca: []f32 = &.{},
    /// Counted in runtime.live_samples once handed to the caller.
    handed_out: bool = false,
    /// Owned by a batch (batcher.zig): freed with it, never on its own.
    in_batch: bool = false,

    pub fn fromC(ptr: *abi.Sample) *Owned {
        return @fieldParentPtr("c", ptr);
    }

    /// Frees the sample and everything it owns.
    pub fn destroy(self: *Owned) void {
        const gpa = self.gpa;
        if (self.handed_out) _ = runtime.live_samples.fetchSub(1, .monotonic);
        if (self.image) |*image| image.deinit(gpa);
        for (self.extras) |*extra| extra.deinit(gpa);
        gpa.free(self.extras);
        gpa.free(self.named);
        gpa.free(self.latent_bytes);
        gpa.free(self.latent_views);
        gpa.free(self.tag_views);
        gpa.free(self.coca);
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

pub const Named = struct { name: []const u8, pixels: Pixels };

/// An encoded image that goes with a sample's main image (a mask or an
/// additional image), by name. Both borrowed.
pub const EncodedNamed = struct { name: []const u8, bytes: []const u8 };

/// The id of a sample: given as is, or a file path built from root_path and
/// a relative path (compatibility.md §7.1.1), written straight into the strings block.
pub const Id = union(enum) {
    plain: []const u8,
    path: struct { root: []const u8, relative: []const u8 },

    fn len(self: Id) usize {
        return switch (self) {
            .plain => |p| p.len,
            .path => |p| files.joinedLen(p.root, p.relative),
        };
    }

    fn write(self: Id, out: []u8) void {
        switch (self) {
            .plain => |p| @memcpy(out, p),
            .path => |p| files.joinInto(out, p.root, p.relative),
        }
    }
};

pub const Parts = struct {
    kind: abi.SourceKind,
    id: Id,
    source: []const u8,
    attributes_json: []const u8 = "{}",
    duplicate_state: i64 = 0,
    image: ?Pixels,
    masks: []const Named = &.{},
    additional: []const Named = &.{},
    /// Copied (byte-exact), as are tags and the embedding.
    latents: []const EncodedNamed = &.{},
    tags: []const []const u8 = &.{},
    coca_embedding: []const f32 = &.{},
    index: u64 = 0,
    epoch: u64 = 0,
    /// A repeat made by equal_per_rank "pad".
    padded: bool = false,
};

/// Builds a sample. Takes ownership of every `Pixels` in `parts`, also on
/// failure.
pub fn build(gpa: Allocator, parts: Parts) Allocator.Error!*Owned {
    var main = parts.image;
    const extra_count = parts.masks.len + parts.additional.len;
    errdefer {
        if (main) |*m| m.deinit(gpa);
        for (parts.masks) |n| @constCast(&n.pixels).deinit(gpa);
        for (parts.additional) |n| @constCast(&n.pixels).deinit(gpa);
    }
    var names_len: usize = 0;
    for (parts.masks) |n| names_len += n.name.len;
    for (parts.additional) |n| names_len += n.name.len;
    var latent_bytes_len: usize = 0;
    for (parts.latents) |l| {
        names_len += l.name.len;
        latent_bytes_len += l.bytes.len;
    }
    for (parts.tags) |t| names_len += t.len;
    const id_len = parts.id.len();
    const strings = try gpa.alloc(u8, id_len + parts.source.len + parts.attributes_json.len + names_len);
    errdefer gpa.free(strings);
    const extras = try gpa.alloc(Pixels, extra_count);
    errdefer gpa.free(extras);
    const named = try gpa.alloc(abi.NamedImage, extra_count);
    errdefer gpa.free(named);
    const latent_bytes = try gpa.alloc(u8, latent_bytes_len);
    errdefer gpa.free(latent_bytes);
    const latent_views = try gpa.alloc(abi.Latent, parts.latents.len);
    errdefer gpa.free(latent_views);
    const tag_views = try gpa.alloc(abi.Str, parts.tags.len);
    errdefer gpa.free(tag_views);
    const coca = try gpa.dupe(f32, parts.coca_embedding);
    errdefer gpa.free(coca);
    const owned = try gpa.create(Owned);

    var cursor: usize = 0;
    const id = take(strings, &cursor, id_len);
    parts.id.write(id);
    const source = take(strings, &cursor, parts.source.len);
    @memcpy(source, parts.source);
    const attributes = take(strings, &cursor, parts.attributes_json.len);
    @memcpy(attributes, parts.attributes_json);
    var i: usize = 0;
    for ([_][]const Named{ parts.masks, parts.additional }) |group| {
        for (group) |n| {
            const name = take(strings, &cursor, n.name.len);
            @memcpy(name, n.name);
            extras[i] = n.pixels;
            named[i] = .{ .name = .of(name), .image = extras[i].view() };
            i += 1;
        }
    }
    var bytes_at: usize = 0;
    for (parts.latents, latent_views) |l, *view| {
        const name = take(strings, &cursor, l.name.len);
        @memcpy(name, l.name);
        const data = take(latent_bytes, &bytes_at, l.bytes.len);
        @memcpy(data, l.bytes);
        view.* = .{ .name = .of(name), .data = if (data.len > 0) data.ptr else null, .len = data.len };
    }
    for (parts.tags, tag_views) |t, *view| {
        const text = take(strings, &cursor, t.len);
        @memcpy(text, t);
        view.* = .of(text);
    }
    std.debug.assert(cursor == strings.len and bytes_at == latent_bytes.len);
    owned.* = .{
        .c = .{},
        .gpa = gpa,
        .strings = strings,
        .image = main,
        .extras = extras,
        .named = named,
        .latent_bytes = latent_bytes,
        .latent_views = latent_views,
        .tag_views = tag_views,
        .coca = coca,
    };
    main = null; // owned now
    owned.c = .{
        .source_kind = @backingInt(parts.kind),
        .id = .of(id),
        .source = .of(source),
        .attributes_json = .of(attributes),
        .duplicate_state = parts.duplicate_state,
        .index = parts.index,
        .epoch = parts.epoch,
        .padded = @intFromBool(parts.padded),
        .image = if (owned.image) |*m| m.view() else .{},
        .masks = if (parts.masks.len > 0) named.ptr else null,
        .mask_count = parts.masks.len,
        .additional_images = if (parts.additional.len > 0) named[parts.masks.len..].ptr else null,
        .additional_image_count = parts.additional.len,
        .latents = if (latent_views.len > 0) latent_views.ptr else null,
        .latent_count = latent_views.len,
        .tags = if (tag_views.len > 0) tag_views.ptr else null,
        .tag_count = tag_views.len,
        .coca_embedding = if (coca.len > 0) coca.ptr else null,
        .coca_embedding_len = coca.len,
    };
    return owned;
}

fn take(strings: []u8, cursor: *usize, len: usize) []u8 {
    defer cursor.* += len;
    return strings[cursor.*..][0..len];
}

const files = @import("sources/files.zig");

/// Builds a file-source sample. Takes ownership of `image` (also on failure).
/// `root_path` and `relative` are joined as compatibility.md §7.1.1 builds ids.
pub fn fromFile(
    gpa: Allocator,
    root_path: []const u8,
    relative: []const u8,
    image: Pixels,
    index: u64,
    epoch: u64,
) Allocator.Error!*Owned {
    return build(gpa, .{
        .kind = .file,
        .id = .{ .path = .{ .root = root_path, .relative = relative } },
        .source = "filesystem",
        .image = image,
        .index = index,
        .epoch = epoch,
    });
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

test "masks and additional images are owned and viewed in order" {
    const gpa = std.testing.allocator;
    var blocks: [3][]align(16) u8 = undefined;
    var pixels: [3]Pixels = undefined;
    for (&blocks, &pixels, 0..) |*b, *p, i| {
        b.* = try Pixels.alloc(gpa, 4);
        @memset(b.*, @intCast(i));
        p.* = .{ .data = b.*, .backing = b.*, .width = 2, .height = 2, .channels = 1, .bit_depth = 8, .original_width = 2, .original_height = 2, .crop = .{ 0, 0, 2, 2 } };
    }
    const s = try build(gpa, .{
        .kind = .dataroom,
        .id = .{ .plain = "id-1" },
        .source = "src",
        .attributes_json = "{\"a\":1}",
        .image = pixels[0],
        .masks = &.{.{ .name = "segmentation", .pixels = pixels[1] }},
        .additional = &.{.{ .name = "masked_image", .pixels = pixels[2] }},
    });
    defer s.destroy();
    try std.testing.expectEqualStrings("id-1", s.c.id.slice());
    try std.testing.expectEqual(@as(u64, 1), s.c.mask_count);
    try std.testing.expectEqualStrings("segmentation", s.c.masks.?[0].name.slice());
    try std.testing.expectEqual(@as(u8, 1), s.c.masks.?[0].image.data.?[0]);
    try std.testing.expectEqualStrings("masked_image", s.c.additional_images.?[0].name.slice());
    try std.testing.expectEqual(@as(u8, 2), s.c.additional_images.?[0].image.data.?[0]);
}

test "latents, tags and the embedding are copied byte-exact" {
    const gpa = std.testing.allocator;
    const raw = [_]u8{ 0, 255, 7 };
    const s = try build(gpa, .{
        .kind = .dataroom,
        .id = .{ .plain = "id-2" },
        .source = "src",
        .duplicate_state = -1,
        .image = null,
        .latents = &.{ .{ .name = "latent_vae", .bytes = &raw }, .{ .name = "empty", .bytes = "" } },
        .tags = &.{ "t1", "t2" },
        .coca_embedding = &.{ 0.5, -1.25 },
    });
    defer s.destroy();
    try std.testing.expectEqual(@as(u64, 2), s.c.latent_count);
    try std.testing.expectEqualStrings("latent_vae", s.c.latents.?[0].name.slice());
    try std.testing.expectEqualSlices(u8, &raw, s.c.latents.?[0].data.?[0..s.c.latents.?[0].len]);
    try std.testing.expectEqual(@as(u64, 0), s.c.latents.?[1].len);
    try std.testing.expectEqualStrings("t2", s.c.tags.?[1].slice());
    try std.testing.expectEqual(@as(f32, -1.25), s.c.coca_embedding.?[1]);
    try std.testing.expectEqual(@as(i64, -1), s.c.duplicate_state);
    try std.testing.expectEqual(@as(u64, 0), s.c.image.data_len);
}
