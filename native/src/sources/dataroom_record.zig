//! Dataroom JSON → records (compatibility.md §7.3; the record types of the
//! protocol note, "Record JSON"). A page is parsed into an arena that owns
//! every string of its records; the page lives until its last record was
//! turned into an item. Parsing never fails on a bad record: the record is
//! counted and skipped, with the first reason kept for the log.
const std = @import("std");
const json = std.json;
const Io = std.Io;
const Allocator = std.mem.Allocator;

/// Entries of a record's `latents` list kept (a record with more is malformed).
pub const latents_max = 64;
/// Floats of a `coca_embedding` vector kept (the real one has 768).
pub const embedding_len_max = 16 * 1024;

/// What a latent becomes in the sample (compatibility.md §7.3).
pub const LatentRole = enum { additional_image, mask, raw };

pub const Latent = struct {
    latent_type: []const u8,
    url: ?[]const u8,
    is_mask: bool,

    /// `*image*` but not `latent_*` → an additional image; else a mask when
    /// the server says so; else raw bytes.
    pub fn role(self: Latent) LatentRole {
        if (std.mem.indexOf(u8, self.latent_type, "image") != null and std.mem.indexOf(u8, self.latent_type, "latent_") == null) return .additional_image;
        return if (self.is_mask) .mask else .raw;
    }
};

pub const Record = struct {
    id: []const u8,
    source: []const u8,
    /// The `attributes` object as JSON text (numbers as the server wrote them).
    attributes_json: []const u8,
    tags: []const []const u8,
    /// -1 when null or absent.
    duplicate_state: i64,
    coca_embedding: []const f32,
    image_url: ?[]const u8,
    latents: []const Latent,
};

pub const Page = struct {
    arena: std.heap.ArenaAllocator,
    /// Absolute URL of the next page; null on the final (empty) page.
    next: ?[]const u8,
    records: []Record,
    /// Records skipped as malformed, and why the first one was.
    malformed: u32,
    first_malformed: []const u8,

    pub fn deinit(self: *Page) void {
        self.arena.deinit();
        self.* = undefined;
    }
};

pub const PageError = error{
    /// The body is not JSON.
    NotJson,
    /// JSON, but not `{"next": ..., "results": [...]}`.
    NotAPage,
    OutOfMemory,
};

const parse_options: json.ParseOptions = .{
    .allocate = .alloc_always,
    .duplicate_field_behavior = .use_last,
    // Numbers stay the server's text: attributes travel on byte-exact.
    .parse_numbers = false,
    .max_value_len = std.math.maxInt(u32),
};

/// Parses a page body. The page owns everything (caller deinits).
pub fn parsePage(gpa: Allocator, body: []const u8) PageError!Page {
    var page: Page = .{ .arena = .init(gpa), .next = null, .records = &.{}, .malformed = 0, .first_malformed = "" };
    errdefer page.arena.deinit();
    const arena = page.arena.allocator();
    const root = json.parseFromSliceLeaky(json.Value, arena, body, parse_options) catch |err| return switch (err) {
        error.OutOfMemory => error.OutOfMemory,
        else => error.NotJson,
    };
    const object = switch (root) {
        .object => |o| o,
        else => return error.NotAPage,
    };
    page.next = switch (object.get("next") orelse .null) {
        .null => null,
        .string => |s| s,
        else => return error.NotAPage,
    };
    const results = switch (object.get("results") orelse return error.NotAPage) {
        .array => |a| a.items,
        else => return error.NotAPage,
    };
    const records = try arena.alloc(Record, results.len);
    var kept: usize = 0;
    for (results) |value| {
        var why: []const u8 = "";
        if (parseRecord(arena, value, &why)) |record| {
            records[kept] = record;
            kept += 1;
        } else |err| switch (err) {
            error.OutOfMemory => return error.OutOfMemory,
            error.Malformed => {
                if (page.malformed == 0) page.first_malformed = why;
                page.malformed += 1;
            },
        }
    }
    page.records = records[0..kept];
    return page;
}

pub const RecordError = error{ Malformed, OutOfMemory };

