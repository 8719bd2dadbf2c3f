//! The Dataroom requests, built as the reference builds them
//! (compatibility.md §4.5, §7.3): the `fields` and `return_latents` it
//! derives from the filters, and the first page's query string with the
//! parameters in its exact order, each only when non-empty, values
//! form-urlencoded. Pure functions: no I/O, no allocation beyond the
//! writer's.
const std = @import("std");
const Io = std.Io;

const config_mod = @import("../config.zig");

/// How this (rank, worker) asks the server to split: `partition` of
/// `count` (nothing sent when count ≤ 1).
pub const Partition = struct { index: u32 = 0, count: u32 = 1 };

/// `id,source,attributes,height,width,tags` then the optional fields in the
/// reference's order (duplicates are harmless: the server drops them).
pub fn writeFields(db: *const config_mod.Dataroom, w: *Io.Writer) Io.Writer.Error!void {
    try w.writeAll("id,source,attributes,height,width,tags");
    if (db.require_images) try w.writeAll(",image_direct_url");
    if (wantsLatents(db)) try w.writeAll(",latents");
    for ([_][]const u8{ db.tags, db.tags_all, db.tags_ne, db.tags_empty, db.tags_ne_all }) |filter| {
        if (filter.len > 0) try w.writeAll(",tags");
    }
    if (db.require_embeddings) try w.writeAll(",coca_embedding");
    if (db.duplicate_state >= 0) try w.writeAll(",duplicate_state");
}

pub fn wantsLatents(db: *const config_mod.Dataroom) bool {
    return db.has_latents.len > 0 or db.has_masks.len > 0;
}

/// `<has_latents>,<has_masks>` when has_latents is set (a trailing comma
/// when has_masks is empty, as the reference sends it), else has_masks.
pub fn writeReturnLatents(db: *const config_mod.Dataroom, w: *Io.Writer) Io.Writer.Error!void {
    if (db.has_latents.len > 0) {
        try w.print("{s},{s}", .{ db.has_latents, db.has_masks });
    } else {
        try w.writeAll(db.has_masks);
    }
}

/// Form-urlencoding as Python's `urlencode` does it: unreserved bytes as
/// they are, space as `+`, every other byte `%XX`.
pub fn writeEncoded(w: *Io.Writer, value: []const u8) Io.Writer.Error!void {
    for (value) |c| {
        if (std.ascii.isAlphanumeric(c) or c == '-' or c == '_' or c == '.' or c == '~') {
            try w.writeByte(c);
        } else if (c == ' ') {
            try w.writeByte('+');
        } else {
            try w.print("%{X:0>2}", .{c});
        }
    }
}

const Query = struct {
    w: *Io.Writer,
    first: bool = true,

    fn add(q: *Query, name: []const u8, value: []const u8) Io.Writer.Error!void {
        if (value.len == 0) return;
        try q.w.writeAll(if (q.first) "?" else "&");
        q.first = false;
        try q.w.writeAll(name);
        try q.w.writeByte('=');
        try writeEncoded(q.w, value);
    }

    fn addPositive(q: *Query, name: []const u8, value: i64) Io.Writer.Error!void {
        if (value <= 0) return;
        var buffer: [24]u8 = undefined;
        try q.add(name, std.fmt.bufPrint(&buffer, "{d}", .{value}) catch unreachable);
    }
};

/// Room for the derived `fields` and `return_latents` values.
pub const derived_bytes_max = 4096;

/// `?fields=...&sources=...&page_size=...` for the first page request.
pub fn writeFirstPageQuery(db: *const config_mod.Dataroom, partition: Partition, w: *Io.Writer) Io.Writer.Error!void {
    var derived: Derived = undefined;
    try derived.compute(db);
    var page_size_buffer: [16]u8 = undefined;
    const page_size = std.fmt.bufPrint(&page_size_buffer, "{d}", .{db.page_size}) catch unreachable;

    var q: Query = .{ .w = w };
    try q.add("fields", derived.fields.buffered());
    try q.add("sources", db.sources);
    try q.add("sources__ne", db.sources_ne);
    try q.add("page_size", page_size);
    try q.add("tags", db.tags);
    try q.add("tags__all", db.tags_all);
    try q.add("tags__ne", db.tags_ne);
    try q.add("tags__ne_all", db.tags_ne_all);
    try q.add("tags__empty", db.tags_empty);
    try q.add("has_attributes", db.has_attributes);
    try q.add("lacks_attributes", db.lacks_attributes);
    try q.add("has_masks", db.has_masks);
    try q.add("lacks_masks", db.lacks_masks);
    try q.add("has_latents", db.has_latents);
    try q.add("lacks_latents", db.lacks_latents);
    try q.add("return_latents", derived.return_latents.buffered());
    try q.addPositive("short_edge__gte", db.min_short_edge);
    try q.addPositive("short_edge__lte", db.max_short_edge);
    try q.addPositive("pixel_count__gte", db.min_pixel_count);
    try q.addPositive("pixel_count__lte", db.max_pixel_count);
    try q.addPositive("duplicate_state", db.duplicate_state);
    try q.add("attributes", db.attributes);
    if (partition.count > 1) {
        var count_buffer: [12]u8 = undefined;
        var index_buffer: [12]u8 = undefined;
        try q.add("partitions_count", std.fmt.bufPrint(&count_buffer, "{d}", .{partition.count}) catch unreachable);
        try q.add("partition", std.fmt.bufPrint(&index_buffer, "{d}", .{partition.index}) catch unreachable);
    }
}

