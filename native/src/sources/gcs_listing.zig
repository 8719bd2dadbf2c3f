//! Google Cloud Storage JSON API listings as a WebDataset `url`
//! (compatibility.md §7.2): a `url` without `{` whose path has the shape
//! `/storage/v1/b/<bucket>/o` names the objects of a listing instead of
//! one shard (in real use
//! `https://storage.googleapis.com/storage/v1/b/<bucket>/o?prefix=<prefix>`). The decision is made on the path's shape, not on
//! the host, so the tests serve a listing from 127.0.0.1 and a proxy or an
//! emulator works too.
//!
//! `list` runs when the pass is prepared, never in the constructor: it GETs
//! the listing through http.zig (the shards' retries, timeouts, CA bundle,
//! `auth_token` and `headers`: private buckets need them; the reference sends
//! no token here and reads one page only), follows `nextPageToken` by setting
//! `pageToken=<token, URL-encoded>` in the query (replacing one the URL
//! already had) until a page has none, and keeps, in listing order, the
//! `mediaLink` of every item whose `name` ends in `.tar`, `.tar.gz` or
//! `.tgz`. Other objects are counted and logged (INFO). The result is the
//! same packed URL list a brace pattern expands to (`braces.Expansion`), so
//! the shard split and the stream do not know where it came from.
//!
//! Failures fail the pass (`SourceError`) with the listing URL and the
//! reason: an HTTP status that gives up (403, 404, ...), retries exhausted,
//! a page that is not a JSON listing, a listing with no shard in it. Bounds:
//! `pages_max` pages of at most `page_bytes_max` bytes,
//! `shard_split.shards_max` shards, `braces.expanded_bytes_max` bytes of URLs.
//! A stopped pass is noticed between pages (a page in flight ends by its
//! own timeouts).
const std = @import("std");
const assert = std.debug.assert;
const Io = std.Io;
const Allocator = std.mem.Allocator;

const log = @import("../log.zig");
const braces = @import("braces.zig");
const http = @import("http.zig");
const shard_split = @import("shard_split.zig");
const source = @import("source.zig");

/// Pages followed per listing: GCS pages hold up to 1000 objects, so this
/// covers `shards_max` shards with room for objects that are not shards.
pub const pages_max = 1 << 16;
/// Bytes of one page's JSON: a full 1000-object page with custom metadata
/// is a few MiB.
pub const page_bytes_max = 64 * 1024 * 1024;
/// Shard name endings kept from a listing.
pub const shard_suffixes = [_][]const u8{ ".tar", ".tar.gz", ".tgz" };
/// Where a `gs://` url is pointed to instead.
pub const json_api_prefix = "https://storage.googleapis.com/storage/v1/b/";
const buffer_bytes = 64 * 1024;

comptime {
    assert(@as(u64, pages_max) * 1000 >= shard_split.shards_max);
}

/// True when `url` is an http(s) URL whose path is `/storage/v1/b/<bucket>/o`
/// (any query). A url with `{` is a brace pattern and never a listing.
pub fn isListingUrl(url: []const u8) bool {
    if (std.mem.findScalar(u8, url, '{') != null) return false;
    const rest = if (std.mem.startsWith(u8, url, "https://"))
        url["https://".len..]
    else if (std.mem.startsWith(u8, url, "http://"))
        url["http://".len..]
    else
        return false;
    const path_start = std.mem.findAny(u8, rest, "/?#") orelse return false;
    if (rest[path_start] != '/') return false;
    const after = rest[path_start..];
    const path = after[0 .. std.mem.findAny(u8, after, "?#") orelse after.len];
    const head = "/storage/v1/b/";
    const tail = "/o";
    if (!std.mem.startsWith(u8, path, head) or !std.mem.endsWith(u8, path, tail)) return false;
    if (path.len <= head.len + tail.len) return false;
    const bucket = path[head.len .. path.len - tail.len];
    return std.mem.findScalar(u8, bucket, '/') == null;
}

