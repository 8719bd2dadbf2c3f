//! One pass over the data: its worker threads, the ready ring that puts
//! results back in order, and the consumer side that `next` calls.
//!
//! Flow. Worker 0 first prepares the source (sources/source.zig: for files,
//! the listing and this (rank, worker)'s plan); then every worker
//! repeatedly claims the next sequence number, gets that item's bytes from
//! the source (reading it itself, or taking it from the reader stage of a
//! streaming source), processes it (stages/process.zig) and stores the
//! outcome (a sample or a failure) in the ready ring at `seq % capacity`. A worker may
//! claim `seq` only while `seq < head + capacity`, so the ring never
//! overflows, at most `capacity` outcomes wait, and a full ring blocks the
//! workers (backpressure). The consumer takes outcomes at `head` in sequence
//! order, skipping failures, so the delivered order is the plan's order for
//! any thread count.
//!
//! Lifetime. A pass is reference-counted: the loader holds one reference,
//! every worker thread one, and every `next` in progress one. `stop` cancels
//! and returns after a short grace period without joining; the last thread
//! out frees the pass.
const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;

const abi = @import("abi_types.zig");
const config_mod = @import("config.zig");
const decoder = @import("decode/decoder.zig");
const image_process = @import("stages/process.zig");
const batcher_mod = @import("batcher.zig");
const log = @import("log.zig");
const source_mod = @import("sources/source.zig");
const prefetch = @import("sources/prefetch.zig");
const order = source_mod.order;
const runtime = @import("runtime.zig");
const sample_mod = @import("sample.zig");
const stats = @import("stats.zig");
const resume_mod = @import("resume.zig");

const Config = config_mod.Config;

/// How long `stop` waits for workers before leaving them to finish on their
/// own (compatibility.md §2.6: the reference's grace period).
pub const stop_grace_ms = 100;
/// Per-file errors logged individually per pass; later ones are only counted.
const logged_failures_max = 50;
/// max_error_fraction is enforced once this many files were attempted.
const error_fraction_min_attempts = 32;
/// Most outcomes a sleeping consumer lets accumulate before it is woken.
const wake_batch_max = 16;
/// Longest description of an item kept as the example of a failure cause.
const example_bytes_max = 512;

/// The pass whose worker runs on this thread, for the panic handler.
pub threadlocal var current_pass: ?*Pass = null;

pub const Outcome = union(enum) {
    empty,
    ready: *sample_mod.Owned,
    failed,
    /// Consumed before a resume: passed over without reading or decoding.
    skipped,
};

pub const Counters = stats.Counters;

pub const NextResult = union(enum) {
    sample: *sample_mod.Owned,
    end,
    timeout,
    /// The pass failed as a whole; the message is in `failureMessage()`.
    source_error,
    /// A worker died on a safety check: a bug in libdatago.
    internal_error,
};

