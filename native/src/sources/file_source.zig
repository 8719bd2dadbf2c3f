//! The file source: a folder (or one file) listed once per pass, planned by
//! the order function, and read by the decode workers themselves. Files are
//! random access, so the pass's workers fetch item `seq` directly: a
//! separate reader thread would only add a handoff per image.
const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;

const config_mod = @import("../config.zig");
const decoder = @import("../decode/decoder.zig");
const log = @import("../log.zig");
const runtime = @import("../runtime.zig");
const files = @import("files.zig");
const order = @import("order.zig");
const source = @import("source.zig");
const resume_mod = @import("../resume.zig");

/// Files larger than this are refused without reading them.
const file_bytes_max: u64 = 1 << 31;

pub const FileSource = struct {
    /// Owned copy: the pass may outlive its loader.
    root_path: []u8,
    params: order.Params,
    listing: files.Listing = .{},
    /// Indices into the listing, in this (rank, worker)'s delivery order.
    plan: []u32 = &.{},
    /// DATAGO_TEST_STALL_PATH, owned (see `stallForTest`); null in normal use.
    stall_path: ?[]u8 = null,
    /// Of the listing, once listed (resume_mod.Fingerprint).
    fingerprint: ?u64 = null,
    /// A resumed pass: the levels whose consumption comes off the listing
    /// before planning (resume_mod.remainderPlan), owned by `resume_arena`, and
    /// the fingerprint the listing must have.
    resume_arena: ?*std.heap.ArenaAllocator = null,
    resume_levels: []const resume_mod.Level = &.{},
    expected_fingerprint: ?u64 = null,
    /// equal_per_rank and the rank's limit (config.zig).
    equal: ?config_mod.EqualPerRank = null,
    limit: ?u64 = null,
    /// The listing items repeated past the end of the plan (equal_per_rank):
    /// the plan itself, or for an empty share one listing item.
    repeat: []const u32 = &.{},
    repeat_backing: ?[]u32 = null,

    pub fn init(gpa: Allocator, config: *const config_mod.Config, epoch: u64) Allocator.Error!FileSource {
        const file = &config.file;
        const root_path = try gpa.dupe(u8, file.root_path);
        errdefer gpa.free(root_path);
        const stall_path = if (runtime.getenv("DATAGO_TEST_STALL_PATH")) |stall| try gpa.dupe(u8, stall) else null;
        return .{
            .root_path = root_path,
            .stall_path = stall_path,
            .equal = config.equal_per_rank,
            .limit = config.limit,
            .params = .{
                .rank = file.rank,
                .world_size = file.world_size,
                .worker = config.worker_id,
                .num_workers = config.num_workers,
                // Never null with random_sampling: the loader drew it at open.
                .shuffle_seed = if (file.random_sampling) file.seed.? else null,
                .epoch = epoch,
            },
        };
    }

    pub fn deinit(self: *FileSource, gpa: Allocator) void {
        if (self.resume_arena) |arena| {
            arena.deinit();
            gpa.destroy(arena);
        }
        gpa.free(self.plan);
        if (self.repeat_backing) |r| gpa.free(r);
        self.listing.deinit(gpa);
        gpa.free(self.root_path);
        if (self.stall_path) |stall| gpa.free(stall);
        self.* = undefined;
    }

    /// Resumes a state (loader.zig): plans over what `applied`'s levels left.
    pub fn resumeFrom(self: *FileSource, gpa: Allocator, applied: *const resume_mod.Applied, fingerprint: ?u64) Allocator.Error!void {
        const arena = try gpa.create(std.heap.ArenaAllocator);
        arena.* = .init(gpa);
        errdefer {
            arena.deinit();
            gpa.destroy(arena);
        }
        self.resume_levels = try resume_mod.cloneLevels(arena.allocator(), applied.consumed_levels);
        self.resume_arena = arena;
        self.expected_fingerprint = fingerprint;
    }

    /// Lists root_path and plans this worker's sequence. Runs once, on one
    /// worker, before any `fetch`.
    pub fn prepare(
        self: *FileSource,
        gpa: Allocator,
        io: Io,
        canceled: *const std.atomic.Value(bool),
        failure: *source.Failure,
    ) source.PrepareError!source.Prepared {
        var diag: files.Diagnostics = .{};
        const started_ns = runtime.monotonicNs();
        var listing = files.list(gpa, io, self.root_path, canceled, &diag) catch |err| return switch (err) {
            error.RootNotFound => failure.set("source_config.root_path: '{f}' does not exist", .{log.path(self.root_path)}),
            error.RootUnreadable => failure.set("source_config.root_path: '{f}' cannot be read ({s})", .{ log.path(self.root_path), diag.cause }),
            error.OutOfMemory => failure.set("out of memory while listing '{f}'", .{log.path(self.root_path)}),
            error.Canceled => error.Canceled,
        };
        errdefer listing.deinit(gpa);
        const listed_ns = runtime.monotonicNs() - started_ns;
        if (listing.skippedTotal() > 0) logSkipped(&listing, self.root_path);
        var fingerprint: resume_mod.Fingerprint = .{};
        for (0..listing.len()) |i| fingerprint.add(listing.relativePath(@intCast(i)));
        self.fingerprint = fingerprint.final();
        if (self.expected_fingerprint) |expected| if (expected != self.fingerprint.?) {
            failure.kind = .config;
            return failure.set("state: saved over another listing of '{f}' (fingerprint {x:0>16}, now {x:0>16} with {d} files): it belongs to another dataset, or files were added or removed since", .{
                log.path(self.root_path), expected, self.fingerprint.?, listing.len(),
            });
        };
        var split_len: u64 = listing.len();
        const plan = (if (self.resume_arena != null)
            resume_mod.remainderPlan(gpa, listing.len(), self.resume_levels, self.params, &split_len)
        else
            order.plan(gpa, listing.len(), self.params)) catch
            return failure.set("out of memory while planning '{f}'", .{log.path(self.root_path)});
        errdefer gpa.free(plan);
        var items: u64 = plan.len;
        var equal_samples: ?u64 = null;
        if (self.equal) |mode| {
            // The rank's count from the number of items split (the listing,
            // or what a resume left of it), the same on every rank.
            const w: u64 = self.params.world_size;
            var per_rank = switch (mode) {
                .drop => split_len / w,
                .pad => (split_len + w - 1) / w,
            };
            if (self.limit) |l| per_rank = @min(per_rank, l);
            const target = order.workerLimit(per_rank, self.params.worker, self.params.num_workers);
            equal_samples = target;
            if (plan.len > 0) {
                self.repeat = plan;
            } else if (listing.len() > 0) {
                const one = gpa.alloc(u32, 1) catch return failure.set("out of memory while planning '{f}'", .{log.path(self.root_path)});
                one[0] = @intCast(self.params.rank % listing.len());
                self.repeat_backing = one;
                self.repeat = one;
            }
            // Room to repeat up to the target twice over (failed items
            // repeat as failures); a pass that still falls short fails.
            if (self.repeat.len > 0) items = plan.len + 2 * @max(target, self.repeat.len);
        }
        log.info(.files, "listed {d} files under '{f}' in {d} ms; this worker's share: {d}", .{
            listing.len(), log.path(self.root_path), listed_ns / std.time.ns_per_ms, plan.len,
        });
        if (listing.len() == 0) log.warn(.files, "no image files (.jpg .jpeg .png .bmp .gif .webp) under '{f}'", .{log.path(self.root_path)});
        self.listing = listing;
        self.plan = plan;
        return .{ .items = items, .listed = listing.len(), .skipped = listing.skipped, .listing_ns = listed_ns, .equal_samples = equal_samples, .share_items = plan.len };
    }

    /// Reads plan item `seq` into `scratch`. The item borrows from `scratch`
    /// and from this source.
    pub fn fetch(self: *FileSource, gpa: Allocator, io: Io, seq: u64, scratch: *source.Scratch, diag: *decoder.Diagnostics) decoder.Error!source.Item {
        const relative = self.listing.relativePath(self.itemAt(seq));
        const path_len = files.joinedLen(self.root_path, relative);
        scratch.path.resize(gpa, path_len) catch return error.NoMemory;
        const path = scratch.path.items;
        files.joinInto(path, self.root_path, relative);
        if (self.stall_path) |stall| if (std.mem.eql(u8, stall, path)) stallForTest(io, stall);
        const bytes = try readFile(&scratch.file, gpa, io, path, diag);
        return .{
            .bytes = bytes,
            .kind = .file,
            .id = .{ .path = .{ .root = self.root_path, .relative = relative } },
            .source_name = "filesystem",
            .padded = seq >= self.plan.len,
        };
    }

    /// The listing index of item `seq`: the plan, then (equal_per_rank)
    /// its repeats from the start.
    fn itemAt(self: *const FileSource, seq: u64) u32 {
        if (seq < self.plan.len) return self.plan[@intCast(seq)];
        return self.repeat[@intCast((seq - self.plan.len) % self.repeat.len)];
    }

    /// The full path of plan item `seq`, for messages.
    pub fn describeItem(self: *const FileSource, seq: u64, w: *Io.Writer) Io.Writer.Error!void {
        const relative = self.listing.relativePath(self.itemAt(seq));
        const separator = if (relative.len == 0 or std.mem.endsWith(u8, self.root_path, "/")) "" else "/";
        try w.print("{f}{s}{f}", .{ log.path(self.root_path), separator, log.path(relative) });
    }

    pub fn describe(self: *const FileSource, w: *Io.Writer) Io.Writer.Error!void {
        try w.print("{f}", .{log.path(self.root_path)});
    }
};

