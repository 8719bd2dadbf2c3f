//! PNG fast path: non-interlaced 8-bit grey, grey+alpha, RGB and RGBA, the
//! common case, through libdeflate 1.25 (native/vendor/libdeflate) and our own
//! SIMD unfiltering. Everything else goes to Wuffs (wuffs.zig) unchanged.
//!
//! The rules (`probe`), all checked before any pixel memory is allocated:
//! - IHDR: 13 bytes, CRC-32 correct, width and height 1..2^24-1, bit depth 8,
//!   colour type 0, 2, 4 or 6, compression 0, filter 0, interlace 0.
//! - Every chunk from IHDR to the last IDAT of the first IDAT run has its
//!   CRC-32 checked (`libdeflate_crc32`) and lies wholly inside the file.
//! - No PLTE, tRNS, acTL, fcTL or fdAT, and no critical chunk but IHDR and
//!   IDAT before the image data (Wuffs treats those specially).
//! - The IDAT bytes are at least what the declared image needs at deflate's
//!   best ratio (as wuffs.zig's `planPng`).
//! Then `decode` inflates the concatenated IDAT data with
//! `libdeflate_zlib_decompress_ex` into a buffer of exactly
//! height × (1 + row bytes): the stream must fill it exactly, end exactly at
//! the end of the IDAT data, and pass its Adler-32; every row's filter byte
//! must be 0..4. Chunks after the IDAT run are not read (Pillow and Wuffs
//! accept a PNG without IEND).
//!
//! Anything that breaks a rule returns `error.Declined`: the caller then
//! decodes the file with Wuffs, which delivers it or refuses it with its own
//! cause and reason. So the fast path never refuses a file itself; it only
//! delivers files that pass every check, with the pixels Wuffs would give
//! (tests/test_png_fast_path.py compares both paths on generated and mutated
//! files).
//!
//! Memory per image: the output (W·H·channels bytes, exactly the delivered
//! pixels), the inflated image (H·(1 + W·channels) bytes, the same as Wuffs'
//! work buffer), a contiguous copy of the IDAT data when it is split over
//! several chunks (≤ the file's length), and libdeflate's decompressor
//! state (`libdeflate_alloc_decompressor`, about 11 KB). libdeflate cannot
//! write past the buffer it is given, so a zlib bomb costs no more.
//!
//! Thread-safety: every call owns its state; any number of threads at once.
const std = @import("std");
const assert = std.debug.assert;
const Allocator = std.mem.Allocator;
const buffers = @import("../buffers.zig");

pub const Error = error{ Declined, OutOfMemory };

/// Which path PNG files take, from `DATAGO_PNG_PATH` (read once per process):
/// unset or `auto`: the fast path, else Wuffs; `wuffs`: Wuffs only (to compare
/// the two paths); `fast`: the fast path only, a declined file is refused as
/// unsupported (tests use it to prove the fast path took a file).
pub const Mode = enum(u8) { unknown, auto, wuffs, fast };

var mode_cached: std.atomic.Value(Mode) = .init(.unknown);

pub fn mode() Mode {
    const cached = mode_cached.load(.acquire);
    if (cached != .unknown) return cached;
    const value: Mode = if (std.c.getenv("DATAGO_PNG_PATH")) |raw| parsed: {
        const text = std.mem.span(raw);
        if (std.mem.eql(u8, text, "wuffs")) break :parsed .wuffs;
        if (std.mem.eql(u8, text, "fast")) break :parsed .fast;
        break :parsed .auto;
    } else .auto;
    mode_cached.store(value, .release);
    return value;
}

/// Limits that mirror Wuffs' (larger images are its to refuse).
const dimension_max: u32 = (1 << 24) - 1;
const deflate_ratio_max = 1032;

