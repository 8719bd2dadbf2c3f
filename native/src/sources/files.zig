//! The file source's listing: a recursive walk of `root_path` that collects
//! the relative paths of every image candidate and sorts them byte-wise, so
//! the order function (order.zig) sees the same listing on every node and
//! for every thread count.
//!
//! Memory: one byte buffer with every relative path, plus 8 bytes per entry.
const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;
const log = @import("../log.zig");

/// Extensions a candidate must end with, after a dot, case-insensitively
/// (compatibility.md §7.1.2; unlike the reference a real extension is required, §11.14).
pub const extensions = [_][]const u8{ "jpg", "jpeg", "png", "bmp", "gif", "webp" };

pub fn isCandidateName(name: []const u8) bool {
    const dot = std.mem.lastIndexOfScalar(u8, name, '.') orelse return false;
    const ext = name[dot + 1 ..];
    for (extensions) |candidate| {
        if (std.ascii.eqlIgnoreCase(ext, candidate)) return true;
    }
    return false;
}

pub const path_bytes_max = std.math.maxInt(u16);
const offset_max = (1 << 48) - 1;

/// One listed path: `len` bytes at `offset` in `Listing.bytes`.
const Entry = packed struct(u64) {
    offset: u48,
    len: u16,
};

pub const Listing = struct {
    bytes: std.ArrayList(u8) = .empty,
    entries: std.ArrayList(Entry) = .empty,
    /// `root_path` named a file: the listing is that file, with an empty
    /// relative path.
    root_is_file: bool = false,
    /// Entries whose names look like images but that are not readable
    /// files, by cause: counted for the stats, each logged at DEBUG, so
    /// that nothing leaves the epoch without a trace.
    skipped: std.EnumArray(SkipCause, u64) = .initFill(0),

    pub fn skippedTotal(self: *const Listing) u64 {
        var total: u64 = 0;
        for (self.skipped.values) |n| total += n;
        return total;
    }

    pub fn deinit(self: *Listing, gpa: Allocator) void {
        self.bytes.deinit(gpa);
        self.entries.deinit(gpa);
        self.* = undefined;
    }

    pub fn len(self: *const Listing) usize {
        return self.entries.items.len;
    }

    /// The path of entry `index` relative to root_path. Borrowed from the listing.
    pub fn relativePath(self: *const Listing, index: usize) []const u8 {
        const entry = self.entries.items[index];
        return self.bytes.items[entry.offset..][0..entry.len];
    }

    fn add(self: *Listing, gpa: Allocator, root_path: []const u8, dir_path: []const u8, name: []const u8) Allocator.Error!void {
        const separator: usize = @intFromBool(dir_path.len > 0);
        const total = dir_path.len + separator + name.len;
        if (total > path_bytes_max or self.bytes.items.len + total > offset_max) {
            self.skip(root_path, dir_path, name, .too_long);
            return;
        }
        const offset = self.bytes.items.len;
        try self.entries.ensureUnusedCapacity(gpa, 1);
        try self.bytes.ensureUnusedCapacity(gpa, total);
        self.bytes.appendSliceAssumeCapacity(dir_path);
        if (separator == 1) self.bytes.appendAssumeCapacity('/');
        self.bytes.appendSliceAssumeCapacity(name);
        self.entries.appendAssumeCapacity(.{ .offset = @intCast(offset), .len = @intCast(total) });
    }

    fn skip(self: *Listing, root_path: []const u8, dir_path: []const u8, name: []const u8, cause: SkipCause) void {
        self.skipped.getPtr(cause).* += 1;
        if (!log.enabled(.debug)) return;
        const root_separator = if (std.mem.endsWith(u8, root_path, "/")) "" else "/";
        const dir_separator = if (dir_path.len > 0) "/" else "";
        log.debug(.files, "listing: skipped '{f}{s}{f}{s}{f}': {s}", .{
            log.path(root_path), root_separator, log.path(dir_path), dir_separator, log.path(name), cause.describe(),
        });
    }

    fn sort(self: *Listing) void {
        std.sort.pdq(Entry, self.entries.items, self.bytes.items, lessThan);
    }

    fn lessThan(bytes: []const u8, a: Entry, b: Entry) bool {
        return std.mem.order(u8, bytes[a.offset..][0..a.len], bytes[b.offset..][0..b.len]) == .lt;
    }
};

