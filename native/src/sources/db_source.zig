//! The Dataroom source (issue 18; compatibility.md §4.5, §6.3, §7.3): a
//! streaming source over the REST image database.
//!
//! Threads of one stream (all joined before `stream` returns):
//! - the page thread GETs `images/?...` (or `images/random/`) through the
//!   API client (`Authorization: Token <key>`), follows `next` to the final
//!   empty page, and queues the records. It fetches the next page as soon
//!   as at most one page of records waits unclaimed: the keyset cursor is
//!   one page ahead of consumption, never more;
//! - `concurrent_downloads` blob workers claim records in sequence order,
//!   download their blobs through the blob client (no Authorization, at
//!   most `concurrent_downloads` per host) and build one item per record;
//! - the reader thread (the caller of `stream`) merges the results in
//!   sequence order into the reader stage, so the delivered order is the
//!   server's order whatever the download timing.
//!
//! Memory: at most two pages of unclaimed records, plus `window_items`
//! records claimed or finished and not yet merged (each holding its blobs),
//! plus the reader stage.
//!
//! Faults (the reference ignores HTTP statuses; we do not): a page answered
//! 403 fails the pass with `DATAGO_ERR_AUTH`, 400 with `DATAGO_ERR_CONFIG`
//! (the server's words), any other refusal or exhausted retries (5xx, 429
//! and timeouts are retried by http.zig) with `DATAGO_ERR_SOURCE`, after
//! the records already fetched were delivered. A page that is not JSON is
//! fetched again (at most `bad_pages_max` times) and then fails the pass. A
//! malformed record is counted and skipped. A blob answered 403 (expired
//! presigned URL) makes the worker fetch `images/<id>/` for fresh URLs and
//! retry once; a blob that still fails (404 included) skips its record,
//! counted, with a WARN naming the URL.
const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;

const config_mod = @import("../config.zig");
const log = @import("../log.zig");
const runtime = @import("../runtime.zig");
const http = @import("http.zig");
const prefetch = @import("prefetch.zig");
const query = @import("dataroom_query.zig");
const record_mod = @import("dataroom_record.zig");
const source = @import("source.zig");

/// Bytes of one page body (2000 records with embeddings fit easily).
pub const page_bytes_max = 256 * 1024 * 1024;
/// Bytes of one blob (image, mask or latent).
pub const blob_bytes_max = 512 * 1024 * 1024;
/// Page bodies that are not JSON tolerated in a row before the pass fails.
pub const bad_pages_max = 3;
/// Page requests get at least this many retries (compatibility.md §7.3
/// asks that four 500s in a row be absorbed).
pub const page_retries_min = 5;
/// WARN lines per pass for skipped records; further ones are only counted.
pub const logged_skips_max = 20;
/// Random sampling stops after this many batches in a row brought no id
/// not seen before (docs/dataroom.md).
pub const random_stale_batches_max = 3;
/// Ids remembered by random sampling; the stream ends when it is full.
pub const random_seen_max = 4 * 1024 * 1024;
/// Records claimed or merged-but-waiting per download worker.
const window_per_worker = 2;
const http_buffer_bytes = 64 * 1024;
const url_bytes_max = http.url_bytes_max / 2;

/// Counters of the stream, read by `stats()` while it runs.
pub const Counts = struct {
    pages: std.atomic.Value(u64) = .init(0),
    records: std.atomic.Value(u64) = .init(0),
    records_malformed: std.atomic.Value(u64) = .init(0),
    pages_malformed: std.atomic.Value(u64) = .init(0),
    /// Records skipped because a blob answered 404.
    blobs_missing: std.atomic.Value(u64) = .init(0),
    /// Records skipped because a blob failed otherwise.
    blobs_failed: std.atomic.Value(u64) = .init(0),
    /// Records re-read for fresh blob URLs (a blob answered 403).
    refreshed: std.atomic.Value(u64) = .init(0),
    /// Records left to other DataLoader workers (client-side split).
    other_workers: std.atomic.Value(u64) = .init(0),
    /// Random sampling: records dropped as already seen.
    duplicates: std.atomic.Value(u64) = .init(0),
};

/// How this (rank, worker) splits the data: server partitions when they
/// suffice, else the rank's partition split by id hash among the workers.
pub const Split = struct {
    partition: query.Partition,
    /// Worker `index` of `count` keeps the records whose id hashes to it.
    client: struct { index: u32 = 0, count: u32 = 1 } = .{},

    /// Ranks × workers partitions when the server has that many (worker
    /// `w` of rank `r` takes partition `r + w × world_size`: the rank's
    /// workers together read exactly the rank's partition); else the rank's
    /// partition, shared among the workers by id hash.
    pub fn of(rank: u32, world_size: u32, worker: u32, num_workers: u32) Split {
        std.debug.assert(rank < world_size and worker < num_workers);
        const total = @as(u64, world_size) * num_workers;
        if (total <= config_mod.dataroom_partitions_max) {
            return .{ .partition = .{ .index = rank + worker * world_size, .count = @intCast(total) } };
        }
        return .{
            .partition = .{ .index = rank, .count = world_size },
            .client = .{ .index = worker, .count = num_workers },
        };
    }

    pub fn keeps(self: Split, id: []const u8) bool {
        if (self.client.count <= 1) return true;
        return std.hash.Wyhash.hash(0, id) % self.client.count == self.client.index;
    }
};