/// What `probe` learns: enough to size every buffer.
pub const Plan = struct {
    width: u32,
    height: u32,
    /// 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA; 8 bits each.
    channels: u8,
    /// Where the first IDAT chunk (its length field) starts, how many
    /// consecutive IDAT chunks follow it (itself included), their data bytes.
    first_idat: u64 = 0,
    idat_chunks: u64 = 0,
    idat_bytes: u64 = 0,

    pub fn rowBytes(plan: *const Plan) u64 {
        return @as(u64, plan.width) * plan.channels;
    }
    /// The delivered pixels: W·H·channels.
    pub fn pixelBytes(plan: *const Plan) u64 {
        return plan.rowBytes() * plan.height;
    }
    /// The inflated image: H·(1 + row bytes).
    pub fn filteredBytes(plan: *const Plan) u64 {
        return (plan.rowBytes() + 1) * plan.height;
    }
};

pub const Declined = struct {
    /// Why the fast path did not take a file (for `DATAGO_PNG_PATH=fast`).
    reason: []const u8 = "",
};

/// Reads IHDR and walks the chunks up to the end of the first IDAT run,
/// checking every CRC. Allocates nothing. `why` says why a file is declined.
pub fn probe(bytes: []const u8, plan: *Plan, why: *Declined) error{Declined}!void {
    const signature = "\x89PNG\r\n\x1a\n";
    if (bytes.len < 8 + 25 or !std.mem.eql(u8, bytes[0..8], signature)) return decline(why, "no IHDR");
    if (readU32(bytes[8..12]) != 13 or !std.mem.eql(u8, bytes[12..16], "IHDR")) return decline(why, "no IHDR");
    if (crc32(bytes[12..29]) != readU32(bytes[29..33])) return decline(why, "IHDR checksum");
    const width = readU32(bytes[16..20]);
    const height = readU32(bytes[20..24]);
    if (width == 0 or height == 0 or width > dimension_max or height > dimension_max) {
        return decline(why, "dimensions");
    }
    const depth = bytes[24];
    const color_type = bytes[25];
    if (depth != 8) return decline(why, "bit depth");
    const channels: u8 = switch (color_type) {
        0 => 1,
        4 => 2,
        2 => 3,
        6 => 4,
        else => return decline(why, "colour type"),
    };
    if (bytes[26] != 0 or bytes[27] != 0 or bytes[28] != 0) return decline(why, "method or interlace");
    plan.* = .{ .width = width, .height = height, .channels = channels };
    try walkChunks(bytes, plan, why);
    const least_compressed = plan.pixelBytes() / deflate_ratio_max;
    if (plan.idat_bytes == 0 or plan.idat_bytes < least_compressed) return decline(why, "too little image data");
}

/// Each step advances at least 12 bytes: at most len / 12 steps.
fn walkChunks(bytes: []const u8, plan: *Plan, why: *Declined) error{Declined}!void {
    var at: u64 = 33;
    while (true) {
        if (at + 12 > bytes.len) {
            if (plan.idat_chunks > 0) return; // the IDAT run ends at the end of the file
            return decline(why, "no image data");
        }
        const length = readU32(bytes[@intCast(at)..][0..4]);
        const kind = bytes[@intCast(at + 4)..][0..4];
        const is_idat = std.mem.eql(u8, kind, "IDAT");
        if (plan.idat_chunks > 0 and !is_idat) return; // the run is over
        if (length > std.math.maxInt(i32) or at + 12 + length > bytes.len) return decline(why, "chunk past the end");
        const body: u64 = at + 8;
        const stored = readU32(bytes[@intCast(body + length)..][0..4]);
        if (crc32(bytes[@intCast(at + 4)..@intCast(body + length)]) != stored) return decline(why, "chunk checksum");
        if (is_idat) {
            if (plan.idat_chunks == 0) plan.first_idat = at;
            plan.idat_chunks += 1;
            plan.idat_bytes += length;
        } else {
            const critical = kind[0] & 0x20 == 0;
            if (critical) return decline(why, "critical chunk before IDAT");
            for ([_]*const [4]u8{ "tRNS", "acTL", "fcTL", "fdAT" }) |special| {
                if (std.mem.eql(u8, kind, special)) return decline(why, "chunk Wuffs interprets");
            }
        }
        at = body + length + 4;
    }
}

fn decline(why: *Declined, reason: []const u8) error{Declined} {
    why.reason = reason;
    return error.Declined;
}