/// The JSON API listing URL that lists what the `gs://<bucket>/<prefix>`
/// url names, for the configuration error that refuses `gs://`. Writes the
/// placeholders `<bucket>` and `<prefix>` when the url has braces or no bucket.
pub fn writeListingUrlFor(gs_url: []const u8, w: *Io.Writer) Io.Writer.Error!void {
    assert(std.mem.startsWith(u8, gs_url, "gs://"));
    const rest = gs_url["gs://".len..];
    const slash = std.mem.findScalar(u8, rest, '/') orelse rest.len;
    const bucket = rest[0..slash];
    const prefix = if (slash < rest.len) rest[slash + 1 ..] else "";
    if (bucket.len == 0 or std.mem.findAny(u8, gs_url, "{}") != null) {
        return w.writeAll(json_api_prefix ++ "<bucket>/o?prefix=<prefix>");
    }
    try w.print(json_api_prefix ++ "{s}/o", .{bucket});
    if (prefix.len > 0) {
        try w.writeAll("?prefix=");
        try writeQueryValue(prefix, w);
    }
}

/// Percent-encodes every byte but RFC 3986's unreserved ones, so a page
/// token or a prefix survives as one query value.
pub fn writeQueryValue(value: []const u8, w: *Io.Writer) Io.Writer.Error!void {
    for (value) |c| {
        if (std.ascii.isAlphanumeric(c) or c == '-' or c == '.' or c == '_' or c == '~') {
            try w.writeByte(c);
        } else {
            try w.print("%{X:0>2}", .{c});
        }
    }
}

/// `base` with `pageToken=<token>` as the last query parameter, every
/// `pageToken` parameter it had removed and its fragment dropped (a fragment
/// is never sent). Without a token, `base` as given.
pub fn writePageUrl(base: []const u8, token: ?[]const u8, w: *Io.Writer) Io.Writer.Error!void {
    const value = token orelse return w.writeAll(base);
    const without_fragment = base[0 .. std.mem.findScalar(u8, base, '#') orelse base.len];
    const question = std.mem.findScalar(u8, without_fragment, '?');
    try w.writeAll(without_fragment[0 .. question orelse without_fragment.len]);
    try w.writeByte('?');
    if (question) |q| {
        var params = std.mem.splitScalar(u8, without_fragment[q + 1 ..], '&');
        while (params.next()) |param| {
            if (param.len == 0) continue;
            const name = param[0 .. std.mem.findScalar(u8, param, '=') orelse param.len];
            if (std.mem.eql(u8, name, "pageToken")) continue;
            try w.writeAll(param);
            try w.writeByte('&');
        }
    }
    try w.writeAll("pageToken=");
    try writeQueryValue(value, w);
}

/// One page of `GET /storage/v1/b/<bucket>/o` as far as we read it.
pub const Page = struct {
    items: ?[]const Object = null,
    nextPageToken: ?[]const u8 = null,

    pub const Object = struct {
        name: ?[]const u8 = null,
        mediaLink: ?[]const u8 = null,
    };

    pub fn objects(page: Page) []const Object {
        return page.items orelse &.{};
    }
};

pub const ParseError = error{ OutOfMemory, NotAListing };

/// Parses one page; strings are borrowed from `text` or allocated in
/// `arena`. Unknown fields (`kind`, `prefixes`, object metadata) are ignored.
pub fn parsePage(arena: Allocator, text: []const u8, error_name: *[]const u8) ParseError!Page {
    return std.json.parseFromSliceLeaky(Page, arena, text, .{ .ignore_unknown_fields = true }) catch |err| switch (err) {
        error.OutOfMemory => error.OutOfMemory,
        else => {
            error_name.* = @errorName(err);
            return error.NotAListing;
        },
    };
}

pub fn isShardName(name: []const u8) bool {
    for (shard_suffixes) |suffix| if (std.mem.endsWith(u8, name, suffix)) return true;
    return false;
}

