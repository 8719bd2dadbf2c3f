//! The seam between the pipeline and where bytes come from. The pipeline
//! (pipeline.zig) knows sources only through `Source`: it prepares one per
//! pass, then its decode workers ask for item `seq` and get bytes plus the
//! sample's identity. A source is one of two kinds:
//!
//! * random access (files): `prepare` lists and plans, and the workers
//!   `fetch` item `seq` themselves, so there is no handoff per image;
//! * streaming (tar shards, HTTP bodies): a reader thread runs `stream`,
//!   which puts items in sequence order into the reader stage
//!   (prefetch.zig), a queue bounded by `prefetch_buffer_size`; workers
//!   take item `seq` from it. Retries, Range resume and shard order live in
//!   the source, on that thread; the number of items is known only at the
//!   end of the stream.
//!
//! Adding a source means a variant here and a case in `init`; pipeline.zig
//! does not change.
const std = @import("std");
const builtin = @import("builtin");
const Io = std.Io;
const Allocator = std.mem.Allocator;

const abi = @import("../abi_types.zig");
const config_mod = @import("../config.zig");
const decoder = @import("../decode/decoder.zig");
const runtime = @import("../runtime.zig");
const sample_mod = @import("../sample.zig");
const files = @import("files.zig");
const FileSource = @import("file_source.zig").FileSource;
const WdsSource = @import("wds_source.zig").WdsSource;
const shard_cache = @import("shard_cache.zig");
const db_source = @import("db_source.zig");
const DbSource = db_source.DbSource;
const prefetch = @import("prefetch.zig");
pub const order = @import("order.zig");
const resume_mod = @import("../resume.zig");

/// One item as a decode worker sees it: encoded bytes and the identity of
/// the sample they become.
pub const Item = struct {
    /// Borrowed from the worker's `Scratch` (random access) or from
    /// `backing` (streamed).
    bytes: []const u8,
    kind: abi.SourceKind,
    /// Borrowed like `bytes`, or from the source for the pass's duration.
    id: sample_mod.Id,
    source_name: []const u8,
    /// Where in `source_name` the item comes from, for log lines (a tar
    /// key); borrowed like `bytes`.
    origin: []const u8 = "",
    /// The sample's `attributes` (a JSON object), borrowed like `bytes`.
    attributes_json: []const u8 = "{}",
    /// Other images of the sample, processed into the main image's bucket
    /// (`additional_images`); names and bytes borrowed like `bytes`.
    additional: []const Named = &.{},
    /// Masks of the sample (kept single-channel), processed into the main
    /// image's bucket; borrowed like `additional`.
    masks: []const Named = &.{},
    /// Raw byte blobs (Dataroom latents), delivered byte-exact.
    latents: []const Named = &.{},
    tags: []const []const u8 = &.{},
    coca_embedding: []const f32 = &.{},
    /// -1: unknown (the Dataroom's null).
    duplicate_state: i64 = 0,
    /// A repeat of an earlier item, made to even out ranks (equal_per_rank "pad").
    padded: bool = false,
    /// Empty `bytes` mean "no image" rather than a broken one (a Dataroom
    /// record read without `require_images`).
    image_optional: bool = false,
    /// A streamed item's one allocation (bytes, id, attributes, additional
    /// images); freed by `release`.
    backing: ?[]u8 = null,
    /// The array behind `additional` (and `masks`, `latents`) when it was
    /// allocated; freed by `release`.
    additional_backing: ?[]Named = null,
    /// The arrays behind `tags` and `coca_embedding`; freed by `release`.
    tags_backing: ?[][]const u8 = null,
    coca_backing: ?[]f32 = null,

    pub const Named = sample_mod.EncodedNamed;

    pub fn release(self: *Item, gpa: Allocator) void {
        if (self.backing) |b| gpa.free(b);
        if (self.additional_backing) |a| gpa.free(a);
        if (self.tags_backing) |t| gpa.free(t);
        if (self.coca_backing) |c| gpa.free(c);
        self.backing = null;
        self.additional_backing = null;
        self.tags_backing = null;
        self.coca_backing = null;
    }
};

