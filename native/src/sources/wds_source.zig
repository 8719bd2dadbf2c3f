//! The WebDataset source (issue 17; compatibility.md §6.2, §7.2): a
//! streaming source over tar shards named by a brace pattern.
//!
//! `prepare` expands the pattern (braces.zig), or reads the Google Cloud
//! Storage listing it names (gcs_listing.zig), and plans this (rank,
//! worker)'s shards (shard_split.zig). `stream`, on the pass's reader
//! thread, walks them in plan order: local paths and `file://` through a
//! file reader, `http://` and `https://` through http.zig (retries, Range
//! resume, read and connect timeouts); each is read by tar.zig and grouped
//! by wds_group.zig, and every group with an image becomes one item: the
//! image's bytes, `id` = the key's file-name part, `source` = the shard URL,
//! `attributes_json` = the text members by extension.
//!
//! Faults: a shard that cannot be opened or read to its end (4xx, retries
//! exhausted, not a tar, truncated) is logged at WARN with its URL and
//! reason, counted (`shards_failed`), and the stream goes on with the next
//! one; the groups delivered before the fault stay delivered, and the rest
//! of that shard is lost. A group without an image is logged (at most
//! `logged_groups_max` WARN lines per pass) and counted. When every shard of
//! the part failed (in a resumed pass: every shard it had left to read), the
//! stream fails naming the first failure.
//!
//! Other image members (`jpg`, `jpeg`, `png`) travel with the item and are
//! processed into the main image's bucket by the pipeline
//! (`additional_images`, named by their path in the tar).
//!
//! `concurrent_downloads` shards are read at once, in lanes merged in a
//! fixed order (shard_lanes.zig); stopping the pass interrupts every read
//! in flight (`Shared.interrupt`).
//!
//! With `cache_dir`, http(s) shards are read from and written to the shard
//! cache (shard_cache.zig): a hit is read like a local file, a miss is teed
//! into the cache while it streams.
//!
//! Items reach the stage through a `shuffle_buffer.Sink` on the reader
//! thread, which mixes them across shards in blocks when `shuffle_buffer`
//! (or `random_sampling`) asks for it.
//!
//! Resume (issue 19): every item carries where its lane stands after it
//! (the shard's position in the plan and the tar offset of the next group,
//! `Grouper.resumeOffset`); at each block start the stream keeps a
//! checkpoint of the lanes (wds_checkpoint.zig), which `checkpointAt` hands
//! out. A source given one (`resumeFrom`) puts the same items in the same
//! order from the checkpoint's `seq` on: each lane reopens its shard at the
//! offset (a `Range` request over http(s), a seek in a file or a cached
//! copy; a gzip shard is decompressed from its start and the offset's bytes
//! discarded, since deflate cannot be entered in the middle), and a
//! resumed shard is not written to the shard cache (it is not whole).
const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;

const config_mod = @import("../config.zig");
const log = @import("../log.zig");
const runtime = @import("../runtime.zig");
const braces = @import("braces.zig");
const gcs_listing = @import("gcs_listing.zig");
const http = @import("http.zig");
const prefetch = @import("prefetch.zig");
const shard_lanes = @import("shard_lanes.zig");
const shard_cache = @import("shard_cache.zig");
const shard_split = @import("shard_split.zig");
const shuffle_buffer = @import("shuffle_buffer.zig");
const source = @import("source.zig");
const tar = @import("tar.zig");
const wds_checkpoint = @import("wds_checkpoint.zig");
const resume_mod = @import("../resume.zig");
const wds_group = @import("wds_group.zig");

pub const Checkpoint = wds_checkpoint.Checkpoint;
const LanePosition = wds_checkpoint.LanePosition;

/// WARN lines per pass for groups without an image; further ones are counted.
pub const logged_groups_max = 20;
/// Bytes of attribute JSON per sample (escaping included).
pub const attributes_bytes_max = 16 * 1024 * 1024;
/// Recent items remembered for `describeItem` (the log line of a failed
/// decode names the shard and the key).
const described_max = 1024;
const described_bytes_max = 192;
const file_buffer_bytes = 64 * 1024;
/// Items the pipeline keeps pending past the consumer's position (its
/// resume window); checkpoints reach back this far beyond the stage's and
/// the pipeline's buffers.
pub const resume_window_items = 8192;
const http_buffer_bytes = 64 * 1024;

/// Counters of the stream, read by `stats()` while it runs.
pub const Counts = struct {
    shards_planned: std.atomic.Value(u64) = .init(0),
    shards_read: std.atomic.Value(u64) = .init(0),
    shards_failed: std.atomic.Value(u64) = .init(0),
    groups_without_image: std.atomic.Value(u64) = .init(0),
    groups_too_large: std.atomic.Value(u64) = .init(0),
    cache: shard_cache.Counts = .{},
};

