//! JSON configuration -> typed `Config`, validated once. Only this file sees
//! JSON. Every error message starts with the key path at fault
//! (`image_config.default_image_size: ...`), followed by the reference's text
//! where compatibility.md §4.2 gives one.
const std = @import("std");
const json = std.json;
const Allocator = std.mem.Allocator;
const braces = @import("sources/braces.zig");
const gcs_listing = @import("sources/gcs_listing.zig");
const shuffle_buffer = @import("sources/shuffle_buffer.zig");

pub const SourceType = enum { file, webdataset, db };
pub const EncodeFormat = enum { png, jpeg };
pub const MaskResample = enum { lanczos, nearest };

/// Pillow's decompression-bomb error threshold (2 x its warning limit).
pub const max_pixels_default: u64 = 178_956_970;
pub const samples_buffer_size_default: u32 = 64;
/// Upper bounds on sizes taken from the config, so memory can be worked out.
pub const buffer_size_max: u32 = 1 << 20;
pub const num_threads_max: u32 = 1024;
pub const image_size_max: u32 = 1 << 16;
pub const timeout_s_default: f64 = 300;

pub const ImageConfig = struct {
    crop_and_resize: bool = false,
    default_image_size: u32 = 0,
    downsampling_ratio: u32 = 0,
    min_aspect_ratio: f64 = 0,
    max_aspect_ratio: f64 = 0,
    pre_encode_images: bool = false,
    image_to_rgb8: bool = false,
    encode_format: EncodeFormat = .png,
    /// Clamped to 1..100 as the reference's encoder does.
    jpeg_quality: u8 = 92,
    mask_resample: MaskResample = .lanczos,
    exif_transpose: bool = false,
    dct_scaling: bool = true,
    /// With dct_scaling: the JPEG is decoded at the smallest M/8 scale whose
    /// crop is still at least this many times the output on both axes
    /// (1.0: just covers it; 2.0: Pillow's reducing_gap-like margin).
    dct_scale_margin: f64 = dct_scale_margin_default,
};

/// Chosen by bench/dct_scaling.py: the fastest margin whose deviation from
/// the full-size path stays within mean 1 / p99 8 levels on every corpus
/// and bucket (1.5: worst jpeg4mp -> 512, mean 0.78, p99 7; 1.0 breaks
/// there, mean 1.21, p99 13).
pub const dct_scale_margin_default: f64 = 1.5;

pub const FileSource = struct {
    /// Owned by the config's arena.
    root_path: []const u8 = "",
    random_sampling: bool = false,
    /// With random_sampling, never null once the loader is open: a seed the
    /// config left out is drawn then (`seed_drawn`).
    seed: ?u64 = null,
    seed_drawn: bool = false,
    rank: u32 = 0,
    world_size: u32 = 1,
};

/// `equal_per_rank`: drop the remainder, or pad with repeats (marked).
pub const EqualPerRank = enum { drop, pad };

/// How ranks split WebDataset shards (compatibility.md §6.2).
pub const RankSplit = enum { shard, sample_hash };

/// Most `source_config.headers` entries (each one is sent with every request).
pub const headers_max = 16;
pub const reference_image_type_bytes_max = 64;

pub const Header = struct { name: []const u8, value: []const u8 };

/// `source_type: "webdataset"`. Strings are owned by the config's arena.
/// `random_sampling`, `seed`, `rank` and `world_size` live in `Config.file`,
/// shared with the file source, so the loader draws one seed for either.
pub const WebDataset = struct {
    /// The brace pattern of shard URLs or paths (sources/braces.zig).
    url: []const u8 = "",
    reference_image_type: []const u8 = "jpg",
    /// Shard bodies open at once per host (0 in the config means 8).
    concurrent_downloads: u16 = 8,
    /// Sent as `Authorization: Bearer <token>`.
    auth_token: ?[]const u8 = null,
    headers: []const Header = &.{},
    ca_bundle: ?[]const u8 = null,
    rank_split: RankSplit = .shard,
    read_timeout_ms: u32 = 30_000,
    connect_timeout_ms: u32 = 10_000,
    /// Where http(s) shards are kept for later epochs and processes
    /// (sources/shard_cache.zig); null: no cache.
    cache_dir: ?[]const u8 = null,
    cache_max_bytes: u64 = cache_max_bytes_default,
    /// Samples mixed by the shuffle buffer; null when the key is absent
    /// (then sources/shuffle_buffer.zig picks by `random_sampling`).
    shuffle_buffer: ?u32 = null,
};

/// 64 GiB: a few epochs of a mid-sized dataset per node, without filling a
/// typical scratch disk by surprise.
pub const cache_max_bytes_default: u64 = 64 << 30;

/// `source_type: "db"` (compatibility.md §4.5): the Dataroom filters, each
/// sent to the server as its own query parameter (sources/dataroom_query.zig).
/// Strings are owned by the config's arena; "" means "not sent". The server
/// location and token come from the environment at the start of each pass.
pub const Dataroom = struct {
    sources: []const u8 = "",
    page_size: u32 = 0,
    sources_ne: []const u8 = "",
    require_images: bool = false,
    require_embeddings: bool = false,
    tags: []const u8 = "",
    tags_all: []const u8 = "",
    tags_ne: []const u8 = "",
    tags_ne_all: []const u8 = "",
    tags_empty: []const u8 = "",
    has_attributes: []const u8 = "",
    lacks_attributes: []const u8 = "",
    has_masks: []const u8 = "",
    lacks_masks: []const u8 = "",
    has_latents: []const u8 = "",
    lacks_latents: []const u8 = "",
    min_short_edge: i32 = 0,
    max_short_edge: i32 = 0,
    min_pixel_count: i32 = 0,
    max_pixel_count: i32 = 0,
    /// Negative: `duplicate_state` is not even requested as a field.
    duplicate_state: i32 = 0,
    attributes: []const u8 = "",
    /// Blob downloads in flight at once (per host, and in total).
    concurrent_downloads: u16 = dataroom_downloads_default,
    read_timeout_ms: u32 = 60_000,
    connect_timeout_ms: u32 = 10_000,
};

/// The server's page-size bounds (its 400 otherwise).
pub const dataroom_page_size_max: u32 = 2000;
/// The server's partition bound (48 index shards).
pub const dataroom_partitions_max: u32 = 48;
pub const dataroom_downloads_default: u16 = 16;
pub const dataroom_downloads_max: u16 = 128;

