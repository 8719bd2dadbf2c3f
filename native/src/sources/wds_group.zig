//! WebDataset grouping: consecutive tar members that share a key form one
//! sample (issue 17; compatibility.md §7.2 for the roles).
//!
//! The key is WebDataset's: the member's path up to the first dot of its file
//! name (`a/x.seg.png` → `a/x`). Unlike the reference, whose key drops only
//! the last extension, `x.jpg, x.seg.png, x.json` is one sample, as
//! WebDataset writers intend; and the directory is part of the key, so
//! `a/x.jpg, b/x.txt` are two. Members whose file name has no dot or starts
//! with one (`README`, `._x.jpg`) have no key: WebDataset skips them, and so
//! do we, without closing the group around them. Members that are not
//! regular files are skipped the same way.
//!
//! Roles inside a group (`extension` = the text after the last dot, `suffix`
//! = the text after the first dot of the file name; both case-sensitive):
//! - `image`: the first member whose suffix is `reference_image_type`;
//! - `additional_image`: any other member with an image extension
//!   (`jpg`, `jpeg`, `png`, or the reference type's own);
//! - `attribute`: `cls`, `json`, `txt`, keyed by extension by the caller;
//! - anything else is counted and skipped unread.
//! The image is moved to the front; the rest keep tar order.
//!
//! A group without an image, or over `sample_bytes_max` / `entries_max`, is
//! still returned, with its `problem` set and no data, so that the caller can
//! count and log it with the shard's URL. Groups and members that belong to
//! another (rank, worker) (`shard_split.Filter`) are consumed unread and not
//! returned.
//!
//! Memory: one byte buffer grown to the largest sample seen (bounded by
//! `sample_bytes_max`) and fixed entry storage; in steady state `next`
//! allocates nothing.
const std = @import("std");
const assert = std.debug.assert;
const Allocator = std.mem.Allocator;
const tar = @import("tar.zig");
const shard_split = @import("shard_split.zig");

/// Image extensions of compatibility.md §7.2 (`webp` is skipped there, unless it is the
/// reference type).
pub const image_extensions = [_][]const u8{ "jpg", "jpeg", "png" };
/// Text members kept as attributes (compatibility.md §7.2).
pub const attribute_extensions = [_][]const u8{ "cls", "json", "txt" };
/// Most members kept per sample; beyond it the sample is `too_large`.
pub const entries_max = 64;
/// Upper bound for `Options.sample_bytes_max`.
pub const sample_bytes_limit: u64 = 1 << 30;

pub const Role = enum { image, additional_image, attribute };

pub const Entry = struct {
    /// Full path inside the tar (additional images are keyed by it).
    path: []const u8,
    /// The text after the last dot of the file name.
    extension: []const u8,
    role: Role,
    data: []const u8,
};

pub const Problem = enum {
    /// No member with the reference image type.
    no_image,
    /// More than `sample_bytes_max` bytes or `entries_max` members to keep.
    too_large,
};

/// One group. Every slice is borrowed from the grouper until the next call
/// to `next`.
pub const Group = struct {
    /// The path up to the first dot of the file name.
    key: []const u8,
    /// Offset in the tar stream of the group's first member header.
    offset: u64,
    /// Kept members, the image first. Empty when `problem == .too_large`.
    entries: []const Entry,
    /// Why the group makes no sample; null when it does.
    problem: ?Problem,

    /// The key's file-name part: what the reference uses as the sample id
    /// whenever the image is `<key>.<reference type>`.
    pub fn name(group: Group) []const u8 {
        const slash = std.mem.findScalarLast(u8, group.key, '/') orelse return group.key;
        return group.key[slash + 1 ..];
    }

    pub fn image(group: Group) ?Entry {
        if (group.entries.len == 0 or group.entries[0].role != .image) return null;
        return group.entries[0];
    }
};