fn readU32(b: *const [4]u8) u32 {
    return std.mem.readInt(u32, b, .big);
}

fn crc32(data: []const u8) u32 {
    return libdeflate_crc32(0, data.ptr, data.len);
}

/// Inflates and unfilters into `out` (`plan.pixelBytes()` long), using `work`
/// (`plan.filteredBytes()` long). `gpa` provides the IDAT copy (when split)
/// and libdeflate's state, both freed before returning.
pub fn decode(gpa: Allocator, plan: *const Plan, bytes: []const u8, out: []u8, work: []u8, why: *Declined) Error!void {
    assert(out.len == plan.pixelBytes());
    assert(work.len == plan.filteredBytes());
    assert(plan.idat_chunks > 0 and plan.idat_bytes > 0);
    var joined: []align(16) u8 = &.{};
    defer if (joined.len > 0) buffers.free(gpa, joined);
    const first: usize = @intCast(plan.first_idat);
    const idat: []const u8 = if (plan.idat_chunks == 1)
        bytes[first + 8 ..][0..@intCast(plan.idat_bytes)]
    else gather: {
        // probe checked each of these chunks lies inside `bytes`.
        joined = try buffers.alloc(gpa, @intCast(plan.idat_bytes));
        var at: usize = first;
        var filled: usize = 0;
        for (0..@intCast(plan.idat_chunks)) |_| {
            const length = readU32(bytes[at..][0..4]);
            assert(std.mem.eql(u8, bytes[at + 4 ..][0..4], "IDAT"));
            @memcpy(joined[filled..][0..length], bytes[at + 8 ..][0..length]);
            filled += length;
            at += 12 + @as(usize, length);
        }
        assert(filled == joined.len);
        break :gather joined;
    };
    const decompressor = libdeflate_alloc_decompressor() orelse return error.OutOfMemory;
    defer libdeflate_free_decompressor(decompressor);
    var consumed: usize = 0;
    // NULL actual_out: the stream must fill `work` exactly (else SHORT_OUTPUT
    // or INSUFFICIENT_SPACE); libdeflate checks the Adler-32.
    const result = libdeflate_zlib_decompress_ex(decompressor, idat.ptr, idat.len, work.ptr, work.len, &consumed, null);
    if (result != 0) return decline(why, "inflate");
    if (consumed != idat.len) return decline(why, "bytes after the zlib stream");
    if (!unfilter(plan.channels, @intCast(plan.rowBytes()), plan.height, work, out)) {
        return decline(why, "filter type");
    }
}

// ---- Unfiltering: work (H rows of filter byte + row) → out (H rows). ----

/// Returns false on a filter byte past 4. Each row reads its filtered bytes
/// and the previous output row, and writes its output row.
pub fn unfilter(channels: u8, row_bytes: usize, height: u32, work: []const u8, out: []u8) bool {
    return switch (channels) {
        1 => unfilterAll(1, row_bytes, height, work, out),
        2 => unfilterAll(2, row_bytes, height, work, out),
        3 => unfilterAll(3, row_bytes, height, work, out),
        4 => unfilterAll(4, row_bytes, height, work, out),
        else => unreachable, // probe makes 1..4
    };
}

