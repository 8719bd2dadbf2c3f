//! Brace expansion of a WebDataset `url` into the list of shard URLs, exactly
//! as compatibility.md §7.2 describes the reference:
//!
//! - lists `{a,b}` and nested lists `{a,{b,c}d}` → `a`, `bd`, `cd`; a single
//!   item `{one}` → `one`; empty braces `x{}` → `x`;
//! - several groups form a cartesian product, the leftmost group varying
//!   slowest: `{1..2}{a,b}` → `1a`, `1b`, `2a`, `2b`;
//! - ascending inclusive numeric ranges `{9..11}`; zero padding when either
//!   endpoint has a leading zero, to the width of the wider endpoint
//!   (`{001..3}` → `001`, `002`, `003`; `{1..010}` → `001` ... `010`);
//! - descending, negative, letter and stepped ranges and unbalanced braces are
//!   errors (the reference silently yields nothing; we refuse the config).
//!
//! A comma outside braces is literal text; inside a list an item is literal
//! text except for its own nested braces (so `{1..2,x}` is the two items
//! `1..2` and `x`, as in bash). A brace group is a range only when its whole
//! content is `digits..digits`-like: no comma, no nested brace, and `..`.
//!
//! Every dimension is bounded before memory is spent: the pattern length, the
//! nesting depth, the number of expansions and their total bytes. A range is
//! sized from its endpoints before any string is made, so `{0..99999999999}`
//! costs nothing but an error.
const std = @import("std");
const assert = std.debug.assert;
const Allocator = std.mem.Allocator;

/// Longest pattern accepted; a `url` config value longer than this is not a
/// shard pattern anyone writes by hand.
pub const pattern_bytes_max = 64 * 1024;
/// Deepest brace nesting; bounds the parser's recursion.
pub const depth_max = 16;
/// Most URLs one pattern may expand to (LAION-5B's largest split has ~231k
/// shards; four times that still fits).
pub const expansions_max = 1 << 20;
/// Most bytes all expansions together may take: 1 Mi URLs of 64 bytes.
pub const expanded_bytes_max = 64 * 1024 * 1024;
/// Longest range endpoint: 18 digits always fit in a u64.
const range_digits_max = 18;

comptime {
    assert(expanded_bytes_max <= std.math.maxInt(u32));
    assert(expansions_max <= expanded_bytes_max);
    assert(pattern_bytes_max <= expanded_bytes_max);
}

pub const Error = Allocator.Error || error{
    /// A `{` without its `}`, or a `}` without its `{`.
    Unbalanced,
    /// `{a..c}`, `{3..1}`, `{-1..1}`, `{0..10..5}`, or an endpoint too long.
    InvalidRange,
    /// More than `expansions_max` URLs or `expanded_bytes_max` bytes.
    TooMany,
    /// The pattern is longer than `pattern_bytes_max`.
    TooLong,
    /// Braces nested deeper than `depth_max`.
    TooDeep,
};

/// Where the pattern was found at fault: the byte offset of the offending
/// character (or of the group's `{`).
pub const Diagnostics = struct {
    offset: usize = 0,
};

/// The expanded URLs, in expansion order, packed in one buffer.
pub const Expansion = struct {
    bytes: []u8,
    /// `ends[i]` is one past the last byte of URL i in `bytes`.
    ends: []u32,

    pub fn deinit(self: *Expansion, gpa: Allocator) void {
        gpa.free(self.bytes);
        gpa.free(self.ends);
        self.* = undefined;
    }

    pub fn count(self: *const Expansion) usize {
        return self.ends.len;
    }

    /// URL `index`, borrowed from the expansion.
    pub fn get(self: *const Expansion, index: usize) []const u8 {
        const start: usize = if (index == 0) 0 else self.ends[index - 1];
        return self.bytes[start..self.ends[index]];
    }
};

/// Expands `pattern`. Caller owns the result. On error `diagnostics` (when
/// given) holds the offset at fault.
pub fn expand(gpa: Allocator, pattern: []const u8, diagnostics: ?*Diagnostics) Error!Expansion {
    var parser: Parser = .{ .gpa = gpa, .pattern = pattern, .offset = 0 };
    errdefer if (diagnostics) |d| {
        d.offset = parser.offset;
    };
    if (pattern.len > pattern_bytes_max) return error.TooLong;
    var result = try parser.sequence(.top, 0);
    errdefer result.deinit(gpa);
    assert(parser.offset == pattern.len);
    return result.toOwned(gpa);
}