pub const Options = struct {
    reference_image_type: []const u8 = "jpg",
    sample_bytes_max: u64 = 64 * 1024 * 1024,
    filter: shard_split.Filter = .{},
};

/// What was skipped without becoming part of a returned group.
pub const Counts = struct {
    /// Directories, links and other non-files.
    non_files: u64 = 0,
    /// Files without a WebDataset key.
    members_without_key: u64 = 0,
    /// Members of a kept group with no role (`.npy`, `.webp`, `x.JPG`, ...).
    members_ignored: u64 = 0,
    /// Members left to another (rank, worker) by a `.member` filter.
    members_filtered: u64 = 0,
    /// Groups left to another (rank, worker) by a `.group` filter.
    groups_filtered: u64 = 0,
};

/// Where one entry's bytes are in `Grouper.bytes`.
const Span = struct {
    path_start: u32,
    path_len: u32,
    extension_len: u32,
    data_start: u32,
    data_len: u32,
    role: Role,
};

pub const Grouper = struct {
    reader: *tar.Reader,
    options: Options,
    /// The current key, then each kept entry's path and data.
    bytes: std.ArrayList(u8),
    spans: [entries_max]Span,
    span_count: usize,
    entries: [entries_max]Entry,
    key_len: usize,
    offset: u64,
    problem: ?Problem,
    filtered_out: bool,
    /// A member already read past (the first of the next group).
    pending: ?tar.Member,
    counts: Counts,

    pub const Error = tar.Error || Allocator.Error;

    /// Asserts `options.sample_bytes_max <= sample_bytes_limit`.
    pub fn init(reader: *tar.Reader, options: Options) Grouper {
        assert(options.sample_bytes_max <= sample_bytes_limit);
        assert(options.reference_image_type.len > 0);
        return .{
            .reader = reader,
            .options = options,
            .bytes = .empty,
            .spans = undefined,
            .span_count = 0,
            .entries = undefined,
            .key_len = 0,
            .offset = 0,
            .problem = null,
            .filtered_out = false,
            .pending = null,
            .counts = .{},
        };
    }

    pub fn deinit(g: *Grouper, gpa: Allocator) void {
        g.bytes.deinit(gpa);
        g.* = undefined;
    }

    /// The next group, or null at the end of the archive. Errors are the tar
    /// reader's (the group being read when it failed is lost) or
    /// OutOfMemory.
    pub fn next(g: *Grouper, gpa: Allocator) Error!?Group {
        while (try g.collect(gpa)) {
            if (g.filtered_out) {
                g.counts.groups_filtered += 1;
                continue;
            }
            return g.finish();
        }
        return null;
    }

    /// Where a reader started afresh (`tar.Reader.initAt`) returns the
    /// groups after the one `next` last returned: the offset of the header
    /// that closed it (the next group's first member; members skipped in
    /// between are skipped again), or null when the archive ended after it.
    /// What follows is grouped and filtered exactly as in the whole read.
    pub fn resumeOffset(g: *const Grouper) ?u64 {
        const pending = g.pending orelse return null;
        return pending.offset;
    }

    /// Reads the members of one group; false when the archive has none left.
    fn collect(g: *Grouper, gpa: Allocator) Error!bool {
        g.bytes.clearRetainingCapacity();
        g.span_count = 0;
        g.key_len = 0;
        g.problem = null;
        g.filtered_out = false;
        var open = false;
        while (true) {
            const member = if (g.pending) |pending| pending else try g.reader.next() orelse return open;
            g.pending = null;
            if (member.kind != .file) {
                g.counts.non_files += 1;
                continue;
            }
            const key = groupKey(member.name) orelse {
                g.counts.members_without_key += 1;
                continue;
            };
            const filter = g.options.filter;
            if (filter.key_kind == .member and !filter.keeps(shard_split.memberKey(member.name))) {
                g.counts.members_filtered += 1;
                continue;
            }
            if (open and !std.mem.eql(u8, key, g.bytes.items[0..g.key_len])) {
                g.pending = member;
                return true;
            }
            if (!open) {
                open = true;
                try g.start(gpa, key, member.offset);
            }
            try g.add(gpa, member);
        }
    }

    fn start(g: *Grouper, gpa: Allocator, key: []const u8, offset: u64) Allocator.Error!void {
        try g.bytes.appendSlice(gpa, key);
        g.key_len = key.len;
        g.offset = offset;
        const filter = g.options.filter;
        g.filtered_out = filter.key_kind == .group and !filter.keeps(key);
    }

    fn add(g: *Grouper, gpa: Allocator, member: tar.Member) Error!void {
        // Data left unread is skipped by the reader's next().
        if (g.filtered_out or g.problem == .too_large) return;
        const role = g.roleOf(member.name) orelse {
            g.counts.members_ignored += 1;
            return;
        };
        const total = g.bytes.items.len + member.name.len + member.size;
        if (g.span_count == entries_max or total > g.options.sample_bytes_max) {
            g.problem = .too_large;
            g.bytes.shrinkRetainingCapacity(g.key_len);
            g.span_count = 0;
            return;
        }
        const size: usize = @intCast(member.size);
        try g.bytes.ensureUnusedCapacity(gpa, member.name.len + size);
        const path_start = g.bytes.items.len;
        g.bytes.appendSliceAssumeCapacity(member.name);
        const data_start = g.bytes.items.len;
        try g.reader.readAll(g.bytes.unusedCapacitySlice()[0..size]);
        g.bytes.items.len += size;
        const span: Span = .{
            .path_start = @intCast(path_start),
            .path_len = @intCast(member.name.len),
            .extension_len = @intCast(extensionOf(member.name).len),
            .data_start = @intCast(data_start),
            .data_len = @intCast(size),
            .role = role,
        };
        // The image goes first; the others keep tar order.
        const index = if (role == .image) 0 else g.span_count;
        std.mem.copyBackwards(Span, g.spans[index + 1 .. g.span_count + 1], g.spans[index..g.span_count]);
        g.spans[index] = span;
        g.span_count += 1;
    }

    fn roleOf(g: *const Grouper, path: []const u8) ?Role {
        const extension = extensionOf(path);
        const reference = g.options.reference_image_type;
        const has_image = g.span_count > 0 and g.spans[0].role == .image;
        if (!has_image and std.mem.eql(u8, suffixOf(path), reference)) return .image;
        const reference_extension = if (std.mem.findScalarLast(u8, reference, '.')) |dot| reference[dot + 1 ..] else reference;
        if (std.mem.eql(u8, extension, reference_extension)) return .additional_image;
        for (image_extensions) |e| if (std.mem.eql(u8, extension, e)) return .additional_image;
        for (attribute_extensions) |e| if (std.mem.eql(u8, extension, e)) return .attribute;
        return null;
    }

    fn finish(g: *Grouper) Group {
        for (g.spans[0..g.span_count], g.entries[0..g.span_count]) |span, *entry| {
            const path = g.bytes.items[span.path_start..][0..span.path_len];
            entry.* = .{
                .path = path,
                .extension = path[path.len - span.extension_len ..],
                .role = span.role,
                .data = g.bytes.items[span.data_start..][0..span.data_len],
            };
        }
        const entries = g.entries[0..g.span_count];
        var problem = g.problem;
        if (problem == null and (entries.len == 0 or entries[0].role != .image)) problem = .no_image;
        return .{
            .key = g.bytes.items[0..g.key_len],
            .offset = g.offset,
            .entries = entries,
            .problem = problem,
        };
    }
};