/// One record (`images/<id>/` answers one such object). Strings are
/// borrowed from `value`, which must live in `arena`.
pub fn parseRecord(arena: Allocator, value: json.Value, why: *[]const u8) RecordError!Record {
    const object = switch (value) {
        .object => |o| o,
        else => return malformed(why, "a record is not a JSON object"),
    };
    const id = switch (object.get("id") orelse return malformed(why, "a record has no id")) {
        .string => |s| s,
        .number_string => |s| s,
        else => return malformed(why, "a record's id is not a string"),
    };
    if (id.len == 0) return malformed(why, "a record's id is empty");
    const source = switch (object.get("source") orelse .null) {
        .string => |s| s,
        .null => "",
        else => return malformed(why, "a record's source is not a string"),
    };
    const attributes_json = switch (object.get("attributes") orelse .null) {
        .null => "{}",
        .object => try json.Stringify.valueAlloc(arena, object.get("attributes").?, .{}),
        else => return malformed(why, "a record's attributes are not an object"),
    };
    const tags: []const []const u8 = switch (object.get("tags") orelse .null) {
        .null => &.{},
        .array => |a| blk: {
            const list = try arena.alloc([]const u8, a.items.len);
            for (a.items, list) |tag, *out| out.* = switch (tag) {
                .string => |s| s,
                else => return malformed(why, "a record's tags are not strings"),
            };
            break :blk list;
        },
        else => return malformed(why, "a record's tags are not a list"),
    };
    const duplicate_state: i64 = switch (object.get("duplicate_state") orelse .null) {
        .null => -1,
        .number_string => |s| std.fmt.parseInt(i64, s, 10) catch return malformed(why, "a record's duplicate_state is not an integer"),
        .integer => |i| i,
        else => return malformed(why, "a record's duplicate_state is not an integer"),
    };
    const image_url = switch (object.get("image_direct_url") orelse .null) {
        .null => null,
        .string => |s| s,
        else => return malformed(why, "a record's image_direct_url is not a string"),
    };
    return .{
        .id = id,
        .source = source,
        .attributes_json = attributes_json,
        .tags = tags,
        .duplicate_state = duplicate_state,
        .coca_embedding = try parseEmbedding(arena, object.get("coca_embedding") orelse .null, why),
        .image_url = image_url,
        .latents = try parseLatents(arena, object.get("latents") orelse .null, why),
    };
}

fn parseEmbedding(arena: Allocator, value: json.Value, why: *[]const u8) RecordError![]const f32 {
    const object = switch (value) {
        .null => return &.{},
        .object => |o| o,
        else => return malformed(why, "a record's coca_embedding is not an object"),
    };
    const vector = switch (object.get("vector") orelse .null) {
        .null => return &.{},
        .array => |a| a.items,
        else => return malformed(why, "a record's coca_embedding.vector is not a list"),
    };
    if (vector.len > embedding_len_max) return malformed(why, "a record's coca_embedding is too long");
    const out = try arena.alloc(f32, vector.len);
    for (vector, out) |v, *f| f.* = switch (v) {
        .number_string => |s| std.fmt.parseFloat(f32, s) catch return malformed(why, "a record's coca_embedding holds a non-number"),
        .float => |x| @floatCast(x),
        .integer => |i| @floatFromInt(i),
        else => return malformed(why, "a record's coca_embedding holds a non-number"),
    };
    return out;
}

fn parseLatents(arena: Allocator, value: json.Value, why: *[]const u8) RecordError![]const Latent {
    const items = switch (value) {
        .null => return &.{},
        .array => |a| a.items,
        else => return malformed(why, "a record's latents are not a list"),
    };
    if (items.len > latents_max) return malformed(why, "a record has too many latents");
    const out = try arena.alloc(Latent, items.len);
    for (items, out) |item, *latent| {
        const object = switch (item) {
            .object => |o| o,
            else => return malformed(why, "a latent is not an object"),
        };
        latent.* = .{
            .latent_type = switch (object.get("latent_type") orelse .null) {
                .string => |s| s,
                else => return malformed(why, "a latent has no latent_type"),
            },
            .url = switch (object.get("file_direct_url") orelse .null) {
                .null => null,
                .string => |s| s,
                else => return malformed(why, "a latent's file_direct_url is not a string"),
            },
            .is_mask = switch (object.get("is_mask") orelse .null) {
                .null => false,
                .bool => |b| b,
                else => return malformed(why, "a latent's is_mask is not a boolean"),
            },
        };
        if (latent.latent_type.len == 0) return malformed(why, "a latent has an empty latent_type");
    }
    return out;
}

fn malformed(why: *[]const u8, reason: []const u8) error{Malformed} {
    why.* = reason;
    return error.Malformed;
}

/// Parses the body of `images/<id>/` into `arena`.
pub fn parseRecordBody(arena: Allocator, body: []const u8, why: *[]const u8) RecordError!Record {
    const root = json.parseFromSliceLeaky(json.Value, arena, body, parse_options) catch |err| return switch (err) {
        error.OutOfMemory => error.OutOfMemory,
        else => malformed(why, "the record is not JSON"),
    };
    return parseRecord(arena, root, why);
}

/// The `detail` of a DRF error body (`{"detail": "..."}`), or for a 400
/// the whole body: the server's words, for the error message.
pub fn errorDetail(body: []const u8) []const u8 {
    const key = "\"detail\"";
    const at = std.mem.indexOf(u8, body, key) orelse return std.mem.trim(u8, body, " \r\n\t");
    var rest = std.mem.trimStart(u8, body[at + key.len ..], " :\t\r\n");
    if (rest.len == 0 or rest[0] != '"') return std.mem.trim(u8, body, " \r\n\t");
    rest = rest[1..];
    var end: usize = 0;
    while (end < rest.len and rest[end] != '"') : (end += 1) {
        if (rest[end] == '\\') end += 1;
    }
    return rest[0..@min(end, rest.len)];
}

const testing = std.testing;