/// Why an entry whose name looks like an image is not listed. Also the keys
/// of `stats()["skipped"]`.
pub const SkipCause = enum {
    /// A directory (or a symlink to one) named like an image.
    directory,
    /// A symlink whose target does not exist.
    broken_link,
    /// A symlink that loops (ELOOP).
    link_loop,
    /// A FIFO, socket or device, or a symlink to one: reading it could block
    /// forever or never end.
    special_file,
    /// The entry could not be examined (stat failed for another reason).
    unreadable,
    /// A path longer than `path_bytes_max`.
    too_long,
    /// A folder that could not be opened or read (any name): its contents
    /// are not listed.
    unreadable_folder,

    pub fn describe(cause: SkipCause) []const u8 {
        return switch (cause) {
            .directory => "a directory, not a file",
            .broken_link => "a symlink whose target does not exist",
            .link_loop => "a symlink loop",
            .special_file => "not a regular file (FIFO, socket or device)",
            .unreadable => "cannot be examined (stat failed)",
            .too_long => "path too long",
            .unreadable_folder => "a folder that cannot be read",
        };
    }
};

pub const Error = error{
    /// root_path does not exist (or a component is not a directory).
    RootNotFound,
    /// root_path exists but cannot be read.
    RootUnreadable,
    Canceled,
    OutOfMemory,
};

pub const Diagnostics = struct {
    /// The OS error behind RootUnreadable, for the message.
    cause: []const u8 = "",
};

/// Lists the candidates under `root_path`, sorted byte-wise by relative path.
/// Hidden files and folders are included; symlinks to files are listed under
/// the link's path; symlinked directories are not followed. `canceled` is
/// polled once per directory. Caller owns the result.
pub fn list(
    gpa: Allocator,
    io: Io,
    root_path: []const u8,
    canceled: *const std.atomic.Value(bool),
    diag: *Diagnostics,
) Error!Listing {
    var listing: Listing = .{};
    errdefer listing.deinit(gpa);

    const cwd = Io.Dir.cwd();
    const root_stat = cwd.statFile(io, root_path, .{}) catch |err| return rootError(err, diag);
    if (root_stat.kind != .directory) {
        listing.root_is_file = true;
        try listing.add(gpa, root_path, "", "");
        return listing;
    }
    const root = cwd.openDir(io, root_path, .{ .iterate = true }) catch |err| return rootError(err, diag);
    defer root.close(io);

    // Pending directories, as paths relative to root, packed into one buffer.
    var pending_bytes: std.ArrayList(u8) = .empty;
    defer pending_bytes.deinit(gpa);
    var pending: std.ArrayList(struct { offset: usize, len: usize }) = .empty;
    defer pending.deinit(gpa);
    try pending.append(gpa, .{ .offset = 0, .len = 0 });
    var dir_path: std.ArrayList(u8) = .empty;
    defer dir_path.deinit(gpa);

    while (pending.pop()) |item| {
        if (canceled.load(.acquire)) return error.Canceled;
        dir_path.clearRetainingCapacity();
        try dir_path.appendSlice(gpa, pending_bytes.items[item.offset..][0..item.len]);
        pending_bytes.shrinkRetainingCapacity(item.offset);

        const dir = if (dir_path.items.len == 0) root else root.openDir(io, dir_path.items, .{
            .iterate = true,
            .follow_symlinks = false,
        }) catch {
            listing.skip(root_path, "", dir_path.items, .unreadable_folder);
            continue;
        };
        defer if (dir_path.items.len != 0) dir.close(io);

        var it = dir.iterateAssumeFirstIteration();
        while (true) {
            const entry = it.next(io) catch {
                listing.skip(root_path, "", dir_path.items, .unreadable_folder);
                break;
            } orelse break;
            const kind = if (entry.kind == .unknown)
                (dir.statFile(io, entry.name, .{ .follow_symlinks = false }) catch {
                    if (isCandidateName(entry.name)) listing.skip(root_path, dir_path.items, entry.name, .unreadable);
                    continue;
                }).kind
            else
                entry.kind;
            switch (kind) {
                .directory => {
                    if (isCandidateName(entry.name)) listing.skip(root_path, dir_path.items, entry.name, .directory);
                    const offset = pending_bytes.items.len;
                    try pending_bytes.appendSlice(gpa, dir_path.items);
                    if (dir_path.items.len > 0) try pending_bytes.append(gpa, '/');
                    try pending_bytes.appendSlice(gpa, entry.name);
                    try pending.append(gpa, .{ .offset = offset, .len = pending_bytes.items.len - offset });
                },
                .file => if (isCandidateName(entry.name)) try listing.add(gpa, root_path, dir_path.items, entry.name),
                .sym_link => if (isCandidateName(entry.name)) {
                    // Follow links to files; links to directories are not
                    // followed (no cycles, no double listing).
                    const target = dir.statFile(io, entry.name, .{}) catch |err| {
                        listing.skip(root_path, dir_path.items, entry.name, switch (err) {
                            error.FileNotFound => .broken_link,
                            error.SymLinkLoop => .link_loop,
                            else => .unreadable,
                        });
                        continue;
                    };
                    switch (target.kind) {
                        .file => try listing.add(gpa, root_path, dir_path.items, entry.name),
                        .directory => listing.skip(root_path, dir_path.items, entry.name, .directory),
                        else => listing.skip(root_path, dir_path.items, entry.name, .special_file),
                    }
                },
                else => if (isCandidateName(entry.name)) listing.skip(root_path, dir_path.items, entry.name, .special_file),
            }
        }
    }
    listing.sort();
    return listing;
}