fn baseStart(path: []const u8) usize {
    const slash = std.mem.findScalarLast(u8, path, '/') orelse return 0;
    return slash + 1;
}

/// WebDataset's key: the path up to the first dot of the file name; null
/// when the file name has no dot or starts with one.
pub fn groupKey(path: []const u8) ?[]const u8 {
    const start = baseStart(path);
    const dot = std.mem.findScalar(u8, path[start..], '.') orelse return null;
    if (dot == 0) return null;
    return path[0 .. start + dot];
}

/// The text after the first dot of the file name ("" without a dot).
fn suffixOf(path: []const u8) []const u8 {
    const base = path[baseStart(path)..];
    const dot = std.mem.findScalar(u8, base, '.') orelse return "";
    return base[dot + 1 ..];
}

/// The text after the last dot of the file name ("" without a dot).
fn extensionOf(path: []const u8) []const u8 {
    const base = path[baseStart(path)..];
    const dot = std.mem.findScalarLast(u8, base, '.') orelse return "";
    return base[dot + 1 ..];
}

const testing = std.testing;
const Io = std.Io;

const TestFile = struct { name: []const u8, data: []const u8 = "d" };

fn buildTar(gpa: Allocator, files: []const TestFile) ![]u8 {
    var out: Io.Writer.Allocating = .init(gpa);
    defer out.deinit();
    var writer: std.tar.Writer = .{ .underlying_writer = &out.writer };
    for (files) |file| {
        if (std.mem.endsWith(u8, file.name, "/")) {
            try writer.writeDir(file.name[0 .. file.name.len - 1], .{});
        } else {
            try writer.writeFileBytes(file.name, file.data, .{});
        }
    }
    try writer.finishPedantically();
    return out.toOwnedSlice();
}