pub const DbSource = struct {
    /// Owned: the first page's query string and `images/<id>/`'s.
    first_query: []u8,
    record_query: []u8,
    /// Owned, set by `prepare` from the environment.
    api_root: ?[]u8 = null,
    authorization: ?[]u8 = null,
    random_sampling: bool,
    split: Split,
    rank: u32,
    world_size: u32,
    worker: u32,
    num_workers: u32,
    epoch: u64,
    concurrent_downloads: u16,
    read_timeout_ms: u32,
    connect_timeout_ms: u32,
    counts: Counts = .{},
    /// On the heap: over a megabyte, and a source is built on the caller's
    /// stack before it moves into its pass.
    marks: *Marks,
    /// A resumed stream (`resumeFrom`): its first item is the record after
    /// `after_key`'s page's first `in_page` records, numbered `seq`.
    resumed: ?Resumed = null,

    pub const Resumed = struct {
        seq: u64,
        /// Owned.
        after_key: []u8,
        in_page: u32,
    };

    pub fn init(gpa: Allocator, config: *const config_mod.Config, epoch: u64) Allocator.Error!DbSource {
        const db = &config.dataroom;
        const split: Split = .of(config.file.rank, config.file.world_size, config.worker_id, config.num_workers);
        var first: Io.Writer.Allocating = .init(gpa);
        defer first.deinit();
        query.writeFirstPageQuery(db, split.partition, &first.writer) catch return error.OutOfMemory;
        var record: Io.Writer.Allocating = .init(gpa);
        defer record.deinit();
        query.writeRecordQuery(db, &record.writer) catch return error.OutOfMemory;
        const first_query = try first.toOwnedSlice();
        errdefer gpa.free(first_query);
        const record_query = try record.toOwnedSlice();
        errdefer gpa.free(record_query);
        const marks = try gpa.create(Marks);
        marks.* = .{};
        return .{
            .marks = marks,
            .first_query = first_query,
            .record_query = record_query,
            .random_sampling = config.file.random_sampling,
            .split = split,
            .rank = config.file.rank,
            .world_size = config.file.world_size,
            .worker = config.worker_id,
            .num_workers = config.num_workers,
            .epoch = epoch,
            .concurrent_downloads = db.concurrent_downloads,
            .read_timeout_ms = db.read_timeout_ms,
            .connect_timeout_ms = db.connect_timeout_ms,
        };
    }

    pub fn deinit(self: *DbSource, gpa: Allocator) void {
        if (self.resumed) |r| gpa.free(r.after_key);
        gpa.destroy(self.marks);
        if (self.api_root) |r| gpa.free(r);
        if (self.authorization) |a| gpa.free(a);
        gpa.free(self.first_query);
        gpa.free(self.record_query);
        self.* = undefined;
    }

    /// Reads DATAROOM_API_URL and DATAROOM_API_KEY (each pass: a process
    /// may set them between passes).
    pub fn prepare(self: *DbSource, gpa: Allocator, failure: *source.Failure) source.PrepareError!source.Prepared {
        const url = runtime.getenv("DATAROOM_API_URL") orelse "";
        if (url.len == 0) return failure.set("DATAROOM_API_URL is not set: the Dataroom source needs the API root (e.g. https://host/api/)", .{});
        const key = runtime.getenv("DATAROOM_API_KEY") orelse "";
        if (key.len == 0) return failure.set("DATAROOM_API_KEY is not set: the Dataroom source needs an API token", .{});
        if (!std.mem.startsWith(u8, url, "http://") and !std.mem.startsWith(u8, url, "https://"))
            return failure.set("DATAROOM_API_URL: '{s}' is not an http:// or https:// URL", .{url});
        if (std.mem.indexOfAny(u8, key, "\r\n\x00") != null) return failure.set("DATAROOM_API_KEY: contains a line break or NUL byte", .{});
        var root: Io.Writer.Allocating = .init(gpa);
        defer root.deinit();
        query.writeApiRoot(url, &root.writer) catch return failure.set("out of memory", .{});
        const api_root = root.toOwnedSlice() catch return failure.set("out of memory", .{});
        const authorization = std.fmt.allocPrint(gpa, "Token {s}", .{key}) catch {
            gpa.free(api_root);
            return failure.set("out of memory", .{});
        };
        if (self.api_root) |r| gpa.free(r);
        if (self.authorization) |a| gpa.free(a);
        self.api_root = api_root;
        self.authorization = authorization;
        log.info(.files, "Dataroom '{s}': {s}{s}", .{ api_root, if (self.random_sampling) "images/random/" else "images/", self.first_query });
        return .{ .items = null };
    }

    /// Resumes at `seq`, the record `in_page` of the page after `after_key`
    /// (the server's keyset: the same request gives the same page while the
    /// data behind the cursor is unchanged).
    pub fn resumeAt(self: *DbSource, gpa: Allocator, seq: u64, after_key: []const u8, in_page: u32) Allocator.Error!void {
        const key = try gpa.dupe(u8, after_key);
        if (self.resumed) |r| gpa.free(r.after_key);
        self.resumed = .{ .seq = seq, .after_key = key, .in_page = in_page };
    }

    /// The keyset of item `seq` for a resume state: its own mark, or, when
    /// it was not streamed yet, the one after the item before it.
    pub fn keysetAt(self: *DbSource, seq: u64) ?source.Cursor.Keyset {
        var c: source.Cursor = .{ .seed = null, .epoch = 0, .rank = 0, .world_size = 1, .worker = 0, .num_workers = 1, .position = seq };
        self.marks.keyset(seq, &c);
        if (c.keyset) |k| return k;
        if (seq == (if (self.resumed) |r| r.seq else 0)) {
            var k: source.Cursor.Keyset = .{};
            if (self.resumed) |r| {
                k.key_len = @intCast(r.after_key.len);
                @memcpy(k.key[0..r.after_key.len], r.after_key);
                k.in_page = r.in_page;
            }
            return k;
        }
        if (seq == 0) return null;
        self.marks.keyset(seq - 1, &c);
        if (c.keyset) |*k| {
            k.in_page += 1;
            return k.*;
        }
        return null;
    }

    pub fn stream(self: *DbSource, gpa: Allocator, stage: *prefetch.Prefetch) void {
        if (self.api_root == null) return stage.fail("the Dataroom source was not prepared", .{});
        if (self.resumed) |r| stage.setFirstSeq(r.seq);
        const run = gpa.create(Run) catch return stage.fail("out of memory for the Dataroom stream", .{});
        defer gpa.destroy(run);
        run.init(gpa, stage.io, self) catch {
            return stage.fail("cannot start the HTTP watchdog thread", .{});
        };
        defer run.deinit();
        stage.setInterrupt(.{ .context = run, .call = Run.interrupt });
        defer stage.setInterrupt(null);
        run.execute(stage);
    }

    pub fn describe(self: *const DbSource, w: *Io.Writer) Io.Writer.Error!void {
        try w.print("Dataroom '{s}'", .{self.api_root orelse "(DATAROOM_API_URL)"});
    }

    pub fn describeItem(self: *DbSource, seq: u64, w: *Io.Writer) Io.Writer.Error!void {
        var buffer: [Marks.key_bytes_max]u8 = undefined;
        if (self.marks.idOf(seq, &buffer)) |id| return w.print("Dataroom record '{s}'", .{id});
        try w.print("Dataroom record {d}", .{seq});
    }

    pub fn cursor(self: *const DbSource, position: u64) source.Cursor {
        var c: source.Cursor = .{
            .seed = null,
            .epoch = self.epoch,
            .rank = self.rank,
            .world_size = self.world_size,
            .worker = self.worker,
            .num_workers = self.num_workers,
            .position = position,
        };
        self.marks.keyset(position, &c);
        return c;
    }
};