/// The string keys of `Dataroom`, in the order the spec lists them.
pub const dataroom_string_keys = [_][]const u8{
    "sources",     "sources_ne",  "tags",           "tags_all",         "tags_ne",
    "tags_ne_all", "tags_empty",  "has_attributes", "lacks_attributes", "has_masks",
    "lacks_masks", "has_latents", "lacks_latents",  "attributes",
};
pub const dataroom_int_keys = [_][]const u8{ "min_short_edge", "max_short_edge", "min_pixel_count", "max_pixel_count", "duplicate_state" };

pub const Config = struct {
    source_type: SourceType = .file,
    /// The file source's keys; for webdataset only the shared ones
    /// (random_sampling, seed, rank, world_size).
    file: FileSource = .{},
    webdataset: WebDataset = .{},
    dataroom: Dataroom = .{},
    image: ?ImageConfig = null,
    /// Samples handed out per rank (all its workers together); null = whole epoch.
    limit: ?u64 = null,
    samples_buffer_size: u32 = samples_buffer_size_default,
    prefetch_buffer_size: u32 = 2 * samples_buffer_size_default,
    /// null: DATAGO_MAX_TASKS, else the usable CPUs.
    num_threads: ?u32 = null,
    timeout_s: f64 = timeout_s_default,
    max_pixels: u64 = max_pixels_default,
    max_error_fraction: ?f64 = null,
    batch_size: ?u32 = null,
    drop_last: bool = false,
    /// Every rank yields the same number of samples and batches per epoch
    /// (docs/design.md §2): null keeps the complete, disjoint split.
    equal_per_rank: ?EqualPerRank = null,
    /// DataLoader worker split (docs/design.md): worker `worker_id` of `num_workers`.
    worker_id: u32 = 0,
    num_workers: u32 = 1,
    /// Epoch of the first pass (then +1 per pass): a DataLoader worker is a new
    /// client every epoch, and `set_epoch` carries the epoch to it.
    epoch: u64 = 0,
    /// Seconds between INFO progress lines during a pass; 0 turns them off.
    log_interval_s: f64 = 60,
    /// Per-stage timings in the stats (counters are always kept).
    collect_stats: bool = true,
};

/// A parsed configuration and the arena that owns its strings.
pub const Parsed = struct {
    arena: *std.heap.ArenaAllocator,
    config: Config,
    /// Keys that were present but not understood (one WARN names them).
    unknown_keys: []const UnknownKey,

    pub fn deinit(self: *Parsed) void {
        const child = self.arena.child_allocator;
        self.arena.deinit();
        child.destroy(self.arena);
        self.* = undefined;
    }
};

/// The reason a configuration was refused, formatted once.
pub const Diagnostics = struct {
    buffer: [512]u8 = undefined,
    len: usize = 0,

    pub fn text(self: *const Diagnostics) []const u8 {
        return self.buffer[0..self.len];
    }

    fn set(self: *Diagnostics, comptime fmt: []const u8, args: anytype) void {
        const written = std.fmt.bufPrint(&self.buffer, fmt, args) catch blk: {
            const ellipsis = "...";
            @memcpy(self.buffer[self.buffer.len - ellipsis.len ..], ellipsis);
            break :blk self.buffer[0..];
        };
        self.len = written.len;
    }
};

pub const Error = error{ Invalid, OutOfMemory };

/// Parses and validates `text`. On `error.Invalid`, `diag` says why.
pub fn parse(gpa: Allocator, text: []const u8, diag: *Diagnostics) Error!Parsed {
    const arena = try gpa.create(std.heap.ArenaAllocator);
    arena.* = .init(gpa);
    errdefer {
        arena.deinit();
        gpa.destroy(arena);
    }
    const allocator = arena.allocator();
    const root = json.parseFromSliceLeaky(json.Value, allocator, text, .{
        .allocate = .alloc_always,
        .duplicate_field_behavior = .use_last,
    }) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        else => {
            diag.set("config: not valid JSON ({s})", .{@errorName(err)});
            return error.Invalid;
        },
    };
    var parser: Parser = .{ .allocator = allocator, .diag = diag };
    const config = try parser.top(root);
    return .{ .arena = arena, .config = config, .unknown_keys = parser.unknown.items };
}

/// Parses an `image_config` object on its own (for datago_transform,
/// datago_fit and datago_buckets). `null` gives the defaults (no processing).
pub fn parseImageConfig(gpa: Allocator, text: []const u8, diag: *Diagnostics) Error!ImageConfig {
    var arena: std.heap.ArenaAllocator = .init(gpa);
    defer arena.deinit();
    const root = json.parseFromSliceLeaky(json.Value, arena.allocator(), text, .{}) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        else => {
            diag.set("image_config: not valid JSON ({s})", .{@errorName(err)});
            return error.Invalid;
        },
    };
    var parser: Parser = .{ .allocator = arena.allocator(), .diag = diag };
    return switch (root) {
        .null => .{},
        .object => |object| parser.imageConfig(object),
        else => parser.fail("image_config: expected an object or null, got {s}", .{kindName(root)}),
    };
}

/// The keys crop_and_resize needs, in the reference's order of checks, with
/// the reference's message for each.
const bucket_keys = [_]struct { name: []const u8, reference_message: []const u8 }{
    .{ .name = "default_image_size", .reference_message = "Default image size must be greater than 0" },
    .{ .name = "downsampling_ratio", .reference_message = "Downsampling ratio must be greater than 0" },
    .{ .name = "min_aspect_ratio", .reference_message = "Aspect ratio constraints are invalid" },
    .{ .name = "max_aspect_ratio", .reference_message = "Aspect ratio constraints are invalid" },
};

/// A key present in the config but not understood, with the known key of
/// the same object it most likely misspells.
pub const UnknownKey = struct {
    /// Dotted path, e.g. `source_config.random_sampel`.
    path: []const u8,
    nearest: ?[]const u8,
};

/// The known key within a small edit distance of `name` (a third of its
/// length, at least 2), or null: a hint for typos, not for unrelated keys.
fn nearestKey(name: []const u8, known: []const []const u8) ?[]const u8 {
    const name_len_max = 64;
    if (name.len > name_len_max) return null;
    var best: ?[]const u8 = null;
    var best_distance: usize = @max(2, name.len / 3) + 1;
    for (known) |candidate| {
        if (candidate.len > name_len_max) continue;
        const distance = editDistance(name, candidate);
        if (distance < best_distance) {
            best = candidate;
            best_distance = distance;
        }
    }
    return best;
}

/// Levenshtein distance of two short strings (both at most 64 bytes).
fn editDistance(a: []const u8, b: []const u8) usize {
    var row: [65]usize = undefined;
    std.debug.assert(a.len < row.len and b.len < row.len);
    for (0..b.len + 1) |j| row[j] = j;
    for (a, 1..) |ca, i| {
        var diagonal = row[0];
        row[0] = i;
        for (b, 1..) |cb, j| {
            const above = row[j];
            row[j] = @min(@min(row[j] + 1, row[j - 1] + 1), diagonal + @intFromBool(std.ascii.toLower(ca) != std.ascii.toLower(cb)));
            diagonal = above;
        }
    }
    return row[b.len];
}