/// Groups `archive` and describes every group as
/// "key[problem]:path=role,path=role;" (data of text entries shown inline).
const Harness = struct {
    window: *[tar.window_bytes]u8,
    reader: *tar.Reader,
    source: Io.Reader,
    grouper: Grouper,

    fn create(archive: []const u8, options: Options) !*Harness {
        const h = try testing.allocator.create(Harness);
        errdefer testing.allocator.destroy(h);
        h.window = try testing.allocator.create([tar.window_bytes]u8);
        errdefer testing.allocator.destroy(h.window);
        h.reader = try testing.allocator.create(tar.Reader);
        h.source = .fixed(archive);
        try h.reader.init(&h.source, h.window);
        h.grouper = .init(h.reader, options);
        return h;
    }

    fn destroy(h: *Harness) void {
        h.grouper.deinit(testing.allocator);
        testing.allocator.destroy(h.reader);
        testing.allocator.destroy(h.window);
        testing.allocator.destroy(h);
    }

    fn describeAll(h: *Harness) ![]u8 {
        var out: Io.Writer.Allocating = .init(testing.allocator);
        defer out.deinit();
        while (try h.grouper.next(testing.allocator)) |group| {
            try out.writer.writeAll(group.key);
            if (group.problem) |problem| try out.writer.print("[{t}]", .{problem});
            try out.writer.writeByte(':');
            for (group.entries) |entry| {
                try out.writer.print("{s}={t}", .{ entry.path, entry.role });
                if (entry.role == .attribute) try out.writer.print("({s}:{s})", .{ entry.extension, entry.data });
                try out.writer.writeByte(',');
            }
            try out.writer.writeByte(';');
        }
        return out.toOwnedSlice();
    }
};

fn expectGroups(files: []const TestFile, options: Options, expected: []const u8) !Counts {
    const archive = try buildTar(testing.allocator, files);
    defer testing.allocator.free(archive);
    const h = try Harness.create(archive, options);
    defer h.destroy();
    const described = try h.describeAll();
    defer testing.allocator.free(described);
    try testing.expectEqualStrings(expected, described);
    return h.grouper.counts;
}