/// `?fields=...[&return_latents=...]` for `images/<id>/` (fresh blob URLs).
pub fn writeRecordQuery(db: *const config_mod.Dataroom, w: *Io.Writer) Io.Writer.Error!void {
    var derived: Derived = undefined;
    try derived.compute(db);
    var q: Query = .{ .w = w };
    try q.add("fields", derived.fields.buffered());
    try q.add("return_latents", derived.return_latents.buffered());
}

/// The `fields` and `return_latents` values both requests derive from the
/// config (compatibility.md §4.5).
const Derived = struct {
    fields_buffer: [derived_bytes_max]u8,
    return_buffer: [derived_bytes_max]u8,
    fields: Io.Writer,
    return_latents: Io.Writer,

    /// `d` must not move afterwards: the writers point into it.
    fn compute(d: *Derived, db: *const config_mod.Dataroom) Io.Writer.Error!void {
        d.fields = .fixed(&d.fields_buffer);
        try writeFields(db, &d.fields);
        d.return_latents = .fixed(&d.return_buffer);
        writeReturnLatents(db, &d.return_latents) catch return error.WriteFailed;
    }
};

/// The API root with exactly one trailing slash (the reference needs the
/// user to write it; compatibility.md §4.5 says append it).
pub fn writeApiRoot(url: []const u8, w: *Io.Writer) Io.Writer.Error!void {
    try w.writeAll(std.mem.trimEnd(u8, url, "/"));
    try w.writeByte('/');
}

const testing = std.testing;

fn parseDb(json_text: []const u8) !config_mod.Parsed {
    var diag: config_mod.Diagnostics = .{};
    var text: [2048]u8 = undefined;
    const full = try std.fmt.bufPrint(&text, "{{\"source_config\": {s}}}", .{json_text});
    return config_mod.parse(testing.allocator, full, &diag) catch |err| {
        std.debug.print("config refused: {s}\n", .{diag.text()});
        return err;
    };
}

fn expectQuery(source_config: []const u8, partition: Partition, expected: []const u8) !void {
    var parsed = try parseDb(source_config);
    defer parsed.deinit();
    var buffer: [4096]u8 = undefined;
    var w: Io.Writer = .fixed(&buffer);
    try writeFirstPageQuery(&parsed.config.dataroom, partition, &w);
    try testing.expectEqualStrings(expected, w.buffered());
}

const fields_default = "fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Cduplicate_state";

test "the reference's example query: defaults, sources COYO, page_size 10" {
    try expectQuery("{\"sources\": \"COYO\", \"page_size\": 10}", .{}, "?" ++ fields_default ++ "&sources=COYO&page_size=10");
    // No sources: the parameter is left out.
    try expectQuery("{\"sources\": \"\", \"page_size\": 500}", .{}, "?" ++ fields_default ++ "&page_size=500");
}