/// Where each delivered item came from, for `describeItem` and the
/// keyset cursor: per item its page and index in it, per page the key it
/// starts after. Rings: the last `items_max` items, `pages_max` pages.
pub const Marks = struct {
    pub const key_bytes_max = 512;
    // Past the resume window (batch samples can be pending 8192 items
    // behind): a state names the keyset of its position.
    const items_max = 16384;
    const pages_max = 64;

    lock: std.atomic.Value(bool) = .init(false),
    items: [items_max]ItemMark = @splat(.{}),
    pages: [pages_max]PageMark = @splat(.{}),
    page_count: u64 = 0,

    const ItemMark = struct {
        seq: u64 = std.math.maxInt(u64),
        page: u64 = 0,
        index: u32 = 0,
        id_len: u16 = 0,
        id: [64]u8 = undefined,
    };
    const PageMark = struct {
        number: u64 = std.math.maxInt(u64),
        key_len: u16 = 0,
        key: [key_bytes_max]u8 = undefined,
    };

    fn acquire(m: *Marks) void {
        while (m.lock.cmpxchgWeak(false, true, .acquire, .monotonic) != null) std.atomic.spinLoopHint();
    }

    fn release(m: *Marks) void {
        m.lock.store(false, .release);
    }

    /// A new page, starting after `key` ("" for the first); returns its number.
    fn page(m: *Marks, key: []const u8) u64 {
        m.acquire();
        defer m.release();
        const number = m.page_count;
        m.page_count += 1;
        const slot = &m.pages[number % pages_max];
        slot.number = number;
        slot.key_len = @intCast(@min(key.len, key_bytes_max));
        @memcpy(slot.key[0..slot.key_len], key[0..slot.key_len]);
        return number;
    }

    fn item(m: *Marks, seq: u64, page_number: u64, index: u32, id: []const u8) void {
        m.acquire();
        defer m.release();
        const slot = &m.items[seq % items_max];
        slot.* = .{ .seq = seq, .page = page_number, .index = index, .id_len = @intCast(@min(id.len, slot.id.len)) };
        @memcpy(slot.id[0..slot.id_len], id[0..slot.id_len]);
    }

    fn idOf(m: *Marks, seq: u64, out: []u8) ?[]const u8 {
        m.acquire();
        defer m.release();
        const slot = &m.items[seq % items_max];
        if (slot.seq != seq) return null;
        @memcpy(out[0..slot.id_len], slot.id[0..slot.id_len]);
        return out[0..slot.id_len];
    }

    /// The keyset position of item `seq` (the next not handed out): the key
    /// its page starts after and how many records of that page come before
    /// it. Left empty when `seq` is not remembered (not streamed yet).
    fn keyset(m: *Marks, seq: u64, c: *source.Cursor) void {
        m.acquire();
        defer m.release();
        const slot = &m.items[seq % items_max];
        if (slot.seq != seq) return;
        const p = &m.pages[slot.page % pages_max];
        if (p.number != slot.page) return;
        c.keyset = .{ .key_len = p.key_len, .in_page = slot.index };
        @memcpy(c.keyset.?.key[0..p.key_len], p.key[0..p.key_len]);
    }
};

/// DATAGO_MAX_RETRIES, capped at http.retries_limit; 3 when unset or unreadable.
fn retriesMax() u8 {
    const text = runtime.getenv("DATAGO_MAX_RETRIES") orelse return 3;
    const n = std.fmt.parseUnsigned(u8, text, 10) catch return 3;
    return @min(n, http.retries_limit);
}

/// One record's outcome, waiting in the window for the merger.
const Result = union(enum) {
    empty,
    item: Made,
    skipped,

    const Made = struct { item: source.Item, page: u64, index: u32 };
};

/// A fetched page and where its records start in the sequence.
const Queued = struct {
    page: record_mod.Page,
    first: u64,
    number: u64,
    /// The in-page index of `page.records[0]` (records skipped by a resume).
    index_base: u32 = 0,
};