test "consecutive members with one key form a sample; image first, attributes by extension" {
    const counts = try expectGroups(&.{
        .{ .name = "s0.txt", .data = "caption" },
        .{ .name = "s0.jpg" },
        .{ .name = "s0.json", .data = "{\"i\": 0}" },
        .{ .name = "s1.jpg" },
        .{ .name = "s1.cls", .data = "7" },
    }, .{}, "s0:s0.jpg=image,s0.txt=attribute(txt:caption),s0.json=attribute(json:{\"i\": 0}),;" ++
        "s1:s1.jpg=image,s1.cls=attribute(cls:7),;");
    try testing.expectEqual(Counts{}, counts);
}

test "WebDataset keys: the first dot, with the directory" {
    _ = try expectGroups(&.{
        .{ .name = "x.json", .data = "{}" },
        .{ .name = "x.seg.png" },
        .{ .name = "x.jpg" },
        .{ .name = "x.seg.jpg" },
        .{ .name = "a/y.jpg" },
        .{ .name = "a/y.txt", .data = "t" },
        .{ .name = "b/y.txt", .data = "u" },
    }, .{}, "x:x.jpg=image,x.json=attribute(json:{}),x.seg.png=additional_image,x.seg.jpg=additional_image,;" ++
        "a/y:a/y.jpg=image,a/y.txt=attribute(txt:t),;" ++
        "b/y[no_image]:b/y.txt=attribute(txt:u),;");
}

test "members that are not adjacent are not merged" {
    _ = try expectGroups(&.{
        .{ .name = "x.jpg" },
        .{ .name = "y.jpg" },
        .{ .name = "x.txt", .data = "late" },
    }, .{}, "x:x.jpg=image,;y:y.jpg=image,;x[no_image]:x.txt=attribute(txt:late),;");
}

test "groups without the reference image are flagged; image types are case-sensitive" {
    const counts = try expectGroups(&.{
        .{ .name = "t.txt", .data = "only text" },
        .{ .name = "u.JPG" },
        .{ .name = "v.png" },
        .{ .name = "w.jpeg" },
    }, .{}, "t[no_image]:t.txt=attribute(txt:only text),;u[no_image]:;v[no_image]:v.png=additional_image,;" ++
        "w[no_image]:w.jpeg=additional_image,;");
    try testing.expectEqual(@as(u64, 1), counts.members_ignored);
}

test "reference_image_type picks the image" {
    _ = try expectGroups(&.{
        .{ .name = "x.jpg" },
        .{ .name = "x.png" },
    }, .{ .reference_image_type = "png" }, "x:x.png=image,x.jpg=additional_image,;");
    _ = try expectGroups(&.{
        .{ .name = "x.webp" },
        .{ .name = "x.seg.webp" },
    }, .{ .reference_image_type = "webp" }, "x:x.webp=image,x.seg.webp=additional_image,;");
}

test "skipped members neither join nor split a group" {
    const counts = try expectGroups(&.{
        .{ .name = "d/" },
        .{ .name = "d/x.jpg" },
        .{ .name = "d/README" },
        .{ .name = "d/._x.jpg" },
        .{ .name = "d/x.npy" },
        .{ .name = "d/x.webp" },
        .{ .name = "d/x.json", .data = "{}" },
    }, .{}, "d/x:d/x.jpg=image,d/x.json=attribute(json:{}),;");
    try testing.expectEqual(Counts{ .non_files = 1, .members_without_key = 2, .members_ignored = 2 }, counts);
}

test "a sample over its byte or entry limit is flagged and the next one is whole" {
    _ = try expectGroups(&.{
        .{ .name = "big.jpg", .data = "x" },
        .{ .name = "big.txt", .data = "0123456789" },
        .{ .name = "ok.jpg" },
    }, .{ .sample_bytes_max = 24 }, "big[too_large]:;ok:ok.jpg=image,;");

    var files: [entries_max + 2]TestFile = undefined;
    var names: [entries_max + 2][16]u8 = undefined;
    for (&files, &names, 0..) |*file, *name_buffer, i| {
        const text = if (i == entries_max + 1)
            try std.fmt.bufPrint(name_buffer, "next.jpg", .{})
        else
            try std.fmt.bufPrint(name_buffer, "m.{d}.png", .{i});
        file.* = .{ .name = text };
    }
    _ = try expectGroups(&files, .{}, "m[too_large]:;next:next.jpg=image,;");
}

