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
//! the part failed, the stream fails naming the first failure.
//!
//! Other image members (`jpg`, `jpeg`, `png`) travel with the item and are
//! processed into the main image's bucket by the pipeline
//! (`additional_images`, named by their path in the tar).
//!
//! Items reach the stage through a `shuffle_buffer.Sink`, which mixes them
//! across shards when `shuffle_buffer` (or `random_sampling`) asks for it.
//!
//! Not yet: a local cache, several shards downloaded at once (one body is
//! open at a time per reader).
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
const shard_split = @import("shard_split.zig");
const shuffle_buffer = @import("shuffle_buffer.zig");
const source = @import("source.zig");
const tar = @import("tar.zig");
const wds_group = @import("wds_group.zig");

/// WARN lines per pass for groups without an image; further ones are counted.
pub const logged_groups_max = 20;
/// Bytes of attribute JSON per sample (escaping included).
pub const attributes_bytes_max = 16 * 1024 * 1024;
/// Recent items remembered for `describeItem` (the log line of a failed
/// decode names the shard and the key).
const described_max = 1024;
const described_bytes_max = 192;
const file_buffer_bytes = 64 * 1024;
const http_buffer_bytes = 64 * 1024;

/// Counters of the stream, read by `stats()` while it runs.
pub const Counts = struct {
    shards_planned: std.atomic.Value(u64) = .init(0),
    shards_read: std.atomic.Value(u64) = .init(0),
    shards_failed: std.atomic.Value(u64) = .init(0),
    groups_without_image: std.atomic.Value(u64) = .init(0),
    groups_too_large: std.atomic.Value(u64) = .init(0),
};

