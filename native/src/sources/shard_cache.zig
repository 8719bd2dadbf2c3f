//! The WebDataset shard cache (`source_config.cache_dir`,
//! `cache_max_bytes`): http(s) shards are kept on local disk so that later
//! epochs, DataLoader workers and other clients read them from there
//! instead of the network. Local paths and `file://` shards never come here.
//!
//! Layout: one file per shard, `<key>.shard`, where `key` is the XxHash3 of
//! the URL in 16 hex digits (headers and tokens are not part of it: the
//! cache assumes a URL names immutable bytes). An entry is a 32-byte header,
//! the URL, then the shard's bytes as the server sent them:
//!
//!     magic "DGSHARD\x01" | url_len u32 | 0 u32 | data_bytes u64 | checksum u64
//!
//! all little-endian; `checksum` is the XxHash3 of the URL followed by the
//! data.
//!
//! Filling: while a shard streams from the network, `Fill` tees its body into
//! `.tmp-<key>-<random>` (the samples are delivered as the bytes arrive;
//! nothing is buffered beyond fixed buffers). Only when the tar reader read
//! the shard to its end is the header written, room made and the file renamed
//! to its entry name, atomically: a reader sees a whole entry or none. A
//! shard that fails, a pass that stops, a full disk or a shard over the bound
//! removes the temporary file. No fsync: verification catches what a crash
//! could leave behind.
//!
//! Reading: `lookup` checks the header, the size and the checksum before a
//! byte is delivered, so a damaged entry never reaches the decoder; one that
//! fails is removed (WARN, counted as corrupt) and the shard is fetched again.
//! A hit sets the entry's mtime to now: the LRU order.
//!
//! Bound: before a commit, the least recently used entries are removed until
//! the entries and the new one fit in `cache_max_bytes`. A shard larger than
//! the bound is streamed but not cached (INFO once per pass).
//!
//! Several processes may share one directory: names are unique per fill,
//! commits are renames, a file vanishing under a scan or an open entry being
//! evicted is tolerated (an open file stays readable), and temporary files
//! older than `temp_age_max_s` (a crashed process's) are removed when a pass
//! opens the cache. Concurrent commits may overshoot the bound by the entries
//! committed at the same moment; the next commit brings it back.
//!
//! Threads: a `Cache` is shared by the lanes of one stream (lookups and
//! fills run in parallel; commits take `commit_lock`); a `Fill` belongs to
//! one lane; `Counts` may be read from any thread.
const std = @import("std");
const assert = std.debug.assert;
const Io = std.Io;
const Allocator = std.mem.Allocator;
const XxHash3 = std.hash.XxHash3;

const log = @import("../log.zig");

/// Temporary files untouched for this long belong to a process that died:
/// a live fill writes at least every read timeout (at most a day, config.zig).
pub const temp_age_max_s = 25 * 60 * 60;
/// Longest URL an entry records (a longer one is streamed, not cached).
pub const url_bytes_max = 16 * 1024;
/// Bytes read after the tar reader reached the end of the archive, to see
/// the end of the body (a gzip member's footer, padding).
pub const drain_bytes_max = 1024 * 1024 + 8;
/// Entries a scan considers; a directory with more is bounded by the first
/// ones found (never reached with real shard counts).
pub const scan_entries_max = 1 << 20;

pub const header_bytes = 32;
const magic = "DGSHARD\x01";
const entry_suffix = ".shard";
const temp_prefix = ".tmp-";
const key_hex_bytes = 16;
pub const entry_name_bytes = key_hex_bytes + entry_suffix.len;
const temp_name_bytes = temp_prefix.len + key_hex_bytes + 1 + 16;
const fill_buffer_bytes = 64 * 1024;
const write_buffer_bytes = 64 * 1024;

comptime {
    assert(magic.len == 8);
    assert(header_bytes == 8 + 4 + 4 + 8 + 8);
    assert(url_bytes_max <= std.math.maxInt(u32));
}

/// Counters of one pass, read by `stats()` while it runs.
pub const Counts = struct {
    /// Shards read from the cache.
    hits: std.atomic.Value(u64) = .init(0),
    /// http(s) shards not in the cache (or whose entry was corrupt).
    misses: std.atomic.Value(u64) = .init(0),
    /// Bytes of entries committed (headers included).
    bytes_written: std.atomic.Value(u64) = .init(0),
    /// Entries this pass removed to make room.
    evictions: std.atomic.Value(u64) = .init(0),
    /// Entries that failed verification and were removed.
    corrupt: std.atomic.Value(u64) = .init(0),
    /// Shards streamed but not cached because they exceed the bound.
    too_large: std.atomic.Value(u64) = .init(0),

    pub fn load(c: *const Counts) Totals {
        return .{
            .hits = c.hits.load(.monotonic),
            .misses = c.misses.load(.monotonic),
            .bytes_written = c.bytes_written.load(.monotonic),
            .evictions = c.evictions.load(.monotonic),
            .corrupt = c.corrupt.load(.monotonic),
            .too_large = c.too_large.load(.monotonic),
        };
    }
};