/// The shards of a listing under construction, packed like `braces.Expansion`.
pub const Builder = struct {
    bytes: std.ArrayList(u8) = .empty,
    ends: std.ArrayList(u32) = .empty,
    /// Objects whose name is not a shard's.
    not_shards: u64 = 0,
    /// Objects without a name or an http(s) mediaLink.
    unusable: u64 = 0,
    /// The first object name that was not a shard's, for the log line.
    example_buffer: [128]u8 = undefined,
    example_len: u8 = 0,

    pub fn deinit(b: *Builder, gpa: Allocator) void {
        b.bytes.deinit(gpa);
        b.ends.deinit(gpa);
        b.* = undefined;
    }

    pub fn count(b: *const Builder) usize {
        return b.ends.items.len;
    }

    pub fn example(b: *const Builder) []const u8 {
        return b.example_buffer[0..b.example_len];
    }

    /// Adds the shards of one page in its order.
    pub fn addPage(b: *Builder, gpa: Allocator, page: Page) (Allocator.Error || error{TooMany})!void {
        for (page.objects()) |object| {
            const name = object.name orelse {
                b.unusable += 1;
                continue;
            };
            if (!isShardName(name)) {
                if (b.not_shards == 0) {
                    const kept = name[0..@min(name.len, b.example_buffer.len)];
                    @memcpy(b.example_buffer[0..kept.len], kept);
                    b.example_len = @intCast(kept.len);
                }
                b.not_shards += 1;
                continue;
            }
            const link = object.mediaLink orelse "";
            // Anything else would be read as a local path by the stream.
            if (!std.mem.startsWith(u8, link, "https://") and !std.mem.startsWith(u8, link, "http://")) {
                b.unusable += 1;
                continue;
            }
            if (b.count() + 1 > shard_split.shards_max) return error.TooMany;
            if (b.bytes.items.len + link.len > braces.expanded_bytes_max) return error.TooMany;
            try b.bytes.appendSlice(gpa, link);
            try b.ends.append(gpa, @intCast(b.bytes.items.len));
        }
    }

    pub fn toOwned(b: *Builder, gpa: Allocator) Allocator.Error!braces.Expansion {
        const ends = try b.ends.toOwnedSlice(gpa);
        errdefer gpa.free(ends);
        const bytes = try b.bytes.toOwnedSlice(gpa);
        return .{ .bytes = bytes, .ends = ends };
    }
};

comptime {
    assert(braces.expanded_bytes_max <= std.math.maxInt(u32));
}

pub const Request = struct {
    /// The listing URL (`isListingUrl`).
    url: []const u8,
    /// Retries, timeouts, `Authorization` and extra headers: the shards' own.
    options: http.Options,
    ca_bundle: ?[]const u8 = null,
    /// Set when the pass is stopped: no further page is asked for.
    canceled: *const std.atomic.Value(bool),
};

/// The HTTP side of one listing: made and ended by `list` (large: heap).
const Fetcher = struct {
    watchdog: http.Watchdog,
    client: http.Client,
    body: http.Body,
    buffer: [buffer_bytes]u8,
    page_url: [http.url_bytes_max / 2]u8,
};