/// A list of strings under construction, packed like `Expansion`.
const Strings = struct {
    bytes: std.ArrayList(u8) = .empty,
    ends: std.ArrayList(u32) = .empty,

    fn deinit(self: *Strings, gpa: Allocator) void {
        self.bytes.deinit(gpa);
        self.ends.deinit(gpa);
        self.* = undefined;
    }

    fn count(self: *const Strings) usize {
        return self.ends.items.len;
    }

    fn get(self: *const Strings, index: usize) []const u8 {
        const start: usize = if (index == 0) 0 else self.ends.items[index - 1];
        return self.bytes.items[start..self.ends.items[index]];
    }

    /// Appends one string made of `parts` concatenated, within the limits.
    fn append(self: *Strings, gpa: Allocator, parts: []const []const u8) Error!void {
        var len: usize = 0;
        for (parts) |part| len += part.len;
        if (self.count() + 1 > expansions_max) return error.TooMany;
        if (self.bytes.items.len + len > expanded_bytes_max) return error.TooMany;
        try self.bytes.ensureUnusedCapacity(gpa, len);
        try self.ends.ensureUnusedCapacity(gpa, 1);
        for (parts) |part| self.bytes.appendSliceAssumeCapacity(part);
        self.ends.appendAssumeCapacity(@intCast(self.bytes.items.len));
    }

    /// Appends every string of `other`, in order.
    fn appendAll(self: *Strings, gpa: Allocator, other: *const Strings) Error!void {
        for (0..other.count()) |i| try self.append(gpa, &.{other.get(i)});
    }

    /// Every string of `self` followed by every string of `suffixes`, the
    /// left factor varying slowest.
    fn product(self: *const Strings, gpa: Allocator, suffixes: *const Strings) Error!Strings {
        const total = std.math.mul(usize, self.count(), suffixes.count()) catch return error.TooMany;
        if (total > expansions_max) return error.TooMany;
        var result: Strings = .{};
        errdefer result.deinit(gpa);
        for (0..self.count()) |i| {
            for (0..suffixes.count()) |j| try result.append(gpa, &.{ self.get(i), suffixes.get(j) });
        }
        return result;
    }

    fn toOwned(self: *Strings, gpa: Allocator) Allocator.Error!Expansion {
        const ends = try self.ends.toOwnedSlice(gpa);
        errdefer gpa.free(ends);
        const bytes = try self.bytes.toOwnedSlice(gpa);
        return .{ .bytes = bytes, .ends = ends };
    }
};