/// The state of one stream, shared by its threads.
const Run = struct {
    gpa: Allocator,
    io: Io,
    owner: *DbSource,
    watchdog: http.Watchdog,
    watchdog_thread: ?std.Thread,
    api: http.Client,
    blobs: http.Client,
    window_items: usize,

    mutex: Io.Mutex = .init,
    changed: Io.Condition = .init,
    queue: std.ArrayList(Queued) = .empty,
    results: []Result,
    /// Records queued (the sequence's length so far), claimed, merged.
    available: u64 = 0,
    claimed: u64 = 0,
    merged: u64 = 0,
    pages_done: bool = false,
    closed: bool = false,
    failure: source.Failure = .{},
    failed: bool = false,
    logged_skips: std.atomic.Value(u32) = .init(0),

    fn init(run: *Run, gpa: Allocator, io: Io, owner: *DbSource) error{ NoThread, OutOfMemory }!void {
        const window_items = @as(usize, owner.concurrent_downloads) * window_per_worker;
        const results = try gpa.alloc(Result, window_items);
        @memset(results, .empty);
        run.* = .{
            .gpa = gpa,
            .io = io,
            .owner = owner,
            .watchdog = .init(io),
            .watchdog_thread = null,
            .api = undefined,
            .blobs = undefined,
            .window_items = window_items,
            .results = results,
        };
        const period = http.Watchdog.periodFor(owner.read_timeout_ms);
        run.watchdog_thread = std.Thread.spawn(.{ .stack_size = http.Watchdog.stack_bytes }, http.Watchdog.run, .{ &run.watchdog, period }) catch {
            gpa.free(results);
            return error.NoThread;
        };
        run.api.init(gpa, io, &run.watchdog, .{
            .connect_timeout_ms = owner.connect_timeout_ms,
            .read_timeout_ms = owner.read_timeout_ms,
            .retries_max = @max(retriesMax(), page_retries_min),
            .connections_per_host_max = 2,
            .authorization = owner.authorization,
        });
        // Presigned URLs carry their own signature: no Authorization.
        run.blobs.init(gpa, io, &run.watchdog, .{
            .connect_timeout_ms = owner.connect_timeout_ms,
            .read_timeout_ms = owner.read_timeout_ms,
            .retries_max = retriesMax(),
            .connections_per_host_max = owner.concurrent_downloads,
        });
    }

    fn deinit(run: *Run) void {
        for (run.results) |*r| switch (r.*) {
            .item => |*made| made.item.release(run.gpa),
            else => {},
        };
        run.gpa.free(run.results);
        for (run.queue.items) |*q| q.page.deinit();
        run.queue.deinit(run.gpa);
        run.api.deinit();
        run.blobs.deinit();
        if (run.watchdog_thread) |t| {
            run.watchdog.stop();
            t.join();
        }
    }

    /// The stage's interrupt: every thread of the stream stops waiting and
    /// every open body fails now. Holds the window's lock only briefly.
    fn interrupt(context: *anyopaque) void {
        const run: *Run = @ptrCast(@alignCast(context));
        run.close();
    }

    fn close(run: *Run) void {
        run.api.stop();
        run.blobs.stop();
        _ = run.watchdog.interruptAll();
        run.mutex.lockUncancelable(run.io);
        defer run.mutex.unlock(run.io);
        run.closed = true;
        run.changed.broadcast(run.io);
    }

    fn execute(run: *Run, stage: *prefetch.Prefetch) void {
        const worker_count: usize = run.owner.concurrent_downloads;
        const threads = run.gpa.alloc(std.Thread, worker_count + 1) catch return stage.fail("out of memory for {d} download threads", .{worker_count});
        defer run.gpa.free(threads);
        var started: usize = 0;
        defer {
            run.close();
            for (threads[0..started]) |t| t.join();
        }
        threads[0] = std.Thread.spawn(.{ .stack_size = runtime.thread_stack_bytes }, pageMain, .{run}) catch
            return stage.fail("cannot start the Dataroom page thread", .{});
        threads[0].setName(run.io, "datago-pages") catch {};
        started = 1;
        while (started < worker_count + 1) : (started += 1) {
            threads[started] = std.Thread.spawn(.{ .stack_size = runtime.thread_stack_bytes }, workerMain, .{run}) catch
                return stage.fail("cannot start {d} download threads", .{worker_count});
            threads[started].setName(run.io, "datago-blobs") catch {};
        }
        run.merge(stage);
    }

    /// The reader thread: results in sequence order into the stage.
    fn merge(run: *Run, stage: *prefetch.Prefetch) void {
        var seq: u64 = 0;
        // The stage's numbering: items only (skipped records are not put),
        // from a resume's first sequence number.
        var put_seq: u64 = if (run.owner.resumed) |r| r.seq else 0;
        while (true) {
            run.mutex.lockUncancelable(run.io);
            const slot = &run.results[seq % run.results.len];
            while (!run.closed and slot.* == .empty and !(run.pages_done and seq == run.available)) {
                run.changed.waitUncancelable(run.io, &run.mutex);
            }
            if (run.closed) {
                run.mutex.unlock(run.io);
                return;
            }
            if (slot.* == .empty) {
                // Every record was merged and the pages are over.
                const failed = run.failed;
                const failure = run.failure;
                run.mutex.unlock(run.io);
                if (failed) return stage.failAs(failure.kind, "{s}", .{failure.text()});
                return stage.finish();
            }
            const result = slot.*;
            slot.* = .empty;
            seq += 1;
            run.merged = seq;
            run.dropMergedPages();
            run.changed.broadcast(run.io);
            run.mutex.unlock(run.io);
            switch (result) {
                .item => |made| {
                    run.owner.marks.item(put_seq, made.page, made.index, made.item.id.plain);
                    put_seq += 1;
                    stage.put(made.item) catch return;
                },
                .skipped, .empty => {},
            }
        }
    }

    /// Frees the pages whose records were all merged. Holds the lock.
    fn dropMergedPages(run: *Run) void {
        var drop: usize = 0;
        while (drop < run.queue.items.len) : (drop += 1) {
            const q = &run.queue.items[drop];
            if (q.first + q.page.records.len > run.merged) break;
            q.page.deinit();
        }
        if (drop > 0) run.queue.replaceRangeAssumeCapacity(0, drop, &.{});
    }

    fn isClosed(run: *Run) bool {
        run.mutex.lockUncancelable(run.io);
        defer run.mutex.unlock(run.io);
        return run.closed;
    }

    fn fail(run: *Run, kind: source.FailureKind, comptime fmt: []const u8, args: anytype) void {
        run.mutex.lockUncancelable(run.io);
        defer run.mutex.unlock(run.io);
        if (!run.failed) {
            run.failure.set(fmt, args) catch {};
            run.failure.kind = kind;
            run.failed = true;
        }
        run.pages_done = true;
        run.changed.broadcast(run.io);
    }

    // -- pages --------------------------------------------------------------

    fn pageMain(run: *Run) void {
        const owner = run.owner;
        var reader = PageReader.create(run) catch return run.fail(.source, "out of memory for the Dataroom page reader", .{});
        defer reader.destroy();
        var url_buffer: [url_bytes_max]u8 = undefined;
        var url = std.fmt.bufPrint(&url_buffer, "{s}{s}{s}", .{
            owner.api_root.?, if (owner.random_sampling) "images/random/" else "images/", owner.first_query,
        }) catch return run.fail(.config, "source_config: the Dataroom request is longer than {d} bytes", .{url_bytes_max});
        var after_key_buffer: [Marks.key_bytes_max]u8 = undefined;
        var after_key: []const u8 = "";
        // A resume asks for the page it stopped in and skips what of it
        // was consumed.
        var skip_first: u32 = 0;
        if (owner.resumed) |r| {
            if (r.after_key.len > 0) {
                var w: Io.Writer = .fixed(url_buffer[url.len..]);
                w.writeAll(if (owner.first_query.len > 0) "&cursor=" else "?cursor=") catch
                    return run.fail(.config, "source_config: the Dataroom request is longer than {d} bytes", .{url_bytes_max});
                query.writeEncoded(&w, r.after_key) catch
                    return run.fail(.config, "source_config: the Dataroom request is longer than {d} bytes", .{url_bytes_max});
                url = url_buffer[0 .. url.len + w.buffered().len];
                @memcpy(after_key_buffer[0..r.after_key.len], r.after_key);
                after_key = after_key_buffer[0..r.after_key.len];
            }
            skip_first = r.in_page;
        }
        var bad_pages: u32 = 0;
        var stale_batches: u32 = 0;
        var seen: std.AutoHashMapUnmanaged(u64, void) = .empty;
        defer seen.deinit(run.gpa);
        while (true) {
            if (!run.waitForRoom()) return;
            var page = reader.fetch(url) catch |err| switch (err) {
                error.Stopped => return,
                error.Reported => return,
                error.NotAPage => {
                    bad_pages += 1;
                    _ = owner.counts.pages_malformed.fetchAdd(1, .monotonic);
                    log.warn(.files, "Dataroom page '{s}' is not a JSON page; asking again ({d} of {d})", .{ url, bad_pages, bad_pages_max });
                    if (bad_pages >= bad_pages_max) return run.fail(.source, "Dataroom page '{s}' is not a JSON page {d} times in a row", .{ url, bad_pages });
                    continue;
                },
            };
            bad_pages = 0;
            _ = owner.counts.pages.fetchAdd(1, .monotonic);
            if (page.malformed > 0) {
                _ = owner.counts.records_malformed.fetchAdd(page.malformed, .monotonic);
                log.warn(.files, "Dataroom page '{s}': {d} malformed records skipped ({s})", .{ url, page.malformed, page.first_malformed });
            }
            const fresh = run.filter(&page, if (owner.random_sampling) &seen else null) catch {
                page.deinit();
                return run.fail(.source, "out of memory while reading Dataroom pages", .{});
            };
            const last_id: ?[]const u8 = if (page.records.len > 0) page.records[page.records.len - 1].id else null;
            const next_url = page.next;
            const number = owner.marks.page(after_key);
            const index_base = @min(skip_first, @as(u32, @intCast(page.records.len)));
            if (skip_first > 0) {
                // The consumed records of a resumed page: never downloaded again.
                page.records = page.records[index_base..];
                _ = owner.counts.records.fetchSub(index_base, .monotonic);
                skip_first = 0;
            }
            // Copy what outlives the page before it is queued (a worker
            // may free nothing of it, but the merger may, once merged).
            var next_buffer: [url_bytes_max]u8 = undefined;
            const next_copy: ?[]const u8 = if (next_url) |n| blk: {
                if (n.len > next_buffer.len) break :blk null;
                @memcpy(next_buffer[0..n.len], n);
                break :blk next_buffer[0..n.len];
            } else null;
            if (last_id) |id| {
                const n = @min(id.len, after_key_buffer.len);
                @memcpy(after_key_buffer[0..n], id[0..n]);
                after_key = after_key_buffer[0..n];
            }
            if (!run.push(page, number, index_base)) return;
            if (owner.random_sampling) {
                stale_batches = if (fresh == 0) stale_batches + 1 else 0;
                if (stale_batches >= random_stale_batches_max or seen.count() >= random_seen_max) break;
                continue;
            }
            const n = next_copy orelse {
                if (next_url != null) return run.fail(.source, "Dataroom: the next page's URL is longer than {d} bytes", .{url_bytes_max});
                break;
            };
            @memcpy(url_buffer[0..n.len], n);
            url = url_buffer[0..n.len];
        }
        run.mutex.lockUncancelable(run.io);
        defer run.mutex.unlock(run.io);
        run.pages_done = true;
        run.changed.broadcast(run.io);
    }

    /// Waits until at most one page of records is unclaimed (so the next
    /// fetch is one page ahead). False once closed.
    fn waitForRoom(run: *Run) bool {
        run.mutex.lockUncancelable(run.io);
        defer run.mutex.unlock(run.io);
        while (!run.closed and run.queue.items.len > 0) {
            const last = run.queue.items[run.queue.items.len - 1];
            // The newest page is being claimed: fetch the one after it.
            if (run.claimed >= last.first) break;
            run.changed.waitUncancelable(run.io, &run.mutex);
        }
        return !run.closed;
    }

    /// Drops the records this worker does not read (client-side split) and,
    /// for random sampling, those already seen. Returns the records kept.
    fn filter(run: *Run, page: *record_mod.Page, seen: ?*std.AutoHashMapUnmanaged(u64, void)) Allocator.Error!usize {
        const owner = run.owner;
        var kept: usize = 0;
        for (page.records) |record| {
            if (!owner.split.keeps(record.id)) {
                _ = owner.counts.other_workers.fetchAdd(1, .monotonic);
                continue;
            }
            if (seen) |set| {
                const entry = try set.getOrPut(run.gpa, std.hash.Wyhash.hash(1, record.id));
                if (entry.found_existing) {
                    _ = owner.counts.duplicates.fetchAdd(1, .monotonic);
                    continue;
                }
            }
            page.records[kept] = record;
            kept += 1;
        }
        page.records = page.records[0..kept];
        _ = owner.counts.records.fetchAdd(kept, .monotonic);
        return kept;
    }

    /// Queues a page's records (takes the page). False once closed.
    fn push(run: *Run, page: record_mod.Page, number: u64, index_base: u32) bool {
        var owned = page;
        run.mutex.lockUncancelable(run.io);
        defer run.mutex.unlock(run.io);
        if (run.closed) {
            owned.deinit();
            return false;
        }
        if (owned.records.len == 0) {
            owned.deinit();
            return true;
        }
        run.queue.append(run.gpa, .{ .page = owned, .first = run.available, .number = number, .index_base = index_base }) catch {
            owned.deinit();
            run.failure.set("out of memory while queueing Dataroom records", .{}) catch {};
            run.failed = true;
            run.pages_done = true;
            run.changed.broadcast(run.io);
            return false;
        };
        run.available += owned.records.len;
        run.changed.broadcast(run.io);
        return true;
    }

    // -- blobs --------------------------------------------------------------

    fn workerMain(run: *Run) void {
        var worker = BlobWorker.create(run) catch {
            run.fail(.source, "out of memory for a Dataroom download worker", .{});
            return;
        };
        defer worker.destroy();
        while (run.claim()) |claimed| {
            const result = worker.make(claimed.record, claimed.seq, claimed.page_number, claimed.index);
            run.finish(claimed.seq, result);
        }
    }

    const Claimed = struct { seq: u64, record: *const record_mod.Record, page_number: u64, index: u32 };

    /// The next record in sequence order, waiting for one within the
    /// window; null when the stream is over or closed.
    fn claim(run: *Run) ?Claimed {
        run.mutex.lockUncancelable(run.io);
        defer run.mutex.unlock(run.io);
        while (true) {
            if (run.closed) return null;
            if (run.claimed < run.available and run.claimed < run.merged + run.results.len) break;
            if (run.pages_done and run.claimed >= run.available) return null;
            run.changed.waitUncancelable(run.io, &run.mutex);
        }
        const seq = run.claimed;
        run.claimed += 1;
        // The page holding `seq` stays queued until `seq` is merged.
        for (run.queue.items) |*q| {
            if (seq >= q.first and seq < q.first + q.page.records.len) {
                const index: u32 = @intCast(seq - q.first);
                if (seq + 1 == q.first + q.page.records.len) run.changed.broadcast(run.io);
                return .{ .seq = seq, .record = &q.page.records[index], .page_number = q.number, .index = q.index_base + index };
            }
        }
        unreachable; // claimed < available: some queued page holds it
    }

    fn finish(run: *Run, seq: u64, result: Result) void {
        run.mutex.lockUncancelable(run.io);
        defer run.mutex.unlock(run.io);
        const slot = &run.results[seq % run.results.len];
        std.debug.assert(slot.* == .empty);
        if (run.closed) {
            var r = result;
            switch (r) {
                .item => |*made| made.item.release(run.gpa),
                else => {},
            }
            return;
        }
        slot.* = result;
        run.changed.broadcast(run.io);
    }

    fn noteSkip(run: *Run, comptime fmt: []const u8, args: anytype) void {
        const n = run.logged_skips.fetchAdd(1, .monotonic) + 1;
        if (n <= logged_skips_max) {
            log.warn(.files, fmt, args);
        } else if (n == logged_skips_max + 1) {
            log.warn(.files, "more than {d} Dataroom records skipped in this pass; further ones are only counted", .{logged_skips_max});
        }
    }
};