fn unfilterAll(comptime bpp: usize, row_bytes: usize, height: u32, work: []const u8, out: []u8) bool {
    assert(row_bytes % bpp == 0 and row_bytes > 0);
    assert(work.len == (row_bytes + 1) * height);
    assert(out.len == row_bytes * height);
    var y: usize = 0;
    rows: while (y < height) : (y += 1) {
        const filtered = work[y * (row_bytes + 1) ..][0 .. row_bytes + 1];
        const row = out[y * row_bytes ..][0..row_bytes];
        if (y > 0 and filtered[0] == 4) {
            // Runs of 8 or 4 Paeth rows in one vector (paethRows).
            inline for (.{ 8, 4 }) |R| {
                if (y + R <= height and paethRun(R, work, row_bytes, y)) {
                    var rows_in: [R][]const u8 = undefined;
                    var rows_out: [R][]u8 = undefined;
                    inline for (0..R) |k| {
                        rows_in[k] = work[(y + k) * (row_bytes + 1) ..][1 .. row_bytes + 1];
                        rows_out[k] = out[(y + k) * row_bytes ..][0..row_bytes];
                    }
                    paethRows(bpp, R, &rows_in, out[(y - 1) * row_bytes ..][0..row_bytes], &rows_out);
                    y += R - 1;
                    continue :rows;
                }
            }
        }
        if (y > 0 and y + 1 < height and filtered[0] == 4 and work[(y + 1) * (row_bytes + 1)] == 4) {
            // Two Paeth rows at once: twice the independent work per step.
            const prior = out[(y - 1) * row_bytes ..][0..row_bytes];
            const next_filtered = work[(y + 1) * (row_bytes + 1) ..][1 .. row_bytes + 1];
            const next_row = out[(y + 1) * row_bytes ..][0..row_bytes];
            paeth2(bpp, filtered[1..], next_filtered, prior, row, next_row);
            y += 1;
            continue;
        }
        if (y == 0) {
            // The row above the first is zeros: Up is None, Paeth is Sub.
            switch (filtered[0]) {
                0, 2 => @memcpy(row, filtered[1..]),
                1, 4 => sub(bpp, filtered[1..], row),
                3 => average(bpp, true, filtered[1..], row, row),
                else => return false,
            }
        } else {
            const prior = out[(y - 1) * row_bytes ..][0..row_bytes];
            switch (filtered[0]) {
                0 => @memcpy(row, filtered[1..]),
                1 => sub(bpp, filtered[1..], row),
                2 => up(filtered[1..], prior, row),
                3 => average(bpp, false, filtered[1..], prior, row),
                4 => paeth(bpp, filtered[1..], prior, row),
                else => return false,
            }
        }
    }
    return true;
}

// The kernels run with safety checks off: unfilterAll's asserts prove every
// index below in bounds (each slice is row_bytes long, a multiple of bpp).

/// Pixels are handled as vectors of `lanes(bpp)` samples: 4 lanes for 2, 3 or
/// 4 bytes per pixel (a 3- or 2-lane vector made LLVM round-trip every pixel
/// through general registers), one for grey. The lanes past `bpp` carry the
/// next pixel's bytes; every operation is lane-wise, so they never reach the
/// lanes that are stored for this pixel.
fn lanes(comptime bpp: usize) usize {
    return if (bpp == 1) 1 else 4;
}

fn Pixel(comptime bpp: usize, comptime T: type) type {
    return @Vector(lanes(bpp), T);
}

/// Loads the pixel at `i`: a whole vector where it fits in `src`, else
/// exactly `bpp` bytes (the last pixel of a row).
inline fn load(comptime bpp: usize, comptime T: type, src: []const u8, i: usize) Pixel(bpp, T) {
    @setRuntimeSafety(false);
    const n = comptime lanes(bpp);
    if (i + n <= src.len) {
        const bytes: @Vector(n, u8) = src[i..][0..n].*;
        return bytes;
    }
    var padded: [n]u8 = @splat(0);
    padded[0..bpp].* = src[i..][0..bpp].*;
    const bytes: @Vector(n, u8) = padded;
    return bytes;
}

/// Stores the pixel at `i`: a whole vector where it fits in `dst` (the bytes
/// past `bpp` land on the next pixel, which is written after), else `bpp`.
inline fn store(comptime bpp: usize, comptime T: type, dst: []u8, i: usize, v: Pixel(bpp, T)) void {
    @setRuntimeSafety(false);
    const n = comptime lanes(bpp);
    const bytes: [n]u8 = @as(@Vector(n, u8), @intCast(v)); // callers keep every lane in 0..255
    if (i + n <= dst.len) {
        dst[i..][0..n].* = bytes;
    } else {
        dst[i..][0..bpp].* = bytes[0..bpp].*;
    }
}