pub const Pass = struct {
    gpa: Allocator,
    io: Io,
    epoch: u64,
    /// Where the bytes come from; owns its own copies of its configuration
    /// (the pass may outlive its loader).
    source: source_mod.Source,
    /// The reader stage of a streaming source; null for random access.
    stage: ?*prefetch.Prefetch = null,
    /// A copy without the loader's strings (`file.root_path` is emptied).
    config: Config,
    thread_count: u32,
    /// This (rank, worker)'s share of the limit; null = no limit.
    limit: ?u64,
    /// A resumed pass: the items its part had consumed (`resume.Part`; its
    /// bitmap is owned by the pass) are passed over, and delivery starts at
    /// `start_seq`. Null for a pass from the start.
    resumed: ?resume_mod.Part = null,
    /// Samples (and batches) the part had handed out before this pass resumed it.
    delivered_before: u64 = 0,
    batches_before: u64 = 0,
    /// equal_per_rank: the samples this worker must deliver in this pass
    /// (after any resumed part); the pass fails rather than end short.
    equal_target: ?u64 = null,
    /// Items of this worker's share (before equal_per_rank repeats).
    share_items: u64 = 0,
    /// The image configuration with its bucket table, built once per pass.
    transform: image_process.Transform,
    /// Groups delivered samples into batches (batch_size); guarded by
    /// `batch_mutex`, taken before `mutex`.
    batcher: ?batcher_mod.Batcher,
    batch_mutex: Io.Mutex = .init,

    refs: std.atomic.Value(u32),
    /// Polled by the source's preparation, set by stop and by the end of the pass.
    canceled: std.atomic.Value(bool) = .init(false),
    /// A worker hit a safety check (root.zig's panic handler); the pass is lost.
    panicked: std.atomic.Value(bool) = .init(false),

    mutex: Io.Mutex = .init,
    /// Consumers wait here for the outcome at `head`.
    ready_cond: Io.Condition = .init,
    /// Workers wait here for ring space or for the plan.
    work_cond: Io.Condition = .init,
    /// `stop` waits here for the threads to leave.
    exit_cond: Io.Condition = .init,

    // Guarded by `mutex`.
    phase: enum { listing, running, done } = .listing,
    /// The pass reached the end of its data or its limit (not stopped, not failed).
    completed: bool = false,
    /// Items of this worker's sequence; null until a stream has ended.
    items: ?u64 = null,
    /// Next sequence number to hand to a worker.
    dispatched: u64 = 0,
    /// Next sequence number to deliver.
    head: u64 = 0,
    /// Failures among the first `head` items of the plan.
    examined_failed: u64 = 0,
    /// Consecutive filled slots from `head`: what a consumer can take
    /// without waiting.
    ready_run: u64 = 0,
    /// Consumers sleeping on `ready_cond`.
    consumers_waiting: u32 = 0,
    slots: []Outcome,
    counters: Counters = .{},
    /// First example item per failure cause, described (owned), for the final error.
    examples: std.EnumArray(decoder.Cause, ?[]u8) = .initFill(null),
    /// Set once when the pass fails as a whole; reported once by `next`.
    failure_buffer: [1024]u8 = undefined,
    failure_len: ?usize = null,
    /// Which error the caller sees for the failure.
    failure_kind: source_mod.FailureKind = .source,
    failure_reported: bool = false,
    threads_alive: u32 = 0,
    cleanup_counted: bool = false,
    started_ns: u64 = 0,
    /// Where the last progress line left off.
    report: struct { at_ns: u64 = 0, delivered: u64 = 0, bytes: u64 = 0 } = .{},
    /// Per-file errors logged so far (rate limit only; counts live in `counters`).
    logged_failures: std.atomic.Value(u64) = .init(0),

    /// Creates a pass holding one reference (the caller's). Starts nothing.
    pub fn create(gpa: Allocator, config: *const Config, epoch: u64) Allocator.Error!*Pass {
        var source = try source_mod.Source.init(gpa, config, epoch);
        errdefer source.deinit(gpa);
        return createWith(gpa, config, epoch, source, null);
    }

    /// How a pass resumes a part (loader.zig builds it from a state).
    pub const Resume = struct {
        /// Its bitmap is copied.
        part: resume_mod.Part,
        /// The part's remaining limit (resume.Applied.limit).
        limit: ?u64,
        /// The first sequence number to claim: the part's position, or the
        /// earlier checkpoint a streaming source restarts from.
        start_seq: u64,
    };

    /// Creates a pass over a source made by the caller; takes ownership of
    /// `source` on success.
    pub fn createWith(gpa: Allocator, config: *const Config, epoch: u64, source: source_mod.Source, resumption: ?Resume) Allocator.Error!*Pass {
        const pass = try gpa.create(Pass);
        errdefer gpa.destroy(pass);
        var resumed: ?resume_mod.Part = null;
        if (resumption) |r| {
            var part = r.part;
            part.consumed = try gpa.dupe(u8, r.part.consumed);
            part.stream = null;
            part.after_key = null;
            resumed = part;
        }
        errdefer if (resumed) |part| gpa.free(part.consumed);
        const slots = try gpa.alloc(Outcome, config.samples_buffer_size);
        errdefer gpa.free(slots);
        @memset(slots, .empty);
        var transform = try image_process.Transform.init(gpa, config.image);
        errdefer transform.deinit(gpa);
        var copy = config.*;
        copy.file.root_path = "";
        copy.webdataset = .{}; // its strings belong to the loader; the source copied them
        const limit: ?u64 = if (resumption) |r| r.limit else if (config.limit) |l| order.workerLimit(l, config.worker_id, config.num_workers) else null;
        const start_seq: u64 = if (resumption) |r| r.start_seq else 0;
        pass.* = .{
            .gpa = gpa,
            .io = runtime.acquireIo(),
            .epoch = epoch,
            .source = source,
            .config = copy,
            .thread_count = threadCount(config, limit),
            .limit = limit,
            .resumed = resumed,
            .delivered_before = if (resumption) |r| r.part.delivered else 0,
            .batches_before = if (resumption) |r| r.part.batches else 0,
            .dispatched = start_seq,
            .head = start_seq,
            .transform = transform,
            .batcher = if (config.batch_size) |size| .{ .gpa = gpa, .batch_size = size, .drop_last = config.drop_last, .epoch = epoch } else null,
            .refs = .init(1),
            .slots = slots,
            .started_ns = runtime.monotonicNs(),
            .report = .{ .at_ns = runtime.monotonicNs() },
        };
        _ = runtime.live_passes.fetchAdd(1, .monotonic);
        return pass;
    }

    pub fn ref(pass: *Pass) void {
        _ = pass.refs.fetchAdd(1, .monotonic);
    }

    pub fn unref(pass: *Pass) void {
        if (pass.refs.fetchSub(1, .acq_rel) != 1) return;
        pass.destroy();
    }

    fn destroy(pass: *Pass) void {
        const gpa = pass.gpa;
        pass.discardSlots();
        gpa.free(pass.slots);
        for (&pass.examples.values) |example| if (example) |e| gpa.free(e);
        if (pass.stage) |stage| {
            stage.deinit();
            gpa.destroy(stage);
        }
        pass.source.deinit(gpa);
        if (pass.resumed) |part| gpa.free(part.consumed);
        pass.transform.deinit(gpa);
        if (pass.batcher) |*b| b.deinit();
        gpa.destroy(pass);
        _ = runtime.live_passes.fetchSub(1, .release);
        runtime.releaseIo();
    }

    /// Spawns the worker threads. On failure nothing is left running.
    pub fn start(pass: *Pass) error{ OutOfMemory, ThreadSpawnFailed }!void {
        var described: [512]u8 = undefined;
        var w: Io.Writer = .fixed(&described);
        pass.source.describe(&w) catch {};
        log.info(.pipeline, "Using {s} as source {s} ({d} threads)", .{ @tagName(pass.source), w.buffered(), pass.thread_count });
        var spawned: u32 = 0;
        while (spawned < pass.thread_count) : (spawned += 1) {
            pass.ref();
            pass.mutex.lockUncancelable(pass.io);
            pass.threads_alive += 1;
            pass.mutex.unlock(pass.io);
            const thread = std.Thread.spawn(.{ .stack_size = runtime.thread_stack_bytes }, workerMain, .{ pass, spawned }) catch {
                pass.mutex.lockUncancelable(pass.io);
                pass.threads_alive -= 1;
                pass.mutex.unlock(pass.io);
                pass.unref();
                if (spawned == 0) return error.ThreadSpawnFailed;
                // Fewer threads than asked: the pass still completes.
                log.warn(.pipeline, "could only start {d} of {d} worker threads", .{ spawned, pass.thread_count });
                break;
            };
            var name_buffer: [16]u8 = undefined;
            const name = std.fmt.bufPrint(&name_buffer, "datago-w{d}", .{spawned}) catch "datago-w";
            thread.setName(pass.io, name) catch {};
            thread.detach();
        }
    }

    /// Whether the pass has ended (data, limit, stop or failure).
    pub fn isOver(pass: *Pass) bool {
        pass.mutex.lockUncancelable(pass.io);
        defer pass.mutex.unlock(pass.io);
        return pass.phase == .done;
    }

    /// Cancels the pass: workers stop claiming work, waiting consumers get
    /// `end`, queued outcomes are freed. Waits up to stop_grace_ms for the
    /// threads; those still busy are counted in runtime.live_cleanups until
    /// they leave. Idempotent.
    pub fn stop(pass: *Pass) void {
        pass.mutex.lockUncancelable(pass.io);
        defer pass.mutex.unlock(pass.io);
        pass.cancelLocked();
        const deadline = Io.Timeout.toDeadline(.{ .duration = .{ .raw = .fromMilliseconds(stop_grace_ms), .clock = .awake } }, pass.io);
        while (pass.threads_alive > 0) {
            pass.exit_cond.waitTimeout(pass.io, &pass.mutex, deadline) catch break;
        }
        if (pass.threads_alive > 0 and !pass.cleanup_counted) {
            pass.cleanup_counted = true;
            const live = runtime.live_cleanups.fetchAdd(1, .monotonic) + 1;
            log.warn(.pipeline, "native workers still busy after the stop grace period; they finish on their own (live cleanup threads: {d})", .{live});
        }
    }

    fn cancelLocked(pass: *Pass) void {
        pass.canceled.store(true, .release);
        pass.phase = .done;
        if (pass.stage) |stage| stage.close();
        pass.discardSlots();
        pass.ready_cond.broadcast(pass.io);
        pass.work_cond.broadcast(pass.io);
    }

    fn discardSlots(pass: *Pass) void {
        pass.ready_run = 0;
        for (pass.slots) |*slot| {
            switch (slot.*) {
                .ready => |s| s.destroy(),
                .empty, .failed, .skipped => {},
            }
            slot.* = .empty;
        }
    }

    /// Waits for the next sample in plan order. `timeout_ms < 0` waits
    /// without a deadline. Threadsafe; each sample goes to one caller.
    pub fn next(pass: *Pass, timeout_ms: i64) NextResult {
        const io = pass.io;
        var wake_workers = false;
        // After unlocking (defers run in reverse): see `claim`.
        defer if (wake_workers) pass.work_cond.broadcast(io);
        pass.mutex.lockUncancelable(io);
        defer pass.mutex.unlock(io);
        const wait_started = if (pass.config.collect_stats) runtime.monotonicNs() else 0;
        const deadline: Io.Timeout = if (timeout_ms < 0) .none else Io.Timeout.toDeadline(.{ .duration = .{
            .raw = .fromMilliseconds(timeout_ms),
            .clock = .awake,
        } }, io);
        while (true) {
            if (pass.panicked.load(.acquire)) return .internal_error;
            if (pass.failure_len != null and !pass.failure_reported) {
                pass.failure_reported = true;
                return .source_error;
            }
            if (pass.phase == .done) return .end;
            if (pass.phase == .running) {
                if (pass.limit) |limit| if (pass.counters.delivered >= limit) {
                    pass.finishLocked();
                    continue;
                };
                const slot = &pass.slots[pass.head % pass.slots.len];
                switch (slot.*) {
                    .ready => |s| {
                        slot.* = .empty;
                        pass.head += 1;
                        pass.ready_run -= 1;
                        wake_workers = pass.workersShouldWakeLocked();
                        pass.counters.delivered += 1;
                        pass.counters.padded += s.c.padded;
                        pass.counters.bytes_delivered += s.c.image.data_len;
                        if (pass.config.collect_stats) pass.counters.consumer_wait.add(runtime.monotonicNs() - wait_started);
                        pass.reportProgressLocked();
                        return .{ .sample = s };
                    },
                    .skipped => {
                        slot.* = .empty;
                        pass.head += 1;
                        pass.ready_run -= 1;
                        wake_workers = pass.workersShouldWakeLocked();
                        continue;
                    },
                    .failed => {
                        slot.* = .empty;
                        pass.head += 1;
                        pass.ready_run -= 1;
                        pass.examined_failed += 1;
                        wake_workers = pass.workersShouldWakeLocked();
                        // Judged in delivery order, so the verdict does not
                        // depend on which worker finished first.
                        if (pass.config.max_error_fraction) |fraction| {
                            if (pass.head >= error_fraction_min_attempts and exceeds(pass.examined_failed, pass.head, fraction)) {
                                pass.failLocked("max_error_fraction {d} exceeded", .{fraction});
                                pass.cancelLocked();
                            }
                        }
                        continue;
                    },
                    .empty => if (pass.items) |items| if (pass.head >= items) {
                        pass.finishLocked();
                        continue;
                    },
                }
            }
            pass.consumers_waiting += 1;
            defer pass.consumers_waiting -= 1;
            // What delivery in plan order costs: time waited for the item at
            // `head` while a later one was ready (completion order would
            // have handed that one out). Measured only when about to wait.
            const behind_head = pass.config.collect_stats and pass.laterReadyLocked();
            const before_ns = if (behind_head) runtime.monotonicNs() else 0;
            defer if (behind_head) {
                pass.counters.ordered_wait_ns += runtime.monotonicNs() - before_ns;
            };
            pass.ready_cond.waitTimeout(io, &pass.mutex, deadline) catch return .timeout;
        }
    }

    fn laterReadyLocked(pass: *Pass) bool {
        var seq = pass.head + 1;
        while (seq < pass.dispatched) : (seq += 1) {
            if (pass.slots[seq % pass.slots.len] == .ready) return true;
        }
        return false;
    }

    /// Logs an INFO line with throughput and failures every log_interval_s.
    fn reportProgressLocked(pass: *Pass) void {
        const interval_s = pass.config.log_interval_s;
        if (interval_s <= 0 or !log.enabled(.info)) return;
        const t = runtime.monotonicNs();
        const interval_ns: u64 = @intFromFloat(interval_s * std.time.ns_per_s);
        if (t - pass.report.at_ns < interval_ns) return;
        const c = &pass.counters;
        const seconds = @as(f64, @floatFromInt(t - pass.report.at_ns)) / std.time.ns_per_s;
        const samples = c.delivered - pass.report.delivered;
        const megabytes = @as(f64, @floatFromInt(c.bytes_delivered - pass.report.bytes)) / 1e6;
        log.info(.pipeline, "pass {d}: {d} samples delivered ({d:.1} img/s, {d:.1} MB/s over the last {d:.0} s), {d} failed (most frequent: {s})", .{
            pass.epoch, c.delivered, @as(f64, @floatFromInt(samples)) / seconds,                   megabytes / seconds,
            seconds,    c.failed,    if (c.failed > 0) @tagName(mostFrequentCause(c)) else "none",
        });
        pass.report = .{ .at_ns = t, .delivered = c.delivered, .bytes = c.bytes_delivered };
    }

    pub const BatchResult = union(enum) {
        batch: *batcher_mod.Batch,
        end,
        timeout,
        source_error,
        internal_error,
    };

    /// Waits for the next batch (batch_size set). Samples are taken in plan
    /// order and grouped by shape; see batcher.zig. Threadsafe.
    pub fn nextBatch(pass: *Pass, timeout_ms: i64) Allocator.Error!BatchResult {
        pass.batch_mutex.lockUncancelable(pass.io);
        defer pass.batch_mutex.unlock(pass.io);
        const b = &pass.batcher.?;
        const deadline_ns: ?u64 = if (timeout_ms < 0) null else runtime.monotonicNs() + @as(u64, @intCast(timeout_ms)) * std.time.ns_per_ms;
        while (true) {
            if (b.batches_max == null) b.batches_max = pass.equalBatches();
            if (b.popReady()) |batch| {
                b.handedOut();
                return .{ .batch = batch };
            }
            if (b.finished) return .end;
            const remaining_ms: i64 = if (deadline_ns) |d| @intCast((d -| runtime.monotonicNs()) / std.time.ns_per_ms) else -1;
            switch (pass.next(remaining_ms)) {
                .sample => |s| if (try b.add(s)) |batch| {
                    b.handedOut();
                    return .{ .batch = batch };
                },
                .end => try b.finish(),
                .timeout => return .timeout,
                .source_error => {
                    b.finished = true;
                    return .source_error;
                },
                .internal_error => return .internal_error,
            }
        }
    }

    /// equal_per_rank in batch mode: the batches this pass hands out, once
    /// the equal sample count is known (null before, or without the rule):
    /// floor (drop) or ceil (pad) of the worker's epoch count over
    /// batch_size, less those handed out before a resume.
    fn equalBatches(pass: *Pass) ?u64 {
        const mode = pass.config.equal_per_rank orelse return null;
        pass.mutex.lockUncancelable(pass.io);
        defer pass.mutex.unlock(pass.io);
        if (pass.phase == .listing) return null;
        const target = pass.equal_target orelse return null;
        const size: u64 = pass.config.batch_size.?;
        const samples = target + pass.delivered_before;
        const total = switch (mode) {
            .drop => samples / size,
            .pad => (samples + size - 1) / size,
        };
        return total -| pass.batches_before;
    }

    /// The end of the data or of the limit: decide between a clean end and a
    /// source error, and release the workers.
    fn finishLocked(pass: *Pass) void {
        const c = &pass.counters;
        pass.completed = true;
        if (pass.equal_target) |target| {
            if (c.delivered < target) {
                pass.failLocked("equal_per_rank: this worker's share ended after {d} samples, short of the {d} every rank must yield (lower limit, or check the failed items)", .{ c.delivered, target });
                pass.cancelLocked();
                return;
            }
            // The share's items never examined: dropped to keep ranks equal.
            if (pass.head < pass.share_items) c.equal_dropped = pass.share_items - pass.head;
        }
        if (c.delivered + pass.delivered_before == 0 and c.failed > 0) {
            pass.failLocked("every file failed", .{});
        } else if (pass.config.max_error_fraction != null and
            exceeds(pass.examined_failed, pass.head, pass.config.max_error_fraction.?))
        {
            pass.failLocked("max_error_fraction {d} exceeded", .{pass.config.max_error_fraction.?});
        } else if (c.failed > 0) {
            log.warn(.pipeline, "pass {d} over: {d} samples delivered, {d} of {d} files failed (most frequent cause: {s})", .{
                pass.epoch, c.delivered, c.failed, c.attempted, @tagName(mostFrequentCause(c)),
            });
        }
        pass.cancelLocked();
    }

    fn failLocked(pass: *Pass, comptime fmt: []const u8, args: anytype) void {
        if (pass.failure_len != null) return;
        var w: Io.Writer = .fixed(&pass.failure_buffer);
        w.print(fmt, args) catch {};
        const c = &pass.counters;
        if (c.failed > 0) {
            const cause = mostFrequentCause(c);
            w.print(": {d} of {d} files failed; most frequent cause: {s} ({d})", .{ c.failed, c.attempted, @tagName(cause), c.by_cause.get(cause) }) catch {};
            if (pass.examples.get(cause)) |example| w.print(", e.g. '{s}'", .{example}) catch {};
        }
        pass.failure_len = w.buffered().len;
        log.err(.pipeline, "{s}", .{w.buffered()});
    }

    /// The message of a failed pass. Valid while the caller holds a reference.
    pub fn failureMessage(pass: *Pass) []const u8 {
        return pass.failure_buffer[0 .. pass.failure_len orelse 0];
    }

    /// Records the failure of the source as a whole (e.g. a missing root).
    fn failListing(pass: *Pass, comptime fmt: []const u8, args: anytype) void {
        pass.mutex.lockUncancelable(pass.io);
        defer pass.mutex.unlock(pass.io);
        pass.failLocked(fmt, args);
        pass.cancelLocked();
    }

    fn workerMain(pass: *Pass, index: u32) void {
        current_pass = pass;
        var scratch: source_mod.Scratch = .{};
        if (index == 0) pass.prepareSource();
        var next_seq = pass.claim(null);
        while (next_seq) |seq| {
            const outcome = pass.process(seq, &scratch);
            next_seq = pass.claim(.{ .seq = seq, .result = outcome });
        }
        // Free before leaving: the last reference may free the pass, and with
        // it the promise that nothing of this pass is still allocated.
        scratch.deinit(pass.gpa);
        current_pass = null;
        pass.leave();
    }

    fn leave(pass: *Pass) void {
        pass.mutex.lockUncancelable(pass.io);
        pass.threads_alive -= 1;
        if (pass.threads_alive == 0) {
            pass.exit_cond.broadcast(pass.io);
            if (pass.cleanup_counted) _ = runtime.live_cleanups.fetchSub(1, .monotonic);
        }
        pass.mutex.unlock(pass.io);
        pass.unref();
    }

    fn prepareSource(pass: *Pass) void {
        var failure: source_mod.Failure = .{};
        const prepared = pass.source.prepare(pass.gpa, pass.io, &pass.canceled, &failure) catch |err| {
            switch (err) {
                error.Failed => {
                    pass.mutex.lockUncancelable(pass.io);
                    if (pass.failure_len == null) pass.failure_kind = failure.kind;
                    pass.mutex.unlock(pass.io);
                    pass.failListing("{s}", .{failure.text()});
                },
                error.Canceled => {},
            }
            return;
        };
        // The stage must exist before any worker may claim, and the reader
        // must start only after `items` is set here: a short stream could
        // otherwise end, set `items`, and have it overwritten with null.
        const stage: ?*prefetch.Prefetch = if (pass.source.streams()) pass.createStage() catch {
            pass.failListing("out of memory for the reader stage of {s}", .{@tagName(pass.source)});
            return;
        } else null;
        defer if (stage != null) pass.startReader() catch
            pass.failListing("cannot start the reader thread of {s}", .{@tagName(pass.source)});
        pass.mutex.lockUncancelable(pass.io);
        defer pass.mutex.unlock(pass.io);
        pass.stage = stage;
        // Stopped while preparing: the reader must find its stage closed.
        if (pass.phase == .done) if (stage) |st| st.close();
        pass.items = prepared.items;
        if (prepared.equal_samples) |target| {
            const remaining = target -| pass.delivered_before;
            pass.limit = if (pass.limit) |l| @min(l, remaining) else remaining;
            pass.equal_target = pass.limit;
            pass.share_items = prepared.share_items;
        } else if (pass.config.equal_per_rank != null) {
            pass.equal_target = pass.limit;
        }
        pass.counters.listed = prepared.listed;
        pass.counters.skipped = prepared.skipped;
        pass.counters.listing_ns = prepared.listing_ns;
        if (pass.limit) |limit| if (prepared.items) |items| if (items < limit)
            log.info(.pipeline, "this worker's share ({d} items) is smaller than its limit ({d})", .{ items, limit });
        if (pass.phase == .listing) pass.phase = .running;
        pass.work_cond.broadcast(pass.io);
        pass.ready_cond.broadcast(pass.io);
    }

    /// The reader stage of a streaming source: at most
    /// prefetch_buffer_size items read ahead of the workers.
    fn createStage(pass: *Pass) Allocator.Error!*prefetch.Prefetch {
        const stage = try pass.gpa.create(prefetch.Prefetch);
        errdefer pass.gpa.destroy(stage);
        stage.* = try prefetch.Prefetch.init(pass.gpa, pass.io, pass.config.prefetch_buffer_size);
        return stage;
    }

    /// Starts the reader thread, which runs the source's `stream` into the
    /// stage. It counts as one of the pass's threads for `stop`.
    fn startReader(pass: *Pass) error{ThreadSpawnFailed}!void {
        pass.mutex.lockUncancelable(pass.io);
        pass.threads_alive += 1;
        pass.mutex.unlock(pass.io);
        pass.ref();
        const thread = std.Thread.spawn(.{ .stack_size = runtime.thread_stack_bytes }, readerMain, .{pass}) catch {
            pass.mutex.lockUncancelable(pass.io);
            pass.threads_alive -= 1;
            pass.mutex.unlock(pass.io);
            pass.unref();
            return error.ThreadSpawnFailed;
        };
        thread.setName(pass.io, "datago-reader") catch {};
        thread.detach();
    }

    fn readerMain(pass: *Pass) void {
        current_pass = pass;
        const stage = pass.stage.?;
        pass.source.stream(pass.gpa, stage);
        // The stream's end is the sequence's length; a failed stream fails
        // the pass with its reason.
        pass.mutex.lockUncancelable(pass.io);
        if (stage.failureText()) |text| {
            if (pass.failure_len == null) pass.failure_kind = stage.failure.kind;
            pass.failLocked("{s}", .{text});
            pass.cancelLocked();
        } else if (stage.total()) |total| {
            pass.items = total;
        }
        pass.work_cond.broadcast(pass.io);
        pass.ready_cond.broadcast(pass.io);
        pass.mutex.unlock(pass.io);
        current_pass = null;
        pass.leave();
    }

    const Finished = struct { seq: u64, result: ProcessResult };

    /// Hands in the outcome of the previous item (if any) and claims the
    /// next sequence number, waiting for the plan or for ring space: one
    /// critical section per item. Returns null when nothing is left to do.
    fn claim(pass: *Pass, finished: ?Finished) ?u64 {
        var wake_consumers = false;
        // Wake after unlocking, so the woken consumer does not preempt us
        // only to block on the mutex we still hold.
        defer if (wake_consumers) pass.ready_cond.broadcast(pass.io);
        pass.mutex.lockUncancelable(pass.io);
        defer pass.mutex.unlock(pass.io);
        if (finished) |f| pass.completeLocked(f.seq, f.result);
        while (true) {
            switch (pass.phase) {
                .done => return null,
                .listing => {},
                .running => {
                    const more = if (pass.items) |items| pass.dispatched < items else true;
                    if (more and pass.dispatched < pass.head + pass.slots.len) {
                        pass.dispatched += 1;
                        // Judged after claiming, so that a lone worker about
                        // to decode the next item does not count as idle.
                        wake_consumers = pass.consumersShouldWakeLocked();
                        return pass.dispatched - 1;
                    }
                },
            }
            // Nothing to claim: this worker sleeps or leaves, so whatever is
            // ready must not wait for a batch to fill.
            wake_consumers = pass.consumers_waiting > 0 and pass.ready_run > 0;
            if (pass.phase == .running) if (pass.items) |items| if (pass.dispatched >= items) return null;
            if (wake_consumers) {
                pass.ready_cond.broadcast(pass.io);
                wake_consumers = false;
            }
            pass.work_cond.waitUncancelable(pass.io, &pass.mutex);
        }
    }

    /// Stores an outcome in the ring.
    fn completeLocked(pass: *Pass, seq: u64, result: ProcessResult) void {
        if (pass.phase == .done) {
            if (result.outcome == .ready) result.outcome.ready.destroy();
            return;
        }
        const c = &pass.counters;
        switch (result.outcome) {
            // Past the end of a stream: nothing to deliver at this seq.
            .none => return,
            .skipped => {
                pass.slots[seq % pass.slots.len] = .skipped;
                pass.extendReadyRunLocked();
                return;
            },
            .ready => |s| pass.slots[seq % pass.slots.len] = .{ .ready = s },
            .failed => |cause| {
                pass.slots[seq % pass.slots.len] = .failed;
                c.failed += 1;
                c.by_cause.getPtr(cause).* += 1;
                if (pass.examples.get(cause) == null) {
                    var buffer: [example_bytes_max]u8 = undefined;
                    var w: Io.Writer = .fixed(&buffer);
                    pass.source.describeItem(seq, &w) catch {};
                    pass.examples.set(cause, pass.gpa.dupe(u8, w.buffered()) catch null);
                }
            },
        }
        c.attempted += 1;
        c.addTimings(&result.timings);
        pass.extendReadyRunLocked();
    }

    fn extendReadyRunLocked(pass: *Pass) void {
        while (pass.head + pass.ready_run < pass.dispatched and
            pass.slots[(pass.head + pass.ready_run) % pass.slots.len] != .empty) pass.ready_run += 1;
    }

    /// Whether sleeping consumers should be woken: once a run of `wakeBatch`
    /// outcomes is ready (or everything claimed is). On a busy core, waking
    /// the consumer for every tiny image costs a context switch each way.
    fn consumersShouldWakeLocked(pass: *Pass) bool {
        if (pass.consumers_waiting == 0 or pass.ready_run == 0) return false;
        return pass.ready_run >= pass.wakeBatch() or pass.head + pass.ready_run == pass.dispatched;
    }

    /// Whether workers blocked on a full ring should be woken: once a
    /// quarter of it is free, for the same reason (a worker sleeps only when
    /// the ring is full, see `claim`).
    fn workersShouldWakeLocked(pass: *Pass) bool {
        const free = pass.head + pass.slots.len - pass.dispatched;
        return free >= @max(1, pass.slots.len / 4);
    }

    fn wakeBatch(pass: *Pass) u64 {
        const c = &pass.counters;
        if (c.delivered == 0 or c.attempted == 0) return 1; // the first sample as soon as possible
        var busy_ns: u64 = 0;
        for (std.enums.values(stats.Stage)) |stage| busy_ns += c.stages.getPtrConst(stage).sum_ns;
        // Images that take a millisecond or more: waking costs nothing.
        if (busy_ns / c.attempted >= std.time.ns_per_ms) return 1;
        return std.math.clamp(pass.slots.len / 2, 1, wake_batch_max);
    }

    const ProcessResult = struct {
        outcome: union(enum) {
            ready: *sample_mod.Owned,
            failed: decoder.Cause,
            /// A streamed sequence ended (or stopped) before this item.
            none,
            /// Consumed before the pass resumed (`Pass.resumed`).
            skipped,
        },
        timings: stats.Timings = .{},
    };

    /// Gets item `seq` from the source, processes it and packages the
    /// sample. Runs without the lock.
    fn process(pass: *Pass, seq: u64, scratch: *source_mod.Scratch) ProcessResult {
        var result: ProcessResult = .{ .outcome = .{ .failed = .no_memory } };
        var diag: decoder.Diagnostics = .{};
        result.timings.enabled = pass.config.collect_stats;
        var clock = result.timings.start();
        if (pass.resumed) |*part| if (part.isConsumed(seq)) {
            // A streamed item must still leave the reader stage.
            if (pass.stage) |stage| switch (stage.take(seq)) {
                .item => |item| {
                    var taken = item;
                    taken.release(pass.gpa);
                },
                .end, .stopped => {
                    result.outcome = .none;
                    return result;
                },
            };
            result.outcome = .skipped;
            return result;
        };
        var item = pass.getItem(seq, scratch, &diag) catch |err| {
            pass.logFailure(seq, diag.text());
            result.outcome = .{ .failed = decoder.causeOf(err) };
            return result;
        } orelse {
            result.outcome = .none;
            return result;
        };
        defer item.release(pass.gpa);
        result.timings.bytes_read = item.bytes.len;
        result.timings.lap(.read, &clock);
        // A record read without its image (Dataroom, require_images false)
        // is a sample without pixels, not a failed decode.
        const no_image = item.image_optional and item.bytes.len == 0;
        const processed: image_process.Result = if (no_image) .{ .pixels = undefined, .bucket_key = null } else image_process.run(pass.gpa, item.bytes, &pass.transform, .{ .max_pixels = pass.config.max_pixels }, &result.timings, &diag) catch |err| {
            pass.logFailure(seq, diag.text());
            result.outcome = .{ .failed = decoder.causeOf(err) };
            return result;
        };
        var main_pixels: ?sample_mod.Pixels = if (no_image) null else processed.pixels;
        const masks = pass.processNamed(item.masks, .mask, processed.bucket_key, &diag) catch |err| {
            if (main_pixels) |*m| m.deinit(pass.gpa);
            pass.logFailure(seq, diag.text());
            result.outcome = .{ .failed = decoder.causeOf(err) };
            return result;
        };
        defer pass.gpa.free(masks);
        const additional = pass.processNamed(item.additional, .additional, processed.bucket_key, &diag) catch |err| {
            if (main_pixels) |*m| m.deinit(pass.gpa);
            for (masks) |*n| n.pixels.deinit(pass.gpa);
            pass.logFailure(seq, diag.text());
            result.outcome = .{ .failed = decoder.causeOf(err) };
            return result;
        };
        defer pass.gpa.free(additional);
        const owned = sample_mod.build(pass.gpa, .{
            .kind = item.kind,
            .id = item.id,
            .source = item.source_name,
            .attributes_json = item.attributes_json,
            .duplicate_state = item.duplicate_state,
            .image = main_pixels,
            .masks = masks,
            .additional = additional,
            .latents = item.latents,
            .tags = item.tags,
            .coca_embedding = item.coca_embedding,
            .padded = item.padded,
            .index = seq,
            .epoch = pass.epoch,
        }) catch return result;
        result.outcome = .{ .ready = owned };
        return result;
    }

    /// Processes an item's masks or additional images into the main image's
    /// bucket (as stages/oneshot.zig does). Caller owns the list and its
    /// pixels (sample.build takes them). One that fails fails the sample.
    fn processNamed(pass: *Pass, inputs: []const sample_mod.EncodedNamed, role: image_process.Role, bucket_key: ?i64, diag: *decoder.Diagnostics) decoder.Error![]sample_mod.Named {
        const named = pass.gpa.alloc(sample_mod.Named, inputs.len) catch return error.NoMemory;
        var done: usize = 0;
        errdefer {
            for (named[0..done]) |*n| n.pixels.deinit(pass.gpa);
            pass.gpa.free(named);
        }
        var timings: stats.Timings = .{ .enabled = false };
        try image_process.runNamed(pass.gpa, &pass.transform, inputs, role, bucket_key, pass.config.max_pixels, &timings, named, &done, diag);
        return named;
    }

    /// Item `seq`: read by this worker (random access) or taken from the
    /// reader stage (streaming); null when the stream ended before it.
    fn getItem(pass: *Pass, seq: u64, scratch: *source_mod.Scratch, diag: *decoder.Diagnostics) decoder.Error!?source_mod.Item {
        const stage = pass.stage orelse return try pass.source.fetch(pass.gpa, pass.io, seq, scratch, diag);
        return switch (stage.take(seq)) {
            .item => |item| item,
            .end, .stopped => null,
        };
    }

    fn logFailure(pass: *Pass, seq: u64, reason: []const u8) void {
        // Counted under the lock in `complete`; this count only rate-limits.
        const n = pass.logged_failures.fetchAdd(1, .monotonic);
        if (n < logged_failures_max) {
            var buffer: [example_bytes_max]u8 = undefined;
            var w: Io.Writer = .fixed(&buffer);
            pass.source.describeItem(seq, &w) catch {};
            log.err(.files, "Failed to load image from path {s}: {s}", .{ w.buffered(), reason });
        } else if (n == logged_failures_max) {
            log.err(.files, "more than {d} files failed in this pass; further failures are only counted", .{logged_failures_max});
        }
    }

    /// Where this part stands for a resume state (resume.zig): what the
    /// caller was handed is consumed; samples the batcher still holds, and
    /// everything from `head` on, are not. Allocates in `arena`.
    pub fn statePart(pass: *Pass, arena: Allocator, rank: u32, worker: u32) Allocator.Error!resume_mod.Part {
        var pending: std.ArrayList(u64) = .empty;
        var handed: u64 = 0;
        if (pass.batcher) |*b| {
            pass.batch_mutex.lockUncancelable(pass.io);
            defer pass.batch_mutex.unlock(pass.io);
            try b.pendingSeqs(arena, &pending);
            handed = b.handed;
        }
        std.mem.sortUnstable(u64, pending.items, {}, std.sort.asc(u64));
        pass.mutex.lockUncancelable(pass.io);
        defer pass.mutex.unlock(pass.io);
        const head = pass.head;
        const old: ?*const resume_mod.Part = if (pass.resumed) |*p| p else null;
        const State = struct {
            head: u64,
            pending: []const u64,
            old: ?*const resume_mod.Part,
            fn consumed(st: @This(), seq: u64) bool {
                if (seq < st.head) return std.sort.binarySearch(u64, st.pending, seq, orderU64) == null;
                // Not reached by this pass yet: as the resumed state said.
                return if (st.old) |o| o.isConsumed(seq) else false;
            }
        };
        const st: State = .{ .head = head, .pending = pending.items, .old = old };
        const end = if (old) |o| @max(head, o.head) else head;
        var position: u64 = if (pending.items.len > 0) pending.items[0] else head;
        if (pending.items.len == 0) while (position < end and st.consumed(position)) : (position += 1) {};
        const bits = try arena.alloc(u8, @intCast((end - position + 7) / 8));
        @memset(bits, 0);
        var seq = position;
        while (seq < end) : (seq += 1) {
            const i = seq - position;
            if (st.consumed(seq)) bits[@intCast(i / 8)] |= @as(u8, 1) << @intCast(i % 8);
        }
        const in_batcher: u64 = pending.items.len;
        return .{
            .rank = rank,
            .worker = worker,
            .position = position,
            .head = end,
            .consumed = bits,
            .delivered = pass.delivered_before + pass.counters.delivered - in_batcher,
            .batches = pass.batches_before + handed,
            .done = pass.completed and pass.failure_len == null and in_batcher == 0,
        };
    }

    /// A snapshot of the counters.
    pub fn snapshot(pass: *Pass) stats.Snapshot {
        pass.mutex.lockUncancelable(pass.io);
        defer pass.mutex.unlock(pass.io);
        var ready: u64 = 0;
        for (pass.slots) |slot| ready += @intFromBool(slot != .empty);
        var result: stats.Snapshot = .{
            .counters = pass.counters,
            .epoch = pass.epoch,
            .threads = pass.thread_count,
            .running = pass.phase != .done,
            .ready = ready,
            .ready_capacity = pass.slots.len,
            .in_flight = pass.dispatched -| pass.head -| ready,
            .plan_len = pass.items orelse pass.dispatched,
            .cursor = pass.source.cursor(pass.head),
            .shards = pass.source.shardCounts(),
            .dataroom = pass.source.dataroomCounts(),
            .elapsed_ns = runtime.monotonicNs() - pass.started_ns,
            .batches = if (pass.batcher) |*b| b.counters.batches.load(.monotonic) else 0,
            .partial_batches = if (pass.batcher) |*b| b.counters.partial_batches.load(.monotonic) else 0,
            .dropped_samples = if (pass.batcher) |*b| b.counters.dropped_samples.load(.monotonic) else 0,
            .seed = if (pass.config.file.random_sampling) pass.config.file.seed else null,
        };
        var w: Io.Writer = .fixed(&result.waiting_for_buffer);
        pass.describeWaitLocked(&w) catch {};
        result.waiting_for_len = w.buffered().len;
        return result;
    }

    /// What the consumer waits for next, in words: the listing, or the
    /// item at `head` and whether a worker holds it.
    fn describeWaitLocked(pass: *Pass, w: *Io.Writer) Io.Writer.Error!void {
        switch (pass.phase) {
            .done => {},
            .listing => {
                try w.writeAll("the preparation (listing) of '");
                try pass.source.describe(w);
                try w.writeAll("'");
            },
            .running => {
                if (pass.items) |items| if (pass.head >= items) return;
                const state = if (pass.head < pass.dispatched) "being read and decoded by a worker" else "waiting for a free worker";
                try w.print("item {d} of ", .{pass.head});
                if (pass.items) |items| try w.print("{d}", .{items}) else try w.writeAll("a stream not yet ended");
                try w.writeAll(" of this pass, '");
                try pass.source.describeItem(pass.head, w);
                try w.print("', {s}", .{state});
            },
        }
    }
};