fn rootError(err: anyerror, diag: *Diagnostics) Error {
    diag.cause = @errorName(err);
    return switch (err) {
        error.FileNotFound, error.NotDir => error.RootNotFound,
        error.Canceled => error.Canceled,
        error.SystemResources => error.OutOfMemory,
        else => error.RootUnreadable,
    };
}

/// Joins root_path and a relative path as the reference builds ids
/// (compatibility.md §7.1.1): no normalisation, one '/' between them.
/// Caller owns the result.
pub fn joinPath(gpa: Allocator, root_path: []const u8, relative: []const u8) Allocator.Error![]u8 {
    if (relative.len == 0) return gpa.dupe(u8, root_path);
    const separator: []const u8 = if (std.mem.endsWith(u8, root_path, "/")) "" else "/";
    return std.mem.concat(gpa, u8, &.{ root_path, separator, relative });
}

/// Length of joinPath's result, to size a block before writing into it.
pub fn joinedLen(root_path: []const u8, relative: []const u8) usize {
    if (relative.len == 0) return root_path.len;
    return root_path.len + @intFromBool(!std.mem.endsWith(u8, root_path, "/")) + relative.len;
}

/// Writes joinPath's result into `out` (exactly joinedLen bytes).
pub fn joinInto(out: []u8, root_path: []const u8, relative: []const u8) void {
    std.debug.assert(out.len == joinedLen(root_path, relative));
    @memcpy(out[0..root_path.len], root_path);
    if (relative.len == 0) return;
    var at = root_path.len;
    if (!std.mem.endsWith(u8, root_path, "/")) {
        out[at] = '/';
        at += 1;
    }
    @memcpy(out[at..], relative);
}

const testing = std.testing;

test "candidate names need a real image extension" {
    try testing.expect(isCandidateName("a.jpg"));
    try testing.expect(isCandidateName("UPPER.PNG"));
    try testing.expect(isCandidateName(".hidden.webp"));
    try testing.expect(isCandidateName("x.JpEg"));
    try testing.expect(!isCandidateName("fakejpg"));
    try testing.expect(!isCandidateName("a.tiff"));
    try testing.expect(!isCandidateName("noext"));
    try testing.expect(!isCandidateName("a.jpg.txt"));
}