test "a page parses into records; bad records are counted and skipped" {
    const body =
        \\{"next": "http://127.0.0.1:5/api/images/?fields=id%2Csource&cursor=img_0002", "results": [
        \\ {"id": "img_0001", "source": "SRC_A", "attributes": {"caption": "a red square", "score": 0.50},
        \\  "height": 48, "width": 64, "tags": ["t1"], "image_direct_url": "http://h/b/img_0001.jpg?X-Amz-Expires=1",
        \\  "latents": [{"latent_type": "segmentation_mask", "file_direct_url": "http://h/m.png", "is_mask": true},
        \\              {"latent_type": "masked_image", "file_direct_url": "http://h/i.jpg", "is_mask": false},
        \\              {"latent_type": "latent_vae", "file_direct_url": null, "is_mask": false}],
        \\  "duplicate_state": null, "coca_embedding": {"vector": [0.25, -1, 3e-2], "author": null}},
        \\ {"source": "no id"},
        \\ {"id": "img_0002", "source": "SRC_B", "attributes": {}, "tags": null, "duplicate_state": 2},
        \\ {"id": "img_0003", "tags": "not a list"}
        \\]}
    ;
    var page = try parsePage(testing.allocator, body);
    defer page.deinit();
    try testing.expectEqualStrings("http://127.0.0.1:5/api/images/?fields=id%2Csource&cursor=img_0002", page.next.?);
    try testing.expectEqual(@as(usize, 2), page.records.len);
    try testing.expectEqual(@as(u32, 2), page.malformed);
    try testing.expectEqualStrings("a record has no id", page.first_malformed);
    const a = page.records[0];
    try testing.expectEqualStrings("img_0001", a.id);
    try testing.expectEqualStrings("SRC_A", a.source);
    try testing.expectEqualStrings("{\"caption\":\"a red square\",\"score\":0.50}", a.attributes_json);
    try testing.expectEqualStrings("t1", a.tags[0]);
    try testing.expectEqual(@as(i64, -1), a.duplicate_state);
    try testing.expectEqualSlices(f32, &.{ 0.25, -1, 0.03 }, a.coca_embedding);
    try testing.expectEqual(LatentRole.mask, a.latents[0].role());
    try testing.expectEqual(LatentRole.additional_image, a.latents[1].role());
    try testing.expectEqual(LatentRole.raw, a.latents[2].role());
    try testing.expectEqual(@as(?[]const u8, null), a.latents[2].url);
    const b = page.records[1];
    try testing.expectEqual(@as(usize, 0), b.tags.len);
    try testing.expectEqual(@as(i64, 2), b.duplicate_state);
    try testing.expectEqual(@as(?[]const u8, null), b.image_url);
    try testing.expectEqualStrings("{}", b.attributes_json);
}

test "the final page, and bodies that are not pages" {
    var last = try parsePage(testing.allocator, "{\"next\": null, \"results\": []}");
    defer last.deinit();
    try testing.expectEqual(@as(?[]const u8, null), last.next);
    try testing.expectEqual(@as(usize, 0), last.records.len);
    try testing.expectError(error.NotJson, parsePage(testing.allocator, "<html>502 Bad Gateway</html>"));
    try testing.expectError(error.NotAPage, parsePage(testing.allocator, "{\"detail\": \"Invalid token.\"}"));
    try testing.expectError(error.NotAPage, parsePage(testing.allocator, "[1, 2]"));
    try testing.expectError(error.NotAPage, parsePage(testing.allocator, "{\"next\": 5, \"results\": []}"));
}

test "latent roles follow the reference's naming rule" {
    try testing.expectEqual(LatentRole.additional_image, (Latent{ .latent_type = "masked_image", .url = null, .is_mask = true }).role());
    try testing.expectEqual(LatentRole.raw, (Latent{ .latent_type = "latent_image_vae", .url = null, .is_mask = false }).role());
    try testing.expectEqual(LatentRole.mask, (Latent{ .latent_type = "latent_image_mask", .url = null, .is_mask = true }).role());
}

test "the server's detail is found in its error body" {
    try testing.expectEqualStrings("Invalid token.", errorDetail("{\"detail\": \"Invalid token.\"}"));
    try testing.expectEqualStrings("[\"One or more tags do not exist: 'x'\"]", errorDetail("[\"One or more tags do not exist: 'x'\"]\n"));
    try testing.expectEqualStrings("say \\\"hi\\\"", errorDetail("{\"detail\":\"say \\\"hi\\\"\"}"));
}

test "parsing survives every allocation failure" {
    try testing.checkAllAllocationFailures(testing.allocator, struct {
        fn run(gpa: Allocator) !void {
            var page = try parsePage(gpa, "{\"next\": \"n\", \"results\": [{\"id\": \"a\", \"attributes\": {\"k\": [1, 2]}, \"tags\": [\"x\"], \"latents\": [{\"latent_type\": \"m\", \"file_direct_url\": \"u\", \"is_mask\": true}]}]}");
            page.deinit();
        }
    }.run, .{});
}