const Parser = struct {
    gpa: Allocator,
    pattern: []const u8,
    offset: usize,

    const Level = enum { top, group };

    /// Parses a sequence of literal text and brace groups up to the end of
    /// the pattern (top level) or up to a `,` or `}` of the enclosing group,
    /// which is left unconsumed.
    fn sequence(p: *Parser, level: Level, depth: u32) Error!Strings {
        var result: Strings = .{};
        errdefer result.deinit(p.gpa);
        try result.append(p.gpa, &.{""});
        while (p.offset < p.pattern.len) {
            const c = p.pattern[p.offset];
            var part: Strings = switch (c) {
                '{' => try p.group(depth + 1),
                '}' => if (level == .group) break else return error.Unbalanced,
                ',' => if (level == .group) break else try p.literal(level),
                else => try p.literal(level),
            };
            defer part.deinit(p.gpa);
            const next = try result.product(p.gpa, &part);
            result.deinit(p.gpa);
            result = next;
        }
        return result;
    }

    /// A run of text without braces (and, inside a group, without commas).
    fn literal(p: *Parser, level: Level) Error!Strings {
        const start = p.offset;
        while (p.offset < p.pattern.len) : (p.offset += 1) {
            switch (p.pattern[p.offset]) {
                '{', '}' => break,
                ',' => if (level == .group) break,
                else => {},
            }
        }
        assert(p.offset > start);
        var result: Strings = .{};
        errdefer result.deinit(p.gpa);
        try result.append(p.gpa, &.{p.pattern[start..p.offset]});
        return result;
    }

    /// Parses `{...}` starting at the `{`: a range or a list of alternatives.
    fn group(p: *Parser, depth: u32) Error!Strings {
        assert(p.pattern[p.offset] == '{');
        if (depth > depth_max) return error.TooDeep;
        const open = p.offset;
        if (p.flatContent(open)) |content| {
            if (std.mem.find(u8, content, "..") != null) {
                const result = try p.range(content);
                p.offset = open + 1 + content.len + 1;
                return result;
            }
        }
        p.offset += 1;
        var result: Strings = .{};
        errdefer result.deinit(p.gpa);
        while (true) {
            var item = try p.sequence(.group, depth);
            defer item.deinit(p.gpa);
            try result.appendAll(p.gpa, &item);
            if (p.offset == p.pattern.len) {
                p.offset = open;
                return error.Unbalanced;
            }
            const c = p.pattern[p.offset];
            p.offset += 1;
            if (c == '}') return result;
            assert(c == ',');
        }
    }

    /// The text between `{` at `open` and the next `}` if it holds no other
    /// brace and no comma; null otherwise.
    fn flatContent(p: *const Parser, open: usize) ?[]const u8 {
        const rest = p.pattern[open + 1 ..];
        const close = std.mem.findAny(u8, rest, "{},") orelse return null;
        if (rest[close] != '}') return null;
        return rest[0..close];
    }

    /// `{a..b}` with decimal endpoints, a <= b.
    fn range(p: *Parser, content: []const u8) Error!Strings {
        const dots = std.mem.find(u8, content, "..").?;
        const first = content[0..dots];
        const last = content[dots + 2 ..];
        const low = parseEndpoint(first) orelse return error.InvalidRange;
        const high = parseEndpoint(last) orelse return error.InvalidRange;
        if (low > high) return error.InvalidRange;
        if (high - low >= expansions_max) return error.TooMany;
        const padded = hasLeadingZero(first) or hasLeadingZero(last);
        const width: usize = if (padded) @max(first.len, last.len) else 0;
        var result: Strings = .{};
        errdefer result.deinit(p.gpa);
        var digits: [range_digits_max]u8 = undefined;
        var n = low;
        while (n <= high) : (n += 1) {
            const text = formatPadded(&digits, n, width);
            try result.append(p.gpa, &.{text});
        }
        return result;
    }
};

fn parseEndpoint(text: []const u8) ?u64 {
    if (text.len == 0 or text.len > range_digits_max) return null;
    for (text) |c| if (!std.ascii.isDigit(c)) return null;
    return std.fmt.parseUnsigned(u64, text, 10) catch null;
}

fn hasLeadingZero(text: []const u8) bool {
    return text.len > 1 and text[0] == '0';
}

/// `n` in decimal, left-padded with zeros to `width` digits.
fn formatPadded(buffer: *[range_digits_max]u8, n: u64, width: usize) []const u8 {
    assert(width <= range_digits_max);
    var end: usize = buffer.len;
    var rest = n;
    while (true) {
        end -= 1;
        buffer[end] = '0' + @as(u8, @intCast(rest % 10));
        rest /= 10;
        if (rest == 0) break;
    }
    while (buffer.len - end < width) {
        end -= 1;
        buffer[end] = '0';
    }
    return buffer[end..];
}

const testing = std.testing;

fn expectExpansion(pattern: []const u8, expected: []const []const u8) !void {
    var result = try expand(testing.allocator, pattern, null);
    defer result.deinit(testing.allocator);
    try testing.expectEqual(expected.len, result.count());
    for (expected, 0..) |want, i| try testing.expectEqualStrings(want, result.get(i));
}

fn expectFailure(pattern: []const u8, expected: Error, offset: usize) !void {
    var diagnostics: Diagnostics = .{};
    try testing.expectError(expected, expand(testing.allocator, pattern, &diagnostics));
    try testing.expectEqual(offset, diagnostics.offset);
}

test "compatibility.md §7.2 lists, nesting, single items and empty braces" {
    try expectExpansion("{a,b}", &.{ "a", "b" });
    try expectExpansion("{a,{b,c}d}", &.{ "a", "bd", "cd" });
    try expectExpansion("{one}", &.{"one"});
    try expectExpansion("x{}", &.{"x"});
}