pub const WdsSource = struct {
    /// Owned copies: the pass may outlive its loader.
    pattern: []u8,
    reference_image_type: []u8,
    authorization: ?[]u8,
    headers: []std.http.Header,
    header_bytes: []u8,
    ca_bundle: ?[]u8,
    cache_dir: ?[]u8,
    cache_max_bytes: u64,
    options: http.Options,
    params: shard_split.Params,
    /// Shards read at once (shard_lanes.zig).
    concurrent_downloads: u16,
    shuffle: shuffle_buffer.Params,
    urls: ?braces.Expansion = null,
    plan: ?shard_split.Plan = null,
    counts: Counts = .{},
    described: []Described,
    /// Guards `described` (held for a copy of at most described_bytes_max
    /// bytes; `describeItem` has no `Io` to wait with).
    described_lock: std.atomic.Value(bool) = .init(false),
    /// The stream's recent checkpoints (`checkpointAt`).
    retained: wds_checkpoint.Retained,
    /// Where this pass resumes (`resumeFrom`); owned.
    resume_from: ?Checkpoint = null,
    /// Of the expanded shard URLs (resume.Fingerprint), once prepared; and
    /// the one a resumed pass's state was saved over.
    fingerprint: ?u64 = null,
    expected_fingerprint: ?u64 = null,
    /// Why a state's checkpoint was refused (`Source.resumeFrom`).
    resume_failure: source.Failure = .{},

    const Described = struct {
        seq: u64 = std.math.maxInt(u64),
        len: u8 = 0,
        text: [described_bytes_max]u8 = undefined,
    };

    pub fn init(gpa: Allocator, config: *const config_mod.Config, epoch: u64) Allocator.Error!WdsSource {
        const wds = &config.webdataset;
        const pattern = try gpa.dupe(u8, wds.url);
        errdefer gpa.free(pattern);
        const reference = try gpa.dupe(u8, wds.reference_image_type);
        errdefer gpa.free(reference);
        const authorization = if (wds.auth_token) |t| try gpa.dupe(u8, t) else null;
        errdefer if (authorization) |a| gpa.free(a);
        const ca_bundle = if (wds.ca_bundle) |c| try gpa.dupe(u8, c) else null;
        errdefer if (ca_bundle) |c| gpa.free(c);
        const cache_dir = if (wds.cache_dir) |c| try gpa.dupe(u8, c) else null;
        errdefer if (cache_dir) |c| gpa.free(c);
        var header_len: usize = 0;
        for (wds.headers) |h| header_len += h.name.len + h.value.len;
        const header_bytes = try gpa.alloc(u8, header_len);
        errdefer gpa.free(header_bytes);
        const headers = try gpa.alloc(std.http.Header, wds.headers.len);
        errdefer gpa.free(headers);
        var at: usize = 0;
        for (wds.headers, headers) |h, *out| {
            @memcpy(header_bytes[at..][0..h.name.len], h.name);
            @memcpy(header_bytes[at + h.name.len ..][0..h.value.len], h.value);
            out.* = .{ .name = header_bytes[at..][0..h.name.len], .value = header_bytes[at + h.name.len ..][0..h.value.len] };
            at += h.name.len + h.value.len;
        }
        const described = try gpa.alloc(Described, described_max);
        errdefer gpa.free(described);
        @memset(described, .{});
        const shuffle = shuffle_buffer.paramsFor(config, epoch);
        // Retention: the consumer's position lags the last put by at most
        // the stage, the samples buffer and the workers' claims (256
        // allowed for them), plus the pipeline's resume window; every
        // sequence number that recent has a checkpoint at or before it.
        const retention: u64 = @as(u64, config.prefetch_buffer_size) + config.samples_buffer_size + 256 + resume_window_items;
        const lanes_max = @max(1, @min(@as(u32, wds.concurrent_downloads), wds_checkpoint.lanes_max));
        var retained: wds_checkpoint.Retained = try .init(gpa, lanes_max, retention, shuffle.blockItems());
        errdefer retained.deinit(gpa);
        var entropy: u64 = 0;
        if (config.file.random_sampling and config.file.seed == null) entropy = runtime.entropy64();
        return .{
            .pattern = pattern,
            .reference_image_type = reference,
            .authorization = authorization,
            .headers = headers,
            .header_bytes = header_bytes,
            .ca_bundle = ca_bundle,
            .cache_dir = cache_dir,
            .cache_max_bytes = wds.cache_max_bytes,
            .options = .{
                .connect_timeout_ms = wds.connect_timeout_ms,
                .read_timeout_ms = wds.read_timeout_ms,
                .retries_max = retriesMax(),
                .connections_per_host_max = @max(1, wds.concurrent_downloads),
                .authorization = authorization,
                .extra_headers = headers,
            },
            .params = .{
                .shard_count = 0,
                .rank = config.file.rank,
                .world_size = config.file.world_size,
                .worker = config.worker_id,
                .num_workers = config.num_workers,
                .seed = config.file.seed,
                .epoch = epoch,
                .random_sampling = config.file.random_sampling,
                .entropy = entropy,
                .mode = switch (wds.rank_split) {
                    .shard => .shard,
                    .sample_hash => .sample_hash,
                },
            },
            .concurrent_downloads = wds.concurrent_downloads,
            .shuffle = shuffle,
            .described = described,
            .retained = retained,
        };
    }

    pub fn deinit(self: *WdsSource, gpa: Allocator) void {
        if (self.resume_from) |*cp| cp.deinit(gpa);
        self.retained.deinit(gpa);
        if (self.plan) |*p| p.deinit(gpa);
        if (self.urls) |*u| u.deinit(gpa);
        gpa.free(self.described);
        gpa.free(self.headers);
        gpa.free(self.header_bytes);
        if (self.ca_bundle) |c| gpa.free(c);
        if (self.cache_dir) |c| gpa.free(c);
        if (self.authorization) |a| gpa.free(a);
        gpa.free(self.reference_image_type);
        gpa.free(self.pattern);
        self.* = undefined;
    }

    /// Expands the URL pattern (or lists the GCS listing it names) and
    /// plans this (rank, worker)'s shards.
    pub fn prepare(self: *WdsSource, gpa: Allocator, io: Io, canceled: *const std.atomic.Value(bool), failure: *source.Failure) source.PrepareError!source.Prepared {
        const started_ns = runtime.monotonicNs();
        var diag: braces.Diagnostics = .{};
        var urls = if (gcs_listing.isListingUrl(self.pattern)) try gcs_listing.list(gpa, io, .{
            .url = self.pattern,
            .options = self.options,
            .ca_bundle = self.ca_bundle,
            .canceled = canceled,
        }, failure) else braces.expand(gpa, self.pattern, &diag) catch |err| return switch (err) {
            error.OutOfMemory => failure.set("out of memory while expanding source_config.url", .{}),
            else => failure.set("source_config.url: cannot be expanded ({s} at byte {d})", .{ @errorName(err), diag.offset }),
        };
        errdefer urls.deinit(gpa);
        var params = self.params;
        params.shard_count = urls.count();
        const plan = shard_split.plan(gpa, params) catch |err| return switch (err) {
            error.OutOfMemory => failure.set("out of memory while planning {d} shards", .{urls.count()}),
            error.TooMany => failure.set("source_config.url: {d} shards, at most {d}", .{ urls.count(), shard_split.shards_max }),
        };
        var fingerprint: resume_mod.Fingerprint = .{};
        for (0..urls.count()) |i| fingerprint.add(urls.get(i));
        self.fingerprint = fingerprint.final();
        if (self.expected_fingerprint) |expected| if (expected != self.fingerprint.?) {
            var p = plan;
            p.deinit(gpa);
            failure.kind = .config;
            return failure.set("state: saved over another list of shards (fingerprint {x:0>16}, now {x:0>16} with {d} shards): it belongs to another dataset", .{ expected, self.fingerprint.?, urls.count() });
        };
        if (self.resume_from) |*cp| self.checkResume(cp, plan.shards.len, failure) catch |err| {
            var p = plan;
            p.deinit(gpa);
            return err;
        };
        self.urls = urls;
        self.plan = plan;
        self.counts.shards_planned.store(plan.shards.len, .monotonic);
        const listed_ns = runtime.monotonicNs() - started_ns;
        log.info(.files, "WebDataset '{s}': {d} shards; this worker reads {d} of them{s}", .{
            self.pattern, urls.count(), plan.shards.len, if (plan.filter.keepsAll()) "" else " and keeps the samples hashed to it",
        });
        return .{ .items = null, .listed = urls.count(), .listing_ns = listed_ns };
    }

    /// The pass streams from `cp` (taken by `checkpointAt` in a pass over
    /// the same configuration, or parsed): the first item put is the one
    /// the uninterrupted stream put at `cp.seq`, under that sequence number
    /// (`Prefetch.setFirstSeq`). Takes ownership of `cp`. Call after `init`
    /// and before `prepare`, which checks `cp` against the plan.
    pub fn resumeFrom(self: *WdsSource, cp: Checkpoint) void {
        std.debug.assert(self.resume_from == null and self.plan == null);
        self.resume_from = cp;
    }

    /// The latest retained checkpoint at or before `seq` (caller owns it:
    /// `Checkpoint.deinit`); null when `seq` is older than the retention
    /// (see `init`) or the stream has not started. Any thread; does not
    /// wait on the reader beyond a copy. At the end of a completed stream,
    /// `seq == total` has a checkpoint whose resume puts nothing.
    pub fn checkpointAt(self: *WdsSource, gpa: Allocator, seq: u64) Allocator.Error!?Checkpoint {
        return self.retained.at(gpa, seq);
    }

    fn checkResume(self: *const WdsSource, cp: *const Checkpoint, shards: usize, failure: *source.Failure) error{Failed}!void {
        const lane_count = shard_lanes.laneCount(shards, self.concurrent_downloads);
        if (cp.shards != shards) return failure.set("resume state: the checkpoint's 'shards' is {d}, but this worker plans {d} shards (another dataset, rank or worker split?)", .{ cp.shards, shards });
        if (cp.lanes.len != lane_count) return failure.set("resume state: the checkpoint has {d} 'lanes', but concurrent_downloads gives {d}", .{ cp.lanes.len, lane_count });
        const block_items = self.shuffle.blockItems();
        if (cp.block_items != block_items) return failure.set("resume state: the checkpoint's 'block_items' is {d}, but shuffle_buffer gives {d}", .{ cp.block_items, block_items });
        var all_done = true;
        for (cp.lanes, 0..) |lane, i| {
            if (lane.done) continue;
            all_done = false;
            if (lane.shard % lane_count != i) return failure.set("resume state: 'lanes[{d}].shard' {d} is not one of lane {d}'s shards", .{ i, lane.shard, i });
            if (lane.shard >= shards and lane.offset != 0) return failure.set("resume state: 'lanes[{d}].offset' {d} is inside no planned shard", .{ i, lane.offset });
        }
        if (!all_done and (cp.next_lane >= cp.lanes.len or cp.lanes[cp.next_lane].done)) return failure.set("resume state: 'next_lane' {d} is not a live lane", .{cp.next_lane});
    }

    /// Runs on the reader thread: every planned shard, `lanes` of them at
    /// once (shard_lanes.zig gives the order).
    pub fn stream(self: *WdsSource, gpa: Allocator, stage: *prefetch.Prefetch) void {
        const plan = self.plan orelse return stage.fail("the WebDataset source was not prepared", .{});
        var shared: Shared = .{ .gpa = gpa, .io = stage.io, .owner = self };
        defer shared.deinit();
        shared.start(plan.shards) catch return stage.fail("cannot start the HTTP watchdog thread", .{});
        if (self.cache_dir) |path| {
            var diag: shard_cache.OpenDiagnostics = .{};
            shared.cache = shard_cache.Cache.open(gpa, stage.io, path, self.cache_max_bytes, &self.counts.cache, &diag) catch
                return stage.fail("source_config.cache_dir: cannot {s} '{s}' ({s})", .{ diag.action, path, diag.error_name });
        }
        // A stopped pass must not wait for a socket read to time out.
        stage.setInterrupt(.{ .context = &shared, .call = Shared.interrupt });
        defer stage.setInterrupt(null);
        const lane_count = shard_lanes.laneCount(plan.shards.len, self.concurrent_downloads);
        var params = self.shuffle;
        var positions_buffer: [wds_checkpoint.lanes_max]LanePosition = undefined;
        const positions = positions_buffer[0..lane_count];
        var first_block: u64 = 0;
        var first_lane: usize = 0;
        if (self.resume_from) |*cp| {
            params.rng_seed = cp.shuffle_seed;
            @memcpy(positions, cp.lanes);
            first_block = cp.block;
            first_lane = cp.next_lane;
            stage.setFirstSeq(cp.seq);
        } else {
            for (positions, 0..) |*p, l| p.* = .{ .shard = @intCast(l) };
        }
        self.retained.begin(@intCast(lane_count), params.blockItems(), params.rng_seed, @intCast(plan.shards.len));
        var output: Output = .{
            .stage = stage,
            .shuffle = shuffle_buffer.Sink(WdsSource).init(gpa, self, params, first_block) catch
                return stage.fail("out of memory for the shuffle buffer", .{}),
            .lanes = positions,
            .retained = &self.retained,
        };
        defer output.shuffle.deinit();
        const completed = if (lane_count == 1)
            readLane(&shared, .{ .output = &output }, 0, 1, positions[0])
        else
            streamLanes(gpa, &shared, &output, lane_count, first_lane) catch |err| return switch (err) {
                error.OutOfMemory => stage.fail("out of memory for {d} shard readers", .{lane_count}),
                error.ThreadSpawnFailed => stage.fail("cannot start {d} shard reader threads", .{lane_count}),
            };
        // Not completed: stopped (the stage is closed and this is a no-op),
        // or a reader could not be made.
        if (!completed) return stage.fail("out of memory for a shard reader", .{});
        const failed = shared.failed.load(.monotonic);
        if (failed > 0 and shared.read.load(.monotonic) == 0) {
            const which = if (self.resume_from != null) " left after the resume point" else "";
            return stage.fail("every WebDataset shard{s} failed ({d}); the first, '{s}': {s}", .{ which, failed, shared.first_failed_url, shared.first_failure.text() });
        }
        if (failed > 0) log.warn(.files, "WebDataset: {d} of {d} shards failed and were skipped", .{ failed, plan.shards.len });
        output.shuffle.drain(stage) catch return;
        output.finish();
        stage.finish();
    }

    /// Several lanes on threads of their own, merged here. False when the
    /// pass was stopped.
    fn streamLanes(gpa: Allocator, shared: *Shared, output: *Output, lane_count: usize, first_lane: usize) error{ OutOfMemory, ThreadSpawnFailed }!bool {
        var lanes: shard_lanes.Lanes = try .init(gpa, shared.io, lane_count);
        defer lanes.deinit();
        const threads = try gpa.alloc(std.Thread, lane_count);
        defer gpa.free(threads);
        var started: usize = 0;
        defer for (threads[0..started]) |t| t.join();
        errdefer lanes.close();
        while (started < lane_count) : (started += 1) {
            threads[started] = std.Thread.spawn(.{ .stack_size = runtime.thread_stack_bytes }, laneMain, .{ shared, &lanes, started, lane_count, output.lanes[started] }) catch
                return error.ThreadSpawnFailed;
            threads[started].setName(shared.io, "datago-shards") catch {};
        }
        const Merge = struct {
            lanes: *shard_lanes.Lanes,
            output: *Output,
            fn take(m: *@This(), lane: usize) ?shard_lanes.Lanes.Taken {
                return m.lanes.take(lane);
            }
            fn deliver(m: *@This(), lane: usize, taken: shard_lanes.Lanes.Taken) bool {
                m.output.put(lane, taken.item, taken.after) catch return false;
                return true;
            }
            fn ended(m: *@This(), lane: usize) void {
                m.output.lanes[lane].done = true;
            }
        };
        var merging: Merge = .{ .lanes = &lanes, .output = output };
        var live_buffer: [wds_checkpoint.lanes_max]usize = undefined;
        var live_count: usize = 0;
        for (output.lanes, 0..) |lane, l| if (!lane.done) {
            live_buffer[live_count] = l;
            live_count += 1;
        };
        const drained = shard_lanes.merge(live_buffer[0..live_count], first_lane, &merging, shard_lanes.Lanes.Taken, Merge.take, Merge.deliver, Merge.ended);
        // Stopped, or a lane gave up: wake every lane before the joins.
        if (!drained or lanes.isClosed()) lanes.close();
        return drained and !lanes.isClosed();
    }

    fn laneMain(shared: *Shared, lanes: *shard_lanes.Lanes, index: usize, lane_count: usize, start: LanePosition) void {
        defer lanes.end(index);
        if (!readLane(shared, .{ .lane = .{ .lanes = lanes, .index = index } }, index, lane_count, start)) lanes.close();
    }

    /// Reads the planned shards `start.shard, start.shard + stride, ...`
    /// into `sink`, the first from `start.offset`. False when the pass was
    /// stopped (or the reader could not be made, which fails the stream).
    fn readLane(shared: *Shared, sink: Sink, lane: usize, stride: usize, start: LanePosition) bool {
        const self = shared.owner;
        const plan = self.plan.?;
        const urls = &self.urls.?;
        std.debug.assert(start.done or start.shard % stride == lane);
        if (start.done) return true;
        var reading = Reading.create(shared) catch {
            sink.fail("out of memory for a shard reader");
            return false;
        };
        defer reading.destroy();
        var at: usize = start.shard;
        var within: tar.Start = .{ .offset = start.offset, .gzip = start.gzip };
        while (at < plan.shards.len) : ({
            at += stride;
            within = .{};
        }) {
            // A stopped pass closes the sink; a lane whose shards all fail
            // never puts, so it must look before each shard.
            if (sink.isClosed()) return false;
            const url = urls.get(plan.shards[at]);
            var why: source.Failure = .{};
            switch (reading.readShard(url, sink, plan.filter, &why, .{ .at = at, .stride = stride, .start = within })) {
                .done => {
                    _ = self.counts.shards_read.fetchAdd(1, .monotonic);
                    _ = shared.read.fetchAdd(1, .monotonic);
                },
                .closed => return false,
                .failed => {
                    if (sink.isClosed() or shared.stopping.load(.acquire)) return false;
                    _ = self.counts.shards_failed.fetchAdd(1, .monotonic);
                    log.warn(.files, "WebDataset shard '{s}' skipped: {s}", .{ url, why.text() });
                    shared.noteFailure(url, &why, at);
                },
            }
        }
        return true;
    }

    fn lockDescribed(self: *WdsSource) void {
        while (self.described_lock.cmpxchgWeak(false, true, .acquire, .monotonic) != null) std.atomic.spinLoopHint();
    }

    fn unlockDescribed(self: *WdsSource) void {
        self.described_lock.store(false, .release);
    }

    /// Names item `seq` for `describeItem`; called as the item is put.
    pub fn remember(self: *WdsSource, seq: u64, url: []const u8, key: []const u8) void {
        self.lockDescribed();
        defer self.unlockDescribed();
        const slot = &self.described[seq % self.described.len];
        var w: Io.Writer = .fixed(&slot.text);
        w.print("{s}#{s}", .{ url, key }) catch {};
        slot.len = @intCast(w.buffered().len);
        slot.seq = seq;
    }

    /// The shard URL and key of item `seq`, while it is among the last
    /// `described_max` items streamed.
    pub fn describeItem(self: *WdsSource, seq: u64, w: *Io.Writer) Io.Writer.Error!void {
        self.lockDescribed();
        defer self.unlockDescribed();
        const slot = &self.described[seq % self.described.len];
        if (slot.seq == seq) return w.writeAll(slot.text[0..slot.len]);
        try w.print("sample {d} of '{s}'", .{ seq, self.pattern });
    }

    pub fn describe(self: *const WdsSource, w: *Io.Writer) Io.Writer.Error!void {
        try w.print("WebDataset '{s}'", .{self.pattern});
    }
};