const Parser = struct {
    allocator: Allocator,
    diag: *Diagnostics,
    unknown: std.ArrayList(UnknownKey) = .empty,

    fn fail(p: *Parser, comptime fmt: []const u8, args: anytype) Error {
        p.diag.set(fmt, args);
        return error.Invalid;
    }

    fn top(p: *Parser, root: json.Value) Error!Config {
        const object = switch (root) {
            .object => |o| o,
            else => return p.fail("config: expected a JSON object, got {s}", .{kindName(root)}),
        };
        var config: Config = .{};
        const source_name = try p.optString(object, "", "source_type") orelse "db";
        config.source_type = std.meta.stringToEnum(SourceType, source_name) orelse return p.fail(
            "source_type: unknown source type '{s}' (expected \"file\", \"webdataset\" or \"db\")",
            .{source_name},
        );
        if (config.limit == null) config.limit = try p.optPositive(u64, object, "", "limit");
        if (try p.optPositive(u32, object, "", "samples_buffer_size")) |size| {
            if (size > buffer_size_max) return p.fail("samples_buffer_size: {d} is above the maximum {d}", .{ size, buffer_size_max });
            config.samples_buffer_size = size;
        }
        config.prefetch_buffer_size = 2 * config.samples_buffer_size;
        if (try p.optPositive(u32, object, "", "prefetch_buffer_size")) |size| {
            if (size > buffer_size_max) return p.fail("prefetch_buffer_size: {d} is above the maximum {d}", .{ size, buffer_size_max });
            config.prefetch_buffer_size = size;
        }
        if (try p.optPositive(u32, object, "", "num_threads")) |n| {
            if (n > num_threads_max) return p.fail("num_threads: {d} is above the maximum {d}", .{ n, num_threads_max });
            config.num_threads = n;
        }
        if (try p.optNumber(object, "", "timeout_s")) |t| {
            if (!(t > 0) or !std.math.isFinite(t)) return p.fail("timeout_s: must be a positive number of seconds, got {d}", .{t});
            config.timeout_s = t;
        }
        if (try p.optPositive(u64, object, "", "max_pixels")) |n| config.max_pixels = n;
        if (try p.optNumber(object, "", "max_error_fraction")) |f| {
            if (!(f >= 0 and f <= 1)) return p.fail("max_error_fraction: must be between 0 and 1, got {d}", .{f});
            config.max_error_fraction = f;
        }
        if (try p.optPositive(u32, object, "", "batch_size")) |n| {
            if (n > buffer_size_max) return p.fail("batch_size: {d} is above the maximum {d}", .{ n, buffer_size_max });
            config.batch_size = n;
        }
        config.drop_last = try p.optBool(object, "", "drop_last") orelse false;
        if (try p.optString(object, "", "equal_per_rank")) |mode| {
            config.equal_per_rank = std.meta.stringToEnum(EqualPerRank, mode) orelse
                return p.fail("equal_per_rank: expected \"drop\" or \"pad\", got '{s}'", .{mode});
        }
        config.epoch = try p.optInt(u64, object, "", "epoch") orelse 0;
        config.collect_stats = try p.optBool(object, "", "collect_stats") orelse true;
        if (try p.optNumber(object, "", "log_interval_s")) |t| {
            if (!(t >= 0) or !std.math.isFinite(t)) return p.fail("log_interval_s: must be a non-negative number of seconds, got {d}", .{t});
            config.log_interval_s = t;
        }
        if (try p.optPositive(u32, object, "", "num_workers")) |n| config.num_workers = n;
        config.worker_id = try p.optInt(u32, object, "", "worker_id") orelse 0;
        if (config.worker_id >= config.num_workers) return p.fail(
            "worker_id: {d} must be less than num_workers ({d})",
            .{ config.worker_id, config.num_workers },
        );

        if (object.get("image_config")) |value| switch (value) {
            .null => {},
            .object => |image| config.image = try p.imageConfig(image),
            else => return p.fail("image_config: expected an object or null, got {s}", .{kindName(value)}),
        };
        if (config.equal_per_rank) |mode| if (config.source_type != .file) {
            // A stream's length is known only at its end: a rank cannot
            // know how many samples every other rank will have.
            if (mode == .pad) return p.fail("equal_per_rank: \"pad\" needs a source whose size is known before it is read (the file source); for a {s} source use \"drop\" with a limit", .{@tagName(config.source_type)});
            if (config.limit == null) return p.fail("equal_per_rank: a {s} source's size is known only at the end of the stream, so \"drop\" needs a limit (every rank then yields exactly limit samples, or fails the pass if its share is shorter)", .{@tagName(config.source_type)});
        };
        if (config.batch_size != null) if (config.image) |image| if (image.pre_encode_images)
            return p.fail("batch_size: batches stack raw pixels; they cannot hold pre-encoded images (pre_encode_images is true)", .{});
        const source = object.get("source_config") orelse return p.fail("source_config: missing (an object describing the source)", .{});
        const source_object = switch (source) {
            .object => |o| o,
            else => return p.fail("source_config: expected an object, got {s}", .{kindName(source)}),
        };
        switch (config.source_type) {
            .file => config.file = try p.fileSource(source_object),
            .webdataset => {
                config.file = try p.splitKeys(source_object);
                config.webdataset = try p.webDataset(source_object);
            },
            .db => {
                config.file = try p.dataroomSplit(source_object);
                config.dataroom = try p.dataroom(source_object);
            },
        }
        try p.collectUnknown(object, "", &.{
            "source_type",         "source_config",        "image_config", "limit",
            "samples_buffer_size", "prefetch_buffer_size", "num_threads",  "timeout_s",
            "max_pixels",          "max_error_fraction",   "batch_size",   "drop_last",
            "worker_id",           "num_workers",          "epoch",        "log_interval_s",
            "collect_stats",       "equal_per_rank",
        });
        return config;
    }

    fn fileSource(p: *Parser, object: json.ObjectMap) Error!FileSource {
        const prefix = "source_config.";
        const root_path = try p.optString(object, prefix, "root_path") orelse
            return p.fail("source_config.root_path: missing (the folder or file to read)", .{});
        if (root_path.len == 0) return p.fail("source_config.root_path: must not be empty", .{});
        if (std.mem.indexOfScalar(u8, root_path, 0) != null) return p.fail("source_config.root_path: contains a NUL byte", .{});
        var source = try p.splitKeys(object);
        source.root_path = root_path;
        try p.collectUnknown(object, prefix, &.{ "root_path", "random_sampling", "seed", "rank", "world_size" });
        return source;
    }

    /// The keys every source shares: order and the rank split.
    fn splitKeys(p: *Parser, object: json.ObjectMap) Error!FileSource {
        const prefix = "source_config.";
        var source: FileSource = .{};
        source.random_sampling = try p.optBool(object, prefix, "random_sampling") orelse false;
        source.seed = try p.optInt(u64, object, prefix, "seed");
        source.world_size = try p.optPositive(u32, object, prefix, "world_size") orelse 1;
        // Defaulting to rank 0 would make every process of a distributed
        // run read the same samples.
        source.rank = try p.optInt(u32, object, prefix, "rank") orelse if (source.world_size > 1) return p.fail(
            "source_config.rank: missing while world_size is {d}; give each process its rank (the Python package takes it from torch.distributed or RANK)",
            .{source.world_size},
        ) else 0;
        if (source.rank >= source.world_size) return p.fail(
            "source_config.rank: {d} must be less than world_size ({d})",
            .{ source.rank, source.world_size },
        );
        return source;
    }

    fn webDataset(p: *Parser, object: json.ObjectMap) Error!WebDataset {
        const prefix = "source_config.";
        var wds: WebDataset = .{};
        wds.url = try p.optString(object, prefix, "url") orelse
            return p.fail("source_config.url: missing (a shard path or URL, brace patterns allowed: shards-{{000..009}}.tar)", .{});
        if (wds.url.len == 0) return p.fail("source_config.url: must not be empty", .{});
        var braces_diag: braces.Diagnostics = .{};
        var expansion = braces.expand(p.allocator, wds.url, &braces_diag) catch |err| switch (err) {
            error.OutOfMemory => return error.OutOfMemory,
            else => return p.fail("source_config.url: cannot be expanded ({s} at byte {d})", .{ @errorName(err), braces_diag.offset }),
        };
        defer expansion.deinit(p.allocator);
        if (expansion.count() == 0) return p.fail("source_config.url: expands to no shard", .{});
        for (0..expansion.count()) |i| {
            const url = expansion.get(i);
            if (std.mem.indexOfScalar(u8, url, 0) != null) return p.fail("source_config.url: contains a NUL byte", .{});
            if (std.mem.startsWith(u8, url, "gs://")) {
                var listing: [256]u8 = undefined;
                var w: std.Io.Writer = .fixed(&listing);
                gcs_listing.writeListingUrlFor(wds.url, &w) catch {};
                return p.fail("source_config.url: gs:// URLs are not read directly; give the JSON API listing URL instead, '{s}' (its .tar, .tar.gz and .tgz objects are read; auth_token for a private bucket)", .{w.buffered()});
            }
        }
        if (try p.optString(object, prefix, "reference_image_type")) |t| {
            if (t.len == 0 or t.len > reference_image_type_bytes_max or t[0] == '.')
                return p.fail("source_config.reference_image_type: expected an extension such as \"jpg\" or \"seg.png\" (no leading dot), got '{s}'", .{t});
            wds.reference_image_type = t;
        }
        const downloads_key = if (object.get("concurrent_downloads") != null) "concurrent_downloads" else "max_concurrency";
        if (try p.optInt(u16, object, prefix, downloads_key)) |n| wds.concurrent_downloads = if (n == 0) 8 else n;
        if (try p.optString(object, prefix, "auth_token")) |token| {
            try p.checkHeaderText("auth_token", token);
            wds.auth_token = try std.fmt.allocPrint(p.allocator, "Bearer {s}", .{token});
        }
        if (object.get("headers")) |value| switch (value) {
            .null => {},
            .object => |map| wds.headers = try p.headers(map),
            else => return p.fail("source_config.headers: expected an object of strings, got {s}", .{kindName(value)}),
        };
        wds.ca_bundle = try p.optString(object, prefix, "ca_bundle");
        if (try p.optString(object, prefix, "rank_split")) |name| {
            wds.rank_split = std.meta.stringToEnum(RankSplit, name) orelse
                return p.fail("source_config.rank_split: unknown split '{s}' (expected \"shard\" or \"sample_hash\")", .{name});
        }
        if (try p.optNumber(object, prefix, "read_timeout_s")) |t| wds.read_timeout_ms = try p.timeoutMs("read_timeout_s", t);
        if (try p.optNumber(object, prefix, "connect_timeout_s")) |t| wds.connect_timeout_ms = try p.timeoutMs("connect_timeout_s", t);
        try p.cacheKeys(object, &wds);
        if (try p.optInt(u32, object, prefix, "shuffle_buffer")) |n| {
            if (n > shuffle_buffer.items_max) return p.fail("source_config.shuffle_buffer: {d} is above the maximum {d} (held samples are encoded bytes in memory)", .{ n, shuffle_buffer.items_max });
            wds.shuffle_buffer = n;
        }
        try p.collectUnknown(object, prefix, &.{
            "url",            "reference_image_type", "random_sampling",      "seed",
            "rank",           "world_size",           "concurrent_downloads", "max_concurrency",
            "auth_token",     "headers",              "ca_bundle",            "rank_split",
            "read_timeout_s", "connect_timeout_s",    "cache_dir",            "cache_max_bytes",
            "shuffle_buffer",
        });
        return wds;
    }

    fn cacheKeys(p: *Parser, object: json.ObjectMap, wds: *WebDataset) Error!void {
        const prefix = "source_config.";
        wds.cache_dir = try p.optString(object, prefix, "cache_dir");
        if (wds.cache_dir) |dir| if (dir.len == 0 or std.mem.indexOfScalar(u8, dir, 0) != null)
            return p.fail("source_config.cache_dir: expected a folder path (not empty, no NUL byte)", .{});
        const max_bytes = try p.optPositive(u64, object, prefix, "cache_max_bytes") orelse return;
        if (wds.cache_dir == null) return p.fail("source_config.cache_max_bytes: set without cache_dir (there is no cache to bound)", .{});
        wds.cache_max_bytes = max_bytes;
    }

    /// The reference's db split: `world_size` 0 or 1 means one process (then
    /// `rank` must be 0); the server takes at most 48 partitions.
    fn dataroomSplit(p: *Parser, object: json.ObjectMap) Error!FileSource {
        const prefix = "source_config.";
        var source: FileSource = .{};
        source.random_sampling = try p.optBool(object, prefix, "random_sampling") orelse false;
        source.seed = try p.optInt(u64, object, prefix, "seed");
        const world_size = try p.optInt(u32, object, prefix, "world_size") orelse 0;
        source.world_size = @max(1, world_size);
        source.rank = try p.optInt(u32, object, prefix, "rank") orelse if (source.world_size > 1) return p.fail(
            "source_config.rank: missing while world_size is {d}; give each process its rank (the Python package takes it from torch.distributed or RANK)",
            .{source.world_size},
        ) else 0;
        if (source.rank >= source.world_size) return p.fail(
            "source_config.rank: {d} must be less than world_size ({d})",
            .{ source.rank, world_size },
        );
        if (source.world_size > dataroom_partitions_max) return p.fail(
            "source_config.world_size: {d} is above {d}, the most partitions a Dataroom server splits into",
            .{ source.world_size, dataroom_partitions_max },
        );
        return source;
    }

    fn dataroom(p: *Parser, object: json.ObjectMap) Error!Dataroom {
        const prefix = "source_config.";
        var db: Dataroom = .{};
        db.sources = try p.optString(object, prefix, "sources") orelse
            return p.fail("source_config.sources: missing (a comma-separated list of Dataroom sources, \"\" for all)", .{});
        const page_size = try p.optInt(u32, object, prefix, "page_size") orelse
            return p.fail("source_config.page_size: missing (records per page request, 1 .. {d})", .{dataroom_page_size_max});
        if (page_size < 1 or page_size > dataroom_page_size_max)
            return p.fail("source_config.page_size: {d} is outside 1 .. {d} (the server refuses it)", .{ page_size, dataroom_page_size_max });
        db.page_size = page_size;
        inline for (dataroom_string_keys[1..]) |key| {
            if (try p.optString(object, prefix, key)) |value| {
                try p.checkQueryText(key, value);
                @field(db, key) = value;
            }
        }
        try p.checkQueryText("sources", db.sources);
        inline for (dataroom_int_keys) |key| {
            if (try p.optSigned(i32, object, prefix, key)) |value| @field(db, key) = value;
        }
        db.require_images = try p.optBool(object, prefix, "require_images") orelse false;
        db.require_embeddings = try p.optBool(object, prefix, "require_embeddings") orelse false;
        if (try p.optInt(u16, object, prefix, "concurrent_downloads")) |n| {
            if (n == 0 or n > dataroom_downloads_max) return p.fail("source_config.concurrent_downloads: must be between 1 and {d}, got {d}", .{ dataroom_downloads_max, n });
            db.concurrent_downloads = n;
        }
        if (try p.optNumber(object, prefix, "read_timeout_s")) |t| db.read_timeout_ms = try p.timeoutMs("read_timeout_s", t);
        if (try p.optNumber(object, prefix, "connect_timeout_s")) |t| db.connect_timeout_ms = try p.timeoutMs("connect_timeout_s", t);
        // `return_latents` is derived (compatibility.md §4.5); the reference
        // ignores the key, so it stays known and silent.
        try p.collectUnknown(object, prefix, &(dataroom_string_keys ++ dataroom_int_keys ++ [_][]const u8{
            "page_size",      "require_images", "require_embeddings",   "random_sampling", "seed",
            "rank",           "world_size",     "concurrent_downloads", "read_timeout_s",  "connect_timeout_s",
            "return_latents",
        }));
        return db;
    }

    /// Values travel in a URL query: NUL and line breaks can only be mistakes.
    fn checkQueryText(p: *Parser, key: []const u8, text: []const u8) Error!void {
        if (std.mem.indexOfAny(u8, text, "\r\n\x00") != null)
            return p.fail("source_config.{s}: contains a line break or NUL byte", .{key});
    }

    /// Seconds → milliseconds within 1 ms .. 1 day.
    fn timeoutMs(p: *Parser, key: []const u8, seconds: f64) Error!u32 {
        const day_s = 86_400.0;
        if (!(seconds >= 0.001 and seconds <= day_s))
            return p.fail("source_config.{s}: must be between 0.001 and {d} seconds, got {d}", .{ key, day_s, seconds });
        return @intFromFloat(@round(seconds * 1000));
    }

    fn headers(p: *Parser, map: json.ObjectMap) Error![]const Header {
        if (map.count() > headers_max) return p.fail("source_config.headers: {d} headers, at most {d}", .{ map.count(), headers_max });
        const list = try p.allocator.alloc(Header, map.count());
        var it = map.iterator();
        var i: usize = 0;
        while (it.next()) |entry| : (i += 1) {
            const name = entry.key_ptr.*;
            const value = switch (entry.value_ptr.*) {
                .string => |s| s,
                else => |v| return p.fail("source_config.headers.{s}: expected a string, got {s}", .{ name, kindName(v) }),
            };
            if (name.len == 0) return p.fail("source_config.headers: a header name is empty", .{});
            for (name) |c| if (!(std.ascii.isAlphanumeric(c) or std.mem.indexOfScalar(u8, "!#$%&'*+-.^_`|~", c) != null))
                return p.fail("source_config.headers.{s}: not a valid header name", .{name});
            try p.checkHeaderText("headers", value);
            list[i] = .{ .name = name, .value = value };
        }
        return list;
    }

    /// Refuses text that would break the request line (CR, LF, NUL).
    fn checkHeaderText(p: *Parser, key: []const u8, text: []const u8) Error!void {
        if (std.mem.indexOfAny(u8, text, "\r\n\x00") != null)
            return p.fail("source_config.{s}: contains a line break or NUL byte", .{key});
    }

    fn imageConfig(p: *Parser, object: json.ObjectMap) Error!ImageConfig {
        const prefix = "image_config.";
        var image: ImageConfig = .{};
        image.crop_and_resize = try p.optBool(object, prefix, "crop_and_resize") orelse
            return p.fail("image_config.crop_and_resize: missing (true or false)", .{});
        // Absent keys default to 0 (as in the reference), which the bucket
        // checks then refuse: say "missing", not "must be greater than 0".
        if (image.crop_and_resize) for (bucket_keys) |key| if (object.get(key.name) == null)
            return p.fail("image_config.{s}: missing, and crop_and_resize needs it ({s})", .{ key.name, key.reference_message });
        image.default_image_size = try p.optInt(u32, object, prefix, "default_image_size") orelse 0;
        image.downsampling_ratio = try p.optInt(u32, object, prefix, "downsampling_ratio") orelse 0;
        image.min_aspect_ratio = try p.optNumber(object, prefix, "min_aspect_ratio") orelse 0;
        image.max_aspect_ratio = try p.optNumber(object, prefix, "max_aspect_ratio") orelse 0;
        image.pre_encode_images = try p.optBool(object, prefix, "pre_encode_images") orelse false;
        image.image_to_rgb8 = try p.optBool(object, prefix, "image_to_rgb8") orelse false;
        if (try p.optString(object, prefix, "encode_format")) |name| {
            image.encode_format = std.meta.stringToEnum(EncodeFormat, name) orelse
                return p.fail("image_config.encode_format: unknown format '{s}' (expected \"png\" or \"jpeg\")", .{name});
        }
        if (try p.optInt(u8, object, prefix, "jpeg_quality")) |q| image.jpeg_quality = std.math.clamp(q, 1, 100);
        if (try p.optString(object, prefix, "mask_resample")) |name| {
            image.mask_resample = std.meta.stringToEnum(MaskResample, name) orelse
                return p.fail("image_config.mask_resample: unknown filter '{s}' (expected \"lanczos\" or \"nearest\")", .{name});
        }
        image.exif_transpose = try p.optBool(object, prefix, "exif_transpose") orelse false;
        image.dct_scaling = try p.optBool(object, prefix, "dct_scaling") orelse true;
        if (try p.optNumber(object, prefix, "dct_scale_margin")) |m| {
            if (!(m >= 1.0 and m <= 8.0)) return p.fail("image_config.dct_scale_margin: must be between 1 and 8, got {d}", .{m});
            image.dct_scale_margin = m;
        }
        if (image.crop_and_resize) try p.checkBuckets(image);
        try p.collectUnknown(object, prefix, &.{
            "crop_and_resize",  "default_image_size", "downsampling_ratio", "min_aspect_ratio",
            "max_aspect_ratio", "pre_encode_images",  "image_to_rgb8",      "encode_format",
            "jpeg_quality",     "mask_resample",      "exif_transpose",     "dct_scaling",
            "dct_scale_margin",
        });
        return image;
    }

    /// The reference's checks, in its order and with its messages (compatibility.md §4.2),
    /// plus the degenerate tables it accepts and then fails on (compatibility.md §11.2).
    fn checkBuckets(p: *Parser, image: ImageConfig) Error!void {
        if (image.default_image_size == 0)
            return p.fail("image_config.default_image_size: Default image size must be greater than 0", .{});
        if (image.downsampling_ratio == 0)
            return p.fail("image_config.downsampling_ratio: Downsampling ratio must be greater than 0", .{});
        if (!(image.min_aspect_ratio > 0 and image.max_aspect_ratio >= image.min_aspect_ratio) or
            !std.math.isFinite(image.max_aspect_ratio))
            return p.fail("image_config.min_aspect_ratio: Aspect ratio constraints are invalid (need 0 < min_aspect_ratio <= max_aspect_ratio, got {d} and {d})", .{ image.min_aspect_ratio, image.max_aspect_ratio });
        if (image.default_image_size > image_size_max)
            return p.fail("image_config.default_image_size: {d} is above the maximum {d}", .{ image.default_image_size, image_size_max });
        if (image.downsampling_ratio > image.default_image_size)
            return p.fail("image_config.downsampling_ratio: {d} is larger than default_image_size ({d}): no bucket would fit", .{ image.downsampling_ratio, image.default_image_size });
        if (!@import("image/bucket.zig").hasBucket(.{
            .default_image_size = image.default_image_size,
            .downsampling_ratio = image.downsampling_ratio,
            .min_aspect_ratio = image.min_aspect_ratio,
            .max_aspect_ratio = image.max_aspect_ratio,
        })) return p.fail("image_config.default_image_size: no bucket fits: {d}/{d} gives a {d}x{d}-patch grid with no aspect ratio between {d} and {d}; widen the aspect range or raise default_image_size", .{
            image.default_image_size,                            image.downsampling_ratio,
            image.default_image_size / image.downsampling_ratio, image.default_image_size / image.downsampling_ratio,
            image.min_aspect_ratio,                              image.max_aspect_ratio,
        });
        const max_ratio = 1024.0;
        if (image.max_aspect_ratio > max_ratio or image.min_aspect_ratio < 1.0 / max_ratio)
            return p.fail("image_config.max_aspect_ratio: aspect ratios must lie within 1/{d} .. {d}", .{ max_ratio, max_ratio });
    }

    fn collectUnknown(p: *Parser, object: json.ObjectMap, prefix: []const u8, known: []const []const u8) Error!void {
        var it = object.iterator();
        outer: while (it.next()) |entry| {
            for (known) |name| if (std.mem.eql(u8, name, entry.key_ptr.*)) continue :outer;
            const path = try std.mem.concat(p.allocator, u8, &.{ prefix, entry.key_ptr.* });
            try p.unknown.append(p.allocator, .{ .path = path, .nearest = nearestKey(entry.key_ptr.*, known) });
        }
    }

    fn optString(p: *Parser, object: json.ObjectMap, prefix: []const u8, key: []const u8) Error!?[]const u8 {
        const value = object.get(key) orelse return null;
        return switch (value) {
            .string => |s| s,
            .null => null,
            else => p.fail("{s}{s}: expected a string, got {s}", .{ prefix, key, kindName(value) }),
        };
    }

    fn optBool(p: *Parser, object: json.ObjectMap, prefix: []const u8, key: []const u8) Error!?bool {
        const value = object.get(key) orelse return null;
        return switch (value) {
            .bool => |b| b,
            .null => null,
            else => p.fail("{s}{s}: expected true or false, got {s}", .{ prefix, key, kindName(value) }),
        };
    }

    /// A JSON integer that fits `T` (floats such as 64.0 are refused, as the
    /// reference refuses them; integers above i64 arrive as number strings).
    fn optInt(p: *Parser, comptime T: type, object: json.ObjectMap, prefix: []const u8, key: []const u8) Error!?T {
        const value = object.get(key) orelse return null;
        switch (value) {
            .null => return null,
            .integer => |i| return std.math.cast(T, i) orelse p.fail(
                "{s}{s}: {d} is out of range (0 .. {d})",
                .{ prefix, key, i, std.math.maxInt(T) },
            ),
            .number_string => |s| return std.fmt.parseInt(T, s, 10) catch p.fail(
                "{s}{s}: {s} is not an integer in range (0 .. {d})",
                .{ prefix, key, s, std.math.maxInt(T) },
            ),
            else => return p.fail("{s}{s}: expected a non-negative integer, got {s}", .{ prefix, key, kindName(value) }),
        }
    }

    /// A JSON integer that fits the signed `T`.
    fn optSigned(p: *Parser, comptime T: type, object: json.ObjectMap, prefix: []const u8, key: []const u8) Error!?T {
        const value = object.get(key) orelse return null;
        return switch (value) {
            .null => null,
            .integer => |i| std.math.cast(T, i) orelse p.fail(
                "{s}{s}: {d} is out of range ({d} .. {d})",
                .{ prefix, key, i, std.math.minInt(T), std.math.maxInt(T) },
            ),
            else => p.fail("{s}{s}: expected an integer, got {s}", .{ prefix, key, kindName(value) }),
        };
    }

    fn optPositive(p: *Parser, comptime T: type, object: json.ObjectMap, prefix: []const u8, key: []const u8) Error!?T {
        const n = try p.optInt(T, object, prefix, key) orelse return null;
        if (n == 0) return p.fail("{s}{s}: must be greater than 0", .{ prefix, key });
        return n;
    }

    fn optNumber(p: *Parser, object: json.ObjectMap, prefix: []const u8, key: []const u8) Error!?f64 {
        const value = object.get(key) orelse return null;
        return switch (value) {
            .null => null,
            .integer => |i| @floatFromInt(i),
            .float => |f| f,
            .number_string => |s| std.fmt.parseFloat(f64, s) catch p.fail("{s}{s}: {s} is not a number", .{ prefix, key, s }),
            else => p.fail("{s}{s}: expected a number, got {s}", .{ prefix, key, kindName(value) }),
        };
    }
};