/// Lists the shards of `request.url`, following every page. Caller owns
/// the result. Runs on the thread that prepares the pass.
pub fn list(gpa: Allocator, io: Io, request: Request, failure: *source.Failure) source.PrepareError!braces.Expansion {
    const url = request.url;
    const fetcher = gpa.create(Fetcher) catch return failure.set("out of memory for the GCS listing '{s}'", .{url});
    defer gpa.destroy(fetcher);
    fetcher.watchdog = .init(io);
    const period = http.Watchdog.periodFor(request.options.read_timeout_ms);
    const watchdog_thread = std.Thread.spawn(.{ .stack_size = http.Watchdog.stack_bytes }, http.Watchdog.run, .{ &fetcher.watchdog, period }) catch
        return failure.set("cannot start the HTTP watchdog thread for the GCS listing '{s}'", .{url});
    defer {
        fetcher.watchdog.stop();
        watchdog_thread.join();
    }
    fetcher.client.init(gpa, io, &fetcher.watchdog, request.options);
    defer fetcher.client.deinit();
    if (request.ca_bundle) |path| fetcher.client.useCaBundle(path) catch |err|
        return failure.set("source_config.ca_bundle: cannot load '{s}' ({s})", .{ path, @errorName(err) });

    var builder: Builder = .{};
    defer builder.deinit(gpa);
    var token: ?[]u8 = null;
    defer if (token) |t| gpa.free(t);
    var pages: u32 = 0;
    var objects: u64 = 0;
    while (true) {
        if (request.canceled.load(.acquire)) return error.Canceled;
        if (pages == pages_max) return failure.set("GCS listing '{s}': more than {d} pages", .{ url, pages_max });
        var w: Io.Writer = .fixed(&fetcher.page_url);
        writePageUrl(url, token, &w) catch return failure.set("GCS listing '{s}': page {d}'s URL is too long", .{ url, pages + 1 });
        const text = try fetchPage(gpa, fetcher, w.buffered(), url, pages + 1, failure);
        defer gpa.free(text);
        pages += 1;
        var arena: std.heap.ArenaAllocator = .init(gpa);
        defer arena.deinit();
        var error_name: []const u8 = "";
        const page = parsePage(arena.allocator(), text, &error_name) catch |err| return switch (err) {
            error.OutOfMemory => failure.set("out of memory while parsing the GCS listing '{s}'", .{url}),
            error.NotAListing => failure.set("GCS listing '{s}': page {d} is not a JSON object listing ({s})", .{ url, pages, error_name }),
        };
        objects += page.objects().len;
        builder.addPage(gpa, page) catch |err| return switch (err) {
            error.OutOfMemory => failure.set("out of memory while GCS listing '{s}'", .{url}),
            error.TooMany => failure.set("GCS listing '{s}': more than {d} shards", .{ url, shard_split.shards_max }),
        };
        const next = page.nextPageToken orelse break;
        if (next.len == 0) break;
        // A server that hands out the same token again would be followed
        // until pages_max: stop at once.
        if (token) |t| if (std.mem.eql(u8, t, next))
            return failure.set("GCS listing '{s}': page {d} repeats its nextPageToken", .{ url, pages });
        const copy = gpa.dupe(u8, next) catch return failure.set("out of memory while GCS listing '{s}'", .{url});
        if (token) |t| gpa.free(t);
        token = copy;
    }
    const skipped = builder.not_shards + builder.unusable;
    if (builder.count() == 0) return failure.set("GCS listing '{s}' names no shard (objects ending in .tar, .tar.gz or .tgz with a mediaLink): {d} objects on {d} pages", .{ url, objects, pages });
    if (builder.not_shards > 0)
        log.info(.files, "GCS listing '{s}': {d} objects are not shards (not .tar, .tar.gz or .tgz; e.g. '{s}') and are skipped", .{ url, builder.not_shards, builder.example() });
    if (builder.unusable > 0)
        log.info(.files, "GCS listing '{s}': {d} objects without a name or an http(s) mediaLink are skipped", .{ url, builder.unusable });
    log.info(.files, "GCS listing '{s}': {d} shards of {d} objects on {d} pages ({d} skipped)", .{ url, builder.count(), objects, pages, skipped });
    return builder.toOwned(gpa) catch failure.set("out of memory while GCS listing '{s}'", .{url});
}

/// One page's body, whole (caller frees).
fn fetchPage(gpa: Allocator, fetcher: *Fetcher, page_url: []const u8, url: []const u8, page: u32, failure: *source.Failure) source.PrepareError![]u8 {
    const body = &fetcher.body;
    body.open(&fetcher.client, page_url, &fetcher.buffer) catch |err|
        return httpFailure(failure, url, page, err, &body.diagnostics);
    defer body.close();
    return body.interface.allocRemaining(gpa, .limited(page_bytes_max)) catch |err| switch (err) {
        error.OutOfMemory => failure.set("out of memory while reading the GCS listing '{s}'", .{url}),
        error.StreamTooLong => failure.set("GCS listing '{s}': page {d} is larger than {d} bytes", .{ url, page, page_bytes_max }),
        error.ReadFailed => httpFailure(failure, url, page, body.failure, &body.diagnostics),
    };
}