/// A snapshot of `Counts`, serialised in `stats()["shards"]["cache"]`.
pub const Totals = struct {
    hits: u64 = 0,
    misses: u64 = 0,
    bytes_written: u64 = 0,
    evictions: u64 = 0,
    corrupt: u64 = 0,
    too_large: u64 = 0,

    pub fn writeJson(t: *const Totals, w: *Io.Writer) Io.Writer.Error!void {
        try w.print("{{\"hits\":{d},\"misses\":{d},\"bytes_written\":{d},\"evictions\":{d},\"corrupt\":{d},\"too_large\":{d}}}", .{
            t.hits, t.misses, t.bytes_written, t.evictions, t.corrupt, t.too_large,
        });
    }
};

/// Why `Cache.open` failed: "cannot <action> '<path>': <error name>".
pub const OpenDiagnostics = struct {
    action: []const u8 = "",
    error_name: []const u8 = "",
};

pub const EntryName = [entry_name_bytes]u8;

/// The entry name of `url`.
pub fn entryName(url: []const u8) EntryName {
    var name: EntryName = undefined;
    _ = std.fmt.bufPrint(&name, "{x:0>16}" ++ entry_suffix, .{XxHash3.hash(0, url)}) catch unreachable;
    return name;
}

fn isEntryName(name: []const u8) bool {
    if (name.len != entry_name_bytes or !std.mem.endsWith(u8, name, entry_suffix)) return false;
    for (name[0..key_hex_bytes]) |c| if (!std.ascii.isHex(c)) return false;
    return true;
}

/// A verified entry, open for reading. The file stays readable if another
/// process evicts or replaces the entry meanwhile.
pub const Hit = struct {
    file: Io.File,
    /// Where the shard's bytes start; they run to the end of the file.
    data_offset: u64,
    data_bytes: u64,

    /// A reader over the shard's bytes. Use it where it is stored.
    pub fn reader(hit: *const Hit, io: Io, buffer: []u8) Io.File.Reader {
        return .{
            .io = io,
            .file = hit.file,
            .pos = hit.data_offset,
            .size = hit.data_offset + hit.data_bytes,
            .interface = Io.File.Reader.initInterface(buffer),
        };
    }

    pub fn close(hit: *Hit, io: Io) void {
        hit.file.close(io);
        hit.* = undefined;
    }
};

/// Why an entry failed verification.
const Corruption = error{ BadHeader, WrongUrl, WrongSize, WrongChecksum, ReadFailed };

fn corruptionText(err: Corruption) []const u8 {
    return switch (err) {
        error.BadHeader => "not a datago cache entry (bad header)",
        error.WrongUrl => "the entry records another URL",
        error.WrongSize => "truncated or extended (size does not match its header)",
        error.WrongChecksum => "checksum mismatch",
        error.ReadFailed => "cannot be read",
    };
}