/// The page thread's HTTP body and buffers (large: kept off the stack).
const PageReader = struct {
    run: *Run,
    body: http.Body,
    buffer: [http_buffer_bytes]u8,
    bytes: std.ArrayList(u8),

    fn create(run: *Run) Allocator.Error!*PageReader {
        const r = try run.gpa.create(PageReader);
        r.run = run;
        r.bytes = .empty;
        return r;
    }

    fn destroy(r: *PageReader) void {
        r.bytes.deinit(r.run.gpa);
        r.run.gpa.destroy(r);
    }

    /// GETs and parses one page. Failures of the pass are reported here
    /// (error.Reported); a body that is not a page is the caller's to retry.
    fn fetch(r: *PageReader, url: []const u8) error{ Stopped, Reported, NotAPage }!record_mod.Page {
        const run = r.run;
        r.bytes.clearRetainingCapacity();
        getAll(&r.body, &run.api, url, &r.buffer, run.gpa, &r.bytes, page_bytes_max) catch |err| {
            if (err == error.Stopped or run.isClosed()) return error.Stopped;
            reportPageFailure(run, url, err, &r.body);
            return error.Reported;
        };
        return record_mod.parsePage(run.gpa, r.bytes.items) catch |err| switch (err) {
            error.OutOfMemory => {
                run.fail(.source, "out of memory for a Dataroom page of {d} bytes", .{r.bytes.items.len});
                return error.Reported;
            },
            error.NotJson, error.NotAPage => error.NotAPage,
        };
    }
};