fn kindName(value: json.Value) []const u8 {
    return switch (value) {
        .null => "null",
        .bool => "a boolean",
        .integer, .number_string => "an integer",
        .float => "a fractional number",
        .string => "a string",
        .array => "an array",
        .object => "an object",
    };
}

const testing = std.testing;

fn expectInvalid(text: []const u8, expected_prefix: []const u8) !void {
    var diag: Diagnostics = .{};
    try testing.expectError(error.Invalid, parse(testing.allocator, text, &diag));
    if (!std.mem.startsWith(u8, diag.text(), expected_prefix)) {
        std.debug.print("message: {s}\n", .{diag.text()});
        return error.TestUnexpectedResult;
    }
}

test "a reference config parses with defaults" {
    var diag: Diagnostics = .{};
    var parsed = try parse(testing.allocator,
        \\{"source_type": "file", "source_config": {"root_path": "d1", "max_concurrency": 3},
        \\ "limit": 10, "samples_buffer_size": 8}
    , &diag);
    defer parsed.deinit();
    const c = parsed.config;
    try testing.expectEqual(SourceType.file, c.source_type);
    try testing.expectEqualStrings("d1", c.file.root_path);
    try testing.expectEqual(@as(?u64, 10), c.limit);
    try testing.expectEqual(@as(u32, 8), c.samples_buffer_size);
    try testing.expectEqual(@as(u32, 16), c.prefetch_buffer_size);
    try testing.expectEqual(@as(u32, 1), c.file.world_size);
    try testing.expectEqual(@as(usize, 1), parsed.unknown_keys.len);
    try testing.expectEqualStrings("source_config.max_concurrency", parsed.unknown_keys[0].path);
}