pub const Cache = struct {
    gpa: Allocator,
    io: Io,
    /// Borrowed for the cache's lifetime (messages name it).
    path: []const u8,
    dir: Io.Dir,
    max_bytes: u64,
    counts: *Counts,
    /// Held by a commit (`makeRoom` and the rename).
    commit_lock: Io.Mutex = .init,
    /// Shared by a stream's lanes: set once, by whichever lane comes first.
    logged_too_large: std.atomic.Value(bool) = .init(false),
    logged_write_failure: std.atomic.Value(bool) = .init(false),

    /// Creates `path` if missing, proves a file can be made in it and
    /// removes stale temporary files. `path` and `counts` must outlive the
    /// cache.
    pub fn open(gpa: Allocator, io: Io, path: []const u8, max_bytes: u64, counts: *Counts, diag: *OpenDiagnostics) error{Unusable}!Cache {
        assert(max_bytes > 0);
        const cwd = Io.Dir.cwd();
        cwd.createDirPath(io, path) catch |err| {
            diag.* = .{ .action = "create", .error_name = @errorName(err) };
            return error.Unusable;
        };
        const dir = cwd.openDir(io, path, .{ .iterate = true }) catch |err| {
            diag.* = .{ .action = "open", .error_name = @errorName(err) };
            return error.Unusable;
        };
        errdefer dir.close(io);
        var cache: Cache = .{ .gpa = gpa, .io = io, .path = path, .dir = dir, .max_bytes = max_bytes, .counts = counts };
        // A read-only or foreign directory fails here, at the start of the
        // pass, rather than silently on every shard.
        const probe = cache.tempName(0);
        const file = dir.createFile(io, &probe, .{ .exclusive = true }) catch |err| {
            diag.* = .{ .action = "write a file in", .error_name = @errorName(err) };
            return error.Unusable;
        };
        file.close(io);
        dir.deleteFile(io, &probe) catch {};
        cache.removeStaleTemps();
        return cache;
    }

    pub fn close(cache: *Cache) void {
        cache.dir.close(cache.io);
        cache.* = undefined;
    }

    /// The verified entry of `url`, or null (a miss). A corrupt entry is
    /// removed and logged. `scratch` (at least 4 KiB) is used for reading.
    pub fn lookup(cache: *Cache, url: []const u8, scratch: []u8) ?Hit {
        assert(scratch.len >= 4096);
        const io = cache.io;
        const name = entryName(url);
        const file = cache.dir.openFile(io, &name, .{}) catch |err| {
            switch (err) {
                error.FileNotFound => {},
                else => log.debug(.files, "WebDataset cache entry '{s}' of '{s}' cannot be opened: {s}", .{ &name, url, @errorName(err) }),
            }
            _ = cache.counts.misses.fetchAdd(1, .monotonic);
            return null;
        };
        const data_bytes = verify(io, file, url, scratch) catch |err| {
            _ = cache.counts.corrupt.fetchAdd(1, .monotonic);
            _ = cache.counts.misses.fetchAdd(1, .monotonic);
            log.warn(.files, "WebDataset cache entry '{s}/{s}' of '{s}' is corrupt ({s}): removed, fetching the shard again", .{
                cache.path, &name, url, corruptionText(err),
            });
            cache.removeIfSame(&name, file);
            file.close(io);
            return null;
        };
        // The LRU clock; an entry we may not touch keeps its place.
        file.setTimestamps(io, .{ .modify_timestamp = .now }) catch {};
        _ = cache.counts.hits.fetchAdd(1, .monotonic);
        return .{ .file = file, .data_offset = header_bytes + url.len, .data_bytes = data_bytes };
    }

    /// Removes the entry `name` if it still is the file `file` (another
    /// process may have replaced it with a good one meanwhile).
    fn removeIfSame(cache: *Cache, name: []const u8, file: Io.File) void {
        const io = cache.io;
        const ours = file.stat(io) catch return;
        const current = cache.dir.statFile(io, name, .{}) catch return;
        if (ours.inode != current.inode) return;
        cache.dir.deleteFile(io, name) catch {};
    }

    /// `.tmp-<key>-<random>`; key 0 names the writability probe.
    fn tempName(cache: *Cache, key: u64) [temp_name_bytes]u8 {
        var random: [8]u8 = undefined;
        cache.io.random(&random);
        var name: [temp_name_bytes]u8 = undefined;
        _ = std.fmt.bufPrint(&name, temp_prefix ++ "{x:0>16}-{x:0>16}", .{ key, std.mem.readInt(u64, &random, .little) }) catch unreachable;
        return name;
    }

    fn removeStaleTemps(cache: *Cache) void {
        const io = cache.io;
        const now = Io.Clock.real.now(io);
        var it = cache.dir.iterate();
        var seen: usize = 0;
        while (it.next(io) catch null) |entry| : (seen += 1) {
            if (seen >= scan_entries_max) break;
            if (entry.kind != .file or !std.mem.startsWith(u8, entry.name, temp_prefix)) continue;
            const stat = cache.dir.statFile(io, entry.name, .{}) catch continue;
            const age_ns = now.nanoseconds - stat.mtime.nanoseconds;
            if (age_ns < @as(i96, temp_age_max_s) * std.time.ns_per_s) continue;
            cache.dir.deleteFile(io, entry.name) catch continue;
            log.info(.files, "WebDataset cache '{s}': removed a stale temporary file '{s}'", .{ cache.path, entry.name });
        }
    }

    /// Removes least recently used entries until `incoming` more bytes fit;
    /// false if they cannot (the scan ran out of memory).
    fn makeRoom(cache: *Cache, incoming: u64, replacing: []const u8) bool {
        assert(incoming <= cache.max_bytes);
        const io = cache.io;
        const Entry = struct { name: EntryName, size: u64, mtime_ns: i96 };
        var entries: std.ArrayList(Entry) = .empty;
        defer entries.deinit(cache.gpa);
        var total: u64 = 0;
        var it = cache.dir.iterate();
        while (it.next(io) catch null) |entry| {
            if (entries.items.len >= scan_entries_max) break;
            if (entry.kind != .file or !isEntryName(entry.name)) continue;
            // The rename replaces it: its bytes leave with it.
            if (std.mem.eql(u8, entry.name, replacing)) continue;
            const stat = cache.dir.statFile(io, entry.name, .{}) catch continue;
            entries.append(cache.gpa, .{ .name = entry.name[0..entry_name_bytes].*, .size = stat.size, .mtime_ns = stat.mtime.nanoseconds }) catch return false;
            total += stat.size;
        }
        if (total + incoming <= cache.max_bytes) return true;
        std.mem.sort(Entry, entries.items, {}, struct {
            fn older(_: void, a: Entry, b: Entry) bool {
                if (a.mtime_ns != b.mtime_ns) return a.mtime_ns < b.mtime_ns;
                return std.mem.order(u8, &a.name, &b.name) == .lt;
            }
        }.older);
        for (entries.items) |entry| {
            if (total + incoming <= cache.max_bytes) break;
            cache.dir.deleteFile(io, &entry.name) catch |err| switch (err) {
                // Another process evicted it first.
                error.FileNotFound => {
                    total -= entry.size;
                    continue;
                },
                else => continue,
            };
            total -= entry.size;
            _ = cache.counts.evictions.fetchAdd(1, .monotonic);
            log.debug(.files, "WebDataset cache '{s}': evicted '{s}' ({d} bytes)", .{ cache.path, &entry.name, entry.size });
        }
        return total + incoming <= cache.max_bytes;
    }

    fn tooLarge(cache: *Cache, url: []const u8) void {
        _ = cache.counts.too_large.fetchAdd(1, .monotonic);
        if (cache.logged_too_large.swap(true, .monotonic)) return;
        log.info(.files, "WebDataset shard '{s}' is larger than cache_max_bytes ({d}): streamed, not cached (further ones are only counted)", .{
            url, cache.max_bytes,
        });
    }

    fn writeFailed(cache: *Cache, url: []const u8, error_name: []const u8) void {
        if (cache.logged_write_failure.swap(true, .monotonic)) {
            log.debug(.files, "WebDataset cache '{s}': cannot store '{s}': {s}", .{ cache.path, url, error_name });
            return;
        }
        log.warn(.files, "WebDataset cache '{s}': cannot store '{s}' ({s}); shards are streamed without the cache meanwhile", .{
            cache.path, url, error_name,
        });
    }
};