test "each filter becomes its own parameter, in the reference's order" {
    const cases = [_]struct { key: []const u8, value: []const u8, expected: []const u8 }{
        .{ .key = "sources_ne", .value = "\"A,B\"", .expected = "?" ++ fields_default ++ "&sources__ne=A%2CB&page_size=10" },
        .{ .key = "tags", .value = "\"t1,t2\"", .expected = "?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Ctags%2Cduplicate_state&page_size=10&tags=t1%2Ct2" },
        .{ .key = "tags_all", .value = "\"t1\"", .expected = "?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Ctags%2Cduplicate_state&page_size=10&tags__all=t1" },
        .{ .key = "tags_ne", .value = "\"t1\"", .expected = "?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Ctags%2Cduplicate_state&page_size=10&tags__ne=t1" },
        .{ .key = "tags_ne_all", .value = "\"t1\"", .expected = "?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Ctags%2Cduplicate_state&page_size=10&tags__ne_all=t1" },
        .{ .key = "tags_empty", .value = "\"true\"", .expected = "?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Ctags%2Cduplicate_state&page_size=10&tags__empty=true" },
        .{ .key = "has_attributes", .value = "\"a,b\"", .expected = "?" ++ fields_default ++ "&page_size=10&has_attributes=a%2Cb" },
        .{ .key = "lacks_attributes", .value = "\"a\"", .expected = "?" ++ fields_default ++ "&page_size=10&lacks_attributes=a" },
        .{ .key = "has_masks", .value = "\"seg\"", .expected = "?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Clatents%2Cduplicate_state&page_size=10&has_masks=seg&return_latents=seg" },
        .{ .key = "lacks_masks", .value = "\"seg\"", .expected = "?" ++ fields_default ++ "&page_size=10&lacks_masks=seg" },
        .{ .key = "has_latents", .value = "\"latent_vae\"", .expected = "?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Clatents%2Cduplicate_state&page_size=10&has_latents=latent_vae&return_latents=latent_vae%2C" },
        .{ .key = "lacks_latents", .value = "\"l\"", .expected = "?" ++ fields_default ++ "&page_size=10&lacks_latents=l" },
        .{ .key = "min_short_edge", .value = "256", .expected = "?" ++ fields_default ++ "&page_size=10&short_edge__gte=256" },
        .{ .key = "max_short_edge", .value = "1024", .expected = "?" ++ fields_default ++ "&page_size=10&short_edge__lte=1024" },
        .{ .key = "min_pixel_count", .value = "100", .expected = "?" ++ fields_default ++ "&page_size=10&pixel_count__gte=100" },
        .{ .key = "max_pixel_count", .value = "9000", .expected = "?" ++ fields_default ++ "&page_size=10&pixel_count__lte=9000" },
        .{ .key = "duplicate_state", .value = "1", .expected = "?" ++ fields_default ++ "&page_size=10&duplicate_state=1" },
        .{ .key = "duplicate_state", .value = "-1", .expected = "?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags&page_size=10" },
        .{ .key = "attributes", .value = "\"score__gte:0.5,caption__prefix:a b\"", .expected = "?" ++ fields_default ++ "&page_size=10&attributes=score__gte%3A0.5%2Ccaption__prefix%3Aa+b" },
        .{ .key = "require_images", .value = "true", .expected = "?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Cimage_direct_url%2Cduplicate_state&page_size=10" },
        .{ .key = "require_embeddings", .value = "true", .expected = "?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Ccoca_embedding%2Cduplicate_state&page_size=10" },
        // Zero (the default) and negative bounds are not sent.
        .{ .key = "min_short_edge", .value = "0", .expected = "?" ++ fields_default ++ "&page_size=10" },
        .{ .key = "max_pixel_count", .value = "-5", .expected = "?" ++ fields_default ++ "&page_size=10" },
    };
    for (cases) |case| {
        var text: [512]u8 = undefined;
        const source_config = try std.fmt.bufPrint(&text, "{{\"sources\": \"\", \"page_size\": 10, \"{s}\": {s}}}", .{ case.key, case.value });
        expectQuery(source_config, .{}, case.expected) catch |err| {
            std.debug.print("key {s}\n", .{case.key});
            return err;
        };
    }
}

test "every filter at once keeps the order, partitions last" {
    try expectQuery(
        \\{"sources": "A", "page_size": 7, "sources_ne": "B", "tags": "t", "tags_all": "u", "tags_ne": "v",
        \\ "tags_ne_all": "w", "tags_empty": "false", "has_attributes": "h", "lacks_attributes": "l",
        \\ "has_masks": "m", "lacks_masks": "n", "has_latents": "x", "lacks_latents": "y",
        \\ "min_short_edge": 1, "max_short_edge": 2, "min_pixel_count": 3, "max_pixel_count": 4,
        \\ "duplicate_state": 2, "attributes": "k:v", "require_images": true, "require_embeddings": true}
    , .{ .index = 1, .count = 3 }, "?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Cimage_direct_url%2Clatents%2Ctags%2Ctags%2Ctags%2Ctags%2Ctags%2Ccoca_embedding%2Cduplicate_state" ++
        "&sources=A&sources__ne=B&page_size=7&tags=t&tags__all=u&tags__ne=v&tags__ne_all=w&tags__empty=false" ++
        "&has_attributes=h&lacks_attributes=l&has_masks=m&lacks_masks=n&has_latents=x&lacks_latents=y&return_latents=x%2Cm" ++
        "&short_edge__gte=1&short_edge__lte=2&pixel_count__gte=3&pixel_count__lte=4&duplicate_state=2&attributes=k%3Av" ++
        "&partitions_count=3&partition=1");
}