test "bad configs name the key" {
    try expectInvalid("{not json", "config: not valid JSON");
    try expectInvalid("[]", "config: expected a JSON object");
    try expectInvalid("{\"source_type\": \"s3\", \"source_config\": {}}", "source_type: unknown");
    try expectInvalid("{\"source_type\": \"file\"}", "source_config: missing");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {}}", "source_config.root_path: missing");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": 5}}", "source_config.root_path: expected a string");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\"}, \"limit\": 0}", "limit: must be greater than 0");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\"}, \"limit\": -1}", "limit: -1 is out of range");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\"}, \"limit\": 2.5}", "limit: expected a non-negative integer");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\"}, \"samples_buffer_size\": 0}", "samples_buffer_size: must be greater than 0");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\", \"rank\": 2, \"world_size\": 2}}", "source_config.rank: 2 must be less than world_size");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\", \"world_size\": 0}}", "source_config.world_size: must be greater than 0");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\", \"random_sampling\": \"yes\"}}", "source_config.random_sampling: expected true or false");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\"}, \"image_config\": {}}", "image_config.crop_and_resize: missing");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\"}, \"image_config\": {\"crop_and_resize\": true}}", "image_config.default_image_size: missing, and crop_and_resize needs it (Default image size must be greater than 0)");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\"}, \"image_config\": {\"crop_and_resize\": true, \"default_image_size\": 64, \"downsampling_ratio\": 128, \"min_aspect_ratio\": 0.5, \"max_aspect_ratio\": 2}}", "image_config.downsampling_ratio: 128 is larger");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\"}, \"image_config\": {\"crop_and_resize\": true, \"default_image_size\": 64, \"downsampling_ratio\": 16, \"min_aspect_ratio\": 2, \"max_aspect_ratio\": 1}}", "image_config.min_aspect_ratio: Aspect ratio constraints are invalid");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\"}, \"image_config\": {\"crop_and_resize\": false, \"encode_format\": \"JPEG\"}}", "image_config.encode_format: unknown format");
    try expectInvalid("{\"source_type\": \"file\", \"source_config\": {\"root_path\": \"x\"}, \"image_config\": {\"crop_and_resize\": false, \"jpeg_quality\": 256}}", "image_config.jpeg_quality: 256 is out of range");
}

