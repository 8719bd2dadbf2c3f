//! The loader behind a `datago_loader *`: a validated configuration and the
//! sequence of passes (epochs) run over it (compatibility.md §2.1 lifecycle).
const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;

const config_mod = @import("config.zig");
const log = @import("log.zig");
const pipeline = @import("pipeline.zig");
const runtime = @import("runtime.zig");
const resume_mod = @import("resume.zig");
const source_mod = @import("sources/source.zig");

pub const Loader = struct {
    gpa: Allocator,
    io: Io,
    parsed: config_mod.Parsed,
    /// The process that opened the loader: its threads exist only there.
    owner_pid: i32,

    mutex: Io.Mutex = .init,
    // Guarded by `mutex`.
    state: enum { new, running, finished } = .new,
    /// The current or last pass; the loader holds one reference on it.
    pass: ?*pipeline.Pass = null,
    next_epoch: u64 = 0,
    /// A restored state (`restore`): its arena, what it means for this
    /// client, and whether the next pass still has to apply it.
    restored: ?Restored = null,

    pub const OpenError = config_mod.Error;

    const Restored = struct {
        arena: *std.heap.ArenaAllocator,
        state: resume_mod.State,
        applied: resume_mod.Applied,
        /// The next pass resumes (cleared once it started).
        pending: bool,
        /// The epoch of the pass that resumed; its states carry `applied.history`.
        epoch: u64,
    };

    /// Parses the configuration. Does no I/O and starts no thread.
    pub fn open(gpa: Allocator, text: []const u8, diag: *config_mod.Diagnostics) OpenError!*Loader {
        var parsed = try config_mod.parse(gpa, text, diag);
        errdefer parsed.deinit();
        const loader = try gpa.create(Loader);
        loader.* = .{
            .gpa = gpa,
            .io = runtime.acquireIo(),
            .parsed = parsed,
            .owner_pid = runtime.processId(),
            .next_epoch = parsed.config.epoch,
        };
        const cfg = &loader.parsed.config;
        if (cfg.batch_size != null and !(if (cfg.image) |image| image.crop_and_resize else false))
            log.warn(.loader, "batch_size: image_config.crop_and_resize is not true, so images keep their own sizes and a batch only groups samples of one shape: with images of varied sizes most batches hold a single sample", .{});
        // One seed per loader, not per pass: every pass of this loader, and
        // every DataLoader worker given the same config, must permute the
        // same way, or worker parts overlap (a worker strides over its
        // rank's shuffled share). `stats()` reports it so a run can be
        // repeated.
        const source = &loader.parsed.config.file;
        if (source.random_sampling and source.seed == null) {
            source.seed = runtime.entropy64();
            source.seed_drawn = true;
            log.info(.loader, "random_sampling without a seed: drew seed {d} (set source_config.seed to it to repeat this order)", .{source.seed.?});
        }
        if (parsed.unknown_keys.len > 0) {
            var buffer: [512]u8 = undefined;
            var w: Io.Writer = .fixed(&buffer);
            for (parsed.unknown_keys, 0..) |key, i| {
                w.print("{s}{s}", .{ if (i == 0) "" else ", ", key.path }) catch break;
                if (key.nearest) |nearest| w.print(" (did you mean `{s}`?)", .{nearest}) catch break;
            }
            log.warn(.loader, "ignoring unknown configuration keys: {s}", .{w.buffered()});
        }
        return loader;
    }

    pub fn config(loader: *const Loader) *const config_mod.Config {
        return &loader.parsed.config;
    }

    /// Begins a pass unless one is running (compatibility.md §2.2, §2.3).
    pub fn start(loader: *Loader) error{ OutOfMemory, ThreadSpawnFailed }!void {
        loader.mutex.lockUncancelable(loader.io);
        defer loader.mutex.unlock(loader.io);
        if (loader.state == .running and !loader.pass.?.isOver()) return;
        try loader.startLocked();
    }

    fn startLocked(loader: *Loader) error{ OutOfMemory, ThreadSpawnFailed }!void {
        log.ensureInstalled();
        const pass = try loader.createPass();
        pass.start() catch |err| {
            pass.unref();
            return err;
        };
        if (loader.pass) |old| {
            old.stop();
            old.unref();
        }
        loader.pass = pass;
        loader.next_epoch += 1;
        loader.state = .running;
    }

    /// The next pass: from its start, or resuming the restored state.
    fn createPass(loader: *Loader) Allocator.Error!*pipeline.Pass {
        const config_ = loader.config();
        const epoch = loader.next_epoch;
        const r = if (loader.restored) |*r| if (r.pending) r else null else null;
        const applied = if (r) |x| x.applied else return pipeline.Pass.create(loader.gpa, config_, epoch);
        r.?.pending = false;
        var source = try source_mod.Source.init(loader.gpa, config_, epoch);
        errdefer source.deinit(loader.gpa);
        const start_seq = source.resumeFrom(loader.gpa, &applied, r.?.state.fingerprint) catch |err| switch (err) {
            error.OutOfMemory => return error.OutOfMemory,
            // `restore` made the same call with the same inputs and it passed.
            error.Invalid => {
                log.err(.loader, "the restored state no longer applies: {s}", .{source.resumeFailure()});
                return error.OutOfMemory;
            },
        };
        const part: resume_mod.Part = applied.part orelse .{ .rank = config_.file.rank, .worker = config_.worker_id };
        return pipeline.Pass.createWith(loader.gpa, config_, epoch, source, .{
            .part = part,
            .limit = applied.limit,
            .start_seq = start_seq orelse part.position,
        });
    }

    /// Takes a saved state (`resume.parse`: one state or a list of them)
    /// for the next pass. Refused while a pass runs.
    pub fn restore(loader: *Loader, text: []const u8, diag: *resume_mod.Diagnostics) (resume_mod.Error || error{Busy})!void {
        const arena = try loader.gpa.create(std.heap.ArenaAllocator);
        arena.* = .init(loader.gpa);
        errdefer {
            arena.deinit();
            loader.gpa.destroy(arena);
        }
        loader.mutex.lockUncancelable(loader.io);
        defer loader.mutex.unlock(loader.io);
        if (loader.state == .running and !loader.pass.?.isOver()) return error.Busy;
        const cfg = &loader.parsed.config;
        const state = try resume_mod.parse(arena.allocator(), text, diag);
        // A seed drawn at open gives way to the one the run used.
        if (cfg.file.random_sampling and cfg.file.seed_drawn) {
            if (state.seed) |seed| {
                cfg.file.seed = seed;
                cfg.file.seed_drawn = false;
            }
        }
        const applied = try resume_mod.apply(&state, cfg, diag);
        var validation = try source_mod.Source.init(loader.gpa, cfg, applied.epoch);
        defer validation.deinit(loader.gpa);
        _ = validation.resumeFrom(loader.gpa, &applied, state.fingerprint) catch |err| switch (err) {
            error.OutOfMemory => return error.OutOfMemory,
            error.Invalid => return diag.fail("{s}", .{validation.resumeFailure()}),
        };
        if (loader.restored) |old| {
            old.arena.deinit();
            loader.gpa.destroy(old.arena);
        }
        loader.restored = .{ .arena = arena, .state = state, .applied = applied, .pending = applied.resumes, .epoch = applied.epoch };
        loader.next_epoch = applied.epoch;
        // The next `next` starts the resumed pass, as on a new loader.
        loader.state = .new;
        log.info(.loader, "restored a state: epoch {d}{s}", .{ applied.epoch, if (applied.resumes) " resumes mid-epoch" else " from its start" });
    }

    /// Writes the resume state of this client (docs/design.md §3): where
    /// its current or last pass stands, or where its next pass starts.
    pub fn writeState(loader: *Loader, w: *std.Io.Writer) (std.Io.Writer.Error || Allocator.Error || error{Unavailable})!void {
        var arena_state: std.heap.ArenaAllocator = .init(loader.gpa);
        defer arena_state.deinit();
        const arena = arena_state.allocator();
        loader.mutex.lockUncancelable(loader.io);
        const pass = loader.pass;
        if (pass) |p| p.ref();
        const cfg = loader.config();
        const rank = cfg.file.rank;
        const worker = cfg.worker_id;
        var state: resume_mod.State = .{
            .source = cfg.source_type,
            .fingerprint = null,
            .order_key = resume_mod.orderKey(cfg),
            .seed = if (cfg.file.random_sampling) cfg.file.seed else null,
            .epoch = loader.next_epoch,
            .levels = &.{},
        };
        var history: []const resume_mod.Level = &.{};
        var part: resume_mod.Part = .{ .rank = rank, .worker = worker };
        if (loader.restored) |*r| {
            state.fingerprint = r.state.fingerprint;
            if (r.pending) {
                history = r.applied.history;
                if (r.applied.part) |p| part = p;
            } else if (pass != null and pass.?.epoch == r.epoch) {
                history = r.applied.history;
            }
        }
        loader.mutex.unlock(loader.io);
        defer if (pass) |p| p.unref();
        const pending = if (loader.restored) |r| r.pending else false;
        if (pass) |p| if (!pending) {
            state.epoch = p.epoch;
            part = try p.statePart(arena, rank, worker);
            if (p.source.fingerprint()) |f| state.fingerprint = f;
            part.stream = try p.source.streamCheckpoint(arena, part.position);
            // A stream resumes only from a checkpoint at or before the position.
            if (part.stream == null and p.source == .webdataset and part.position > 0 and !part.done) return error.Unavailable;
            if (try p.source.keysetJson(arena, part.position)) |k| {
                part.after_key = k.key;
                part.in_page = k.in_page;
            }
        };
        const levels = try arena.alloc(resume_mod.Level, history.len + 1);
        @memcpy(levels[0..history.len], history);
        const parts = try arena.alloc(resume_mod.Part, 1);
        parts[0] = part;
        levels[history.len] = .{ .world_size = cfg.file.world_size, .num_workers = cfg.num_workers, .parts = parts };
        state.levels = levels;
        try state.writeJson(w);
    }

    pub const SourceFailure = struct {
        text: []const u8,
        kind: @import("sources/source.zig").FailureKind,
    };

    pub const NextResult = union(enum) {
        sample: *@import("sample.zig").Owned,
        end,
        timeout,
        /// The message was copied into the caller's buffer.
        source_error: SourceFailure,
        internal_error,
    };

    /// Waits for the next sample of the current pass, starting the first pass
    /// of a never-started loader. Threadsafe.
    pub fn next(loader: *Loader, timeout_ms: i64, message_buffer: []u8) error{ OutOfMemory, ThreadSpawnFailed }!NextResult {
        const pass = try loader.currentPass() orelse return .end;
        defer pass.unref();
        return switch (pass.next(timeout_ms)) {
            .sample => |s| .{ .sample = s },
            .timeout => .timeout,
            .end => .end,
            .internal_error => .internal_error,
            .source_error => .{ .source_error = copyMessage(pass, message_buffer) },
        };
    }

    pub const BatchResult = union(enum) {
        batch: *@import("batcher.zig").Batch,
        end,
        timeout,
        source_error: SourceFailure,
        internal_error,
    };

    /// Waits for the next batch of the current pass (batch_size set).
    pub fn nextBatch(loader: *Loader, timeout_ms: i64, message_buffer: []u8) error{ OutOfMemory, ThreadSpawnFailed }!BatchResult {
        const pass = try loader.currentPass() orelse return .end;
        defer pass.unref();
        return switch (try pass.nextBatch(timeout_ms)) {
            .batch => |b| .{ .batch = b },
            .timeout => .timeout,
            .end => .end,
            .internal_error => .internal_error,
            .source_error => .{ .source_error = copyMessage(pass, message_buffer) },
        };
    }

    /// The pass `next` reads from, with a reference the caller drops;
    /// starts the first pass of a never-started loader.
    fn currentPass(loader: *Loader) error{ OutOfMemory, ThreadSpawnFailed }!?*pipeline.Pass {
        loader.mutex.lockUncancelable(loader.io);
        defer loader.mutex.unlock(loader.io);
        if (loader.state == .new) try loader.startLocked();
        const pass = loader.pass orelse return null;
        pass.ref();
        return pass;
    }

    fn copyMessage(pass: *pipeline.Pass, buffer: []u8) SourceFailure {
        const message = pass.failureMessage();
        const n = @min(message.len, buffer.len);
        @memcpy(buffer[0..n], message[0..n]);
        return .{ .text = buffer[0..n], .kind = pass.failure_kind };
    }

    /// Ends the running pass; waiting `next` calls return `end`. Idempotent.
    pub fn stop(loader: *Loader) void {
        loader.mutex.lockUncancelable(loader.io);
        defer loader.mutex.unlock(loader.io);
        if (loader.pass) |pass| pass.stop();
        loader.state = .finished;
    }

    /// Stops and frees the loader. The pass finishes on its own.
    pub fn close(loader: *Loader) void {
        loader.stop();
        if (loader.pass) |pass| pass.unref();
        if (loader.restored) |r| {
            r.arena.deinit();
            loader.gpa.destroy(r.arena);
        }
        loader.parsed.deinit();
        const gpa = loader.gpa;
        gpa.destroy(loader);
        runtime.releaseIo();
    }

    /// Statistics of the current or last pass; null before the first.
    pub fn snapshot(loader: *Loader) ?@import("stats.zig").Snapshot {
        loader.mutex.lockUncancelable(loader.io);
        const pass = loader.pass orelse {
            loader.mutex.unlock(loader.io);
            return null;
        };
        pass.ref();
        loader.mutex.unlock(loader.io);
        defer pass.unref();
        return pass.snapshot();
    }

    /// The counters of the current or last pass (zeros before the first).
    pub fn counters(loader: *Loader) pipeline.Counters {
        const s = loader.snapshot() orelse return .{};
        return s.counters;
    }
};