/// Checks an entry's header, URL, size and checksum; returns its data size.
fn verify(io: Io, file: Io.File, url: []const u8, scratch: []u8) Corruption!u64 {
    const stat = file.stat(io) catch return error.ReadFailed;
    var header: [header_bytes]u8 = undefined;
    const got = file.readPositionalAll(io, &header, 0) catch return error.ReadFailed;
    if (got < header_bytes or !std.mem.eql(u8, header[0..8], magic)) return error.BadHeader;
    const url_len = std.mem.readInt(u32, header[8..12], .little);
    const data_bytes = std.mem.readInt(u64, header[16..24], .little);
    const checksum = std.mem.readInt(u64, header[24..32], .little);
    if (url_len > url_bytes_max or std.mem.readInt(u32, header[12..16], .little) != 0) return error.BadHeader;
    if (url_len != url.len) return error.WrongUrl;
    const data_offset = header_bytes + @as(u64, url_len);
    if (data_bytes > std.math.maxInt(u64) - data_offset or stat.size != data_offset + data_bytes) return error.WrongSize;
    var hasher: XxHash3 = .init(0);
    var offset: u64 = header_bytes;
    // The URL, compared and hashed in pieces of `scratch`.
    while (offset < data_offset) {
        const piece = scratch[0..@intCast(@min(scratch.len, data_offset - offset))];
        const n = file.readPositionalAll(io, piece, offset) catch return error.ReadFailed;
        if (n < piece.len) return error.WrongSize;
        const at: usize = @intCast(offset - header_bytes);
        if (!std.mem.eql(u8, piece, url[at..][0..piece.len])) return error.WrongUrl;
        hasher.update(piece);
        offset += n;
    }
    while (offset < stat.size) {
        const piece = scratch[0..@intCast(@min(scratch.len, stat.size - offset))];
        const n = file.readPositionalAll(io, piece, offset) catch return error.ReadFailed;
        if (n < piece.len) return error.WrongSize;
        hasher.update(piece);
        offset += n;
    }
    if (hasher.final() != checksum) return error.WrongChecksum;
    return data_bytes;
}

/// Receives every byte the tee passes on: the temporary file and the
/// checksum. A problem stops the writing; the shard still streams.
const Sink = struct {
    writer: Io.File.Writer,
    hasher: XxHash3,
    data_bytes: u64,
    data_bytes_max: u64,
    problem: Problem,

    const Problem = enum { none, too_large, write_failed };

    /// Called by `Io.Reader.Hashed` with every byte read from the body.
    pub fn update(sink: *Sink, bytes: []const u8) void {
        if (sink.problem != .none) return;
        if (bytes.len > sink.data_bytes_max - sink.data_bytes) {
            sink.problem = .too_large;
            return;
        }
        sink.writer.interface.writeAll(bytes) catch {
            sink.problem = .write_failed;
            return;
        };
        sink.hasher.update(bytes);
        sink.data_bytes += bytes.len;
    }
};