/// Per-worker buffers reused from item to item.
pub const Scratch = struct {
    path: std.ArrayList(u8) = .empty,
    file: std.ArrayList(u8) = .empty,

    pub fn deinit(self: *Scratch, gpa: Allocator) void {
        self.path.deinit(gpa);
        self.file.deinit(gpa);
    }
};

/// Why a pass could not be prepared or streamed, in words (the pass fails
/// with this message).
pub const Failure = struct {
    buffer: [512]u8 = undefined,
    len: usize = 0,
    kind: FailureKind = .source,

    pub fn set(self: *Failure, comptime fmt: []const u8, args: anytype) error{Failed} {
        const written = std.fmt.bufPrint(&self.buffer, fmt, args) catch self.buffer[0..];
        self.len = written.len;
        return error.Failed;
    }

    pub fn text(self: *const Failure) []const u8 {
        return self.buffer[0..self.len];
    }
};

/// Which error the caller sees for a failed pass: the source broke
/// (`DATAGO_ERR_SOURCE`), the server refused the request as invalid
/// (`DATAGO_ERR_CONFIG`: a Dataroom 400), or refused the credentials
/// (`DATAGO_ERR_AUTH`: a Dataroom 403).
pub const FailureKind = enum { source, config, auth };

pub const PrepareError = error{ Canceled, Failed };

/// What `prepare` learnt, for the stats.
pub const Prepared = struct {
    /// Items this worker delivers; null: known only at the end of the stream.
    items: ?u64,
    listed: u64 = 0,
    skipped: std.EnumArray(files.SkipCause, u64) = .initFill(0),
    listing_ns: u64 = 0,
    /// equal_per_rank: the samples this worker hands out, exactly (its
    /// share of the rank's equal count; `pad` repeats items to reach it).
    equal_samples: ?u64 = null,
    /// The items of the share itself, without equal_per_rank's repeats.
    share_items: u64 = 0,
};

/// Where a (rank, worker) stands in its epoch: with the config, enough to
/// recompute its sequence and continue after the last item handed out.
/// Serialised in `stats()["cursor"]`; the resume issue restores from it.
pub const Cursor = struct {
    seed: ?u64,
    epoch: u64,
    rank: u32,
    world_size: u32,
    worker: u32,
    num_workers: u32,
    /// The sequence number of the next item not handed out (delivered or
    /// skipped as failed).
    position: u64,
    /// A keyset-paged source (Dataroom): the key the page of item
    /// `position` starts after ("" for the first page) and how many records
    /// of that page come before it. Resuming asks for `cursor=<key>` and
    /// skips `in_page` records. Null when not known (not streamed yet).
    keyset: ?Keyset = null,

    pub const Keyset = struct {
        key: [key_bytes_max]u8 = undefined,
        key_len: u16 = 0,
        in_page: u32 = 0,

        pub const key_bytes_max = 512;

        pub fn keyText(self: *const Keyset) []const u8 {
            return self.key[0..self.key_len];
        }
    };

    pub fn writeJson(self: *const Cursor, w: *Io.Writer) Io.Writer.Error!void {
        try w.writeAll("{\"seed\":");
        if (self.seed) |seed| try w.print("{d}", .{seed}) else try w.writeAll("null");
        try w.print(",\"epoch\":{d},\"rank\":{d},\"world_size\":{d},\"worker\":{d},\"num_workers\":{d},\"position\":{d}", .{
            self.epoch, self.rank, self.world_size, self.worker, self.num_workers, self.position,
        });
        if (self.keyset) |*k| {
            try w.writeAll(",\"after_key\":");
            try std.json.Stringify.encodeJsonString(k.keyText(), .{}, w);
            try w.print(",\"in_page\":{d}", .{k.in_page});
        }
        try w.writeByte('}');
    }
};