fn sub(comptime bpp: usize, filtered: []const u8, row: []u8) void {
    @setRuntimeSafety(false);
    assert(filtered.len == row.len);
    var a: Pixel(bpp, u8) = @splat(0);
    var i: usize = 0;
    while (i < row.len) : (i += bpp) {
        a +%= load(bpp, u8, filtered, i);
        store(bpp, u8, row, i, a);
    }
}

fn up(filtered: []const u8, prior: []const u8, row: []u8) void {
    @setRuntimeSafety(false);
    assert(filtered.len == row.len and prior.len == row.len);
    const width = 32;
    var i: usize = 0;
    while (i + width <= row.len) : (i += width) {
        const x: @Vector(width, u8) = filtered[i..][0..width].*;
        const b: @Vector(width, u8) = prior[i..][0..width].*;
        row[i..][0..width].* = x +% b;
    }
    while (i < row.len) : (i += 1) row[i] = filtered[i] +% prior[i];
}

/// `first_row`: the row above is zeros (`prior` is then not read).
fn average(comptime bpp: usize, comptime first_row: bool, filtered: []const u8, prior: []const u8, row: []u8) void {
    @setRuntimeSafety(false);
    assert(filtered.len == row.len and prior.len == row.len);
    const V = Pixel(bpp, u16);
    var a: V = @splat(0);
    var i: usize = 0;
    while (i < row.len) : (i += bpp) {
        const b: V = if (first_row) @splat(0) else load(bpp, u16, prior, i);
        a = (load(bpp, u16, filtered, i) + ((a + b) >> @splat(1))) & @as(V, @splat(0xff));
        store(bpp, u16, row, i, a);
    }
}

/// Paeth in the branch-free form of stb_image 2.28 (`stbi__paeth`), exact for
/// every a, b, c (tested exhaustively below): with lo/hi the smaller/larger of
/// a and b and t = 3c − (a + b), the predictor is hi if t ≤ lo, else lo if
/// hi ≤ t, else c. `3c − b` does not depend on the pixel to the left, so the
/// chain from one pixel to the next is a subtract, min/max, two compares and
/// selects, the add and a mask, all in vector registers.
fn paeth(comptime bpp: usize, filtered: []const u8, prior: []const u8, row: []u8) void {
    @setRuntimeSafety(false);
    assert(filtered.len == row.len and prior.len == row.len);
    const V = Pixel(bpp, i16);
    var a: V = @splat(0);
    var c: V = @splat(0);
    var i: usize = 0;
    while (i < row.len) : (i += bpp) {
        const b = load(bpp, i16, prior, i);
        const x = load(bpp, i16, filtered, i);
        a = (x + paethPredict(lanes(bpp), a, b, c)) & @as(V, @splat(0xff));
        store(bpp, i16, row, i, a);
        c = b;
    }
}

/// Paeth on two consecutive rows, the second one pixel behind: its pixel
/// above (`b1`) is the first row's previous result, still in a register. The
/// two dependency chains overlap.
fn paeth2(comptime bpp: usize, filtered0: []const u8, filtered1: []const u8, prior: []const u8, row0: []u8, row1: []u8) void {
    @setRuntimeSafety(false);
    assert(filtered0.len == row0.len and filtered1.len == row0.len);
    assert(prior.len == row0.len and row1.len == row0.len);
    const V = Pixel(bpp, i16);
    const mask: V = @splat(0xff);
    const n = comptime lanes(bpp);
    var a0: V = @splat(0);
    var c0: V = @splat(0);
    var a1: V = @splat(0);
    var c1: V = @splat(0);
    // Row 0, pixel 0.
    {
        const b0 = load(bpp, i16, prior, 0);
        a0 = (load(bpp, i16, filtered0, 0) + paethPredict(n, a0, b0, c0)) & mask;
        store(bpp, i16, row0, 0, a0);
        c0 = b0;
    }
    var i: usize = bpp;
    while (i < row0.len) : (i += bpp) {
        const b1 = a0; // row 0, pixel i - bpp
        const b0 = load(bpp, i16, prior, i);
        const x1 = load(bpp, i16, filtered1, i - bpp);
        const x0 = load(bpp, i16, filtered0, i);
        a1 = (x1 + paethPredict(n, a1, b1, c1)) & mask;
        a0 = (x0 + paethPredict(n, a0, b0, c0)) & mask;
        store(bpp, i16, row1, i - bpp, a1);
        store(bpp, i16, row0, i, a0);
        c1 = b1;
        c0 = b0;
    }
    // Row 1, last pixel.
    const last = row0.len - bpp;
    a1 = (load(bpp, i16, filtered1, last) + paethPredict(n, a1, a0, c1)) & mask;
    store(bpp, i16, row1, last, a1);
}