test "joinPath keeps root_path as given" {
    var buffer: [32]u8 = undefined;
    const cases = [_][3][]const u8{
        .{ "d1", "b.jpg", "d1/b.jpg" },
        .{ "d1/", "x/b.jpg", "d1/x/b.jpg" },
        .{ "/abs/a.png", "", "/abs/a.png" },
    };
    for (cases) |c| {
        const joined = try joinPath(testing.allocator, c[0], c[1]);
        defer testing.allocator.free(joined);
        try testing.expectEqualStrings(c[2], joined);
        const n = joinedLen(c[0], c[1]);
        joinInto(buffer[0..n], c[0], c[1]);
        try testing.expectEqualStrings(c[2], buffer[0..n]);
    }
}

test "list walks, filters and sorts a tree" {
    const io = testing.io;
    var tmp = testing.tmpDir(.{});
    defer tmp.cleanup();
    const names = [_][]const u8{ "b.jpg", "a/c.png", "a/.hidden.gif", "z.txt", "a/b/deep.webp", "fakejpg", "A.PNG" };
    for (names) |name| {
        if (std.fs.path.dirname(name)) |parent| try tmp.dir.createDirPath(io, parent);
        try tmp.dir.writeFile(io, .{ .sub_path = name, .data = "x" });
    }
    try tmp.dir.createDirPath(io, "dir.png");
    try tmp.dir.writeFile(io, .{ .sub_path = "dir.png/inner.jpg", .data = "x" });
    try tmp.dir.symLink(io, "b.jpg", "link.jpg", .{});
    try tmp.dir.symLink(io, "missing.jpg", "broken.jpg", .{});
    try tmp.dir.symLink(io, "a", "linkdir.png", .{ .is_directory = true });
    try tmp.dir.symLink(io, "loop.jpg", "loop.jpg", .{});

    var root_buffer: [std.fs.max_path_bytes]u8 = undefined;
    const root_len = try tmp.dir.realPath(io, &root_buffer);
    const root = root_buffer[0..root_len];

    var canceled: std.atomic.Value(bool) = .init(false);
    var diag: Diagnostics = .{};
    var listing = try list(testing.allocator, io, root, &canceled, &diag);
    defer listing.deinit(testing.allocator);

    const expected = [_][]const u8{ "A.PNG", "a/.hidden.gif", "a/b/deep.webp", "a/c.png", "b.jpg", "dir.png/inner.jpg", "link.jpg" };
    try testing.expectEqual(expected.len, listing.len());
    for (expected, 0..) |name, i| try testing.expectEqualStrings(name, listing.relativePath(i));
    try testing.expectEqual(@as(u64, 2), listing.skipped.get(.directory));
    try testing.expectEqual(@as(u64, 1), listing.skipped.get(.broken_link));
    try testing.expectEqual(@as(u64, 1), listing.skipped.get(.link_loop));
    try testing.expectEqual(@as(u64, 4), listing.skippedTotal());
}

test "list reports a missing root" {
    var canceled: std.atomic.Value(bool) = .init(false);
    var diag: Diagnostics = .{};
    try testing.expectError(error.RootNotFound, list(testing.allocator, testing.io, "/nonexistent/datago/root", &canceled, &diag));
}

test "a root that is a file lists that file" {
    const io = testing.io;
    var tmp = testing.tmpDir(.{});
    defer tmp.cleanup();
    try tmp.dir.writeFile(io, .{ .sub_path = "one.jpg", .data = "x" });
    var root_buffer: [std.fs.max_path_bytes]u8 = undefined;
    const root_len = try tmp.dir.realPath(io, &root_buffer);
    const path = try std.mem.concat(testing.allocator, u8, &.{ root_buffer[0..root_len], "/one.jpg" });
    defer testing.allocator.free(path);
    var canceled: std.atomic.Value(bool) = .init(false);
    var diag: Diagnostics = .{};
    var listing = try list(testing.allocator, io, path, &canceled, &diag);
    defer listing.deinit(testing.allocator);
    try testing.expect(listing.root_is_file);
    try testing.expectEqual(@as(usize, 1), listing.len());
    try testing.expectEqualStrings("", listing.relativePath(0));
}