/// DATAGO_MAX_RETRIES, capped at http.retries_limit; 3 when unset or unreadable.
fn retriesMax() u8 {
    const text = runtime.getenv("DATAGO_MAX_RETRIES") orelse return 3;
    const n = std.fmt.parseUnsigned(u8, text, 10) catch return 3;
    return @min(n, http.retries_limit);
}

/// Where a lane's items go: straight into the reader stage (one lane), or
/// into the lane's queue for the merger.
const Sink = union(enum) {
    output: *Output,
    lane: struct { lanes: *shard_lanes.Lanes, index: usize },

    /// `after`: where the lane stands once `item` is taken.
    fn put(sink: Sink, item: source.Item, after: LanePosition) error{Closed}!void {
        return switch (sink) {
            .output => |o| o.put(0, item, after),
            .lane => |l| l.lanes.put(l.index, item, after),
        };
    }

    fn isClosed(sink: Sink) bool {
        return switch (sink) {
            .output => |o| o.stage.isClosed(),
            .lane => |l| l.lanes.isClosed(),
        };
    }

    /// The stream cannot go on (a lane's reader could not be made).
    fn fail(sink: Sink, text: []const u8) void {
        switch (sink) {
            .output => |o| o.stage.fail("{s}", .{text}),
            .lane => |l| l.lanes.close(),
        }
    }
};