/// Whether rows y .. y + R - 1 are all Paeth.
fn paethRun(comptime R: usize, work: []const u8, row_bytes: usize, y: usize) bool {
    inline for (0..R) |k| {
        if (work[(y + k) * (row_bytes + 1)] != 4) return false;
    }
    return true;
}

/// Paeth on `R` consecutive rows in one vector of R × lanes(bpp) samples, a
/// wavefront: at step s, row k works on pixel s − k. Row k's pixel above
/// (b) is row k − 1's previous result, already in the vector: b is the
/// vector shifted up by one row with the prior row's pixel s shifted in, and
/// the pixel above-left (c) is the previous step's b. One dependency chain
/// (plus one shuffle) now carries R pixels.
fn paethRows(comptime bpp: usize, comptime R: usize, filtered: *const [R][]const u8, prior: []const u8, rows: *const [R][]u8) void {
    @setRuntimeSafety(false);
    const n = comptime lanes(bpp);
    const W = n * R;
    assert(prior.len % bpp == 0 and prior.len > 0);
    inline for (0..R) |k| assert(filtered[k].len == prior.len and rows[k].len == prior.len);
    const npix = prior.len / bpp;
    var state: PaethState(W) = .{};
    const total = npix + R - 1;
    var s: usize = 0;
    // Rows start one step apart: the first R − 1 steps check bounds.
    while (s < @min(R - 1, total)) : (s += 1) paethStep(bpp, R, true, s, npix, filtered, prior, rows, &state);
    // Every row inside its row, none at its last pixel: whole-vector loads and stores.
    while (s + 1 < npix) : (s += 1) paethStep(bpp, R, false, s, npix, filtered, prior, rows, &state);
    while (s < total) : (s += 1) paethStep(bpp, R, true, s, npix, filtered, prior, rows, &state);
}

fn PaethState(comptime W: usize) type {
    return struct {
        a: @Vector(W, i16) = @splat(0),
        c: @Vector(W, i16) = @splat(0),
    };
}

/// `n` bytes of the pixel at `i`, zero-padded past the end of `src`.
inline fn pixelBytes(comptime bpp: usize, comptime n: usize, src: []const u8, i: usize) [n]u8 {
    @setRuntimeSafety(false);
    if (i + n <= src.len) return src[i..][0..n].*;
    var padded: [n]u8 = @splat(0);
    padded[0..bpp].* = src[i..][0..bpp].*;
    return padded;
}