fn reportPageFailure(run: *Run, url: []const u8, err: GetError, body: *const http.Body) void {
    const d = &body.diagnostics;
    switch (err) {
        error.HttpStatus => {
            const detail = record_mod.errorDetail(body.errorBody());
            switch (d.status) {
                401, 403 => run.fail(.auth, "Dataroom refused the credentials (HTTP {d}) for '{s}': {s}", .{ d.status, url, detail }),
                400 => run.fail(.config, "source_config: the Dataroom server refused the request (HTTP 400) '{s}': {s}", .{ url, detail }),
                else => run.fail(.source, "Dataroom page '{s}': HTTP {d}: {s}", .{ url, d.status, detail }),
            }
        },
        error.RetriesExhausted => run.fail(.source, "Dataroom page '{s}': retries exhausted (last: {s} {s}, status {d})", .{ url, @tagName(d.cause), d.detail, d.status }),
        error.TooLarge => run.fail(.source, "Dataroom page '{s}': larger than {d} bytes", .{ url, page_bytes_max }),
        else => run.fail(.source, "Dataroom page '{s}': {s} ({s} {s})", .{ url, @errorName(err), @tagName(d.cause), d.detail }),
    }
}

const GetError = http.Error || error{TooLarge};

/// GETs `url` to its end into `out` (at most `limit` bytes).
fn getAll(body: *http.Body, client: *http.Client, url: []const u8, buffer: []u8, gpa: Allocator, out: *std.ArrayList(u8), limit: usize) GetError!void {
    try body.open(client, url, buffer);
    defer body.close();
    body.interface.appendRemaining(gpa, out, .limited(limit)) catch |err| return switch (err) {
        error.OutOfMemory => error.OutOfMemory,
        error.StreamTooLong => error.TooLarge,
        error.ReadFailed => body.failure,
    };
}