/// The stage's side of the stream, on the reader thread: every item enters
/// the reader stage here, through the shuffle buffer, which remembers its
/// shard and key under the sequence number it is put at; and here the
/// lanes' positions are followed and checkpointed at each block start.
const Output = struct {
    stage: *prefetch.Prefetch,
    shuffle: shuffle_buffer.Sink(WdsSource),
    /// Per lane: where it stands after the last item taken from it.
    lanes: []LanePosition,
    retained: *wds_checkpoint.Retained,

    fn put(o: *Output, lane: usize, item: source.Item, after: LanePosition) error{Closed}!void {
        // Only this thread puts, so put_seq is the block's first seq.
        if (o.shuffle.atBlockStart()) o.retained.record(o.stage.put_seq, o.shuffle.block, @intCast(lane), o.lanes);
        o.lanes[lane] = after;
        return o.shuffle.put(o.stage, item, item.source_name, item.origin);
    }

    /// The stream completed: the checkpoint at its end resumes to nothing.
    fn finish(o: *Output) void {
        for (o.lanes) |*lane| lane.done = true;
        o.retained.record(o.stage.put_seq, o.shuffle.block, 0, o.lanes);
    }
};

/// What the lanes of one stream share: the HTTP client and its watchdog
/// (both thread-safe), and the failure tally.
const Shared = struct {
    gpa: Allocator,
    io: Io,
    owner: *WdsSource,
    watchdog: http.Watchdog = undefined,
    watchdog_thread: ?std.Thread = null,
    client: http.Client = undefined,
    client_ready: bool = false,
    ca_failure: ?[]const u8 = null,
    /// The shard cache (`cache_dir`), used by every lane.
    cache: ?shard_cache.Cache = null,
    stopping: std.atomic.Value(bool) = .init(false),
    /// Shards this pass read to their end, and shards it gave up on. A
    /// resumed pass reads only what was left, so "every shard failed" is
    /// judged on these, not on the plan's length.
    read: std.atomic.Value(u64) = .init(0),
    failed: std.atomic.Value(u64) = .init(0),
    logged_groups: std.atomic.Value(u32) = .init(0),
    failure_lock: Io.Mutex = .init,
    first_failure: source.Failure = .{},
    first_failed_url: []const u8 = "",
    first_failed_position: usize = std.math.maxInt(usize),

    /// Makes the HTTP client when any planned shard is http(s).
    fn start(shared: *Shared, shards: []const u32) error{NoThread}!void {
        const urls = &shared.owner.urls.?;
        const any_http = for (shards) |i| {
            if (isHttp(urls.get(i))) break true;
        } else false;
        if (!any_http) return;
        shared.watchdog = .init(shared.io);
        const period = http.Watchdog.periodFor(shared.owner.options.read_timeout_ms);
        shared.watchdog_thread = std.Thread.spawn(.{ .stack_size = http.Watchdog.stack_bytes }, http.Watchdog.run, .{ &shared.watchdog, period }) catch return error.NoThread;
        shared.client.init(shared.gpa, shared.io, &shared.watchdog, shared.owner.options);
        shared.client_ready = true;
        if (shared.owner.ca_bundle) |path| shared.client.useCaBundle(path) catch |err| {
            shared.ca_failure = @errorName(err);
        };
    }

    fn deinit(shared: *Shared) void {
        if (shared.cache) |*c| c.close();
        if (shared.client_ready) shared.client.deinit();
        if (shared.watchdog_thread) |t| {
            shared.watchdog.stop();
            t.join();
        }
    }

    /// The stage's interrupt: every open body fails now (error.Stopped)
    /// instead of at its read timeout. Does not block.
    fn interrupt(context: *anyopaque) void {
        const shared: *Shared = @ptrCast(@alignCast(context));
        shared.stopping.store(true, .release);
        if (shared.client_ready) {
            shared.client.stop();
            _ = shared.watchdog.interruptAll();
        }
    }

    /// Keeps the failure of the earliest planned shard, whichever lane
    /// finished first: the message does not depend on timing.
    fn noteFailure(shared: *Shared, url: []const u8, why: *const source.Failure, position: usize) void {
        shared.failure_lock.lockUncancelable(shared.io);
        defer shared.failure_lock.unlock(shared.io);
        _ = shared.failed.fetchAdd(1, .monotonic);
        if (position < shared.first_failed_position) {
            shared.first_failure = why.*;
            shared.first_failed_url = url;
            shared.first_failed_position = position;
        }
    }
};

fn isHttp(url: []const u8) bool {
    return std.mem.startsWith(u8, url, "http://") or std.mem.startsWith(u8, url, "https://");
}