fn httpFailure(failure: *source.Failure, url: []const u8, page: u32, err: http.Error, d: *const http.Diagnostics) error{Failed} {
    const space = if (d.detail.len > 0) " " else "";
    return switch (err) {
        error.HttpStatus => failure.set("GCS listing '{s}': HTTP status {d} (page {d})", .{ url, d.status, page }),
        error.RetriesExhausted => failure.set("GCS listing '{s}': retries exhausted on page {d} (last: {s}{s}{s}, status {d})", .{
            url, page, @tagName(d.cause), space, d.detail, d.status,
        }),
        else => failure.set("GCS listing '{s}': {s} on page {d} ({s}{s}{s})", .{ url, @errorName(err), page, @tagName(d.cause), space, d.detail }),
    };
}

const testing = std.testing;

test "a listing is told by its path's shape, on any host" {
    try testing.expect(isListingUrl("https://storage.googleapis.com/storage/v1/b/bkt/o?prefix=train/"));
    try testing.expect(isListingUrl("http://127.0.0.1:8080/storage/v1/b/bkt/o?prefix=x"));
    try testing.expect(isListingUrl("https://storage.googleapis.com/storage/v1/b/bkt/o"));
    try testing.expect(isListingUrl("https://h/storage/v1/b/my.bucket-1/o#frag"));
    for ([_][]const u8{
        "https://storage.googleapis.com/bkt/shard-000.tar",
        "https://storage.googleapis.com/storage/v1/b/bkt/o/shard-000.tar",
        "https://storage.googleapis.com/storage/v1/b//o",
        "https://storage.googleapis.com/storage/v1/b/a/b/o",
        "https://storage.googleapis.com/storage/v1/b/bkt/o-{0..1}",
        "/storage/v1/b/bkt/o",
        "file:///storage/v1/b/bkt/o",
        "gs://bkt/o",
        "https://host?/storage/v1/b/bkt/o",
    }) |url| {
        if (isListingUrl(url)) {
            std.debug.print("taken for a listing: {s}\n", .{url});
            return error.TestUnexpectedResult;
        }
    }
}

fn expectPageUrl(expected: []const u8, base: []const u8, token: ?[]const u8) !void {
    var buffer: [256]u8 = undefined;
    var w: Io.Writer = .fixed(&buffer);
    try writePageUrl(base, token, &w);
    try testing.expectEqualStrings(expected, w.buffered());
}

test "the page token replaces an earlier one and is URL-encoded" {
    const base = "https://h/storage/v1/b/bkt/o";
    try expectPageUrl(base ++ "?prefix=a", base ++ "?prefix=a", null);
    try expectPageUrl(base ++ "?pageToken=abc", base, "abc");
    try expectPageUrl(base ++ "?prefix=a&pageToken=abc", base ++ "?prefix=a", "abc");
    try expectPageUrl(base ++ "?prefix=a&maxResults=2&pageToken=new", base ++ "?pageToken=old&prefix=a&maxResults=2&pageToken=older", "new");
    try expectPageUrl(base ++ "?pageToken=t", base ++ "?&pageToken=x#frag", "t");
    // Base64 tokens carry '+', '/' and '='; any byte must survive as one value.
    try expectPageUrl(base ++ "?prefix=a&pageToken=Cg%2Bx%2Fy%3D%3D%20%26%25~._-", base ++ "?prefix=a", "Cg+x/y== &%~._-");
    // A parameter merely named like it stays.
    try expectPageUrl(base ++ "?pageTokens=1&pageToken=2", base ++ "?pageTokens=1", "2");
}

test "a gs:// url is answered with the listing URL that lists it" {
    var buffer: [256]u8 = undefined;
    for ([_][2][]const u8{
        .{ "gs://bkt/train/shard-", json_api_prefix ++ "bkt/o?prefix=train%2Fshard-" },
        .{ "gs://bkt", json_api_prefix ++ "bkt/o" },
        .{ "gs://bkt/", json_api_prefix ++ "bkt/o" },
        .{ "gs://bkt/s-{0..3}.tar", json_api_prefix ++ "<bucket>/o?prefix=<prefix>" },
        .{ "gs:///x", json_api_prefix ++ "<bucket>/o?prefix=<prefix>" },
    }) |case| {
        var w: Io.Writer = .fixed(&buffer);
        try writeListingUrlFor(case[0], &w);
        try testing.expectEqualStrings(case[1], w.buffered());
    }
}