/// One download worker's body, buffers and scratch.
const BlobWorker = struct {
    run: *Run,
    body: http.Body,
    buffer: [http_buffer_bytes]u8,
    /// Blob bytes of the record being built, back to back; `spans` index it.
    blob_bytes: std.ArrayList(u8),
    spans: std.ArrayList(Span),
    /// A re-read record (fresh URLs), parsed here; reset per record.
    refresh_arena: std.heap.ArenaAllocator,
    refresh_bytes: std.ArrayList(u8),

    const Span = struct { start: usize, len: usize };

    fn create(run: *Run) Allocator.Error!*BlobWorker {
        const w = try run.gpa.create(BlobWorker);
        w.run = run;
        w.blob_bytes = .empty;
        w.spans = .empty;
        w.refresh_arena = .init(run.gpa);
        w.refresh_bytes = .empty;
        return w;
    }

    fn destroy(w: *BlobWorker) void {
        const gpa = w.run.gpa;
        w.blob_bytes.deinit(gpa);
        w.spans.deinit(gpa);
        w.refresh_arena.deinit();
        w.refresh_bytes.deinit(gpa);
        gpa.destroy(w);
    }

    const BlobFailure = error{ Missing, Failed, Stopped, OutOfMemory };

    /// Downloads the record's blobs and builds its item.
    fn make(w: *BlobWorker, record: *const record_mod.Record, seq: u64, page_number: u64, index: u32) Result {
        const run = w.run;
        const counts = &run.owner.counts;
        w.blob_bytes.clearRetainingCapacity();
        w.spans.clearRetainingCapacity();
        _ = w.refresh_arena.reset(.retain_capacity);
        var fresh: ?record_mod.Record = null;
        // Blob 0 is the image (maybe absent), then one per latent.
        const blob_count = 1 + record.latents.len;
        for (0..blob_count) |b| {
            const start = w.blob_bytes.items.len;
            var failed_url: []const u8 = "";
            w.fetchBlob(record, b, &fresh, &failed_url) catch |err| {
                switch (err) {
                    error.Stopped => return .skipped,
                    error.OutOfMemory => return w.outOfMemory(record),
                    error.Missing => {
                        _ = counts.blobs_missing.fetchAdd(1, .monotonic);
                        run.noteSkip("Dataroom record '{s}' skipped: blob '{s}' not found (HTTP 404)", .{ record.id, failed_url });
                    },
                    error.Failed => {
                        _ = counts.blobs_failed.fetchAdd(1, .monotonic);
                        run.noteSkip("Dataroom record '{s}' skipped: blob '{s}' failed ({s}, status {d})", .{
                            record.id, failed_url, @tagName(w.body.diagnostics.cause), w.body.diagnostics.status,
                        });
                    },
                }
                return .skipped;
            };
            w.spans.append(run.gpa, .{ .start = start, .len = w.blob_bytes.items.len - start }) catch return w.outOfMemory(record);
        }
        const item = w.build(record) catch return w.outOfMemory(record);
        _ = seq;
        return .{ .item = .{ .item = item, .page = page_number, .index = index } };
    }

    /// Blob `b` of the record (none when its URL is null), re-reading the
    /// record for fresh URLs once when a signature expired (403).
    fn fetchBlob(w: *BlobWorker, record: *const record_mod.Record, b: usize, fresh: *?record_mod.Record, failed_url: *[]const u8) BlobFailure!void {
        const url = blobUrl(record, b) orelse return;
        failed_url.* = url;
        const start = w.blob_bytes.items.len;
        if (w.download(url)) |_| return else |err| switch (err) {
            error.Expired => {},
            else => |e| return e,
        }
        if (fresh.* == null) fresh.* = try w.refresh(record.id);
        const again = blobUrl(&fresh.*.?, b) orelse return error.Missing;
        failed_url.* = again;
        w.blob_bytes.shrinkRetainingCapacity(start);
        w.download(again) catch |err| return switch (err) {
            error.Expired => error.Failed,
            else => |e| e,
        };
    }

    fn outOfMemory(w: *BlobWorker, record: *const record_mod.Record) Result {
        _ = w.run.owner.counts.blobs_failed.fetchAdd(1, .monotonic);
        w.run.noteSkip("Dataroom record '{s}' skipped: out of memory", .{record.id});
        return .skipped;
    }

    fn blobUrl(record: *const record_mod.Record, b: usize) ?[]const u8 {
        if (b == 0) return record.image_url;
        return record.latents[b - 1].url;
    }

    /// Appends the blob at `url` to `blob_bytes`.
    fn download(w: *BlobWorker, url: []const u8) (BlobFailure || error{Expired})!void {
        const run = w.run;
        getAll(&w.body, &run.blobs, url, &w.buffer, run.gpa, &w.blob_bytes, blob_bytes_max) catch |err| {
            if (run.isClosed()) return error.Stopped;
            return switch (err) {
                error.Stopped => error.Stopped,
                error.OutOfMemory => error.OutOfMemory,
                error.HttpStatus => switch (w.body.diagnostics.status) {
                    403 => error.Expired,
                    404, 410 => error.Missing,
                    else => error.Failed,
                },
                else => error.Failed,
            };
        };
    }

    /// `GET <api>images/<id>/?fields=...`: the record with fresh blob URLs.
    fn refresh(w: *BlobWorker, id: []const u8) BlobFailure!record_mod.Record {
        const run = w.run;
        const owner = run.owner;
        _ = owner.counts.refreshed.fetchAdd(1, .monotonic);
        var url_buffer: [url_bytes_max]u8 = undefined;
        var url_writer: Io.Writer = .fixed(&url_buffer);
        url_writer.print("{s}images/", .{owner.api_root.?}) catch return error.Failed;
        query.writeEncoded(&url_writer, id) catch return error.Failed;
        url_writer.print("/{s}", .{owner.record_query}) catch return error.Failed;
        w.refresh_bytes.clearRetainingCapacity();
        getAll(&w.body, &run.api, url_writer.buffered(), &w.buffer, run.gpa, &w.refresh_bytes, page_bytes_max) catch |err| {
            if (run.isClosed()) return error.Stopped;
            return switch (err) {
                error.Stopped => error.Stopped,
                error.OutOfMemory => error.OutOfMemory,
                error.HttpStatus => if (w.body.diagnostics.status == 404) error.Missing else error.Failed,
                else => error.Failed,
            };
        };
        var why: []const u8 = "";
        return record_mod.parseRecordBody(w.refresh_arena.allocator(), w.refresh_bytes.items, &why) catch |err| switch (err) {
            error.OutOfMemory => error.OutOfMemory,
            error.Malformed => error.Failed,
        };
    }

    /// One allocation for the image, strings and blobs; one array for the
    /// named blobs (masks, additional images, latents), tags, embedding.
    fn build(w: *BlobWorker, record: *const record_mod.Record) Allocator.Error!source.Item {
        const gpa = w.run.gpa;
        const latents = record.latents;
        var total = w.blob_bytes.items.len + record.id.len + record.source.len + record.attributes_json.len;
        for (latents) |l| total += l.latent_type.len;
        for (record.tags) |t| total += t.len;
        const backing = try gpa.alloc(u8, total);
        errdefer gpa.free(backing);
        const named = try gpa.alloc(source.Item.Named, latents.len);
        errdefer gpa.free(named);
        const tags = try gpa.alloc([]const u8, record.tags.len);
        errdefer gpa.free(tags);
        const coca = try gpa.dupe(f32, record.coca_embedding);
        var at: usize = 0;
        const image = copyInto(backing, &at, w.blobOf(0));
        const id = copyInto(backing, &at, record.id);
        const source_name = copyInto(backing, &at, record.source);
        const attributes = copyInto(backing, &at, record.attributes_json);
        for (record.tags, tags) |t, *out| out.* = copyInto(backing, &at, t);
        // Grouped by role in `named`: masks, then additional images, then
        // raw latents, each in the record's order.
        var n: usize = 0;
        var counts = [_]usize{ 0, 0, 0 };
        for ([_]record_mod.LatentRole{ .mask, .additional_image, .raw }, 0..) |role, r| {
            for (latents, 0..) |l, i| {
                if (l.role() != role or l.url == null) continue;
                named[n] = .{ .name = copyInto(backing, &at, l.latent_type), .bytes = copyInto(backing, &at, w.blobOf(i + 1)) };
                n += 1;
                counts[r] += 1;
            }
        }
        return .{
            .bytes = image,
            .kind = .dataroom,
            .id = .{ .plain = id },
            .source_name = source_name,
            .origin = id,
            .attributes_json = attributes,
            .masks = named[0..counts[0]],
            .additional = named[counts[0]..][0..counts[1]],
            .latents = named[counts[0] + counts[1] ..][0..counts[2]],
            .tags = tags,
            .coca_embedding = coca,
            .duplicate_state = record.duplicate_state,
            .image_optional = record.image_url == null,
            .backing = backing,
            .additional_backing = named,
            .tags_backing = tags,
            .coca_backing = coca,
        };
    }

    fn blobOf(w: *const BlobWorker, b: usize) []const u8 {
        const span = w.spans.items[b];
        return w.blob_bytes.items[span.start..][0..span.len];
    }
};