test "sample_hash filters members by the reference's key before grouping" {
    // compatibility.md §6.2 vectors: x1 and x1.seg go to rank 1 of 2, img-42 to rank 0.
    const files = [_]TestFile{
        .{ .name = "x1.jpg" },
        .{ .name = "x1.seg.png" },
        .{ .name = "img-42.jpg" },
        .{ .name = "img-42.txt", .data = "t" },
    };
    const rank_one = try expectGroups(&files, .{ .filter = .{ .modulus = 2, .residue = 1, .key_kind = .member } }, //
        "x1:x1.jpg=image,x1.seg.png=additional_image,;");
    try testing.expectEqual(@as(u64, 2), rank_one.members_filtered);
    // img-42.txt's own key "img-42" is rank 0 too, so the sample stays whole.
    _ = try expectGroups(&files, .{ .filter = .{ .modulus = 2, .residue = 0, .key_kind = .member } }, //
        "img-42:img-42.jpg=image,img-42.txt=attribute(txt:t),;");
}

test "a group filter hands each sample to exactly one slot" {
    var files: [40]TestFile = undefined;
    var names: [40][16]u8 = undefined;
    for (&files, &names, 0..) |*file, *name_buffer, i| {
        file.* = .{ .name = try std.fmt.bufPrint(name_buffer, "k{d}.{s}", .{ i / 2, if (i % 2 == 0) "jpg" else "txt" }) };
    }
    const archive = try buildTar(testing.allocator, &files);
    defer testing.allocator.free(archive);
    var seen: [20]u8 = @splat(0);
    const slots = 3;
    for (0..slots) |slot| {
        const h = try Harness.create(archive, .{ .filter = .{ .modulus = slots, .residue = slot } });
        defer h.destroy();
        var returned: u64 = 0;
        while (try h.grouper.next(testing.allocator)) |group| {
            try testing.expect(group.problem == null);
            try testing.expectEqual(@as(usize, 2), group.entries.len);
            seen[try std.fmt.parseUnsigned(usize, group.key[1..], 10)] += 1;
            returned += 1;
        }
        try testing.expectEqual(@as(u64, 20), returned + h.grouper.counts.groups_filtered);
    }
    for (seen) |count| try testing.expectEqual(@as(u8, 1), count);
}

test "a truncated shard delivers its whole groups, then the error" {
    const archive = try buildTar(testing.allocator, &.{
        .{ .name = "a.jpg" },
        .{ .name = "b.jpg" },
        .{ .name = "b.txt", .data = "cut inside this member" },
    });
    defer testing.allocator.free(archive);
    // Cut inside b.txt's data block.
    const h = try Harness.create(archive[0 .. 4 * tar.block_bytes + 10], .{});
    defer h.destroy();
    const first = (try h.grouper.next(testing.allocator)).?;
    try testing.expectEqualStrings("a", first.key);
    try testing.expectEqual(@as(u64, 0), first.offset);
    try testing.expectError(error.Truncated, h.grouper.next(testing.allocator));
}

test "group offsets point at the first member header" {
    const archive = try buildTar(testing.allocator, &.{
        .{ .name = "a.jpg", .data = "x" },
        .{ .name = "a.txt", .data = "y" },
        .{ .name = "b.jpg" },
    });
    defer testing.allocator.free(archive);
    const h = try Harness.create(archive, .{});
    defer h.destroy();
    try testing.expectEqual(@as(u64, 0), (try h.grouper.next(testing.allocator)).?.offset);
    const second = (try h.grouper.next(testing.allocator)).?;
    try testing.expectEqual(@as(u64, 4 * tar.block_bytes), second.offset);
    try testing.expectEqualStrings("b", second.name());
    try testing.expectEqual(@as(?Group, null), try h.grouper.next(testing.allocator));
}