inline fn paethStep(
    comptime bpp: usize,
    comptime R: usize,
    comptime guarded: bool,
    s: usize,
    npix: usize,
    filtered: *const [R][]const u8,
    prior: []const u8,
    rows: *const [R][]u8,
    state: anytype,
) void {
    @setRuntimeSafety(false);
    const n = comptime lanes(bpp);
    const W = n * R;
    const V = @Vector(W, i16);
    var xs: [W]u8 = @splat(0);
    var above: [n]u8 = @splat(0);
    if (guarded) {
        if (s < npix) above = pixelBytes(bpp, n, prior, s * bpp);
    } else {
        above = prior[s * bpp ..][0..n].*;
    }
    inline for (0..R) |k| {
        if (guarded) {
            if (s >= k and s - k < npix) xs[k * n ..][0..n].* = pixelBytes(bpp, n, filtered[k], (s - k) * bpp);
        } else {
            xs[k * n ..][0..n].* = filtered[k][(s - k) * bpp ..][0..n].*;
        }
    }
    const x_bytes: @Vector(W, u8) = xs;
    const x: V = x_bytes;
    const above_bytes: @Vector(n, u8) = above;
    const above_v: @Vector(n, i16) = above_bytes;
    // b: lanes 0..n from the prior row, then the previous a shifted up a row.
    const shift = comptime blk: {
        var m: [W]i32 = undefined;
        for (0..W) |j| m[j] = if (j < n) ~@as(i32, @intCast(j)) else @as(i32, @intCast(j - n));
        break :blk m;
    };
    const b: V = @shuffle(i16, state.a, above_v, shift);
    var a = (x + paethPredict(W, state.a, b, state.c)) & @as(V, @splat(0xff));
    var c = b;
    if (guarded) {
        // A row that has not started keeps a = c = 0 (no pixel to its left).
        const lane_row = comptime blk: {
            var m: [W]u16 = undefined;
            for (0..W) |j| m[j] = @intCast(j / n);
            break :blk m;
        };
        const started = @as(@Vector(W, u16), lane_row) <= @as(@Vector(W, u16), @splat(@intCast(@min(s, R))));
        a = @select(i16, started, a, @as(V, @splat(0)));
        c = @select(i16, started, c, @as(V, @splat(0)));
    }
    state.a = a;
    state.c = c;
    const out: [W]u8 = @as(@Vector(W, u8), @truncate(@as(@Vector(W, u16), @bitCast(a))));
    inline for (0..R) |k| {
        if (guarded) {
            if (s >= k and s - k < npix) {
                const i = (s - k) * bpp;
                if (i + n <= rows[k].len) {
                    rows[k][i..][0..n].* = out[k * n ..][0..n].*;
                } else {
                    rows[k][i..][0..bpp].* = out[k * n ..][0..bpp].*;
                }
            }
        } else {
            rows[k][(s - k) * bpp ..][0..n].* = out[k * n ..][0..n].*;
        }
    }
}

inline fn paethPredict(comptime n: usize, a: @Vector(n, i16), b: @Vector(n, i16), c: @Vector(n, i16)) @Vector(n, i16) {
    const three: @Vector(n, i16) = @splat(3);
    const t = c * three - b - a;
    const lo = @min(a, b);
    const hi = @max(a, b);
    const t0 = @select(i16, hi <= t, lo, c);
    return @select(i16, t <= lo, hi, t0);
}

// ---- libdeflate (vendor/libdeflate/libdeflate.h), hidden inside the .so. ----

const Decompressor = opaque {};
extern fn libdeflate_alloc_decompressor() ?*Decompressor;
extern fn libdeflate_free_decompressor(d: *Decompressor) void;
extern fn libdeflate_zlib_decompress_ex(
    d: *Decompressor,
    in: [*]const u8,
    in_nbytes: usize,
    out: [*]u8,
    out_nbytes_avail: usize,
    actual_in_nbytes_ret: ?*usize,
    actual_out_nbytes_ret: ?*usize,
) c_int;
extern fn libdeflate_crc32(crc: u32, buffer: [*]const u8, len: usize) u32;

// ---- Tests ----

const testing = std.testing;
const png_encoder = @import("../encode/png.zig");

fn paethReference(a: i16, b: i16, c: i16) i16 {
    const p = a + b - c;
    const pa = @abs(p - a);
    const pb = @abs(p - b);
    const pc = @abs(p - c);
    if (pa <= pb and pa <= pc) return a;
    if (pb <= pc) return b;
    return c;
}

test "the branch-free Paeth predictor equals the specification's for every a, b, c" {
    var a: i16 = 0;
    while (a < 256) : (a += 1) {
        var b: i16 = 0;
        while (b < 256) : (b += 1) {
            var cs: @Vector(4, i16) = .{ 0, 1, 2, 3 };
            while (cs[0] < 256) : (cs += @splat(4)) {
                const got: [4]i16 = paethPredict(4, @splat(a), @splat(b), cs);
                const c: [4]i16 = cs;
                for (got, c) |g, ck| try testing.expectEqual(paethReference(a, b, ck), g);
            }
        }
    }
}