fn copyInto(backing: []u8, at: *usize, data: []const u8) []const u8 {
    const out = backing[at.*..][0..data.len];
    @memcpy(out, data);
    at.* += data.len;
    return out;
}

const testing = std.testing;

test "ranks and workers map to server partitions while there are enough" {
    // One process, one worker: nothing is split.
    try testing.expectEqual(@as(u32, 1), Split.of(0, 1, 0, 1).partition.count);
    // Ranks alone: partition = rank of world_size (compatibility.md §6.3).
    const r = Split.of(2, 3, 0, 1);
    try testing.expectEqual(@as(u32, 2), r.partition.index);
    try testing.expectEqual(@as(u32, 3), r.partition.count);
    // Workers: rank r's worker w reads partition r + w × world_size of
    // world_size × workers; modulo world_size that is the rank's partition.
    const w = Split.of(1, 3, 2, 4);
    try testing.expectEqual(@as(u32, 7), w.partition.index);
    try testing.expectEqual(@as(u32, 12), w.partition.count);
    try testing.expectEqual(@as(u32, 1), w.partition.index % 3);
    try testing.expect(w.keeps("anything"));
    // 8 ranks × 8 workers = 64 > 48: the rank's partition, split by id hash.
    const c = Split.of(5, 8, 3, 8);
    try testing.expectEqual(@as(u32, 5), c.partition.index);
    try testing.expectEqual(@as(u32, 8), c.partition.count);
    var kept: [8]u32 = @splat(0);
    var buffer: [16]u8 = undefined;
    for (0..800) |i| {
        const id = try std.fmt.bufPrint(&buffer, "img_{d:0>4}", .{i});
        var owners: u32 = 0;
        for (0..8) |worker| {
            if (Split.of(5, 8, @intCast(worker), 8).keeps(id)) {
                owners += 1;
                kept[worker] += 1;
            }
        }
        try testing.expectEqual(@as(u32, 1), owners);
    }
    for (kept) |k| try testing.expect(k > 50);
}

test "marks give the keyset cursor and the id of recent items" {
    const marks = try testing.allocator.create(Marks);
    defer testing.allocator.destroy(marks);
    marks.* = .{};
    const p0 = marks.page("");
    marks.item(0, p0, 0, "a");
    marks.item(1, p0, 1, "b");
    const p1 = marks.page("b");
    marks.item(2, p1, 0, "c");
    var c: source.Cursor = .{ .seed = null, .epoch = 0, .rank = 0, .world_size = 1, .worker = 0, .num_workers = 1, .position = 2 };
    marks.keyset(2, &c);
    try testing.expectEqualStrings("b", c.keyset.?.key[0..c.keyset.?.key_len]);
    try testing.expectEqual(@as(u32, 0), c.keyset.?.in_page);
    var c1 = c;
    c1.keyset = null;
    marks.keyset(1, &c1);
    try testing.expectEqual(@as(u16, 0), c1.keyset.?.key_len);
    try testing.expectEqual(@as(u32, 1), c1.keyset.?.in_page);
    var buffer: [Marks.key_bytes_max]u8 = undefined;
    try testing.expectEqualStrings("c", marks.idOf(2, &buffer).?);
    try testing.expectEqual(@as(?[]const u8, null), marks.idOf(3, &buffer));
}