test "re-reading from resumeOffset gives the remaining groups, filters included" {
    var files: [30]TestFile = undefined;
    var names: [30][16]u8 = undefined;
    for (&files, &names, 0..) |*file, *name_buffer, i| {
        // Groups of one to three members, with keyless members between.
        const text = switch (i % 5) {
            0, 1 => try std.fmt.bufPrint(name_buffer, "k{d}.jpg", .{i / 2}),
            2 => try std.fmt.bufPrint(name_buffer, "k{d}.txt", .{i / 2 - 1}),
            3 => try std.fmt.bufPrint(name_buffer, "README{d}", .{i}),
            else => try std.fmt.bufPrint(name_buffer, "n{d}.cls", .{i}),
        };
        file.* = .{ .name = text, .data = "v" };
    }
    const archive = try buildTar(testing.allocator, &files);
    defer testing.allocator.free(archive);
    for ([_]shard_split.Filter{ .{}, .{ .modulus = 2, .residue = 1 }, .{ .modulus = 3, .residue = 0, .key_kind = .member } }) |filter| {
        const whole = try Harness.create(archive, .{ .filter = filter });
        defer whole.destroy();
        const expected = try whole.describeAll();
        defer testing.allocator.free(expected);
        // After each group: the description of the rest from its offset.
        const walk = try Harness.create(archive, .{ .filter = filter });
        defer walk.destroy();
        var done: usize = 0;
        while (try walk.grouper.next(testing.allocator)) |group| {
            done = std.mem.findScalarPos(u8, expected, done, ';').? + 1;
            _ = group;
            const offset = walk.grouper.resumeOffset() orelse {
                try testing.expectEqual(expected.len, done);
                break;
            };
            const rest = try Harness.create(archive[@intCast(offset)..], .{ .filter = filter });
            defer rest.destroy();
            try rest.reader.initAt(&rest.source, rest.window, .{ .offset = offset });
            rest.grouper = .init(rest.reader, .{ .filter = filter });
            const tail = try rest.describeAll();
            defer testing.allocator.free(tail);
            try testing.expectEqualStrings(expected[done..], tail);
        }
    }
}

test "groupKey follows WebDataset's pattern" {
    try testing.expectEqualStrings("a/b/x", groupKey("a/b/x.seg.png").?);
    try testing.expectEqualStrings("x1", groupKey("x1.jpg").?);
    try testing.expectEqualStrings("a.b/x", groupKey("a.b/x.jpg").?);
    try testing.expectEqual(@as(?[]const u8, null), groupKey("noext"));
    try testing.expectEqual(@as(?[]const u8, null), groupKey("d/.hidden.jpg"));
    try testing.expectEqualStrings("json", extensionOf("a/x.meta.json"));
    try testing.expectEqualStrings("meta.json", suffixOf("a/x.meta.json"));
}

test "grouping survives every allocation failure without leaking" {
    const archive = try buildTar(testing.allocator, &.{
        .{ .name = "a.jpg", .data = "image bytes" },
        .{ .name = "a.json", .data = "{}" },
        .{ .name = "b.jpg", .data = "more image bytes" },
    });
    defer testing.allocator.free(archive);
    try testing.checkAllAllocationFailures(testing.allocator, struct {
        fn run(gpa: Allocator, bytes: []const u8) !void {
            const window = try gpa.create([tar.window_bytes]u8);
            defer gpa.destroy(window);
            const reader = try gpa.create(tar.Reader);
            defer gpa.destroy(reader);
            var source: Io.Reader = .fixed(bytes);
            try reader.init(&source, window);
            var grouper: Grouper = .init(reader, .{});
            defer grouper.deinit(gpa);
            var count: usize = 0;
            while (try grouper.next(gpa)) |_| count += 1;
            try testing.expectEqual(@as(usize, 2), count);
        }
    }.run, .{archive});
}