test "a page: shards kept in order, other objects counted, the next token read" {
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    const text =
        \\{"kind": "storage#objects", "nextPageToken": "CgV4\/eQ==", "prefixes": [],
        \\ "items": [
        \\  {"kind": "storage#object", "name": "train/shard-000.tar", "bucket": "bkt", "size": "10240",
        \\   "mediaLink": "https://storage.googleapis.com/download/storage/v1/b/bkt/o/train%2Fshard-000.tar?generation=1&alt=media",
        \\   "metadata": {"a": "b"}, "generation": "1"},
        \\  {"name": "train/README.md", "mediaLink": "https://x/readme"},
        \\  {"name": "train/shard-001.tar.gz", "mediaLink": "http://127.0.0.1:1/s1"},
        \\  {"name": "train/shard-002.tgz"},
        \\  {"name": "train/shard-003.tgz", "mediaLink": "/etc/passwd"},
        \\  {"mediaLink": "https://x/no-name.tar"},
        \\  {"name": "train/shard-004.TAR", "mediaLink": "https://x/upper"}
        \\ ]}
    ;
    var error_name: []const u8 = "";
    const page = try parsePage(arena.allocator(), text, &error_name);
    try testing.expectEqualStrings("CgV4/eQ==", page.nextPageToken.?);
    var builder: Builder = .{};
    defer builder.deinit(testing.allocator);
    try builder.addPage(testing.allocator, page);
    try builder.addPage(testing.allocator, try parsePage(arena.allocator(), "{\"items\": [{\"name\": \"z.tar\", \"mediaLink\": \"https://x/z\"}]}", &error_name));
    try builder.addPage(testing.allocator, try parsePage(arena.allocator(), "{\"kind\": \"storage#objects\"}", &error_name));
    try testing.expectEqual(@as(u64, 2), builder.not_shards);
    try testing.expectEqual(@as(u64, 3), builder.unusable);
    try testing.expectEqualStrings("train/README.md", builder.example());
    var shards = try builder.toOwned(testing.allocator);
    defer shards.deinit(testing.allocator);
    try testing.expectEqual(@as(usize, 3), shards.count());
    try testing.expectEqualStrings("https://storage.googleapis.com/download/storage/v1/b/bkt/o/train%2Fshard-000.tar?generation=1&alt=media", shards.get(0));
    try testing.expectEqualStrings("http://127.0.0.1:1/s1", shards.get(1));
    try testing.expectEqualStrings("https://x/z", shards.get(2));
}

test "what is not a JSON object listing is refused with the parser's reason" {
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    for ([_][]const u8{
        "<html>Sign in</html>",
        "[]",
        "{\"items\": {\"name\": \"a.tar\"}}",
        "{\"items\": [{\"name\": 5}]}",
        "{\"nextPageToken\": 3}",
        "{\"items\": [",
        "",
    }) |text| {
        var error_name: []const u8 = "";
        try testing.expectError(error.NotAListing, parsePage(arena.allocator(), text, &error_name));
        try testing.expect(error_name.len > 0);
    }
    var error_name: []const u8 = "";
    const empty = try parsePage(arena.allocator(), "{\"items\": null}", &error_name);
    try testing.expectEqual(@as(?[]const Page.Object, null), empty.items);
}

test "parsing and building survive every allocation failure" {
    try testing.checkAllAllocationFailures(testing.allocator, struct {
        fn run(gpa: Allocator) !void {
            var arena: std.heap.ArenaAllocator = .init(gpa);
            defer arena.deinit();
            var error_name: []const u8 = "";
            const page = try parsePage(arena.allocator(),
                \\{"items": [{"name": "a\u0041.tar", "mediaLink": "https://x/a"}, {"name": "b.tar", "mediaLink": "https://x/b"}]}
            , &error_name);
            var builder: Builder = .{};
            defer builder.deinit(gpa);
            try builder.addPage(gpa, page);
            var shards = try builder.toOwned(gpa);
            defer shards.deinit(gpa);
            try testing.expectEqual(@as(usize, 2), shards.count());
        }
    }.run, .{});
}