test "partitions are sent only when there are several" {
    try expectQuery("{\"sources\": \"S\", \"page_size\": 10}", .{ .index = 0, .count = 1 }, "?" ++ fields_default ++ "&sources=S&page_size=10");
    try expectQuery("{\"sources\": \"S\", \"page_size\": 10}", .{ .index = 47, .count = 48 }, "?" ++ fields_default ++ "&sources=S&page_size=10&partitions_count=48&partition=47");
}

test "the record query carries fields and return_latents" {
    var parsed = try parseDb("{\"sources\": \"\", \"page_size\": 1, \"has_masks\": \"seg\", \"require_images\": true}");
    defer parsed.deinit();
    var buffer: [512]u8 = undefined;
    var w: Io.Writer = .fixed(&buffer);
    try writeRecordQuery(&parsed.config.dataroom, &w);
    try testing.expectEqualStrings("?fields=id%2Csource%2Cattributes%2Cheight%2Cwidth%2Ctags%2Cimage_direct_url%2Clatents%2Cduplicate_state&return_latents=seg", w.buffered());
}

test "the API root gets exactly one trailing slash" {
    for ([_][]const u8{ "http://h:1/api", "http://h:1/api/", "http://h:1/api//" }) |url| {
        var buffer: [64]u8 = undefined;
        var w: Io.Writer = .fixed(&buffer);
        try writeApiRoot(url, &w);
        try testing.expectEqualStrings("http://h:1/api/", w.buffered());
    }
}

test "db configs are validated at construction, naming the key" {
    const cases = [_]struct { text: []const u8, prefix: []const u8 }{
        .{ .text = "{\"source_config\": {\"page_size\": 10}}", .prefix = "source_config.sources: missing" },
        .{ .text = "{\"source_config\": {\"sources\": \"\"}}", .prefix = "source_config.page_size: missing" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 0}}", .prefix = "source_config.page_size: 0 is outside 1 .. 2000" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 2001}}", .prefix = "source_config.page_size: 2001 is outside" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": \"10\"}}", .prefix = "source_config.page_size: expected a non-negative integer" },
        .{ .text = "{\"source_config\": {\"sources\": 5, \"page_size\": 10}}", .prefix = "source_config.sources: expected a string" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 10, \"tags\": [\"a\"]}}", .prefix = "source_config.tags: expected a string" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 10, \"min_short_edge\": \"5\"}}", .prefix = "source_config.min_short_edge: expected an integer" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 10, \"duplicate_state\": 3000000000}}", .prefix = "source_config.duplicate_state: 3000000000 is out of range" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 10, \"require_images\": 1}}", .prefix = "source_config.require_images: expected true or false" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 10, \"random_sampling\": \"yes\"}}", .prefix = "source_config.random_sampling: expected true or false" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 10, \"rank\": 2, \"world_size\": 2}}", .prefix = "source_config.rank: 2 must be less than world_size (2)" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 10, \"rank\": 1}}", .prefix = "source_config.rank: 1 must be less than world_size (0)" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 10, \"rank\": -1, \"world_size\": 2}}", .prefix = "source_config.rank: -1 is out of range" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 10, \"rank\": 0, \"world_size\": 49}}", .prefix = "source_config.world_size: 49 is above 48" },
        .{ .text = "{\"source_config\": {\"sources\": \"\", \"page_size\": 10, \"concurrent_downloads\": 0}}", .prefix = "source_config.concurrent_downloads: must be between 1" },
        .{ .text = "{\"source_config\": {\"sources\": \"a\\nb\", \"page_size\": 10}}", .prefix = "source_config.sources: contains a line break" },
    };
    for (cases) |case| {
        var diag: config_mod.Diagnostics = .{};
        try testing.expectError(error.Invalid, config_mod.parse(testing.allocator, case.text, &diag));
        if (!std.mem.startsWith(u8, diag.text(), case.prefix)) {
            std.debug.print("expected '{s}...', got '{s}'\n", .{ case.prefix, diag.text() });
            return error.TestUnexpectedResult;
        }
    }
    // The seed's example: world_size 1, rank 0; source_type absent means db.
    var parsed = try parseDb("{\"sources\": \"\", \"page_size\": 500, \"rank\": 0, \"world_size\": 1}");
    defer parsed.deinit();
    try testing.expectEqual(config_mod.SourceType.db, parsed.config.source_type);
    try testing.expectEqual(@as(u32, 500), parsed.config.dataroom.page_size);
    try testing.expectEqual(@as(usize, 0), parsed.unknown_keys.len);
}