/// One lane's buffers and readers (large: kept off the stack).
const Reading = struct {
    gpa: Allocator,
    io: Io,
    shared: *Shared,
    owner: *WdsSource,
    window: [tar.window_bytes]u8,
    tar_reader: tar.Reader,
    file_buffer: [file_buffer_bytes]u8,
    http_buffer: [http_buffer_bytes]u8,
    body: http.Body,
    attributes: std.ArrayList(u8),
    fill: shard_cache.Fill,

    const Outcome = enum { done, failed, closed };
    const Transport = enum { file, http };

    /// Which planned shard a lane reads, and from where.
    const Cursor = struct {
        at: usize,
        stride: usize,
        start: tar.Start,

        /// A plain shard is entered at the offset; gzip is read from its
        /// start (`tar.Start`).
        fn seekOffset(c: Cursor) u64 {
            return if (c.start.gzip) 0 else c.start.offset;
        }
    };

    fn create(shared: *Shared) Allocator.Error!*Reading {
        const r = try shared.gpa.create(Reading);
        r.gpa = shared.gpa;
        r.io = shared.io;
        r.shared = shared;
        r.owner = shared.owner;
        r.attributes = .empty;
        r.fill = .{};
        return r;
    }

    fn destroy(r: *Reading) void {
        r.attributes.deinit(r.gpa);
        r.gpa.destroy(r);
    }

    fn readShard(r: *Reading, url: []const u8, sink: Sink, filter: shard_split.Filter, why: *source.Failure, cursor: Cursor) Outcome {
        if (isHttp(url)) {
            const shared = r.shared;
            if (shared.cache) |*cache| if (cache.lookup(url, &r.file_buffer)) |found| {
                var hit = found;
                defer hit.close(r.io);
                var cached = hit.reader(r.io, &r.file_buffer);
                cached.seekTo(hit.data_offset + cursor.seekOffset()) catch |err| {
                    _ = why.set("cached copy: cannot seek to byte {d}: {s}", .{ cursor.seekOffset(), @errorName(err) }) catch {};
                    return .failed;
                };
                const outcome = r.readTar(&cached.interface, url, sink, filter, why, .file, cursor);
                if (outcome == .failed) if (cached.err) |err| {
                    _ = why.set("cached copy: read failed: {s}", .{@errorName(err)}) catch {};
                };
                return outcome;
            };
            if (shared.ca_failure) |reason| {
                _ = why.set("source_config.ca_bundle: cannot load '{s}' ({s})", .{ r.owner.ca_bundle.?, reason }) catch {};
                return .failed;
            }
            r.body.openAt(&shared.client, url, &r.http_buffer, cursor.seekOffset()) catch |err| {
                httpFailure(why, err, &r.body.diagnostics);
                return .failed;
            };
            defer r.body.close();
            // A shard read from an offset is not whole: not for the cache.
            const tee = shared.cache != null and cursor.start.offset == 0;
            const input = if (tee) r.fill.begin(&shared.cache.?, url, &r.body.interface, r.body.total) else &r.body.interface;
            const outcome = r.readTar(input, url, sink, filter, why, .http, cursor);
            if (tee) r.fill.end(outcome == .done);
            return outcome;
        }
        const path = if (std.mem.startsWith(u8, url, "file://")) url["file://".len..] else url;
        const file = Io.Dir.cwd().openFile(r.io, path, .{}) catch |err| {
            _ = why.set("cannot open: {s}", .{@errorName(err)}) catch {};
            return .failed;
        };
        defer file.close(r.io);
        var file_reader = file.readerStreaming(r.io, &r.file_buffer);
        file_reader.seekTo(cursor.seekOffset()) catch |err| {
            _ = why.set("cannot seek to byte {d}: {s}", .{ cursor.seekOffset(), @errorName(err) }) catch {};
            return .failed;
        };
        const outcome = r.readTar(&file_reader.interface, url, sink, filter, why, .file, cursor);
        if (outcome == .failed) if (file_reader.err) |err| {
            _ = why.set("read failed: {s}", .{@errorName(err)}) catch {};
        };
        return outcome;
    }

    fn readTar(
        r: *Reading,
        input: *Io.Reader,
        url: []const u8,
        sink: Sink,
        filter: shard_split.Filter,
        why: *source.Failure,
        transport: Transport,
        cursor: Cursor,
    ) Outcome {
        r.tar_reader.initAt(input, &r.window, cursor.start) catch |err| {
            r.tarFailure(why, err, transport);
            return .failed;
        };
        var grouper: wds_group.Grouper = .init(&r.tar_reader, .{
            .reference_image_type = r.owner.reference_image_type,
            .filter = filter,
        });
        defer grouper.deinit(r.gpa);
        while (true) {
            const group = grouper.next(r.gpa) catch |err| {
                switch (err) {
                    error.OutOfMemory => _ = why.set("out of memory", .{}) catch {},
                    else => |tar_err| r.tarFailure(why, tar_err, transport),
                }
                return .failed;
            } orelse return .done;
            if (group.problem) |problem| {
                r.skipGroup(url, group, problem);
                continue;
            }
            const item = r.makeItem(group, url) catch {
                _ = why.set("out of memory for a sample of {d} bytes", .{group.image().?.data.len}) catch {};
                return .failed;
            };
            const after: LanePosition = if (grouper.resumeOffset()) |offset|
                .{ .shard = @intCast(cursor.at), .offset = offset, .gzip = r.tar_reader.compression == .gzip }
            else
                .{ .shard = @intCast(cursor.at + cursor.stride) };
            sink.put(item, after) catch |err| switch (err) {
                error.Closed => return .closed,
            };
        }
    }

    fn skipGroup(r: *Reading, url: []const u8, group: wds_group.Group, problem: wds_group.Problem) void {
        const counter = switch (problem) {
            .no_image => &r.owner.counts.groups_without_image,
            .too_large => &r.owner.counts.groups_too_large,
        };
        _ = counter.fetchAdd(1, .monotonic);
        const logged = r.shared.logged_groups.fetchAdd(1, .monotonic) + 1;
        if (logged <= logged_groups_max) {
            log.warn(.files, "WebDataset sample '{s}' in '{s}' skipped: {s}", .{ group.key, url, switch (problem) {
                .no_image => "no image member of the reference_image_type",
                .too_large => "more members or bytes than a sample may hold",
            } });
        } else if (logged == logged_groups_max + 1) {
            log.warn(.files, "more than {d} WebDataset samples skipped in this pass; further ones are only counted", .{logged_groups_max});
        }
    }

    /// One allocation for image bytes, id, attributes JSON and additional
    /// images (named by their path in the tar); one for the list of those.
    fn makeItem(r: *Reading, group: wds_group.Group, url: []const u8) Allocator.Error!source.Item {
        const image = group.image().?;
        const others = group.entries[1..];
        r.attributes.clearRetainingCapacity();
        try writeAttributes(r.gpa, &r.attributes, others);
        const key = group.key;
        var total = image.data.len + key.len + r.attributes.items.len;
        var additional_count: usize = 0;
        for (others) |entry| if (entry.role == .additional_image) {
            total += entry.path.len + entry.data.len;
            additional_count += 1;
        };
        const backing = try r.gpa.alloc(u8, total);
        errdefer r.gpa.free(backing);
        const additional = try r.gpa.alloc(source.Item.Named, additional_count);
        var at: usize = 0;
        const bytes = copyInto(backing, &at, image.data);
        const key_copy = copyInto(backing, &at, key);
        const attributes = copyInto(backing, &at, r.attributes.items);
        var i: usize = 0;
        for (others) |entry| if (entry.role == .additional_image) {
            additional[i] = .{ .name = copyInto(backing, &at, entry.path), .bytes = copyInto(backing, &at, entry.data) };
            i += 1;
        };
        std.debug.assert(at == total and i == additional_count);
        return .{
            .bytes = bytes,
            .kind = .webdataset,
            .id = .{ .plain = key_copy[key.len - group.name().len ..] },
            .source_name = url,
            .origin = key_copy,
            .attributes_json = attributes,
            .additional = additional,
            .backing = backing,
            .additional_backing = additional,
        };
    }

    fn tarFailure(r: *Reading, why: *source.Failure, err: tar.Error, transport: Transport) void {
        if (err == error.ReadFailed and transport == .http) {
            httpFailure(why, r.body.failure, &r.body.diagnostics);
            return;
        }
        const d = r.tar_reader.diagnostics;
        _ = why.set("{s} at byte {d}: {s}", .{ @errorName(err), d.offset, d.reason.text() }) catch {};
    }
};