fn orderU64(a: u64, b: u64) std.math.Order {
    return std.math.order(a, b);
}

fn exceeds(failed: u64, attempted: u64, fraction: f64) bool {
    if (attempted == 0) return false;
    return @as(f64, @floatFromInt(failed)) > fraction * @as(f64, @floatFromInt(attempted));
}

fn mostFrequentCause(c: *const Counters) decoder.Cause {
    var best: decoder.Cause = .corrupt;
    var best_count: u64 = 0;
    for (std.enums.values(decoder.Cause)) |cause| {
        if (c.by_cause.get(cause) > best_count) {
            best = cause;
            best_count = c.by_cause.get(cause);
        }
    }
    return best;
}

/// Threads: config, else DATAGO_MAX_TASKS (0 means 1), else the usable CPUs;
/// never more than the limit (a pass of 3 samples needs no 16 threads).
fn threadCount(config: *const Config, limit: ?u64) u32 {
    var n: u32 = config.num_threads orelse fromEnv: {
        const text = runtime.getenv("DATAGO_MAX_TASKS") orelse break :fromEnv runtime.usableCpuCount();
        const value = std.fmt.parseInt(u32, std.mem.trim(u8, text, " "), 10) catch break :fromEnv runtime.usableCpuCount();
        break :fromEnv @max(1, @min(value, config_mod.num_threads_max));
    };
    if (limit) |l| n = @intCast(@max(1, @min(n, l)));
    return n;
}