pub const Source = union(enum) {
    file: FileSource,
    webdataset: WdsSource,
    db: DbSource,
    /// A streamed list of in-memory items, compiled into tests only: it
    /// drives the reader stage through the real pipeline.
    test_stream: if (builtin.is_test) TestStream else void,

    pub fn init(gpa: Allocator, config: *const config_mod.Config, epoch: u64) Allocator.Error!Source {
        return switch (config.source_type) {
            .file => .{ .file = try FileSource.init(gpa, config, epoch) },
            .webdataset => .{ .webdataset = try WdsSource.init(gpa, config, epoch) },
            .db => .{ .db = try DbSource.init(gpa, config, epoch) },
        };
    }

    pub fn deinit(self: *Source, gpa: Allocator) void {
        switch (self.*) {
            .file => |*s| s.deinit(gpa),
            .webdataset => |*s| s.deinit(gpa),
            .db => |*s| s.deinit(gpa),
            .test_stream => {},
        }
        self.* = undefined;
    }

    /// Prepares a resumed pass (loader.zig), before `prepare`. Returns the
    /// first sequence number of a resumed stream, the checkpoint it
    /// restarts from (at or before the part's position); null: the
    /// position itself. Invalid: the state cannot resume this source
    /// (`resumeFailure` says why).
    pub fn resumeFrom(self: *Source, gpa: Allocator, applied: *const resume_mod.Applied, expected_fingerprint: ?u64) error{ Invalid, OutOfMemory }!?u64 {
        switch (self.*) {
            .file => |*s| try s.resumeFrom(gpa, applied, expected_fingerprint),
            .db => |*s| {
                const part = applied.part orelse return null;
                if (part.position == 0 and part.head == 0) return null;
                if (s.random_sampling) return error.Invalid;
                const key = part.after_key orelse return error.Invalid;
                try s.resumeAt(gpa, part.position, key, part.in_page);
            },
            .webdataset => |*s| {
                s.expected_fingerprint = expected_fingerprint;
                const part = applied.part orelse return null;
                if (part.position == 0 and part.head == 0) return null;
                const text = part.stream orelse {
                    _ = s.resume_failure.set("the state has no stream checkpoint for a WebDataset part that had started", .{}) catch {};
                    return error.Invalid;
                };
                var arena: std.heap.ArenaAllocator = .init(gpa);
                defer arena.deinit();
                const value = std.json.parseFromSliceLeaky(std.json.Value, arena.allocator(), text, .{}) catch |err| switch (err) {
                    error.OutOfMemory => return error.OutOfMemory,
                    else => {
                        _ = s.resume_failure.set("stream: not valid JSON", .{}) catch {};
                        return error.Invalid;
                    },
                };
                const cp = @import("wds_source.zig").Checkpoint.parse(gpa, value, &s.resume_failure) catch |err| switch (err) {
                    error.OutOfMemory => return error.OutOfMemory,
                    error.Failed => return error.Invalid,
                };
                if (cp.seq > part.position) {
                    var owned = cp;
                    owned.deinit(gpa);
                    _ = s.resume_failure.set("stream: the checkpoint (item {d}) is past the part's position {d}", .{ cp.seq, part.position }) catch {};
                    return error.Invalid;
                }
                s.resumeFrom(cp);
                return cp.seq;
            },
            .test_stream => {},
        }
        return null;
    }

    pub fn resumeFailure(self: *const Source) []const u8 {
        return switch (self.*) {
            .file, .test_stream => "",
            .webdataset => |*s| s.resume_failure.text(),
            .db => |*s| if (s.random_sampling)
                "a Dataroom source with random_sampling cannot resume mid-epoch: the server's random endpoint has no position (start the next epoch instead)"
            else
                "the state has no Dataroom position (after_key) for a part that had started",
        };
    }

    /// Of the listing (resume_mod.Fingerprint); null before it was read, or
    /// for a source without one.
    pub fn fingerprint(self: *const Source) ?u64 {
        return switch (self.*) {
            .file => |*s| s.fingerprint,
            .webdataset => |*s| s.fingerprint,
            .db, .test_stream => null,
        };
    }

    /// A streaming source's checkpoint for resuming at `seq`, as JSON
    /// (allocated in `arena`); null for random access.
    pub fn streamCheckpoint(self: *Source, arena: Allocator, seq: u64) Allocator.Error!?[]const u8 {
        switch (self.*) {
            .webdataset => |*s| {
                var cp = try s.checkpointAt(arena, seq) orelse return null;
                defer cp.deinit(arena);
                var out: Io.Writer.Allocating = .init(arena);
                cp.writeJson(&out.writer) catch return error.OutOfMemory;
                return out.written();
            },
            .file, .db, .test_stream => return null,
        }
    }

    /// A keyset-paged source's position of item `seq` for a resume state
    /// (the key copied into `arena`); null for other sources, or when it is
    /// not known.
    pub fn keysetJson(self: *Source, arena: Allocator, seq: u64) Allocator.Error!?struct { key: []const u8, in_page: u32 } {
        return switch (self.*) {
            .db => |*s| if (s.keysetAt(seq)) |k| .{ .key = try arena.dupe(u8, k.keyText()), .in_page = k.in_page } else null,
            .file, .webdataset, .test_stream => null,
        };
    }

    pub fn streams(self: *const Source) bool {
        return switch (self.*) {
            .file => false,
            .webdataset, .db, .test_stream => true,
        };
    }

    /// Runs once per pass on one worker thread, before any item is asked
    /// for: lists, plans, opens what must be opened.
    pub fn prepare(self: *Source, gpa: Allocator, io: Io, canceled: *const std.atomic.Value(bool), failure: *Failure) PrepareError!Prepared {
        return switch (self.*) {
            .file => |*s| s.prepare(gpa, io, canceled, failure),
            .webdataset => |*s| s.prepare(gpa, io, canceled, failure),
            .db => |*s| s.prepare(gpa, failure),
            .test_stream => .{ .items = null },
        };
    }

    /// Random-access sources: reads item `seq` (the caller releases it).
    pub fn fetch(self: *Source, gpa: Allocator, io: Io, seq: u64, scratch: *Scratch, diag: *decoder.Diagnostics) decoder.Error!Item {
        return switch (self.*) {
            .file => |*s| s.fetch(gpa, io, seq, scratch, diag),
            .webdataset, .db, .test_stream => unreachable, // streams
        };
    }

    /// Streaming sources: runs on the reader thread and puts every item in
    /// order into `stage`, then finishes it (or fails it).
    pub fn stream(self: *Source, gpa: Allocator, stage: *prefetch.Prefetch) void {
        switch (self.*) {
            .file => unreachable, // random access
            .webdataset => |*s| s.stream(gpa, stage),
            .db => |*s| s.stream(gpa, stage),
            .test_stream => |*s| if (builtin.is_test) s.run(gpa, stage),
        }
    }

    /// The item due at `seq`, in words (a path, a shard and member), for
    /// log lines and timeout messages.
    pub fn describeItem(self: *const Source, seq: u64, w: *Io.Writer) Io.Writer.Error!void {
        switch (self.*) {
            .file => |*s| try s.describeItem(seq, w),
            // Its memory of recent items is behind a lock it must take.
            .webdataset => |*s| try @constCast(s).describeItem(seq, w),
            .db => |*s| try @constCast(s).describeItem(seq, w),
            .test_stream => try w.print("streamed item {d}", .{seq}),
        }
    }

    /// The source as a whole, in words.
    pub fn describe(self: *const Source, w: *Io.Writer) Io.Writer.Error!void {
        switch (self.*) {
            .file => |*s| try s.describe(w),
            .webdataset => |*s| try s.describe(w),
            .db => |*s| try s.describe(w),
            .test_stream => try w.writeAll("a test stream"),
        }
    }

    pub fn cursor(self: *const Source, position: u64) ?Cursor {
        return switch (self.*) {
            .file => |*s| .{
                .seed = s.params.shuffle_seed,
                .epoch = s.params.epoch,
                .rank = s.params.rank,
                .world_size = s.params.world_size,
                .worker = s.params.worker,
                .num_workers = s.params.num_workers,
                .position = position,
            },
            .webdataset => |*s| .{
                .seed = if (s.params.random_sampling) s.params.seed else null,
                .epoch = s.params.epoch,
                .rank = s.params.rank,
                .world_size = s.params.world_size,
                .worker = s.params.worker,
                .num_workers = s.params.num_workers,
                .position = position,
            },
            .db => |*s| s.cursor(position),
            .test_stream => null,
        };
    }

    /// The Dataroom stream's counters; null for other sources.
    pub fn dataroomCounts(self: *const Source) ?DataroomCounts {
        return switch (self.*) {
            .db => |*s| blk: {
                var out: DataroomCounts = .{};
                inline for (comptime std.meta.fieldNames(DataroomCounts)) |name| @field(out, name) = @field(s.counts, name).load(.monotonic);
                break :blk out;
            },
            else => null,
        };
    }

    /// The stream's own counters (shards read and failed, groups skipped);
    /// null for sources without shards.
    pub fn shardCounts(self: *const Source) ?ShardCounts {
        return switch (self.*) {
            .webdataset => |*s| .{
                .planned = s.counts.shards_planned.load(.monotonic),
                .read = s.counts.shards_read.load(.monotonic),
                .failed = s.counts.shards_failed.load(.monotonic),
                .groups_without_image = s.counts.groups_without_image.load(.monotonic),
                .groups_too_large = s.counts.groups_too_large.load(.monotonic),
                .cache = if (s.cache_dir != null) s.counts.cache.load() else null,
            },
            .file, .db, .test_stream => null,
        };
    }
};