test "a seed above i64 parses" {
    var diag: Diagnostics = .{};
    var parsed = try parse(testing.allocator,
        \\{"source_type": "file", "source_config": {"root_path": "d", "seed": 18446744073709551615}}
    , &diag);
    defer parsed.deinit();
    try testing.expectEqual(@as(?u64, std.math.maxInt(u64)), parsed.config.file.seed);
}

test "jpeg quality is clamped like the reference's encoder" {
    var diag: Diagnostics = .{};
    var parsed = try parse(testing.allocator,
        \\{"source_type": "file", "source_config": {"root_path": "d"}, "image_config": {"crop_and_resize": false, "jpeg_quality": 0}}
    , &diag);
    defer parsed.deinit();
    try testing.expectEqual(@as(u8, 1), parsed.config.image.?.jpeg_quality);
}

test "an image_config parses on its own" {
    var diag: Diagnostics = .{};
    const image = try parseImageConfig(testing.allocator,
        \\{"crop_and_resize": true, "default_image_size": 64, "downsampling_ratio": 16, "min_aspect_ratio": 0.5, "max_aspect_ratio": 2}
    , &diag);
    try testing.expect(image.crop_and_resize and image.default_image_size == 64);
    try testing.expectError(error.Invalid, parseImageConfig(testing.allocator, "{\"crop_and_resize\": true}", &diag));
    try testing.expectEqualStrings("image_config.default_image_size: missing, and crop_and_resize needs it (Default image size must be greater than 0)", diag.text());
    const none = try parseImageConfig(testing.allocator, "null", &diag);
    try testing.expect(!none.crop_and_resize);
}