test "compatibility.md §7.2 several groups: cartesian product, leftmost slowest" {
    try expectExpansion("{1..2}{a,b}", &.{ "1a", "1b", "2a", "2b" });
}

test "compatibility.md §7.2 numeric ranges and zero padding" {
    try expectExpansion("{9..11}", &.{ "9", "10", "11" });
    try expectExpansion("{08..11}", &.{ "08", "09", "10", "11" });
    try expectExpansion("{001..3}", &.{ "001", "002", "003" });
    try expectExpansion("{1..010}", &.{ "001", "002", "003", "004", "005", "006", "007", "008", "009", "010" });
    try expectExpansion("{0..2}", &.{ "0", "1", "2" });
    try expectExpansion("{5..5}", &.{"5"});
}

test "compatibility.md §7.2 patterns that cannot be expanded" {
    try expectFailure("{3..1}", error.InvalidRange, 0);
    try expectFailure("{-1..1}", error.InvalidRange, 0);
    try expectFailure("{a..c}", error.InvalidRange, 0);
    try expectFailure("{0..10..5}", error.InvalidRange, 0);
    try expectFailure("{a,b", error.Unbalanced, 0);
    try expectFailure("s-{a,{b}", error.Unbalanced, 2);
    try expectFailure("a}b", error.Unbalanced, 1);
    try expectFailure("{1..}", error.InvalidRange, 0);
    try expectFailure("{1234567890123456789..1234567890123456790}", error.InvalidRange, 0);
}

test "a shard URL pattern expands in order around its literal text" {
    try expectExpansion(
        "https://host/data/shard-{000..002}.tar",
        &.{ "https://host/data/shard-000.tar", "https://host/data/shard-001.tar", "https://host/data/shard-002.tar" },
    );
    try expectExpansion("p/{a,b}/s{1..2}.tgz", &.{ "p/a/s1.tgz", "p/a/s2.tgz", "p/b/s1.tgz", "p/b/s2.tgz" });
    try expectExpansion("no-braces,here", &.{"no-braces,here"});
    try expectExpansion(",{x,y},", &.{ ",x,", ",y," });
    try expectExpansion("", &.{""});
}

test "list items are literal text, with their own nested groups" {
    try expectExpansion("{1..2,x}", &.{ "1..2", "x" });
    try expectExpansion("{a,}b", &.{ "ab", "b" });
    try expectExpansion("{a,{1..3}}", &.{ "a", "1", "2", "3" });
    try expectExpansion("{{a,b}{c,d}}", &.{ "ac", "ad", "bc", "bd" });
}

test "limits: count, range size, depth and length fail before memory runs out" {
    try expectFailure("{0..99999999999}", error.TooMany, 0);
    // 1024 × 1024 is exactly the limit; one more factor of two is over it.
    var ok = try expand(testing.allocator, "{0..1023}{0..1023}", null);
    defer ok.deinit(testing.allocator);
    try testing.expectEqual(@as(usize, expansions_max), ok.count());
    try testing.expectEqualStrings("1023999", ok.get(ok.count() - 25));
    try expectFailure("{0..1023}{0..1023}{a,b}", error.TooMany, 23);

    var deep: [2 * (depth_max + 1)]u8 = undefined;
    @memset(deep[0 .. depth_max + 1], '{');
    @memset(deep[depth_max + 1 ..], '}');
    try expectFailure(&deep, error.TooDeep, depth_max);
    var fine = try expand(testing.allocator, deep[1 .. deep.len - 1], null);
    defer fine.deinit(testing.allocator);
    try testing.expectEqual(@as(usize, 1), fine.count());

    const long = try testing.allocator.alloc(u8, pattern_bytes_max + 1);
    defer testing.allocator.free(long);
    @memset(long, 'a');
    try testing.expectError(error.TooLong, expand(testing.allocator, long, null));
}

test "expansion survives every allocation failure without leaking" {
    try testing.checkAllAllocationFailures(testing.allocator, struct {
        fn run(gpa: Allocator) !void {
            var result = try expand(gpa, "s{a,{b,c}d}-{08..11}.tar", null);
            defer result.deinit(gpa);
            try testing.expectEqual(@as(usize, 12), result.count());
        }
    }.run, .{});
}