/// One WARN per pass for entries named like images that are not readable
/// files; each was logged at DEBUG by the listing.
fn logSkipped(listing: *const files.Listing, root_path: []const u8) void {
    var buffer: [512]u8 = undefined;
    var w: Io.Writer = .fixed(&buffer);
    for (std.enums.values(files.SkipCause)) |cause| {
        const n = listing.skipped.get(cause);
        if (n == 0) continue;
        w.print("{s}{d} {s}", .{ if (w.buffered().len == 0) "" else ", ", n, @tagName(cause) }) catch break;
    }
    log.warn(.files, "listing '{f}': skipped {d} entries that are not readable image files ({s}); DEBUG logs name each", .{
        log.path(root_path), listing.skippedTotal(), w.buffered(),
    });
}

/// Reads a whole file into the reused buffer `into`; the result is valid
/// until the next call with it.
fn readFile(into: *std.ArrayList(u8), gpa: Allocator, io: Io, path: []const u8, diag: *decoder.Diagnostics) decoder.Error![]const u8 {
    var file = try openNonBlocking(path, diag);
    defer file.close(io);
    const stat = file.stat(io) catch |err| {
        diag.set("cannot stat: {s}", .{@errorName(err)});
        return error.Io;
    };
    if (stat.kind != .file) {
        diag.set("not a regular file but a {s} (it was a file when the folder was listed)", .{@tagName(stat.kind)});
        return error.Io;
    }
    try clearNonBlocking(&file, diag);
    if (stat.size > file_bytes_max) {
        diag.set("file of {d} bytes is larger than the {d} bytes accepted", .{ stat.size, file_bytes_max });
        return error.TooLarge;
    }
    into.resize(gpa, @intCast(stat.size)) catch {
        diag.set("out of memory for a file of {d} bytes", .{stat.size});
        return error.NoMemory;
    };
    const n = file.readPositionalAll(io, into.items, 0) catch |err| {
        diag.set("read failed: {s}", .{@errorName(err)});
        return error.Io;
    };
    return into.items[0..n];
}