fn copyInto(backing: []u8, at: *usize, data: []const u8) []const u8 {
    const out = backing[at.*..][0..data.len];
    @memcpy(out, data);
    at.* += data.len;
    return out;
}

fn httpFailure(why: *source.Failure, err: http.Error, d: *const http.Diagnostics) void {
    _ = switch (err) {
        error.HttpStatus => why.set("HTTP status {d}", .{d.status}),
        error.RetriesExhausted => why.set("retries exhausted (last: {s}{s}{s}, status {d})", .{
            @tagName(d.cause), if (d.detail.len > 0) " " else "", d.detail, d.status,
        }),
        else => why.set("{s} ({s}{s}{s})", .{ @errorName(err), @tagName(d.cause), if (d.detail.len > 0) " " else "", d.detail }),
    } catch {};
}

/// `{"<ext>": "<text>", ...}` for the attribute members, first of each
/// extension; members that are not UTF-8 are left out (DEBUG).
pub fn writeAttributes(gpa: Allocator, out: *std.ArrayList(u8), entries: []const wds_group.Entry) Allocator.Error!void {
    var allocating: Io.Writer.Allocating = .fromArrayList(gpa, out);
    defer out.* = allocating.toArrayList();
    const w = &allocating.writer;
    w.writeByte('{') catch return error.OutOfMemory;
    var written: usize = 0;
    for (entries, 0..) |entry, i| {
        if (entry.role != .attribute) continue;
        const duplicate = for (entries[0..i]) |before| {
            if (before.role == .attribute and std.mem.eql(u8, before.extension, entry.extension)) break true;
        } else false;
        if (duplicate) continue;
        if (!std.unicode.utf8ValidateSlice(entry.data)) {
            log.debug(.files, "WebDataset member '{s}' is not UTF-8 text: left out of attributes", .{entry.path});
            continue;
        }
        if (allocating.writer.buffered().len + entry.data.len > attributes_bytes_max) continue;
        if (written > 0) w.writeByte(',') catch return error.OutOfMemory;
        std.json.Stringify.encodeJsonString(entry.extension, .{}, w) catch return error.OutOfMemory;
        w.writeByte(':') catch return error.OutOfMemory;
        std.json.Stringify.encodeJsonString(entry.data, .{}, w) catch return error.OutOfMemory;
        written += 1;
    }
    w.writeByte('}') catch return error.OutOfMemory;
}

const testing = std.testing;

test "attributes: one JSON string per text extension, first wins, non-UTF-8 left out" {
    var out: std.ArrayList(u8) = .empty;
    defer out.deinit(testing.allocator);
    const entries = [_]wds_group.Entry{
        .{ .path = "a/x.json", .extension = "json", .role = .attribute, .data = "{\"k\": \"v\"}" },
        .{ .path = "a/x.png", .extension = "png", .role = .additional_image, .data = "\x89PNG" },
        .{ .path = "a/x.cls", .extension = "cls", .role = .attribute, .data = "7\n" },
        .{ .path = "a/x.b.json", .extension = "json", .role = .attribute, .data = "second" },
        .{ .path = "a/x.txt", .extension = "txt", .role = .attribute, .data = "\xff\xfe" },
    };
    try writeAttributes(testing.allocator, &out, &entries);
    try testing.expectEqualStrings("{\"json\":\"{\\\"k\\\": \\\"v\\\"}\",\"cls\":\"7\\n\"}", out.items);
    out.clearRetainingCapacity();
    try writeAttributes(testing.allocator, &out, &.{});
    try testing.expectEqualStrings("{}", out.items);
}

comptime {
    std.debug.assert(config_mod.headers_max <= http.extra_headers_max);
    std.debug.assert(described_bytes_max <= std.math.maxInt(u8));
}

fn testTar(gpa: Allocator, files: []const [2][]const u8) ![]u8 {
    var out: Io.Writer.Allocating = .init(gpa);
    defer out.deinit();
    var writer: std.tar.Writer = .{ .underlying_writer = &out.writer };
    for (files) |file| try writer.writeFileBytes(file[0], file[1], .{});
    try writer.finishPedantically();
    return out.toOwnedSlice();
}

/// Streams the shards `root/s-{<range>}.tar` through a stage of 16 items
/// (the whole stream fits: no consumer thread needed); appends
/// "id|attributes;" per item to `out`. Returns the failure text, if any
/// (caller frees).
fn streamShards(root: []const u8, range: []const u8, concurrent: u16, out: *std.ArrayList(u8), counts: *source.ShardCounts) !?[]u8 {
    const gpa = testing.allocator;
    var text: [1024]u8 = undefined;
    const json = try std.fmt.bufPrint(&text, "{{\"source_type\": \"webdataset\", \"source_config\": {{\"url\": \"{s}/s-{{{s}}}.tar\", \"concurrent_downloads\": {d}}}}}", .{ root, range, concurrent });
    var diag: config_mod.Diagnostics = .{};
    var parsed = try config_mod.parse(gpa, json, &diag);
    defer parsed.deinit();
    var src: source.Source = try .init(gpa, &parsed.config, 0);
    defer src.deinit(gpa);
    var failure: source.Failure = .{};
    var canceled: std.atomic.Value(bool) = .init(false);
    _ = try src.prepare(gpa, testing.io, &canceled, &failure);
    var stage = try prefetch.Prefetch.init(gpa, testing.io, 16);
    defer stage.deinit();
    src.stream(gpa, &stage);
    var seq: u64 = 0;
    while (true) : (seq += 1) {
        switch (stage.take(seq)) {
            .item => |taken| {
                var item = taken;
                defer item.release(gpa);
                try out.print(gpa, "{s}|{s}", .{ item.id.plain, item.attributes_json });
                for (item.additional) |a| try out.print(gpa, "+{s}={s}", .{ a.name, a.bytes });
                try out.append(gpa, ';');
                var described: [256]u8 = undefined;
                var w: Io.Writer = .fixed(&described);
                try src.describeItem(seq, &w);
                try testing.expect(std.mem.endsWith(u8, w.buffered(), item.id.plain));
            },
            .end, .stopped => break,
        }
    }
    counts.* = src.shardCounts().?;
    return if (stage.failureText()) |t| try gpa.dupe(u8, t) else null;
}