const Tee = Io.Reader.Hashed(Sink);

/// Tees one shard's body into a temporary file and commits it at the end.
/// Large (two 64 KiB buffers): keep it off the stack, and do not move it
/// while a fill runs.
pub const Fill = struct {
    cache: *Cache = undefined,
    url: []const u8 = "",
    key: u64 = 0,
    temp_name: [temp_name_bytes]u8 = undefined,
    writing: bool = false,
    tee: Tee = undefined,
    buffer: [fill_buffer_bytes]u8 = undefined,
    write_buffer: [write_buffer_bytes]u8 = undefined,

    /// Starts caching the body `in` of `url`; returns the reader to read
    /// the shard from: the tee, or `in` itself when this shard is not cached
    /// (too large for the bound by `size_hint`, or the file cannot be made).
    /// `url` must stay valid until `end`, which must follow.
    pub fn begin(fill: *Fill, cache: *Cache, url: []const u8, in: *Io.Reader, size_hint: ?u64) *Io.Reader {
        assert(!fill.writing);
        const io = cache.io;
        if (url.len > url_bytes_max) return in;
        const entry_overhead = header_bytes + url.len;
        const data_bytes_max = cache.max_bytes -| entry_overhead;
        if (data_bytes_max == 0 or (size_hint orelse 0) > data_bytes_max) {
            cache.tooLarge(url);
            return in;
        }
        fill.cache = cache;
        fill.url = url;
        fill.key = XxHash3.hash(0, url);
        fill.temp_name = cache.tempName(fill.key);
        const file = cache.dir.createFile(io, &fill.temp_name, .{ .exclusive = true }) catch |err| {
            cache.writeFailed(url, @errorName(err));
            return in;
        };
        var sink: Sink = .{
            .writer = file.writerStreaming(io, &fill.write_buffer),
            .hasher = .init(0),
            .data_bytes = 0,
            .data_bytes_max = data_bytes_max,
            .problem = .none,
        };
        // Room for the header, written at the end.
        sink.writer.interface.splatByteAll(0, entry_overhead) catch {
            cache.writeFailed(url, if (sink.writer.err) |e| @errorName(e) else "WriteFailed");
            file.close(io);
            cache.dir.deleteFile(io, &fill.temp_name) catch {};
            return in;
        };
        sink.hasher.update(url);
        fill.tee = .init(in, sink, &fill.buffer);
        fill.writing = true;
        return &fill.tee.reader;
    }

    fn discard(fill: *Fill, file: Io.File) void {
        file.close(fill.cache.io);
        fill.cache.dir.deleteFile(fill.cache.io, &fill.temp_name) catch {};
    }

    /// Ends the fill begun by `begin` (a no-op if it did not start one):
    /// `complete` means the tar reader read the shard to its end, and then
    /// the rest of the body is read and the entry committed; otherwise, or
    /// if anything fails, the temporary file is removed.
    pub fn end(fill: *Fill, complete: bool) void {
        if (!fill.writing) return;
        fill.writing = false;
        const cache = fill.cache;
        const io = cache.io;
        const sink = &fill.tee.hasher;
        const file = sink.writer.file;
        var committed = false;
        defer if (!committed) fill.discard(file);
        if (!complete) return;
        // The archive ended; the body must end too (what follows is hashed
        // and stored like the rest, so the entry is the whole body).
        const rest = fill.tee.reader.discardShort(drain_bytes_max) catch {
            log.debug(.files, "WebDataset cache: '{s}' not cached: its body failed after the end of the archive", .{fill.url});
            return;
        };
        if (rest == drain_bytes_max) {
            log.debug(.files, "WebDataset cache: '{s}' not cached: more than {d} bytes after the end of the archive", .{ fill.url, drain_bytes_max });
            return;
        }
        switch (sink.problem) {
            .none => {},
            .too_large => return cache.tooLarge(fill.url),
            .write_failed => return cache.writeFailed(fill.url, if (sink.writer.err) |e| @errorName(e) else "WriteFailed"),
        }
        sink.writer.interface.flush() catch
            return cache.writeFailed(fill.url, if (sink.writer.err) |e| @errorName(e) else "WriteFailed");
        var header: [header_bytes]u8 = undefined;
        @memcpy(header[0..8], magic);
        std.mem.writeInt(u32, header[8..12], @intCast(fill.url.len), .little);
        std.mem.writeInt(u32, header[12..16], 0, .little);
        std.mem.writeInt(u64, header[16..24], sink.data_bytes, .little);
        std.mem.writeInt(u64, header[24..32], sink.hasher.final(), .little);
        file.writePositionalAll(io, &header, 0) catch |err| return cache.writeFailed(fill.url, @errorName(err));
        file.writePositionalAll(io, fill.url, header_bytes) catch |err| return cache.writeFailed(fill.url, @errorName(err));
        const entry_bytes = header_bytes + fill.url.len + sink.data_bytes;
        const name = entryName(fill.url);
        // The lanes of a stream share `dir`, whose iteration offset is per
        // descriptor: one scan and rename at a time.
        cache.commit_lock.lockUncancelable(io);
        defer cache.commit_lock.unlock(io);
        if (!cache.makeRoom(entry_bytes, &name)) return cache.writeFailed(fill.url, "OutOfMemory");
        file.close(io);
        committed = true;
        cache.dir.rename(&fill.temp_name, cache.dir, &name, io) catch |err| {
            cache.dir.deleteFile(io, &fill.temp_name) catch {};
            return cache.writeFailed(fill.url, @errorName(err));
        };
        _ = cache.counts.bytes_written.fetchAdd(entry_bytes, .monotonic);
    }
};