test "parse survives every allocation failure" {
    const text =
        \\{"source_type": "file", "source_config": {"root_path": "d", "x": 1}, "limit": 3,
        \\ "image_config": {"crop_and_resize": true, "default_image_size": 64, "downsampling_ratio": 16,
        \\  "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0}}
    ;
    try testing.checkAllAllocationFailures(testing.allocator, struct {
        fn run(allocator: Allocator) !void {
            var diag: Diagnostics = .{};
            var parsed = try parse(allocator, text, &diag);
            parsed.deinit();
        }
    }.run, .{});
}

test "an unknown key names the known key it most likely misspells" {
    try testing.expectEqualStrings("random_sampling", nearestKey("random_sampeling", &.{ "root_path", "random_sampling", "seed" }).?);
    try testing.expectEqualStrings("seed", nearestKey("sed", &.{ "root_path", "random_sampling", "seed" }).?);
    try testing.expectEqual(@as(?[]const u8, null), nearestKey("max_concurrency", &.{ "root_path", "random_sampling", "seed" }));
    try testing.expectEqual(@as(usize, 3), editDistance("kitten", "sitting"));
    try testing.expectEqual(@as(usize, 0), editDistance("Limit", "limit"));
}

test "world_size above 1 needs a rank" {
    var diag: Diagnostics = .{};
    try testing.expectError(error.Invalid, parse(testing.allocator,
        \\{"source_type": "file", "source_config": {"root_path": "d", "world_size": 2}}
    , &diag));
    try testing.expect(std.mem.startsWith(u8, diag.text(), "source_config.rank: missing while world_size is 2"));
    var parsed = try parse(testing.allocator,
        \\{"source_type": "file", "source_config": {"root_path": "d", "world_size": 2, "rank": 1}}
    , &diag);
    defer parsed.deinit();
    try testing.expectEqual(@as(u32, 1), parsed.config.file.rank);
}

test "a webdataset config parses, with the shared split keys in `file`" {
    var diag: Diagnostics = .{};
    var parsed = try parse(testing.allocator,
        \\{"source_type": "webdataset", "source_config": {"url": "s-{000..002}.tar", "rank": 1, "world_size": 2,
        \\ "random_sampling": true, "seed": 5, "max_concurrency": 0, "auth_token": "t", "headers": {"X-A": "b"},
        \\ "rank_split": "sample_hash", "read_timeout_s": 0.5, "reference_image_type": "png"}}
    , &diag);
    defer parsed.deinit();
    const c = parsed.config;
    try testing.expectEqual(SourceType.webdataset, c.source_type);
    try testing.expectEqualStrings("s-{000..002}.tar", c.webdataset.url);
    try testing.expectEqual(@as(u32, 1), c.file.rank);
    try testing.expectEqual(@as(?u64, 5), c.file.seed);
    try testing.expectEqual(@as(u16, 8), c.webdataset.concurrent_downloads);
    try testing.expectEqualStrings("Bearer t", c.webdataset.auth_token.?);
    try testing.expectEqualStrings("X-A", c.webdataset.headers[0].name);
    try testing.expectEqual(RankSplit.sample_hash, c.webdataset.rank_split);
    try testing.expectEqual(@as(u32, 500), c.webdataset.read_timeout_ms);
    try testing.expectEqualStrings("png", c.webdataset.reference_image_type);
    try testing.expectEqual(@as(?[]const u8, null), c.webdataset.cache_dir);
    try testing.expectEqual(@as(usize, 0), parsed.unknown_keys.len);
    var cached = try parse(testing.allocator,
        \\{"source_type": "webdataset", "source_config": {"url": "a.tar", "cache_dir": "c", "cache_max_bytes": 18446744073709551615}}
    , &diag);
    defer cached.deinit();
    try testing.expectEqualStrings("c", cached.config.webdataset.cache_dir.?);
    try testing.expectEqual(@as(u64, std.math.maxInt(u64)), cached.config.webdataset.cache_max_bytes);
}

test "bad webdataset configs name the key" {
    const head = "{\"source_type\": \"webdataset\", \"source_config\": ";
    try expectInvalid(head ++ "{}}", "source_config.url: missing");
    try expectInvalid(head ++ "{\"url\": 3}}", "source_config.url: expected a string");
    try expectInvalid(head ++ "{\"url\": \"s-{3..1}.tar\"}}", "source_config.url: cannot be expanded (InvalidRange");
    try expectInvalid(head ++ "{\"url\": \"s-{0..1.tar\"}}", "source_config.url: cannot be expanded (Unbalanced");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"world_size\": 2}}", "source_config.rank: missing while world_size is 2");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"cache_dir\": \"\"}}", "source_config.cache_dir: expected a folder path");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"cache_dir\": 3}}", "source_config.cache_dir: expected a string");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"cache_max_bytes\": 10}}", "source_config.cache_max_bytes: set without cache_dir");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"cache_dir\": \"c\", \"cache_max_bytes\": 0}}", "source_config.cache_max_bytes: must be greater than 0");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"cache_dir\": \"c\", \"cache_max_bytes\": -1}}", "source_config.cache_max_bytes: -1 is out of range");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"cache_dir\": \"c\", \"cache_max_bytes\": 1e9}}", "source_config.cache_max_bytes: expected a non-negative integer");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"shuffle_buffer\": -1}}", "source_config.shuffle_buffer: -1 is out of range");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"shuffle_buffer\": 1.5}}", "source_config.shuffle_buffer: expected a non-negative integer");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"shuffle_buffer\": \"10\"}}", "source_config.shuffle_buffer: expected a non-negative integer");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"shuffle_buffer\": 65537}}", "source_config.shuffle_buffer: 65537 is above the maximum 65536");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"rank_split\": \"rows\"}}", "source_config.rank_split: unknown split 'rows'");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"read_timeout_s\": 0}}", "source_config.read_timeout_s: must be between");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"connect_timeout_s\": \"1\"}}", "source_config.connect_timeout_s: expected a number");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"headers\": {\"X\": 1}}}", "source_config.headers.X: expected a string");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"headers\": {\"X\": \"a\\r\\nB: c\"}}}", "source_config.headers: contains a line break");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"headers\": {\"X Y\": \"a\"}}}", "source_config.headers.X Y: not a valid header name");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"auth_token\": \"a\\nb\"}}", "source_config.auth_token: contains a line break");
    try expectInvalid(head ++ "{\"url\": \"a.tar\", \"reference_image_type\": \".jpg\"}}", "source_config.reference_image_type: expected an extension");
    try expectInvalid(head ++ "{\"url\": \"gs://bucket/x\"}}", "source_config.url: gs:// URLs are not read directly; give the JSON API listing URL instead, 'https://storage.googleapis.com/storage/v1/b/bucket/o?prefix=x'");
}