/// See `Source.dataroomCounts` and db_source.Counts.
pub const DataroomCounts = struct {
    pages: u64 = 0,
    records: u64 = 0,
    records_malformed: u64 = 0,
    pages_malformed: u64 = 0,
    blobs_missing: u64 = 0,
    blobs_failed: u64 = 0,
    refreshed: u64 = 0,
    other_workers: u64 = 0,
    duplicates: u64 = 0,
};

/// See `Source.shardCounts`.
pub const ShardCounts = struct {
    planned: u64 = 0,
    read: u64 = 0,
    failed: u64 = 0,
    groups_without_image: u64 = 0,
    groups_too_large: u64 = 0,
    /// The shard cache's counters; null without `cache_dir`.
    cache: ?shard_cache.Totals = null,
};

/// See `Source.test_stream`: items "item-<i>" whose bytes are `images[i]`,
/// put into the reader stage in order; `fail_after` ends the stream with a
/// failure after that many items.
pub const TestStream = struct {
    images: []const []const u8,
    fail_after: ?usize = null,

    fn run(self: *TestStream, gpa: Allocator, stage: *prefetch.Prefetch) void {
        for (self.images, 0..) |image, i| {
            if (self.fail_after) |n| if (i == n) {
                stage.fail("test stream broke after {d} items", .{n});
                return;
            };
            var id_buffer: [32]u8 = undefined;
            const id = std.fmt.bufPrint(&id_buffer, "item-{d}", .{i}) catch unreachable;
            const item = prefetch.ownedItem(gpa, image, id, .file, "test") catch {
                stage.fail("out of memory", .{});
                return;
            };
            stage.put(item) catch |err| switch (err) {
                error.Closed => return,
            };
        }
        stage.finish();
    }
};

comptime {
    // A source is built on the caller's stack (a Python thread's, or a
    // test's) before it moves into its pass: keep large rings on the heap.
    std.debug.assert(@sizeOf(Source) <= 64 * 1024);
    // Snapshots copy it: small, but room for a Dataroom id.
    std.debug.assert(@sizeOf(Cursor) <= 64 + Cursor.Keyset.key_bytes_max + 16);
    std.debug.assert(Cursor.Keyset.key_bytes_max == db_source.Marks.key_bytes_max);
    _ = runtime;
}