const testing = std.testing;

const TestCache = struct {
    tmp: testing.TmpDir,
    path_buffer: [std.fs.max_path_bytes]u8,
    path: []const u8,
    counts: Counts,
    cache: Cache,
    fill: *Fill,
    scratch: []u8,

    /// A cache in a fresh temporary directory (`sub` inside it: created by
    /// `open`). Pinned: use it where it was made.
    fn init(t: *TestCache, max_bytes: u64) !void {
        const io = testing.io;
        t.tmp = testing.tmpDir(.{});
        errdefer t.tmp.cleanup();
        const root_len = try t.tmp.dir.realPath(io, &t.path_buffer);
        const sub = "/cache";
        @memcpy(t.path_buffer[root_len..][0..sub.len], sub);
        t.path = t.path_buffer[0 .. root_len + sub.len];
        t.counts = .{};
        var diag: OpenDiagnostics = .{};
        t.cache = try Cache.open(testing.allocator, io, t.path, max_bytes, &t.counts, &diag);
        errdefer t.cache.close();
        t.fill = try testing.allocator.create(Fill);
        t.fill.* = .{};
        t.scratch = try testing.allocator.alloc(u8, 4096);
    }

    fn deinit(t: *TestCache) void {
        testing.allocator.free(t.scratch);
        testing.allocator.destroy(t.fill);
        t.cache.close();
        t.tmp.cleanup();
    }

    /// Streams `data` as the body of `url` through a fill; `read_bytes`
    /// of it are read before `end(complete)`.
    fn stream(t: *TestCache, url: []const u8, data: []const u8, size_hint: ?u64, read_bytes: usize, complete: bool) ![]u8 {
        var body: Io.Reader = .fixed(data);
        const input = t.fill.begin(&t.cache, url, &body, size_hint);
        const out = try testing.allocator.alloc(u8, read_bytes);
        errdefer testing.allocator.free(out);
        try input.readSliceAll(out);
        t.fill.end(complete);
        return out;
    }

    fn fillAll(t: *TestCache, url: []const u8, data: []const u8) !void {
        const out = try t.stream(url, data, null, data.len, true);
        defer testing.allocator.free(out);
        try testing.expectEqualSlices(u8, data, out);
    }

    /// The data of `url`'s entry through `lookup`, or null on a miss.
    fn read(t: *TestCache, url: []const u8) !?[]u8 {
        var hit = t.cache.lookup(url, t.scratch) orelse return null;
        defer hit.close(testing.io);
        var buffer: [256]u8 = undefined;
        var reader = hit.reader(testing.io, &buffer);
        return try reader.interface.allocRemaining(testing.allocator, .unlimited);
    }

    /// Names in the cache directory, sorted, joined by ',' (caller frees).
    fn listing(t: *TestCache) ![]u8 {
        var names: std.ArrayList([]const u8) = .empty;
        defer {
            for (names.items) |n| testing.allocator.free(n);
            names.deinit(testing.allocator);
        }
        var it = t.cache.dir.iterate();
        while (try it.next(testing.io)) |entry| try names.append(testing.allocator, try testing.allocator.dupe(u8, entry.name));
        std.mem.sort([]const u8, names.items, {}, struct {
            fn less(_: void, a: []const u8, b: []const u8) bool {
                return std.mem.order(u8, a, b) == .lt;
            }
        }.less);
        return std.mem.join(testing.allocator, ",", names.items);
    }

    fn setMtime(t: *TestCache, url: []const u8, seconds: i64) !void {
        const name = entryName(url);
        try t.cache.dir.setTimestamps(testing.io, &name, .{ .modify_timestamp = .{ .new = .{ .nanoseconds = @as(i96, seconds) * std.time.ns_per_s } } });
    }

    fn entrySize(t: *TestCache, url: []const u8) !u64 {
        const name = entryName(url);
        return (try t.cache.dir.statFile(testing.io, &name, .{})).size;
    }
};