/// Opens `path` for reading without ever blocking in open(): a file replaced
/// by a FIFO after the listing would otherwise hold its worker (and the
/// ordered delivery behind it) until a writer appears. The caller checks
/// that it is a regular file; O_NONBLOCK is then dropped again, since
/// regular files ignore it but `Io` would treat the handle as non-blocking.
fn openNonBlocking(path: []const u8, diag: *decoder.Diagnostics) error{Io}!Io.File {
    const posix = std.posix;
    const fd = posix.openat(posix.AT.FDCWD, path, .{ .ACCMODE = .RDONLY, .NONBLOCK = true, .CLOEXEC = true, .NOCTTY = true }, 0) catch |err| {
        diag.set("cannot open: {s}", .{@errorName(err)});
        return error.Io;
    };
    return .{ .handle = fd, .flags = .{ .nonblocking = true } };
}

fn clearNonBlocking(file: *Io.File, diag: *decoder.Diagnostics) error{Io}!void {
    const flags = std.c.fcntl(file.handle, std.c.F.GETFL);
    const nonblock: c_int = @intCast(@as(u32, @bitCast(std.posix.O{ .NONBLOCK = true })));
    if (flags < 0 or std.c.fcntl(file.handle, std.c.F.SETFL, flags & ~nonblock) < 0) {
        diag.set("cannot clear O_NONBLOCK", .{});
        return error.Io;
    }
    file.flags.nonblocking = false;
}

/// A test hook: a worker about to read the file named by the environment
/// variable DATAGO_TEST_STALL_PATH (read when a pass starts) first waits, as
/// on a hung network filesystem, ignoring stop and close, until a file
/// `<path>.release` exists (at most `test_stall_ms_max`). It creates
/// `<path>.stalled` when it starts waiting. The lifecycle tests need a worker
/// that is stuck for as long as they say, and no file is allowed to block a
/// worker any more. Unset, it costs one comparison per pass.
fn stallForTest(io: Io, path: []const u8) void {
    const test_stall_ms_max = 60_000;
    const poll_ms = 5;
    var buffer: [std.fs.max_path_bytes]u8 = undefined;
    const stalled = std.fmt.bufPrint(&buffer, "{s}.stalled", .{path}) catch return;
    if (Io.Dir.cwd().createFile(io, stalled, .{})) |file| file.close(io) else |_| return;
    const release = std.fmt.bufPrint(&buffer, "{s}.release", .{path}) catch return;
    var waited_ms: u32 = 0;
    while (waited_ms < test_stall_ms_max) : (waited_ms += poll_ms) {
        if (Io.Dir.cwd().access(io, release, .{})) |_| return else |_| {}
        const pause: std.c.timespec = .{ .sec = 0, .nsec = poll_ms * std.time.ns_per_ms };
        _ = std.c.nanosleep(&pause, null);
    }
}