test "a stream delivers every sample with its attributes and skips broken shards" {
    const gpa = testing.allocator;
    const io = testing.io;
    var tmp = testing.tmpDir(.{});
    defer tmp.cleanup();
    const good = try testTar(gpa, &.{
        .{ "a/x.jpg", "X" },        .{ "a/x.txt", "hi" }, .{ "a/x.seg.png", "P" }, .{ "a/x.cls", "3" },
        .{ "a/n.txt", "no image" }, .{ "a/y.jpg", "Y" },
    });
    defer gpa.free(good);
    try tmp.dir.writeFile(io, .{ .sub_path = "s-0.tar", .data = good });
    try tmp.dir.writeFile(io, .{ .sub_path = "s-1.tar", .data = &@as([700]u8, @splat('x')) });
    try tmp.dir.writeFile(io, .{ .sub_path = "s-2.tar", .data = good[0 .. good.len - 1024] });
    var path_buffer: [std.fs.max_path_bytes]u8 = undefined;
    const root = path_buffer[0..try tmp.dir.realPath(io, &path_buffer)];

    var out: std.ArrayList(u8) = .empty;
    defer out.deinit(gpa);
    var counts: source.ShardCounts = .{};
    // s-0 whole; s-1 not a tar; s-2 cut inside its last block: its whole
    // groups come through, then it fails; s-3 missing.
    const x = "x|{\"txt\":\"hi\",\"cls\":\"3\"}+a/x.seg.png=P;";
    // One shard at a time: shard order. Four lanes: one sample of each
    // live lane in turn (s-0's x, s-2's x, then s-0's y).
    for ([_]u16{ 1, 4, 8 }, [_][]const u8{ x ++ "y|{};" ++ x, x ++ x ++ "y|{};", x ++ x ++ "y|{};" }) |concurrent, expected| {
        out.clearRetainingCapacity();
        const failure = try streamShards(root, "0..3", concurrent, &out, &counts);
        try testing.expectEqual(@as(?[]u8, null), failure);
        try testing.expectEqualStrings(expected, out.items);
        try testing.expectEqual(@as(u64, 4), counts.planned);
        try testing.expectEqual(@as(u64, 1), counts.read);
        try testing.expectEqual(@as(u64, 3), counts.failed);
        try testing.expectEqual(@as(u64, 2), counts.groups_without_image);
    }

    out.clearRetainingCapacity();
    const all_failed = (try streamShards(root, "1,3", 2, &out, &counts)) orelse return error.TestExpectedFailure;
    defer gpa.free(all_failed);
    try testing.expectEqual(@as(usize, 0), out.items.len);
    try testing.expect(std.mem.startsWith(u8, all_failed, "every WebDataset shard failed (2); the first, '"));
    // The earliest planned shard is named, whichever lane failed first.
    try testing.expect(std.mem.indexOf(u8, all_failed, "s-1.tar': ") != null);
}

test "a stopped pass reads no further shard" {
    const gpa = testing.allocator;
    var diag: config_mod.Diagnostics = .{};
    var parsed = try config_mod.parse(gpa,
        \\{"source_type": "webdataset", "source_config": {"url": "/nonexistent/datago/s-{0..9}.tar"}}
    , &diag);
    defer parsed.deinit();
    var src: source.Source = try .init(gpa, &parsed.config, 0);
    defer src.deinit(gpa);
    var failure: source.Failure = .{};
    var canceled: std.atomic.Value(bool) = .init(false);
    _ = try src.prepare(gpa, testing.io, &canceled, &failure);
    var stage = try prefetch.Prefetch.init(gpa, testing.io, 4);
    defer stage.deinit();
    stage.close();
    src.stream(gpa, &stage);
    const counts = src.shardCounts().?;
    try testing.expectEqual(@as(u64, 10), counts.planned);
    try testing.expectEqual(@as(u64, 0), counts.failed + counts.read);
}

/// Writes shards `root/r-<i>.tar` of uneven lengths: shard i holds
/// `lengths[i]` groups `s<i>_<j>`, each an image of a varying size, some
/// with a text member, every seventh without an image (skipped), and
/// shard `gzipped` (if any) gzip-compressed under the same name.
fn writeResumeShards(dir: Io.Dir, lengths: []const usize, gzipped: ?usize) !void {
    const gpa = testing.allocator;
    var arena_state: std.heap.ArenaAllocator = .init(gpa);
    defer arena_state.deinit();
    const arena = arena_state.allocator();
    for (lengths, 0..) |length, i| {
        var files: std.ArrayList([2][]const u8) = .empty;
        for (0..length) |j| {
            const data = try arena.alloc(u8, 1 + (i * 131 + j * 977) % 1500);
            @memset(data, @intCast('a' + j % 26));
            if (j % 7 != 3) try files.append(arena, .{ try std.fmt.allocPrint(arena, "d/s{d}_{d}.jpg", .{ i, j }), data });
            if (j % 2 == 0) try files.append(arena, .{ try std.fmt.allocPrint(arena, "d/s{d}_{d}.txt", .{ i, j }), "t" });
        }
        const archive = try testTar(gpa, files.items);
        defer gpa.free(archive);
        const bytes = if (gzipped == i) try tar.gzipForTest(gpa, archive) else try gpa.dupe(u8, archive);
        defer gpa.free(bytes);
        const name = try std.fmt.allocPrint(arena, "r-{d}.tar", .{i});
        try dir.writeFile(testing.io, .{ .sub_path = name, .data = bytes });
    }
}

/// One WebDataset pass over `json`'s configuration, from `resume_from` if
/// given, into a stage that holds it all; keeps the source for its
/// checkpoints. Test helper (http_test.zig uses it too).
pub const TestPass = struct {
    parsed: config_mod.Parsed,
    src: WdsSource,
    /// "seq:id;" per item, in seq order.
    text: std.ArrayList(u8) = .empty,
    /// Where item `first + k` starts in `text`.
    starts: std.ArrayList(usize) = .empty,
    first: u64 = 0,
    total: u64 = 0,

    pub fn run(json: []const u8, resume_from: ?Checkpoint) !*TestPass {
        const gpa = testing.allocator;
        const pass = try gpa.create(TestPass);
        errdefer gpa.destroy(pass);
        var diag: config_mod.Diagnostics = .{};
        pass.* = .{ .parsed = try config_mod.parse(gpa, json, &diag), .src = undefined };
        errdefer pass.parsed.deinit();
        pass.src = try .init(gpa, &pass.parsed.config, 0);
        errdefer pass.deinit();
        if (resume_from) |cp| pass.src.resumeFrom(try cp.clone(gpa));
        var failure: source.Failure = .{};
        var canceled: std.atomic.Value(bool) = .init(false);
        _ = pass.src.prepare(gpa, testing.io, &canceled, &failure) catch |err| {
            std.debug.print("prepare: {s}\n", .{failure.text()});
            return err;
        };
        var stage = try prefetch.Prefetch.init(gpa, testing.io, 4096);
        defer stage.deinit();
        pass.src.stream(gpa, &stage);
        if (stage.failureText()) |t| {
            std.debug.print("stream: {s}\n", .{t});
            return error.TestUnexpectedResult;
        }
        pass.first = if (resume_from) |cp| cp.seq else 0;
        pass.total = stage.total().?;
        var seq = pass.first;
        while (true) : (seq += 1) {
            var item = switch (stage.take(seq)) {
                .item => |item| item,
                .end => break,
                .stopped => return error.TestUnexpectedResult,
            };
            defer item.release(gpa);
            try pass.starts.append(gpa, pass.text.items.len);
            try pass.text.print(gpa, "{d}:{s};", .{ seq, item.id.plain });
            var described: [256]u8 = undefined;
            var w: Io.Writer = .fixed(&described);
            try pass.src.describeItem(seq, &w);
            try testing.expect(std.mem.endsWith(u8, w.buffered(), item.id.plain));
        }
        try testing.expectEqual(pass.total, seq);
        return pass;
    }

    /// The items from `seq` on.
    pub fn from(pass: *const TestPass, seq: u64) []const u8 {
        if (seq >= pass.total) return "";
        return pass.text.items[pass.starts.items[@intCast(seq - pass.first)]..];
    }

    pub fn deinit(pass: *TestPass) void {
        const gpa = testing.allocator;
        pass.text.deinit(gpa);
        pass.starts.deinit(gpa);
        pass.src.deinit(gpa);
        pass.parsed.deinit();
        gpa.destroy(pass);
    }
};

/// What the checkpoints tried held.
const Entered = struct { mid_shard: usize = 0, mid_gzip: usize = 0 };