fn testData(comptime len: usize, seed: u8) [len]u8 {
    var data: [len]u8 = undefined;
    for (&data, 0..) |*b, i| b.* = @truncate(i *% 31 +% seed);
    return data;
}

test "a fill commits an entry that later lookups verify and read" {
    var t: TestCache = undefined;
    try t.init(1 << 20);
    defer t.deinit();
    const url = "http://example.com/s-0.tar";
    try testing.expectEqual(@as(?[]u8, null), try t.read(url));
    const data = testData(200_000, 1);
    try t.fillAll(url, &data);
    const name = entryName(url);
    const listing = try t.listing();
    defer testing.allocator.free(listing);
    try testing.expectEqualStrings(&name, listing);
    const back = (try t.read(url)) orelse return error.TestExpectedHit;
    defer testing.allocator.free(back);
    try testing.expectEqualSlices(u8, &data, back);
    const totals = t.counts.load();
    try testing.expectEqual(@as(u64, 1), totals.hits);
    try testing.expectEqual(@as(u64, 1), totals.misses);
    try testing.expectEqual(@as(u64, header_bytes + url.len + data.len), totals.bytes_written);
    try testing.expectEqual(@as(u64, header_bytes + url.len + data.len), try t.entrySize(url));
    // Another URL is another entry.
    try testing.expectEqual(@as(?[]u8, null), try t.read("http://example.com/s-1.tar"));
}

test "corrupt, truncated and foreign entries are detected, removed and counted" {
    var t: TestCache = undefined;
    try t.init(1 << 20);
    defer t.deinit();
    const io = testing.io;
    const url = "https://example.com/a.tar";
    const data = testData(10_000, 2);
    const name = entryName(url);
    const Damage = enum { flip_data, truncate, extend, bad_magic, other_url };
    for (std.enums.values(Damage)) |damage| {
        try t.fillAll(url, &data);
        const file = try t.cache.dir.openFile(io, &name, .{ .mode = .read_write });
        const size = (try file.stat(io)).size;
        switch (damage) {
            .flip_data => try file.writePositionalAll(io, "\xff\x00", size - 5000),
            .truncate => try file.setLength(io, size - 1),
            .extend => try file.writePositionalAll(io, "x", size),
            .bad_magic => try file.writePositionalAll(io, "NOTDATAG", 0),
            .other_url => try file.writePositionalAll(io, "http", header_bytes + 1),
        }
        file.close(io);
        try testing.expectEqual(@as(?[]u8, null), try t.read(url));
        try testing.expectError(error.FileNotFound, t.cache.dir.statFile(io, &name, .{}));
    }
    const totals = t.counts.load();
    try testing.expectEqual(@as(u64, 5), totals.corrupt);
    try testing.expectEqual(@as(u64, 5), totals.misses);
    try testing.expectEqual(@as(u64, 0), totals.hits);
}

test "a fill that does not complete leaves nothing behind" {
    var t: TestCache = undefined;
    try t.init(1 << 20);
    defer t.deinit();
    const data = testData(100_000, 3);
    // Stopped half-way, and read whole but failed (complete = false).
    const half = try t.stream("http://h/a.tar", &data, null, data.len / 2, false);
    testing.allocator.free(half);
    const whole = try t.stream("http://h/b.tar", &data, data.len, data.len, false);
    testing.allocator.free(whole);
    const listing = try t.listing();
    defer testing.allocator.free(listing);
    try testing.expectEqualStrings("", listing);
    try testing.expectEqual(@as(u64, 0), t.counts.load().bytes_written);
}

test "the tar reader stopping before the end of the body: the rest is read into the entry" {
    var t: TestCache = undefined;
    try t.init(1 << 20);
    defer t.deinit();
    const url = "http://h/gz.tar.gz";
    const data = testData(70_000, 4);
    // Like a gzip member whose footer is followed by padding the
    // decompressor never asks for.
    const part = try t.stream(url, &data, null, 1000, true);
    testing.allocator.free(part);
    const back = (try t.read(url)) orelse return error.TestExpectedHit;
    defer testing.allocator.free(back);
    try testing.expectEqualSlices(u8, &data, back);
}