pub const WdsSource = struct {
    /// Owned copies: the pass may outlive its loader.
    pattern: []u8,
    reference_image_type: []u8,
    authorization: ?[]u8,
    headers: []std.http.Header,
    header_bytes: []u8,
    ca_bundle: ?[]u8,
    options: http.Options,
    params: shard_split.Params,
    shuffle: shuffle_buffer.Params,
    urls: ?braces.Expansion = null,
    plan: ?shard_split.Plan = null,
    counts: Counts = .{},
    described: []Described,
    /// Guards `described` (held for a copy of at most described_bytes_max
    /// bytes; `describeItem` has no `Io` to wait with).
    described_lock: std.atomic.Value(bool) = .init(false),

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
        @memset(described, .{});
        var entropy: u64 = 0;
        if (config.file.random_sampling and config.file.seed == null) entropy = runtime.entropy64();
        return .{
            .pattern = pattern,
            .reference_image_type = reference,
            .authorization = authorization,
            .headers = headers,
            .header_bytes = header_bytes,
            .ca_bundle = ca_bundle,
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
            .shuffle = shuffle_buffer.paramsFor(config, epoch),
            .described = described,
        };
    }

    pub fn deinit(self: *WdsSource, gpa: Allocator) void {
        if (self.plan) |*p| p.deinit(gpa);
        if (self.urls) |*u| u.deinit(gpa);
        gpa.free(self.described);
        gpa.free(self.headers);
        gpa.free(self.header_bytes);
        if (self.ca_bundle) |c| gpa.free(c);
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
        self.urls = urls;
        self.plan = plan;
        self.counts.shards_planned.store(plan.shards.len, .monotonic);
        const listed_ns = runtime.monotonicNs() - started_ns;
        log.info(.files, "WebDataset '{s}': {d} shards; this worker reads {d} of them{s}", .{
            self.pattern, urls.count(), plan.shards.len, if (plan.filter.keepsAll()) "" else " and keeps the samples hashed to it",
        });
        return .{ .items = null, .listed = urls.count(), .listing_ns = listed_ns };
    }

    /// Runs on the reader thread: every planned shard in order.
    pub fn stream(self: *WdsSource, gpa: Allocator, stage: *prefetch.Prefetch) void {
        const plan = self.plan orelse return stage.fail("the WebDataset source was not prepared", .{});
        const urls = &self.urls.?;
        var reading = Reading.create(gpa, stage.io, self) catch return stage.fail("out of memory for the shard reader", .{});
        defer reading.destroy();
        var first_failure: source.Failure = .{};
        var failed: u64 = 0;
        for (plan.shards) |shard_index| {
            // A stopped pass closes the stage; a part whose shards all fail
            // never puts, so it must look before each shard.
            if (stage.isClosed()) return;
            const url = urls.get(shard_index);
            var why: source.Failure = .{};
            const outcome = reading.readShard(url, stage, plan.filter, &why);
            switch (outcome) {
                .done => _ = self.counts.shards_read.fetchAdd(1, .monotonic),
                .closed => return,
                .failed => {
                    failed += 1;
                    _ = self.counts.shards_failed.fetchAdd(1, .monotonic);
                    log.warn(.files, "WebDataset shard '{s}' skipped: {s}", .{ url, why.text() });
                    if (failed == 1) _ = first_failure.set("{s}", .{why.text()}) catch {};
                },
            }
        }
        if (plan.shards.len > 0 and failed == plan.shards.len) {
            const first_url = urls.get(plan.shards[0]);
            return stage.fail("every WebDataset shard failed ({d}); the first, '{s}': {s}", .{ failed, first_url, first_failure.text() });
        }
        if (failed > 0) log.warn(.files, "WebDataset: {d} of {d} shards failed and were skipped", .{ failed, plan.shards.len });
        reading.sink.drain(stage) catch return;
        stage.finish();
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

/// The reader thread's state: buffers, the HTTP client and its watchdog,
/// made once per stream (large: keep it off the stack).
const Reading = struct {
    gpa: Allocator,
    io: Io,
    owner: *WdsSource,
    window: [tar.window_bytes]u8,
    tar_reader: tar.Reader,
    file_buffer: [file_buffer_bytes]u8,
    http_buffer: [http_buffer_bytes]u8,
    body: http.Body,
    watchdog: http.Watchdog,
    watchdog_thread: ?std.Thread,
    client: http.Client,
    client_ready: bool,
    ca_failure: ?[]const u8,
    attributes: std.ArrayList(u8),
    logged_groups: u32,
    /// Spans every shard of the stream; drained after the last.
    sink: shuffle_buffer.Sink(WdsSource),

    const Outcome = enum { done, failed, closed };
    const Transport = enum { file, http };

    fn create(gpa: Allocator, io: Io, owner: *WdsSource) Allocator.Error!*Reading {
        const r = try gpa.create(Reading);
        errdefer gpa.destroy(r);
        r.sink = try .init(gpa, owner, owner.shuffle);
        r.gpa = gpa;
        r.io = io;
        r.owner = owner;
        r.watchdog_thread = null;
        r.client_ready = false;
        r.ca_failure = null;
        r.attributes = .empty;
        r.logged_groups = 0;
        return r;
    }

    fn destroy(r: *Reading) void {
        if (r.client_ready) r.client.deinit();
        if (r.watchdog_thread) |t| {
            r.watchdog.stop();
            t.join();
        }
        r.attributes.deinit(r.gpa);
        r.sink.deinit();
        r.gpa.destroy(r);
    }

    /// The HTTP client, made on the first http(s) shard.
    fn httpClient(r: *Reading) error{ NoThread, CaBundle }!*http.Client {
        if (r.ca_failure != null) return error.CaBundle;
        if (r.client_ready) return &r.client;
        r.watchdog = .init(r.io);
        const period = http.Watchdog.periodFor(r.owner.options.read_timeout_ms);
        r.watchdog_thread = std.Thread.spawn(.{ .stack_size = 64 * 1024 }, http.Watchdog.run, .{ &r.watchdog, period }) catch return error.NoThread;
        r.client.init(r.gpa, r.io, &r.watchdog, r.owner.options);
        r.client_ready = true;
        if (r.owner.ca_bundle) |path| r.client.useCaBundle(path) catch |err| {
            r.ca_failure = @errorName(err);
            return error.CaBundle;
        };
        return &r.client;
    }

    fn readShard(r: *Reading, url: []const u8, stage: *prefetch.Prefetch, filter: shard_split.Filter, why: *source.Failure) Outcome {
        if (std.mem.startsWith(u8, url, "http://") or std.mem.startsWith(u8, url, "https://")) {
            const client = r.httpClient() catch |err| {
                _ = switch (err) {
                    error.NoThread => why.set("cannot start the HTTP watchdog thread", .{}),
                    error.CaBundle => why.set("source_config.ca_bundle: cannot load '{s}' ({s})", .{ r.owner.ca_bundle.?, r.ca_failure.? }),
                } catch {};
                return .failed;
            };
            r.body.open(client, url, &r.http_buffer) catch |err| {
                httpFailure(why, err, &r.body.diagnostics);
                return .failed;
            };
            defer r.body.close();
            return r.readTar(&r.body.interface, url, stage, filter, why, .http);
        }
        const path = if (std.mem.startsWith(u8, url, "file://")) url["file://".len..] else url;
        const file = Io.Dir.cwd().openFile(r.io, path, .{}) catch |err| {
            _ = why.set("cannot open: {s}", .{@errorName(err)}) catch {};
            return .failed;
        };
        defer file.close(r.io);
        var file_reader = file.readerStreaming(r.io, &r.file_buffer);
        const outcome = r.readTar(&file_reader.interface, url, stage, filter, why, .file);
        if (outcome == .failed) if (file_reader.err) |err| {
            _ = why.set("read failed: {s}", .{@errorName(err)}) catch {};
        };
        return outcome;
    }

    fn readTar(
        r: *Reading,
        input: *Io.Reader,
        url: []const u8,
        stage: *prefetch.Prefetch,
        filter: shard_split.Filter,
        why: *source.Failure,
        transport: Transport,
    ) Outcome {
        r.tar_reader.init(input, &r.window) catch |err| {
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
            r.sink.put(stage, item, url, group.key) catch |err| switch (err) {
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
        r.logged_groups += 1;
        if (r.logged_groups <= logged_groups_max) {
            log.warn(.files, "WebDataset sample '{s}' in '{s}' skipped: {s}", .{ group.key, url, switch (problem) {
                .no_image => "no image member of the reference_image_type",
                .too_large => "more members or bytes than a sample may hold",
            } });
        } else if (r.logged_groups == logged_groups_max + 1) {
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
        const id = group.name();
        var total = image.data.len + id.len + r.attributes.items.len;
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
        const id_copy = copyInto(backing, &at, id);
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
            .id = .{ .plain = id_copy },
            .source_name = url,
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
fn streamShards(root: []const u8, range: []const u8, out: *std.ArrayList(u8), counts: *source.ShardCounts) !?[]u8 {
    const gpa = testing.allocator;
    var text: [1024]u8 = undefined;
    const json = try std.fmt.bufPrint(&text, "{{\"source_type\": \"webdataset\", \"source_config\": {{\"url\": \"{s}/s-{{{s}}}.tar\"}}}}", .{ root, range });
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
        .{ "a/x.jpg", "X" }, .{ "a/x.txt", "hi" }, .{ "a/x.seg.png", "P" }, .{ "a/x.cls", "3" },
        .{ "a/n.txt", "no image" },
        .{ "a/y.jpg", "Y" },
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
    const failure = try streamShards(root, "0..3", &out, &counts);
    try testing.expectEqual(@as(?[]u8, null), failure);
    // s-0 whole; s-1 not a tar; s-2 cut inside its last block: its whole
    // groups come through, then it fails; s-3 missing.
    const x = "x|{\"txt\":\"hi\",\"cls\":\"3\"}+a/x.seg.png=P;";
    try testing.expectEqualStrings(x ++ "y|{};" ++ x, out.items);
    try testing.expectEqual(@as(u64, 4), counts.planned);
    try testing.expectEqual(@as(u64, 1), counts.read);
    try testing.expectEqual(@as(u64, 3), counts.failed);
    try testing.expectEqual(@as(u64, 2), counts.groups_without_image);

    out.clearRetainingCapacity();
    const all_failed = (try streamShards(root, "1,3", &out, &counts)) orelse return error.TestExpectedFailure;
    defer gpa.free(all_failed);
    try testing.expectEqual(@as(usize, 0), out.items.len);
    try testing.expect(std.mem.startsWith(u8, all_failed, "every WebDataset shard failed (2); the first, '"));
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