/// For many k: the checkpoint at k, resumed by a fresh source, streams
/// exactly the whole pass's items from the checkpoint's seq on.
fn expectExactResumes(json: []const u8, min_items: u64, entered: *Entered) !void {
    const gpa = testing.allocator;
    const whole = try TestPass.run(json, null);
    defer whole.deinit();
    try testing.expect(whole.total >= min_items);
    // Every k for short streams, else a spread that hits block edges.
    var k: u64 = 0;
    while (k <= whole.total) : (k += if (whole.total < 80) 1 else 3) {
        var cp = (try whole.src.checkpointAt(gpa, k)) orelse return error.TestExpectedCheckpoint;
        defer cp.deinit(gpa);
        try testing.expect(cp.seq <= k);
        try testing.expect(k - cp.seq < whole.src.shuffle.blockItems());
        for (cp.lanes) |lane| if (lane.offset > 0) {
            entered.mid_shard += 1;
            entered.mid_gzip += @intFromBool(lane.gzip);
        };
        // Through JSON, as the state travels.
        var json_buffer: [4096]u8 = undefined;
        var w: Io.Writer = .fixed(&json_buffer);
        try cp.writeJson(&w);
        var parsed = try std.json.parseFromSlice(std.json.Value, gpa, w.buffered(), .{});
        defer parsed.deinit();
        var failure: source.Failure = .{};
        var back = try Checkpoint.parse(gpa, parsed.value, &failure);
        defer back.deinit(gpa);
        const resumed = try TestPass.run(json, back);
        defer resumed.deinit();
        try testing.expectEqual(whole.total, resumed.total);
        testing.expectEqualStrings(whole.from(cp.seq), resumed.text.items) catch |err| {
            std.debug.print("resumed at k={d} (checkpoint seq {d})\n", .{ k, cp.seq });
            return err;
        };
    }
    // The end: a checkpoint that resumes to nothing.
    var end = (try whole.src.checkpointAt(gpa, whole.total)).?;
    defer end.deinit(gpa);
    try testing.expectEqual(whole.total, end.seq);
}

test "a resumed stream repeats the uninterrupted one exactly: lanes, shuffle blocks, uneven shards, gzip" {
    var tmp = testing.tmpDir(.{});
    defer tmp.cleanup();
    // About 130 samples: past a few identity blocks of 64.
    try writeResumeShards(tmp.dir, &.{ 29, 2, 47, 15, 0, 33, 27 }, 3);
    var path_buffer: [std.fs.max_path_bytes]u8 = undefined;
    const root = path_buffer[0..try tmp.dir.realPath(testing.io, &path_buffer)];
    var text: [1024]u8 = undefined;
    var entered: Entered = .{};
    for ([_]u16{ 1, 2, 3 }) |lanes| {
        for ([_]u32{ 0, 5, 16 }) |capacity| {
            // No seed with a buffer: the checkpoint carries the drawn one.
            const json = try std.fmt.bufPrint(&text,
                \\{{"source_type": "webdataset", "source_config": {{"url": "{s}/r-{{0..6}}.tar", "concurrent_downloads": {d}, "shuffle_buffer": {d}}}}}
            , .{ root, lanes, capacity });
            expectExactResumes(json, 120, &entered) catch |err| {
                std.debug.print("lanes {d}, shuffle_buffer {d}\n", .{ lanes, capacity });
                return err;
            };
        }
    }
    // Lanes were resumed inside shards, the gzip one included.
    try testing.expect(entered.mid_shard > 100 and entered.mid_gzip > 5);
}

test "a resumed stream repeats the uninterrupted one under a seeded plan and the key-hash filters" {
    var tmp = testing.tmpDir(.{});
    defer tmp.cleanup();
    try writeResumeShards(tmp.dir, &.{ 14, 3, 11, 8 }, null);
    var path_buffer: [std.fs.max_path_bytes]u8 = undefined;
    const root = path_buffer[0..try tmp.dir.realPath(testing.io, &path_buffer)];
    var text: [1024]u8 = undefined;
    const splits = [_][]const u8{
        // Members filtered by the reference's key before grouping.
        "\"rank_split\": \"sample_hash\", \"world_size\": 2, \"rank\": 1",
        // More ranks than shards: groups filtered by their key.
        "\"world_size\": 5, \"rank\": 2",
        "\"random_sampling\": true, \"seed\": 3",
    };
    for (splits) |split| {
        const json = try std.fmt.bufPrint(&text,
            \\{{"source_type": "webdataset", "source_config": {{"url": "{s}/r-{{0..3}}.tar", "concurrent_downloads": 2, "shuffle_buffer": 4, {s}}}}}
        , .{ root, split });
        var entered: Entered = .{};
        expectExactResumes(json, 5, &entered) catch |err| {
            std.debug.print("split {s}\n", .{split});
            return err;
        };
    }
}

test "a checkpoint that does not fit the plan is refused when the pass is prepared" {
    const gpa = testing.allocator;
    var tmp = testing.tmpDir(.{});
    defer tmp.cleanup();
    try writeResumeShards(tmp.dir, &.{ 4, 4, 4 }, null);
    var path_buffer: [std.fs.max_path_bytes]u8 = undefined;
    const root = path_buffer[0..try tmp.dir.realPath(testing.io, &path_buffer)];
    var text: [1024]u8 = undefined;
    const json = try std.fmt.bufPrint(&text,
        \\{{"source_type": "webdataset", "source_config": {{"url": "{s}/r-{{0..2}}.tar", "concurrent_downloads": 2}}}}
    , .{root});
    var lanes = [_]LanePosition{ .{ .shard = 0, .offset = 1024 }, .{ .shard = 1 } };
    const good: Checkpoint = .{ .seq = 3, .block = 0, .block_items = shuffle_buffer.identity_block_items, .shuffle_seed = 0, .shards = 3, .next_lane = 1, .lanes = &lanes };
    const Case = struct { cp: Checkpoint, message: []const u8 };
    var bad_lane = lanes;
    bad_lane[1].shard = 2;
    var outside = lanes;
    outside[1] = .{ .shard = 3, .offset = 512 };
    var finished = lanes;
    finished[1].done = true;
    var cases = [_]Case{
        .{ .cp = good, .message = "" },
        .{ .cp = blk: {
            var c = good;
            c.shards = 4;
            break :blk c;
        }, .message = "'shards' is 4, but this worker plans 3" },
        .{ .cp = blk: {
            var c = good;
            c.lanes = lanes[0..1];
            break :blk c;
        }, .message = "1 'lanes', but concurrent_downloads gives 2" },
        .{ .cp = blk: {
            var c = good;
            c.block_items = 10;
            break :blk c;
        }, .message = "'block_items' is 10" },
        .{ .cp = blk: {
            var c = good;
            c.lanes = &bad_lane;
            break :blk c;
        }, .message = "'lanes[1].shard' 2 is not one of lane 1's shards" },
        .{ .cp = blk: {
            var c = good;
            c.lanes = &outside;
            break :blk c;
        }, .message = "'lanes[1].offset' 512 is inside no planned shard" },
        .{ .cp = blk: {
            var c = good;
            c.lanes = &finished;
            break :blk c;
        }, .message = "'next_lane' 1 is not a live lane" },
    };
    for (&cases) |*case| {
        var diag: config_mod.Diagnostics = .{};
        var parsed = try config_mod.parse(gpa, json, &diag);
        defer parsed.deinit();
        var src: WdsSource = try .init(gpa, &parsed.config, 0);
        defer src.deinit(gpa);
        src.resumeFrom(try case.cp.clone(gpa));
        var failure: source.Failure = .{};
        var canceled: std.atomic.Value(bool) = .init(false);
        const prepared = src.prepare(gpa, testing.io, &canceled, &failure);
        if (case.message.len == 0) {
            _ = try prepared;
            continue;
        }
        try testing.expectError(error.Failed, prepared);
        if (std.mem.indexOf(u8, failure.text(), case.message) == null) {
            std.debug.print("'{s}' lacks '{s}'\n", .{ failure.text(), case.message });
            return error.TestUnexpectedResult;
        }
    }
}