/// A reference unfilter, byte by byte, straight from the specification.
fn unfilterReference(bpp: usize, row_bytes: usize, height: usize, work: []const u8, out: []u8) void {
    for (0..height) |y| {
        const f = work[y * (row_bytes + 1)];
        for (0..row_bytes) |i| {
            const x: i16 = work[y * (row_bytes + 1) + 1 + i];
            const a: i16 = if (i >= bpp) out[y * row_bytes + i - bpp] else 0;
            const b: i16 = if (y > 0) out[(y - 1) * row_bytes + i] else 0;
            const c: i16 = if (y > 0 and i >= bpp) out[(y - 1) * row_bytes + i - bpp] else 0;
            const p: i16 = switch (f) {
                0 => 0,
                1 => a,
                2 => b,
                3 => @divFloor(a + b, 2),
                else => paethReference(a, b, c),
            };
            out[y * row_bytes + i] = @intCast((x + p) & 0xff);
        }
    }
}

test "unfilter equals the specification for every filter, channel count and width" {
    const gpa = testing.allocator;
    var prng: std.Random.DefaultPrng = .init(16);
    const random = prng.random();
    for (1..5) |bpp| for ([_]usize{ 1, 2, 3, 7, 8, 9, 11, 33, 70 }) |width| for (0..12) |round| {
        const height = 22;
        const row_bytes = width * bpp;
        const work = try gpa.alloc(u8, (row_bytes + 1) * height);
        defer gpa.free(work);
        random.bytes(work);
        // Runs of Paeth rows (the 8-, 4- and two-row kernels) and every
        // other filter; every third round all Paeth (runs of 8, 8, 4, 1).
        for (0..height) |y| work[y * (row_bytes + 1)] = if (round % 3 == 0 or random.boolean()) 4 else random.uintLessThan(u8, 5);
        const got = try gpa.alloc(u8, row_bytes * height);
        defer gpa.free(got);
        const want = try gpa.alloc(u8, row_bytes * height);
        defer gpa.free(want);
        try testing.expect(unfilter(@intCast(bpp), row_bytes, height, work, got));
        unfilterReference(bpp, row_bytes, height, work, want);
        try testing.expectEqualSlices(u8, want, got);
        work[(row_bytes + 1) * 4] = 5;
        try testing.expect(!unfilter(@intCast(bpp), row_bytes, height, work, got));
    };
}

fn decodeFast(gpa: Allocator, file: []const u8) ![]u8 {
    var plan: Plan = undefined;
    var why: Declined = .{};
    try probe(file, &plan, &why);
    const out = try gpa.alloc(u8, @intCast(plan.pixelBytes()));
    errdefer gpa.free(out);
    const work = try gpa.alloc(u8, @intCast(plan.filteredBytes()));
    defer gpa.free(work);
    try decode(gpa, &plan, file, out, work, &why);
    return out;
}

test "8-bit grey, LA, RGB, RGBA round-trip; 16-bit and damaged files are declined" {
    const gpa = testing.allocator;
    for (1..5) |channels| {
        const len = 13 * 7 * channels;
        const pixels = try gpa.alloc(u8, len);
        defer gpa.free(pixels);
        for (pixels, 0..) |*v, i| v.* = @intCast((i * 37 + i / 5) % 256);
        const file = try png_encoder.encode(gpa, .{ .pixels = pixels, .width = 13, .height = 7, .channels = @intCast(channels), .bit_depth = 8 });
        defer gpa.free(file);
        const got = try decodeFast(gpa, file);
        defer gpa.free(got);
        try testing.expectEqualSlices(u8, pixels, got);
        const idat = std.mem.find(u8, file, "IDAT").?;
        file[idat + 6] ^= 0x10;
        try testing.expectError(error.Declined, decodeFast(gpa, file));
    }
    var wide: [4 * 4 * 2]u8 = @splat(9);
    const file16 = try png_encoder.encode(gpa, .{ .pixels = &wide, .width = 4, .height = 4, .channels = 1, .bit_depth = 16 });
    defer gpa.free(file16);
    try testing.expectError(error.Declined, decodeFast(gpa, file16));
}