test "least recently used entries are evicted to stay within the bound" {
    const entry_data = 10_000;
    const url_len = "http://h/0.tar".len;
    const entry = header_bytes + url_len + entry_data;
    var t: TestCache = undefined;
    try t.init(3 * entry + entry / 2);
    defer t.deinit();
    const urls = [_][]const u8{ "http://h/0.tar", "http://h/1.tar", "http://h/2.tar", "http://h/3.tar", "http://h/4.tar" };
    for (urls[0..3], 0..) |url, i| {
        try t.fillAll(url, &testData(entry_data, @intCast(i)));
        try t.setMtime(url, 1_000_000 + @as(i64, @intCast(i)));
    }
    // A hit makes 0 the most recently used: 1 goes first, then 2.
    const hit = (try t.read(urls[0])) orelse return error.TestExpectedHit;
    testing.allocator.free(hit);
    try t.fillAll(urls[3], &testData(entry_data, 3));
    try testing.expectError(error.FileNotFound, t.entrySize(urls[1]));
    try testing.expectEqual(@as(u64, entry), try t.entrySize(urls[2]));
    try t.fillAll(urls[4], &testData(entry_data, 4));
    try testing.expectError(error.FileNotFound, t.entrySize(urls[2]));
    for ([_][]const u8{ urls[0], urls[3], urls[4] }) |url| try testing.expectEqual(@as(u64, entry), try t.entrySize(url));
    try testing.expectEqual(@as(u64, 2), t.counts.load().evictions);
    // Filling an entry again replaces it without evicting another.
    try t.fillAll(urls[4], &testData(entry_data, 9));
    try testing.expectEqual(@as(u64, 2), t.counts.load().evictions);
}

test "a shard larger than the bound streams whole but is not cached" {
    var t: TestCache = undefined;
    try t.init(50_000);
    defer t.deinit();
    const data = testData(60_000, 5);
    // Known too large from its Content-Length, and found out while streaming.
    for ([_]?u64{ data.len, null }) |hint| {
        const out = try t.stream("http://h/big.tar", &data, hint, data.len, true);
        defer testing.allocator.free(out);
        try testing.expectEqualSlices(u8, &data, out);
    }
    const listing = try t.listing();
    defer testing.allocator.free(listing);
    try testing.expectEqualStrings("", listing);
    try testing.expectEqual(@as(u64, 2), t.counts.load().too_large);
    // A small one still fits.
    try t.fillAll("http://h/small.tar", &testData(1000, 6));
    try testing.expectEqual(@as(u64, header_bytes + "http://h/small.tar".len + 1000), try t.entrySize("http://h/small.tar"));
}

test "opening removes old temporary files and keeps recent ones and entries" {
    var t: TestCache = undefined;
    try t.init(1 << 20);
    defer t.deinit();
    const io = testing.io;
    try t.fillAll("http://h/kept.tar", &testData(100, 7));
    const old = ".tmp-00000000000000aa-00000000000000bb";
    const recent = ".tmp-00000000000000aa-00000000000000cc";
    try t.cache.dir.writeFile(io, .{ .sub_path = old, .data = "partial" });
    try t.cache.dir.writeFile(io, .{ .sub_path = recent, .data = "in flight" });
    try t.cache.dir.setTimestamps(io, old, .{ .modify_timestamp = .{ .new = .{ .nanoseconds = 1_000 * std.time.ns_per_s } } });
    var counts: Counts = .{};
    var diag: OpenDiagnostics = .{};
    var again = try Cache.open(testing.allocator, io, t.path, 1 << 20, &counts, &diag);
    again.close();
    const listing = try t.listing();
    defer testing.allocator.free(listing);
    const kept = entryName("http://h/kept.tar");
    try testing.expectEqualStrings(recent ++ "," ++ kept, listing);
}

test "a cache directory that cannot be made says why" {
    var tmp = testing.tmpDir(.{});
    defer tmp.cleanup();
    const io = testing.io;
    try tmp.dir.writeFile(io, .{ .sub_path = "file", .data = "x" });
    var path_buffer: [std.fs.max_path_bytes]u8 = undefined;
    const root_len = try tmp.dir.realPath(io, &path_buffer);
    const sub = "/file/cache";
    @memcpy(path_buffer[root_len..][0..sub.len], sub);
    var counts: Counts = .{};
    var diag: OpenDiagnostics = .{};
    try testing.expectError(error.Unusable, Cache.open(testing.allocator, io, path_buffer[0 .. root_len + sub.len], 1 << 20, &counts, &diag));
    try testing.expectEqualStrings("create", diag.action);
    try testing.expect(diag.error_name.len > 0);
}

test "entry names are the URL's hash in hex" {
    const name = entryName("http://example.com/x.tar");
    try testing.expect(isEntryName(&name));
    try testing.expect(!isEntryName(".tmp-00000000000000aa-00000000000000bb"));
    try testing.expect(!isEntryName("0123456789abcdeg.shard"));
    try testing.expect(!std.mem.eql(u8, &name, &entryName("http://example.com/y.tar")));
}
