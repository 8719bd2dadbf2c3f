//! Resampling of one box of an interleaved image to a new size: Lanczos3
//! (bit-exact with Pillow 13's `Image.resize(size, Image.LANCZOS, box=...)`
//! for 8-bit L, LA, RGB, RGBA) and nearest (bit-exact with `Image.NEAREST`).
//! Pure: no globals, no threads; the caller's allocator holds the scratch.
//!
//! Pillow's algorithm, which we reproduce in our own code (compatibility.md §5.2): per
//! axis a table of Lanczos3 weights in f64, normalised to sum 1; for 8-bit
//! samples the weights become fixed point with 22 fractional bits; two
//! separable passes, clipped to the sample range in between, horizontal first
//! unless Pillow 13's rule puts the vertical one first (`verticalFirst`).
//! Integer sums do not depend on the order of their terms, so the SIMD
//! kernels give Pillow's exact bytes; the 16-bit kernels keep Pillow's f64
//! summation order per sample and match its I;16 path too.
//!
//! Memory: Pillow keeps a whole intermediate image (output width x every
//! source row under the box, or source width x output height). We stream one
//! output row at a time through a ring of as many rows as one output row's
//! vertical taps, so scratch is the weight tables (outputs x taps) plus the
//! ring plus one row, and never grows with the source height.
const std = @import("std");
const builtin = @import("builtin");
const assert = std.debug.assert;

/// `bilinear` is Pillow's BILINEAR (a triangle of support 1, scaled like
/// Lanczos when downscaling): the planar JPEG path resamples chroma with it.
pub const Filter = enum { lanczos3, bilinear, nearest };

/// `premultiply` applies to 8-bit LA and RGBA only; other images resample
/// every channel independently whatever the mode.
pub const AlphaMode = enum { straight, premultiply };

/// Which pass runs first when both are needed: Pillow's choice (bit-exact
/// output), or the vertical pass whenever it drops rows, so that the
/// horizontal pass (the dearer one: it transposes its input) sees fewer.
/// The two orders round in between at different places: outputs differ by
/// a level or two (the test below bounds it).
pub const Order = enum { pillow, cheapest };

/// An interleaved image: channels 1..4 (L, LA, RGB, RGBA), bit_depth 8 or 16
/// (16-bit samples are native-endian u16), rows `stride_bytes` apart.
/// Borrowed: `resize` only reads it.
pub const View = struct {
    pixels: []const u8,
    width: u32,
    height: u32,
    channels: u8,
    bit_depth: u8,
    stride_bytes: usize,

    fn sampleBytes(view: View) usize {
        return view.bit_depth / 8;
    }

    fn rowBytes(view: View) usize {
        return @as(usize, view.width) * view.channels * view.sampleBytes();
    }

    /// Bytes of source row `y` holding pixels, without the stride padding.
    fn row(view: View, y: u32) []const u8 {
        return view.pixels[@as(usize, y) * view.stride_bytes ..][0..view.rowBytes()];
    }
};

/// A box in source pixel coordinates, Pillow's `box=` convention (left, top,
/// right, bottom; may be fractional).
pub const Box = struct { left: f64, top: f64, right: f64, bottom: f64 };

pub const Error = error{OutOfMemory};

/// Resamples `box` of `src` to `out_width` x `out_height` and writes tightly
/// packed rows (`out_width * channels * bit_depth / 8` bytes each) to `out`,
/// whose length must be exact.
///
/// Pillow's semantics, including its shortcuts: the whole image at its own
/// size is copied; an integer box of exactly the output size is cropped
/// (after the alpha round trip in `premultiply` mode, as Pillow does). The box
/// is rounded to f32 first, as Pillow's C layer stores it. `premultiply`
/// (8-bit LA/RGBA only) premultiplies alpha, resamples and un-premultiplies
/// with Pillow's RGBA<->RGBa rounding (alpha 0 keeps the resampled colour).
///
/// Preconditions (asserted; the pipeline's geometry guarantees them): a
/// non-empty box inside the image (Pillow raises otherwise), output sizes of
/// at least 1, channels 1..4, bit_depth 8 or 16, `src.pixels` covering every
/// row. Reads only the rows and columns the filter support needs around the
/// box; scratch is proportional to the output and the filter support.
pub fn resize(
    gpa: std.mem.Allocator,
    src: View,
    box: Box,
    out_width: u32,
    out_height: u32,
    filter: Filter,
    alpha: AlphaMode,
    out: []u8,
) Error!void {
    return resizeOrdered(gpa, src, box, out_width, out_height, filter, alpha, .pillow, out);
}

/// `resize` with the pass order chosen by `order`.
pub fn resizeOrdered(
    gpa: std.mem.Allocator,
    src: View,
    box: Box,
    out_width: u32,
    out_height: u32,
    filter: Filter,
    alpha: AlphaMode,
    order: Order,
    out: []u8,
) Error!void {
    assert(src.channels >= 1 and src.channels <= 4);
    assert(src.bit_depth == 8 or src.bit_depth == 16);
    assert(src.width >= 1 and src.height >= 1);
    assert(src.stride_bytes >= src.rowBytes());
    assert(src.pixels.len >= (src.height - 1) * src.stride_bytes + src.rowBytes());
    assert(out_width >= 1 and out_height >= 1);
    assert(out.len == @as(usize, out_width) * out_height * src.channels * src.sampleBytes());

    // Image.resize returns a copy before it converts LA/RGBA to premultiplied.
    if (out_width == src.width and out_height == src.height and box.left == 0 and box.top == 0 and
        box.right == @as(f64, @floatFromInt(src.width)) and box.bottom == @as(f64, @floatFromInt(src.height)))
    {
        copyBox(src, 0, 0, out_width, out_height, false, out);
        return;
    }
    const box32 = Box32.fromBox(box);
    assert(box32.left >= 0 and box32.top >= 0);
    assert(box32.right <= @as(f32, @floatFromInt(src.width)));
    assert(box32.bottom <= @as(f32, @floatFromInt(src.height)));
    assert(box32.right - box32.left >= 0 and box32.bottom - box32.top >= 0);

    const premultiplied = alpha == .premultiply and filter != .nearest and
        src.bit_depth == 8 and (src.channels == 2 or src.channels == 4);
    if (box32.isCrop(out_width, out_height)) {
        const left: u32 = @intFromFloat(box32.left);
        const top: u32 = @intFromFloat(box32.top);
        copyBox(src, left, top, out_width, out_height, premultiplied, out);
        return;
    }
    switch (filter) {
        .nearest => try resizeNearest(gpa, src, box32, out_width, out_height, out),
        .lanczos3, .bilinear => if (src.bit_depth == 8)
            try Resampler(u8).run(gpa, src, box32, out_width, out_height, filter, order, premultiplied, out)
        else
            try Resampler(u16).run(gpa, src, box32, out_width, out_height, filter, order, false, out),
    }
}

/// The box as Pillow's C layer holds it: four f32 values.
const Box32 = struct {
    left: f32,
    top: f32,
    right: f32,
    bottom: f32,

    fn fromBox(box: Box) Box32 {
        return .{
            .left = @floatCast(box.left),
            .top = @floatCast(box.top),
            .right = @floatCast(box.right),
            .bottom = @floatCast(box.bottom),
        };
    }

    /// Pillow's `_resize` crops instead of resampling when the box has integer
    /// offsets and exactly the output size (compared in f32, as there).
    fn isCrop(box: Box32, out_width: u32, out_height: u32) bool {
        return @trunc(box.left) == box.left and @trunc(box.top) == box.top and
            box.right - box.left == @as(f32, @floatFromInt(out_width)) and
            box.bottom - box.top == @as(f32, @floatFromInt(out_height));
    }
};

/// Copies the `width` x `height` pixels at (`left`, `top`); with `round_trip`,
/// through premultiplied alpha and back, as Pillow's crop of an LA/RGBA image
/// inside `resize` does.
fn copyBox(src: View, left: u32, top: u32, width: u32, height: u32, round_trip: bool, out: []u8) void {
    const pixel_bytes = @as(usize, src.channels) * src.sampleBytes();
    const out_row_bytes = width * pixel_bytes;
    assert(left + width <= src.width and top + height <= src.height);
    for (0..height) |y| {
        const source = src.row(top + @as(u32, @intCast(y)))[left * pixel_bytes ..][0..out_row_bytes];
        const target = out[y * out_row_bytes ..][0..out_row_bytes];
        if (round_trip) {
            premultiplyRow(src.channels, source, target);
            unpremultiplyRow(src.channels, target);
        } else {
            @memcpy(target, source);
        }
    }
}

// ---------------------------------------------------------------------------
// Lanczos3 weights (Pillow's precompute_coeffs and normalize_coeffs_8bpc).

const support_lanczos = 3.0;
/// Pillow's PRECISION_BITS: 32 - 8 bits of sample - 2 bits of headroom for
/// filter lobes whose sums leave 0..1.
const precision_bits = 22;
const rounding_bias: i32 = 1 << (precision_bits - 1);

fn sinc(x: f64) f64 {
    if (x == 0.0) return 1.0;
    const y = x * std.math.pi;
    return @sin(y) / y;
}

/// Pillow's `bilinear_filter`.
fn triangle(x: f64) f64 {
    const a = @abs(x);
    return if (a < 1.0) 1.0 - a else 0.0;
}

fn lanczos3(x: f64) f64 {
    if (-support_lanczos <= x and x < support_lanczos) return sinc(x) * sinc(x / 3.0);
    return 0.0;
}

/// `@sin` of each lane, with its bits: compiler_rt's sine (musl's) step for
/// step on vectors, each lane taking the branches that a call takes, the
/// same constants written the same way (so that comptime rounds them alike)
/// and no fused multiply-add. Handles |x| < 2^20 pi/2; the caller falls back
/// to `@sin` beyond. The test below compares it with `@sin` on the branch
/// boundaries and on random arguments.
fn sinLanes(x: Lanes4) Lanes4 {
    const U = @Vector(4, u32);
    const I = @Vector(4, i32);
    const B = @Vector(4, bool);
    const pio2_1 = 1.57079632673412561417e+00;
    const pio2_1t = 6.07710050650619224932e-11;
    const pio2_2 = 6.07710050630396597660e-11;
    const pio2_2t = 2.02226624879595063154e-21;
    const pio2_3 = 2.02226624871116645580e-21;
    const pio2_3t = 8.47842766036889956997e-32;
    const invpio2 = 6.36619772367581382433e-01;
    const pio4 = 0x1.921fb54442d18p-1;
    const toint = 1.5 / std.math.floatEps(f64);

    const bits: @Vector(4, u64) = @bitCast(x);
    const ix: U = @truncate((bits >> @splat(32)) & @as(@Vector(4, u64), @splat(0x7fffffff)));
    const negative = bits >> @splat(63) != @as(@Vector(4, u64), @splat(0));

    // rem_pio2's shortcuts for |x| <= 9pi/4: n = +-1 .. +-4 and one round.
    const k: I = @select(i32, ix <= @as(U, @splat(0x4002d97c)), @as(I, @splat(1)), @select(i32, ix <= @as(U, @splat(0x400f6a7a)), @as(I, @splat(2)), @select(i32, ix <= @as(U, @splat(0x4015fdbc)), @as(I, @splat(3)), @as(I, @splat(4)))));
    const k_pio2_1: Lanes4 = @select(f64, k == @as(I, @splat(1)), splat4(pio2_1), @select(f64, k == @as(I, @splat(2)), splat4(2 * pio2_1), @select(f64, k == @as(I, @splat(3)), splat4(3 * pio2_1), splat4(4 * pio2_1))));
    const k_pio2_1t: Lanes4 = @select(f64, k == @as(I, @splat(1)), splat4(pio2_1t), @select(f64, k == @as(I, @splat(2)), splat4(2 * pio2_1t), @select(f64, k == @as(I, @splat(3)), splat4(3 * pio2_1t), splat4(4 * pio2_1t))));
    // x + c is x - (-c) and -(c) is exact: one formula for both signs.
    const c = @select(f64, negative, -k_pio2_1, k_pio2_1);
    const ct = @select(f64, negative, -k_pio2_1t, k_pio2_1t);
    const short_z = x - c;
    const short_y0 = short_z - ct;
    const short_y1 = (short_z - short_y0) - ct;
    const short_n = @select(i32, negative, -k, k);

    // rem_pio2's `medium`.
    var fn_ = x * splat4(invpio2) + splat4(toint) - splat4(toint);
    var r = x - fn_ * splat4(pio2_1);
    var w = fn_ * splat4(pio2_1t);
    const below: B = r - w < splat4(-pio4);
    const above: B = r - w > splat4(pio4);
    fn_ = @select(f64, below, fn_ - splat4(1), @select(f64, above, fn_ + splat4(1), fn_));
    r = x - fn_ * splat4(pio2_1);
    w = fn_ * splat4(pio2_1t);
    var y0 = r - w;
    const ex: I = @intCast(ix >> @splat(20));
    const second = ex - exponentOf(y0) > @as(I, @splat(16));
    {
        const t = r;
        const w2 = fn_ * splat4(pio2_2);
        const r2 = t - w2;
        const w2t = fn_ * splat4(pio2_2t) - ((t - r2) - w2);
        const y02 = r2 - w2t;
        const third = second & (ex - exponentOf(y02) > @as(I, @splat(49)));
        const t3 = r2;
        const w3 = fn_ * splat4(pio2_3);
        const r3 = t3 - w3;
        const w3t = fn_ * splat4(pio2_3t) - ((t3 - r3) - w3);
        const y03 = r3 - w3t;
        r = @select(f64, third, r3, @select(f64, second, r2, r));
        w = @select(f64, third, w3t, @select(f64, second, w2t, w));
        y0 = @select(f64, third, y03, @select(f64, second, y02, y0));
    }
    const medium_y1 = (r - y0) - w;
    const medium_n: I = @intFromFloat(fn_);

    const use_medium = (ix > @as(U, @splat(0x401c463b))) |
        ((ix <= @as(U, @splat(0x400f6a7a))) & ((ix & @as(U, @splat(0xfffff))) == @as(U, @splat(0x921fb)))) |
        (ix == @as(U, @splat(0x4012d97c))) | (ix == @as(U, @splat(0x401921fb)));
    const y_0 = @select(f64, use_medium, y0, short_y0);
    const y_1 = @select(f64, use_medium, medium_y1, short_y1);
    const n = @select(i32, use_medium, medium_n, short_n) & @as(I, @splat(3));
    const sine = sinKernel(y_0, y_1, true);
    const cosine = cosKernel(y_0, y_1);
    const reduced = @select(f64, n == @as(I, @splat(0)), sine, @select(f64, n == @as(I, @splat(1)), cosine, @select(f64, n == @as(I, @splat(2)), -sine, -cosine)));
    // |x| ~< pi/4: no reduction; |x| < 2^-26: x itself.
    const small = @select(f64, ix < @as(U, @splat(0x3e500000)), x, sinKernel(x, splat4(0), false));
    return @select(f64, ix <= @as(U, @splat(0x3fe921fb)), small, reduced);
}

const Lanes4 = @Vector(4, f64);

/// `@sin` of each lane: `sinLanes` where it applies (every argument that
/// `lanczos3Many` sees), `@sin` otherwise.
fn sinAll(x: Lanes4) Lanes4 {
    if (@reduce(.And, @abs(x) < splat4(1e5))) return sinLanes(x);
    var result: Lanes4 = undefined;
    inline for (0..4) |lane| result[lane] = @sin(x[lane]);
    return result;
}

fn splat4(value: f64) Lanes4 {
    return @splat(value);
}

fn exponentOf(x: Lanes4) @Vector(4, i32) {
    const bits: @Vector(4, u64) = @bitCast(x);
    return @intCast((bits >> @splat(52)) & @as(@Vector(4, u64), @splat(0x7ff)));
}

/// compiler_rt's `trig.sin` (`tail`: its `iy` is 1).
fn sinKernel(x: Lanes4, y: Lanes4, comptime tail: bool) Lanes4 {
    const S1 = -1.66666666666666324348e-01;
    const S2 = 8.33333333332248946124e-03;
    const S3 = -1.98412698298579493134e-04;
    const S4 = 2.75573137070700676789e-06;
    const S5 = -2.50507602534068634195e-08;
    const S6 = 1.58969099521155010221e-10;
    const z = x * x;
    const w = z * z;
    const r = splat4(S2) + z * (splat4(S3) + z * splat4(S4)) + z * w * (splat4(S5) + z * splat4(S6));
    const v = z * x;
    if (!tail) return x + v * (splat4(S1) + z * r);
    return x - ((z * (splat4(0.5) * y - v * r) - y) - v * splat4(S1));
}

/// compiler_rt's `trig.cos`.
fn cosKernel(x: Lanes4, y: Lanes4) Lanes4 {
    const C1 = 4.16666666666666019037e-02;
    const C2 = -1.38888888888741095749e-03;
    const C3 = 2.48015872894767294178e-05;
    const C4 = -2.75573143513906633035e-07;
    const C5 = 2.08757232129817482790e-09;
    const C6 = -1.13596475577881948265e-11;
    const z = x * x;
    const zs = z * z;
    const r = z * (splat4(C1) + z * (splat4(C2) + z * splat4(C3))) + zs * zs * (splat4(C4) + z * (splat4(C5) + z * splat4(C6)));
    const hz = splat4(0.5) * z;
    const w = splat4(1.0) - hz;
    return w + (((splat4(1.0) - w) - hz) + (z * r - x * y));
}

/// `lanczos3` of each value, in place, with the same operations on vectors
/// of 4 (the same IEEE results), sines included (`sinLanes`). The weights of
/// RGB 1000x750 -> 592x432 took 0.175 ms with a scalar `@sin` per call
/// (80% of it in the sines), 0.16 ms with the divisions in vectors, and
/// 0.05 ms with `sinLanes` (x86_64_v3; v2 alike).
fn lanczos3Many(values: []f64) void {
    const V = @Vector(4, f64);
    const zero: V = @splat(0.0);
    const one: V = @splat(1.0);
    var i: usize = 0;
    while (i + 4 <= values.len) : (i += 4) {
        const x: V = values[i..][0..4].*;
        const third = x / @as(V, @splat(3.0));
        const y = x * @as(V, @splat(std.math.pi));
        const y_third = third * @as(V, @splat(std.math.pi));
        const sin_y = sinAll(y);
        const sin_y_third = sinAll(y_third);
        const sinc_x = @select(f64, x == zero, one, sin_y / y);
        const sinc_third = @select(f64, third == zero, one, sin_y_third / y_third);
        const inside = @select(f64, x < @as(V, @splat(support_lanczos)), sinc_x * sinc_third, zero);
        values[i..][0..4].* = @select(f64, x >= @as(V, @splat(-support_lanczos)), inside, zero);
    }
    for (values[i..]) |*value| value.* = lanczos3(value.*);
}

/// `lanczos3` of each value, in place, to ~1e-15 rather than to the bit:
/// sin(pi t) from t's nearest integer and a Taylor polynomial of the rest
/// (|pi r| <= pi/2, terms to the 17th power: error < 5e-14), a few vector
/// operations where `lanczos3Many` mimics libm's argument reduction. The
/// 8-bit weights have 22 fraction bits, so this moves one by a unit at
/// most, and rarely; the off-the-exact-road resamples (`Order.cheapest`)
/// use it.
fn lanczos3Fast(values: []f64) void {
    const V = @Vector(4, f64);
    var i: usize = 0;
    while (i < values.len) : (i += 4) {
        const n = @min(4, values.len - i);
        var lanes: [4]f64 = @splat(0.0);
        @memcpy(lanes[0..n], values[i..][0..n]);
        const x: V = lanes;
        const third = x / @as(V, @splat(3.0));
        const value = sincFast(x) * sincFast(third);
        const inside = (@abs(x) < @as(V, @splat(support_lanczos))) | (x == @as(V, @splat(-support_lanczos)));
        lanes = @select(f64, inside, value, @as(V, @splat(0.0)));
        @memcpy(values[i..][0..n], lanes[0..n]);
    }
}

/// sin(pi t) / (pi t), 1 at 0.
fn sincFast(t: @Vector(4, f64)) @Vector(4, f64) {
    const V = @Vector(4, f64);
    const k = @round(t);
    const y = (t - k) * @as(V, @splat(std.math.pi));
    const y2 = y * y;
    // sin y = y (1 - y^2/3! + y^4/5! - ... + y^16/17!)
    var p: V = @splat(1.0 / 355687428096000.0); // 1/17!
    inline for ([_]f64{ -1.0 / 1307674368000.0, 1.0 / 6227020800.0, -1.0 / 39916800.0, 1.0 / 362880.0, -1.0 / 5040.0, 1.0 / 120.0, -1.0 / 6.0, 1.0 }) |c| {
        p = p * y2 + @as(V, @splat(c));
    }
    const odd = @mod(k, @as(V, @splat(2.0))) != @as(V, @splat(0.0));
    const sine = @select(f64, odd, -(y * p), y * p);
    const pt = t * @as(V, @splat(std.math.pi));
    return @select(f64, t == @as(V, @splat(0.0)), @as(V, @splat(1.0)), sine / pt);
}

/// Per output sample along one axis: the first source index, the number of
/// taps, and `ksize` normalised f64 weights (zero past `count`).
const Taps = struct {
    first: []u32,
    count: []u32,
    weights: []f64,
    ksize: usize,

    /// Pillow's coefficient formula, operation for operation (f32 box
    /// subtraction, f64 centre and weights, truncating conversions), so that
    /// the fixed-point weights match bit for bit. `@sin` is Zig's
    /// (musl-derived), not glibc's, which Pillow calls: they differ by 1 ulp
    /// on ~3% of arguments, and over 4.7e8 weights of random geometries not
    /// one fixed-point weight changed (the f64 weights of the 16-bit path
    /// may, by an ulp).
    /// `exact`: Pillow's bits (Lanczos sines as `@sin` gives them);
    /// otherwise the Lanczos sines come from `lanczos3Fast`.
    fn init(gpa: std.mem.Allocator, filter: Filter, exact: bool, in_size: u32, in0: f32, in1: f32, out_size: u32) Error!Taps {
        assert(filter != .nearest);
        const scale: f64 = @as(f64, in1 - in0) / @as(f64, @floatFromInt(out_size));
        const filterscale: f64 = if (scale < 1.0) 1.0 else scale;
        const support = @as(f64, if (filter == .lanczos3) support_lanczos else 1.0) * filterscale;
        const ksize = @as(usize, @intFromFloat(@ceil(support))) * 2 + 1;
        const first = try gpa.alloc(u32, out_size);
        errdefer gpa.free(first);
        const count = try gpa.alloc(u32, out_size);
        errdefer gpa.free(count);
        const weights = try gpa.alloc(f64, try mulOrOom(out_size, ksize));
        @memset(weights, 0);

        const inv_filterscale = 1.0 / filterscale;
        for (0..out_size) |xx| {
            const center = @as(f64, in0) + (@as(f64, @floatFromInt(xx)) + 0.5) * scale;
            const low: i64 = @intFromFloat(center - support + 0.5);
            const high: i64 = @intFromFloat(center + support + 0.5);
            const xmin: u32 = @intCast(@max(low, 0));
            const xmax: u32 = @intCast(@min(high, in_size));
            assert(xmin < xmax and xmax - xmin <= ksize);
            const k = weights[xx * ksize ..][0 .. xmax - xmin];
            for (k, 0..) |*w, x| {
                const offset = @as(f64, @floatFromInt(xmin + x)) - center + 0.5;
                w.* = offset * inv_filterscale;
            }
            if (filter == .lanczos3) {
                if (exact) lanczos3Many(k) else lanczos3Fast(k);
            } else for (k) |*w| {
                w.* = triangle(w.*);
            }
            var sum: f64 = 0.0;
            for (k) |w| sum += w;
            if (sum != 0.0) for (k) |*w| {
                w.* /= sum;
            };
            first[xx] = xmin;
            count[xx] = xmax - xmin;
        }
        return .{ .first = first, .count = count, .weights = weights, .ksize = ksize };
    }

    fn deinit(taps: *Taps, gpa: std.mem.Allocator) void {
        gpa.free(taps.first);
        gpa.free(taps.count);
        gpa.free(taps.weights);
        taps.* = undefined;
    }
};

fn toFixed(w: f64) i32 {
    const scaled = w * @as(f64, 1 << precision_bits);
    return @intFromFloat(if (w < 0) -0.5 + scaled else 0.5 + scaled);
}

fn mulOrOom(a: usize, b: usize) Error!usize {
    return std.math.mul(usize, a, b) catch error.OutOfMemory;
}

/// One axis's windows and weights, `stride` weights per output sample:
/// f64 as computed (16-bit) or fixed point (8-bit).
fn Plan(comptime Weight: type) type {
    return struct {
        const Self = @This();
        first: []u32,
        count: []u32,
        weights: []Weight,
        stride: usize,

        /// Consumes `taps`, also on failure.
        fn init(gpa: std.mem.Allocator, taps: Taps) Error!Self {
            if (Weight == f64) return .{ .first = taps.first, .count = taps.count, .weights = taps.weights, .stride = taps.ksize };
            const source = taps;
            defer gpa.free(source.weights);
            errdefer {
                gpa.free(source.first);
                gpa.free(source.count);
            }
            const fixed = try gpa.alloc(i32, source.weights.len);
            for (fixed, source.weights) |*k, w| k.* = toFixed(w);
            return .{ .first = source.first, .count = source.count, .weights = fixed, .stride = source.ksize };
        }

        fn deinit(plan: *Self, gpa: std.mem.Allocator) void {
            gpa.free(plan.first);
            gpa.free(plan.count);
            gpa.free(plan.weights);
            plan.* = undefined;
        }

        fn of(plan: Self, index: usize) []const Weight {
            return plan.weights[index * plan.stride ..][0..plan.stride];
        }

        /// Source indices [first of output 0, end of the last output's
        /// window): windows only move forward along the axis.
        fn span(plan: Self) struct { u32, u32 } {
            const last = plan.first.len - 1;
            return .{ plan.first[0], plan.first[last] + plan.count[last] };
        }
    };
}

/// The 8-bit horizontal plan: fixed-point weights per tap, the same weights
/// as pmaddwd word pairs (`pairWeight`), and the scratch of
/// `horizontalBand`, which filters `band_rows` rows at once in chunks of
/// outputs whose windows cover at most `columns.len` source samples.
const Horizontal8 = struct {
    taps: Plan(i32),
    /// `pairWeight` of every weight in `taps`, laid out alike; zero past
    /// each window.
    pairs: []i32,
    /// Per output: whether every one of its weights has a pair.
    paired: []bool,
    /// One chunk's source samples, transposed (see `transposeIn`).
    columns: []BandPairs,
    /// One chunk's outputs, transposed the same way, as bytes.
    tile: []BandBytes,
    /// Output pixels per chunk, at most.
    chunk_outputs: usize,

    /// Consumes `taps`, also on failure.
    fn init(gpa: std.mem.Allocator, taps: Taps, channels: u8) Error!Horizontal8 {
        var plan: Plan(i32) = try .init(gpa, taps);
        errdefer plan.deinit(gpa);
        const outputs = plan.first.len;
        // The chunks of `horizontalBand` rely on windows that only move forward.
        for (plan.first[1..], plan.count[1..], plan.first[0 .. outputs - 1], plan.count[0 .. outputs - 1]) |first, count, before_first, before_count| {
            assert(first >= before_first and first + count >= before_first + before_count);
        }
        const pairs = try gpa.alloc(i32, plan.weights.len);
        errdefer gpa.free(pairs);
        const paired = try gpa.alloc(bool, outputs);
        errdefer gpa.free(paired);
        for (paired, 0..) |*all, o| {
            all.* = true;
            for (plan.of(o), pairs[o * plan.stride ..][0..plan.stride]) |k, *pair| {
                pair.* = pairWeight(k) orelse blk: {
                    all.* = false;
                    break :blk 0;
                };
            }
        }
        // Every chunk holds at least one output's whole window.
        const window = @as(usize, std.mem.max(u32, plan.count)) * channels;
        const columns = try gpa.alloc(BandPairs, @max(chunk_samples, window));
        errdefer gpa.free(columns);
        const chunk_outputs: usize = @min(chunk_pixels, outputs);
        const tile = try gpa.alloc(BandBytes, chunk_outputs * channels);
        return .{ .taps = plan, .pairs = pairs, .paired = paired, .columns = columns, .tile = tile, .chunk_outputs = chunk_outputs };
    }

    fn deinit(plan: *Horizontal8, gpa: std.mem.Allocator) void {
        plan.taps.deinit(gpa);
        gpa.free(plan.pairs);
        gpa.free(plan.paired);
        gpa.free(plan.columns);
        gpa.free(plan.tile);
        plan.* = undefined;
    }

    fn span(plan: Horizontal8) struct { u32, u32 } {
        return plan.taps.span();
    }
};

// ---------------------------------------------------------------------------
// The two-pass driver.

/// Pillow 13 (PR #9549) runs the vertical pass first when the height shrinks
/// by more than twice as many pixels as the width does, counted on the whole
/// image, not the box. The rule is not in the 12.x source we read; we
/// inferred it from the installed 13.0.0 wheel, whose output matches exactly
/// one of the two orders in every one of 808 probes (random and on the
/// boundary), and this predicate names the right one in all of them.
fn verticalFirst(src_width: u32, src_height: u32, out_width: u32, out_height: u32) bool {
    const shrink_y = @as(i64, src_height) - out_height;
    const shrink_x = @as(i64, src_width) - out_width;
    return out_height < src_height and shrink_y > 2 * shrink_x;
}

/// Two separable passes over `Sample` (u8: fixed point, u16: f64), in
/// Pillow's order, one output row at a time, except that 8-bit horizontal
/// passes filter `band_rows` rows per call and 8-bit vertical passes make
/// two rows. The rows the vertical pass reads go through a ring buffer;
/// nothing else holds more than a band of rows.
fn Resampler(comptime Sample: type) type {
    return struct {
        const Self = @This();
        const HorizontalPlan = if (Sample == u8) Horizontal8 else Plan(f64);
        const VerticalPlan = Plan(if (Sample == u8) i32 else f64);
        const Row = []align(1) const Sample;
        const Target = []align(1) Sample;
        /// Rows per horizontal call, and output rows per vertical call.
        const band = if (Sample == u8) band_rows else 1;
        const vertical_rows = if (Sample == u8) 2 else 1;

        src: View,
        channels: u8,
        /// `lanczos3` or `bilinear`.
        filter: Filter,
        order: Order,
        premultiplied: bool,
        /// Null when Pillow skips the pass: the box spans the whole axis at
        /// the same size.
        horizontal: ?HorizontalPlan = null,
        vertical: ?VerticalPlan = null,
        /// With both passes: the vertical pass runs on source columns and the
        /// horizontal pass on its output.
        vertical_first: bool = false,
        /// The source columns [span_low, span_high) that any horizontal
        /// window covers; every column without a horizontal pass.
        span_low: u32 = 0,
        span_high: u32 = 0,
        /// `ring_rows` rows the vertical pass reads, source row `y` in slot
        /// `y % ring_rows`: horizontally resampled rows (horizontal first) or
        /// premultiplied source spans. Empty when it reads the source itself.
        ring: []Sample = &.{},
        ring_rows: u32 = 0,
        /// The next source row the ring has not seen, and the end of the
        /// rows any vertical window reads.
        ring_next: u32 = 0,
        ring_end: u32 = 0,
        /// `band` span-wide rows in front of the horizontal pass: the
        /// vertical pass's outputs. Empty when the horizontal pass reads the
        /// source itself.
        scratch: []Sample = &.{},
        /// Rows under the current output rows' vertical taps.
        tap_rows: []Row = &.{},

        fn run(gpa: std.mem.Allocator, src: View, box: Box32, out_width: u32, out_height: u32, filter: Filter, order: Order, premultiplied: bool, out: []u8) Error!void {
            var self: Self = .{ .src = src, .channels = src.channels, .filter = filter, .order = order, .premultiplied = premultiplied };
            defer self.deinit(gpa);
            try self.plan(gpa, box, out_width, out_height);
            const out_row_len = @as(usize, out_width) * src.channels;
            const out_samples = std.mem.bytesAsSlice(Sample, out);
            var yy: u32 = 0;
            while (yy < out_height) {
                const banded = self.horizontal != null and (self.vertical == null or self.vertical_first);
                const n: u32 = @min(@as(u32, if (banded) band else vertical_rows), out_height - yy);
                var targets: [band]Target = undefined;
                for (targets[0..n], yy..) |*target, y| target.* = out_samples[y * out_row_len ..][0..out_row_len];
                if (self.vertical) |vertical| {
                    if (self.horizontal != null and self.vertical_first) {
                        var mids: [band]Target = undefined;
                        for (mids[0..n], 0..) |*mid, i| mid.* = self.scratchRow(i);
                        var i: u32 = 0;
                        while (i < n) : (i += vertical_rows) {
                            const m = @min(vertical_rows, n - i);
                            self.verticalPass(vertical, yy + i, mids[i..][0..m]);
                        }
                        var sources: [band]Row = undefined;
                        for (sources[0..n], mids[0..n]) |*source, mid| source.* = mid;
                        self.horizontalPass(sources[0..n], false, targets[0..n]);
                    } else {
                        self.verticalPass(vertical, yy, targets[0..n]);
                    }
                } else {
                    var sources: [band]Row = undefined;
                    for (sources[0..n], yy..) |*source, y| source.* = self.sourceSpan(@intCast(y));
                    self.horizontalPass(sources[0..n], self.premultiplied, targets[0..n]);
                }
                if (Sample == u8 and premultiplied) for (targets[0..n]) |target| unpremultiplyRow(src.channels, target);
                yy += n;
            }
        }

        /// Builds the weight tables and sizes the ring and the scratch rows.
        /// Pillow decides to skip a pass by comparing the box with the
        /// *output* size; so do we.
        fn plan(self: *Self, gpa: std.mem.Allocator, box: Box32, out_width: u32, out_height: u32) Error!void {
            const need_horizontal = out_width != self.src.width or box.left != 0 or
                box.right != @as(f32, @floatFromInt(out_width));
            const need_vertical = out_height != self.src.height or box.top != 0 or
                box.bottom != @as(f32, @floatFromInt(out_height));
            // The crop shortcut has taken every box that needs neither pass.
            assert(need_horizontal or need_vertical);
            const c = self.channels;
            self.span_high = self.src.width;
            if (need_horizontal) {
                const taps = try Taps.init(gpa, self.filter, self.order == .pillow, self.src.width, box.left, box.right, out_width);
                self.horizontal = if (Sample == u8) try Horizontal8.init(gpa, taps, c) else try Plan(f64).init(gpa, taps);
                self.span_low, self.span_high = self.horizontal.?.span();
            }
            if (need_vertical) {
                self.vertical_first = switch (self.order) {
                    .pillow => verticalFirst(self.src.width, self.src.height, out_width, out_height),
                    // One plane 1155x866 -> 592x432: 0.69 -> 0.61 ms; 2309x1732
                    // -> 1184x864: 2.35 -> 2.07 ms; near 1:1 the same.
                    .cheapest => @as(f64, box.bottom - box.top) > @as(f64, @floatFromInt(out_height)),
                };
                self.vertical = try VerticalPlan.init(gpa, try Taps.init(gpa, self.filter, self.order == .pillow, self.src.height, box.top, box.bottom, out_height));
                // Rows under the taps of `vertical_rows` successive outputs.
                const vertical = self.vertical.?;
                var window: u32 = 0;
                for (0..out_height) |y| {
                    const last = @min(y + vertical_rows - 1, out_height - 1);
                    window = @max(window, vertical.first[last] + vertical.count[last] - vertical.first[y]);
                }
                const resampled_rows = need_horizontal and !self.vertical_first;
                if (resampled_rows or self.premultiplied) {
                    // A band filled for the window's last row must not
                    // overwrite the window's first: `band - 1` more slots.
                    const row_len = if (resampled_rows) @as(usize, out_width) * c else self.spanLen();
                    self.ring_rows = if (resampled_rows) window + band - 1 else window;
                    self.ring = try gpa.alloc(Sample, try mulOrOom(self.ring_rows, row_len));
                    self.ring_next, self.ring_end = vertical.span();
                }
                self.tap_rows = try gpa.alloc(Row, window);
            }
            if (need_horizontal and need_vertical and self.vertical_first) {
                self.scratch = try gpa.alloc(Sample, try mulOrOom(band, self.spanLen()));
            }
        }

        fn deinit(self: *Self, gpa: std.mem.Allocator) void {
            if (self.horizontal) |*h| h.deinit(gpa);
            if (self.vertical) |*v| v.deinit(gpa);
            gpa.free(self.ring);
            gpa.free(self.scratch);
            gpa.free(self.tap_rows);
        }

        fn spanLen(self: Self) usize {
            return @as(usize, self.span_high - self.span_low) * self.channels;
        }

        fn scratchRow(self: Self, index: usize) Target {
            return self.scratch[index * self.spanLen() ..][0..self.spanLen()];
        }

        fn ringSlot(self: Self, y: u32) Target {
            const row_len = self.ring.len / self.ring_rows;
            return self.ring[y % self.ring_rows * row_len ..][0..row_len];
        }

        /// Output rows `yy ..` (as many as `targets`, at most
        /// `vertical_rows`) of the vertical pass, from the rows under their
        /// taps.
        fn verticalPass(self: *Self, vertical: VerticalPlan, yy: usize, targets: []const Target) void {
            assert(targets.len >= 1 and targets.len <= vertical_rows);
            const first = vertical.first[yy];
            const last = yy + targets.len - 1;
            const rows = self.tap_rows[0 .. vertical.first[last] + vertical.count[last] - first];
            for (rows, first..) |*row, y| row.* = self.rowAt(@intCast(y));
            if (Sample == u8) {
                verticalPass8(rows, vertical, yy, targets);
            } else {
                verticalPass16(rows, vertical.of(yy)[0..vertical.count[yy]], targets[0]);
            }
        }

        /// Source row `y` as the vertical pass reads it: from the source, or
        /// from the ring, filled first if it has not been. Successive output
        /// rows' windows only move down, so each row enters the ring once,
        /// in order, and a slot is reused only after its row left every
        /// later window (no window has more than `ring_rows - band + 1`
        /// rows).
        fn rowAt(self: *Self, y: u32) Row {
            if (self.ring.len == 0) return self.sourceSpan(y);
            assert(y < self.ring_end and y + self.ring_rows >= self.ring_next);
            while (self.ring_next <= y) {
                if (self.horizontal != null and !self.vertical_first) {
                    const n = @min(band, self.ring_end - self.ring_next);
                    var sources: [band]Row = undefined;
                    var slots: [band]Target = undefined;
                    for (sources[0..n], slots[0..n], self.ring_next..) |*source, *slot, row| {
                        source.* = self.sourceSpan(@intCast(row));
                        slot.* = self.ringSlot(@intCast(row));
                    }
                    self.horizontalPass(sources[0..n], self.premultiplied, slots[0..n]);
                    self.ring_next += n;
                } else if (Sample == u8) {
                    premultiplyRow(self.channels, self.sourceSpan(self.ring_next), self.ringSlot(self.ring_next));
                    self.ring_next += 1;
                } else {
                    unreachable; // 16-bit is never premultiplied: its ring holds resampled rows.
                }
            }
            return self.ringSlot(y);
        }

        fn sourceSpan(self: Self, y: u32) Row {
            const row = std.mem.bytesAsSlice(Sample, self.src.row(y));
            return row[@as(usize, self.span_low) * self.channels ..][0..self.spanLen()];
        }

        /// `rows` (at most `band`) hold the source columns from `span_low`,
        /// to be premultiplied when `premultiply_rows`.
        fn horizontalPass(self: Self, rows: []const Row, premultiply_rows: bool, targets: []const Target) void {
            assert(rows.len == targets.len and rows.len >= 1 and rows.len <= band);
            assert(!premultiply_rows or Sample == u8);
            const horizontal = self.horizontal.?;
            switch (self.channels) {
                inline 1...4 => |c| if (Sample == u8) {
                    if ((c == 2 or c == 4) and premultiply_rows) {
                        horizontalBand(c, true, horizontal, rows, self.span_low, targets);
                    } else {
                        horizontalBand(c, false, horizontal, rows, self.span_low, targets);
                    }
                } else for (rows, targets) |row, target| {
                    horizontal16(c, horizontal, row, self.span_low, target);
                },
                else => unreachable, // resize asserts 1..4 channels.
            }
        }
    };
}

// ---------------------------------------------------------------------------
// 8-bit kernels: i32 fixed point, exact, so any summation order gives
// Pillow's result. Wrapping arithmetic: the true sums fit in i32 (Pillow's
// 2 bits of headroom), so sums taken modulo 2^32 are exact, whatever the
// partial sums do, and ReleaseSafe checks no lane for overflow.

/// Shifts out the fraction and clips to 0..255. The true sums lie within
/// +-2^31, so the shifted ones within +-2^9: the clamp to i16 changes
/// nothing and lets LLVM use the saturating packs (packssdw, packuswb).
fn clip8(comptime n: comptime_int, sum: @Vector(n, i32)) @Vector(n, u8) {
    const shifted = sum >> @splat(precision_bits);
    const words: @Vector(n, i16) = @intCast(@min(@max(shifted, @as(@Vector(n, i32), @splat(-32768))), @as(@Vector(n, i32), @splat(32767))));
    return @intCast(@min(@max(words, @as(@Vector(n, i16), @splat(0))), @as(@Vector(n, i16), @splat(255))));
}

/// The kernels multiply with pmaddwd, which multiplies i16 words and adds
/// them in pairs: a sample `p` is kept as the pair (`p << 7`, `p`) in one
/// i32 (`p * pair_scale`), a weight `k = 128 b + d` as the pair (`b`, `d`)
/// (`pairWeight`), and one pmaddwd lane computes `(p << 7) b + p d = p k`
/// exactly. Otherwise `p k` takes a 32-bit multiply (pmulld, with the zero
/// extension 3 instructions per vector) or, with `k` split in 16-bit
/// halves, two pmaddwd. The horizontal pass keeps its transposed source
/// samples as pairs, read once per tap that covers them. (Rows of the ring
/// kept as pairs made the vertical pass slower: 4 bytes a sample streamed
/// from L2 instead of 1 from L1, RGB 1000x750 -> 592x432 1.06 -> 1.22 ms.)
const pair_scale: i32 = (1 << 16) | (1 << 7);

/// `k = 128 b + d` with `b` and `d` in i16, packed as pmaddwd reads them
/// against a pair (b in the low word), or null: |k| up to 2^22 + 2^15
/// (weights up to 1.0078) have one; a few windows of tiny sources weigh up
/// to 1.28 and take the kernels' unpaired path, a pmulld on `pair >> 16`.
fn pairWeight(k: i32) ?i32 {
    const b = std.math.clamp(k >> 7, std.math.minInt(i16), std.math.maxInt(i16));
    const d = k - 128 * b;
    if (d < std.math.minInt(i16) or d > std.math.maxInt(i16)) return null;
    const low: u16 = @bitCast(@as(i16, @intCast(b)));
    const high: u16 = @bitCast(@as(i16, @intCast(d)));
    return @bitCast(@as(u32, high) << 16 | low);
}

/// Lane i: `pairs[i] * weight[i]` as pmaddwd computes it, from word pairs.
inline fn pairDot(comptime n: usize, pairs: @Vector(n, i32), weight: @Vector(n, i32)) @Vector(n, i32) {
    const Words = @Vector(2 * n, i16);
    const Wide = @Vector(2 * n, i32);
    const products = @as(Wide, @as(Words, @bitCast(pairs))) *% @as(Wide, @as(Words, @bitCast(weight)));
    const even = comptime std.simd.iota(i32, n) * @as(@Vector(n, i32), @splat(2));
    return @shuffle(i32, products, undefined, even) +% @shuffle(i32, products, undefined, even + @as(@Vector(n, i32), @splat(1)));
}

// ---------------------------------------------------------------------------
// The 8-bit horizontal pass.

/// Rows the 8-bit horizontal pass filters at once. Along a row every output
/// has its own weights, so a SIMD kernel there spends its lanes on the taps
/// of one pixel and then folds them; across a band of rows the outputs at
/// one column share their weights. `horizontalBand` therefore transposes a
/// band (`transposeIn`), so that each source sample becomes a vector of
/// pairs with one lane per row, and runs the vertical pass's kind of kernel
/// on it: one broadcast weight per tap, one pmaddwd per channel and 8 rows,
/// no folding. 16 rows beat 8 on v2 too (RGB 1000x750 -> 592x432: 2.06 ms
/// against 2.24; RGBA 3.35 against 3.38), where the 16 sums of RGBA's 4
/// channels take every SSE register.
const band_rows = 16;
const BandBytes = @Vector(band_rows, u8);
const BandSums = @Vector(band_rows, i32);
const BandPairs = @Vector(band_rows, i32);

/// Source samples per chunk (24 KB of pairs, in L1 with the tile; 16 and
/// 32 KB ran 1% slower) and output pixels per chunk.
const chunk_samples = 24 * 1024 / @sizeOf(BandPairs);
const chunk_pixels = 256;

/// Bytes of a row in one transpose block: the widest vector whose byte
/// unpacks act on 16-byte lanes (16 with SSE, 32 with AVX2).
const block_bytes = std.math.clamp(std.simd.suggestVectorLength(u8) orelse 16, 16, 32);
const Block = @Vector(block_bytes, u8);

/// Filters `rows` (1 to `band_rows` rows holding the source columns from
/// `origin`, premultiplied on the way with `premultiply_rows`) into
/// `targets`. Outputs go in
/// chunks: the source samples their windows cover are transposed into
/// `plan.columns`, each output's channels are summed across the band into
/// `plan.tile`, which goes back to rows.
fn horizontalBand(comptime c: u8, comptime premultiply_rows: bool, plan: Horizontal8, rows: []const []const u8, origin: u32, targets: []const []u8) void {
    assert(rows.len >= 1 and rows.len <= band_rows and rows.len == targets.len);
    // A short band repeats its first row; those lanes are not written back.
    var sources: [band_rows][]const u8 = @splat(rows[0]);
    @memcpy(sources[0..rows.len], rows);
    const taps = plan.taps;
    const outputs = taps.first.len;
    var x0: usize = 0;
    while (x0 < outputs) {
        const low = taps.first[x0];
        var x1 = x0 + 1;
        while (x1 < outputs and x1 - x0 < plan.chunk_outputs and
            (taps.first[x1] + taps.count[x1] - low) * @as(usize, c) <= plan.columns.len) x1 += 1;
        const high = taps.first[x1 - 1] + taps.count[x1 - 1];
        const columns = plan.columns[0 .. (high - low) * @as(usize, c)];
        transposeIn(if (premultiply_rows) c else 0, &sources, (low - origin) * @as(usize, c), columns);
        const tile = plan.tile[0 .. (x1 - x0) * c];
        {
            // Windows only move forward (`Horizontal8.init` checks), so every
            // window of the chunk lies in [low, high), which `columns` holds;
            // `tile` has a slot per channel of each output. Unchecked, the
            // whole resize ran 3% faster (RGB 1000x750 -> 592x432, v2 and v3).
            @setRuntimeSafety(false);
            const channel_group = comptime channelGroup(c);
            for (x0..x1, 0..) |x, i| {
                const count = taps.count[x];
                const window = columns[(taps.first[x] - low) * @as(usize, c) ..][0 .. count * c];
                inline for (0..c / channel_group) |g| {
                    const sums = if (plan.paired[x])
                        bandSums(c, g * channel_group, channel_group, true, window, plan.pairs[x * taps.stride ..][0..count])
                    else
                        bandSums(c, g * channel_group, channel_group, false, window, taps.of(x)[0..count]);
                    inline for (sums, g * channel_group..) |sum, ch| tile[i * c + ch] = clip8(band_rows, sum);
                }
            }
        }
        transposeOut(tile, targets, x0 * c);
        x0 = x1;
    }
}

/// Channels summed per sweep over an output's taps: all of them, except
/// that SSE's 16 registers take RGBA's 4 channels x 4 registers of sums only
/// with spills, so it sums them 2 at a time (RGBA 1000x750 -> 592x432 on
/// v2: 3.03 ms against 3.21).
fn channelGroup(comptime c: u8) u8 {
    return if (c == 4 and !builtin.cpu.has(.x86, .avx)) 2 else c;
}

/// Channels `first .. first + count` of one output pixel's sums across the
/// band, with the rounding bias: `weights` are `pairWeight`s (`paired`) or
/// plain fixed point.
inline fn bandSums(comptime c: u8, comptime first: u8, comptime count: u8, comptime paired: bool, window: []const BandPairs, weights: []const i32) [count]BandSums {
    assert(window.len == weights.len * c);
    var sums: [count]BandSums = @splat(@splat(rounding_bias));
    {
        // `window` is sliced (and so checked) to the taps.
        @setRuntimeSafety(false);
        for (weights, 0..) |w, t| {
            inline for (&sums, first..) |*sum, ch| {
                const pairs = window[t * c + ch];
                sum.* +%= if (paired) pairDot(band_rows, pairs, @splat(w)) else (pairs >> @splat(16)) *% @as(BandSums, @splat(w));
            }
        }
    }
    return sums;
}

/// The unpack network (`transposeBlock`) for a band: rounds in `transposeIn`
/// and `transposeOut`, and the order in which each feeds its registers
/// (found by simulating the network; the test below checks them).
const band_bits = std.math.log2_int(usize, band_rows);
const in_units = if (band_rows == 8) .{ 1, 2, 4 } else .{ 1, 2, 4, 8 };
const out_units = if (band_rows == 8) .{ 1, 1, 1, 1 } else .{ 1, 2, 4, 8 };

fn bitReverse(i: usize) usize {
    return @bitReverse(@as(@Int(.unsigned, band_bits), @intCast(i)));
}

/// The row that lane `i` of a band's pairs (and of the sums and the tile
/// made from them) holds: the word unpacks of `bandPairs` on AVX2 act
/// within 16-byte lanes and leave 16 rows in this order, which costs SSE
/// nothing; `transposeOut` undoes it.
const lane_rows: [band_rows]usize = if (band_rows == 16)
    .{ 0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15 }
else
    std.simd.iota(usize, band_rows);

/// A sample of every row, in row order, as pairs in `lane_rows` order
/// (pmovzxbw, psllw, punpckl/hwd: 4 instructions for 16 rows where
/// zero-extending to i32 and multiplying by `pair_scale` took 7).
inline fn bandPairs(bytes: BandBytes) BandPairs {
    const words: @Vector(band_rows, u16) = bytes;
    return @bitCast(@shuffle(u16, words << @splat(7), words, band_pairs_mask));
}

const band_pairs_mask = blk: {
    var m: [2 * band_rows]i32 = undefined;
    for (lane_rows, 0..) |row, i| {
        m[2 * i] = @intCast(row);
        m[2 * i + 1] = ~@as(i32, @intCast(row));
    }
    break :blk m;
};

/// Makes `columns[j]` the `bandPairs` of sample `start + j` of every row.
/// Blocks of `block_bytes` samples go through the unpack network; the last
/// block overlaps the one before it instead of leaving a scalar tail, which
/// a chunk of 256 samples (16 rows) spent 40% of this function on.
///
/// With `premultiply` (2 or 4 channels; 0 for none) the samples are
/// premultiplied on the way, a block of whole pixels at a time (`start` and
/// `columns.len` are whole pixels), which saved a pass over the rows and
/// their band of scratch rows.
fn transposeIn(comptime premultiply_c: u8, rows: *const [band_rows][]const u8, start: usize, columns: []BandPairs) void {
    const per_lane = 16 / band_rows;
    if (premultiply_c != 0) assert(start % premultiply_c == 0 and columns.len % premultiply_c == 0);
    if (columns.len < block_bytes) {
        for (columns, start..) |*column, s| {
            var bytes: BandBytes = undefined;
            inline for (0..band_rows) |r| bytes[r] = rows[r][s];
            if (premultiply_c != 0 and s % premultiply_c != premultiply_c - 1) {
                var alpha: BandBytes = undefined;
                inline for (0..band_rows) |r| alpha[r] = rows[r][s - s % premultiply_c + premultiply_c - 1];
                const t = @as(@Vector(band_rows, u16), bytes) * alpha + @as(@Vector(band_rows, u16), @splat(128));
                bytes = @intCast((t + (t >> @splat(8))) >> @splat(8));
            }
            column.* = bandPairs(bytes);
        }
        return;
    }
    var j: usize = 0;
    while (j < columns.len) : (j += block_bytes) {
        const at = @min(j, columns.len - block_bytes);
        var block: [band_rows]Block = undefined;
        inline for (&block, 0..) |*reg, i| {
            const bytes: Block = rows[comptime bitReverse(i)][start + at ..][0..block_bytes].*;
            reg.* = if (premultiply_c == 0) bytes else premultiplyPixels(premultiply_c, block_bytes, bytes);
        }
        block = transposeBlock(in_units, block);
        // Register k, 16-byte lane l: columns 16l + per_lane * k + (0 .. per_lane).
        inline for (block, 0..) |reg, k| inline for (0..block_bytes / 16) |l| inline for (0..per_lane) |i| {
            const bytes = @shuffle(u8, reg, undefined, sequence(band_rows, 16 * l + band_rows * i));
            columns[at + 16 * l + per_lane * k + i] = bandPairs(bytes);
        };
    }
}

/// Writes lane `i` of `tile[j]` to `targets[lane_rows[i]][start + j]`, in
/// blocks as `transposeIn` (lanes of rows past `targets` are dropped).
fn transposeOut(tile: []const BandBytes, targets: []const []u8, start: usize) void {
    const per_lane = 16 / band_rows;
    if (tile.len < block_bytes) {
        for (tile, start..) |column, s| {
            const lanes: [band_rows]u8 = column;
            for (lanes, lane_rows) |b, row| if (row < targets.len) {
                targets[row][s] = b;
            };
        }
        return;
    }
    var j: usize = 0;
    while (j < tile.len) : (j += block_bytes) {
        const at = @min(j, tile.len - block_bytes);
        var block: [band_rows]Block = undefined;
        inline for (&block, 0..) |*reg, k| {
            // Assembled with shuffles: a @bitCast from an array of vectors
            // went through general registers byte by byte.
            const first = at + per_lane * (if (band_rows == 8) k else comptime bitReverse(k));
            const low = if (per_lane == 1) tile[first] else @shuffle(u8, tile[first], tile[first + 1], pairMask(8));
            reg.* = if (block_bytes == 16) low else blk: {
                const high = if (per_lane == 1) tile[first + 16] else @shuffle(u8, tile[first + 16], tile[first + 17], pairMask(8));
                break :blk @shuffle(u8, low, high, pairMask(16));
            };
        }
        block = transposeBlock(out_units, block);
        inline for (block, lane_rows) |reg, row| if (row < targets.len) {
            targets[row][start + at ..][0..block_bytes].* = reg;
        };
    }
}

/// `first`, `first + 1`, ... (`len` indices): a slice of a vector.
fn sequence(comptime len: usize, comptime first: usize) [len]i32 {
    var mask: [len]i32 = undefined;
    for (&mask, 0..) |*m, i| m.* = @intCast(first + i);
    return mask;
}

/// Two vectors of `len` lanes, one after the other.
fn pairMask(comptime len: usize) [2 * len]i32 {
    var mask: [2 * len]i32 = undefined;
    for (&mask, 0..) |*m, i| m.* = if (i < len) @intCast(i) else ~@as(i32, @intCast(i - len));
    return mask;
}

/// Rounds of the unpack network: each pairs register i with i + n/2 and
/// writes their interleaved low halves to 2i and high halves to 2i + 1, in
/// units of `unit` bytes within each 16-byte lane (punpckl/h{bw,wd,dq,qdq}).
fn transposeBlock(comptime units: anytype, block: [band_rows]Block) [band_rows]Block {
    var regs = block;
    inline for (units) |unit| {
        var next: [band_rows]Block = undefined;
        inline for (0..band_rows / 2) |i| {
            next[2 * i] = interleave(unit, false, regs[i], regs[i + band_rows / 2]);
            next[2 * i + 1] = interleave(unit, true, regs[i], regs[i + band_rows / 2]);
        }
        regs = next;
    }
    return regs;
}

inline fn interleave(comptime unit: usize, comptime high: bool, a: Block, b: Block) Block {
    const Unit = @Int(.unsigned, 8 * unit);
    const count = block_bytes / unit;
    const Units = @Vector(count, Unit);
    const mask = comptime blk: {
        const per_lane = 16 / unit;
        var m: [count]i32 = undefined;
        for (0..count / per_lane) |l| for (0..per_lane / 2) |i| {
            const source = l * per_lane + (if (high) per_lane / 2 else 0) + i;
            m[l * per_lane + 2 * i] = source;
            m[l * per_lane + 2 * i + 1] = ~@as(i32, source);
        };
        break :blk m;
    };
    return @bitCast(@shuffle(Unit, @as(Units, @bitCast(a)), @as(Units, @bitCast(b)), mask));
}

// ---------------------------------------------------------------------------
// The 8-bit vertical pass.

/// Output rows `yy ..` (1 or 2, as many as `targets`) of the vertical pass
/// over `rows`, which start at output `yy`'s first tap. Output byte j is the
/// weighted sum of byte j of the rows under its taps. Two outputs at once
/// share each widened source vector between two multiplies: the pass ran
/// 1.25x (v3) to 1.5x (v2) faster than row by row. Their windows overlap but
/// differ at the ends, so the rows go in three runs (first only, both,
/// second only) rather than multiply by zero weights.
fn verticalPass8(rows: []const []align(1) const u8, plan: Plan(i32), yy: usize, targets: []const []u8) void {
    const len = targets[0].len;
    for (rows) |row| assert(row.len >= len);
    for (targets) |target| assert(target.len == len);
    const head = plan.of(yy)[0..plan.count[yy]];
    switch (targets.len) {
        1 => {
            assert(rows.len == head.len);
            if (len >= vertical_lanes) {
                verticalBlocks(vertical_lanes, 1, rows, .{head}, 0, .{targets[0]});
            } else if (len >= 16) {
                verticalBlocks(16, 1, rows, .{head}, 0, .{targets[0]});
            } else {
                verticalScalar(rows, head, targets[0]);
            }
        },
        2 => {
            const next = plan.of(yy + 1)[0..plan.count[yy + 1]];
            const offset = plan.first[yy + 1] - plan.first[yy];
            assert(rows.len == offset + next.len and offset + next.len >= head.len);
            if (len >= vertical_lanes / 2) {
                verticalBlocks(vertical_lanes / 2, 2, rows, .{ head, next }, offset, .{ targets[0], targets[1] });
            } else if (len >= 16) {
                verticalBlocks(16, 2, rows, .{ head, next }, offset, .{ targets[0], targets[1] });
            } else {
                verticalScalar(rows[0..head.len], head, targets[0]);
                verticalScalar(rows[offset..], next, targets[1]);
            }
        },
        else => unreachable, // Callers pass 1 or 2 rows.
    }
}

/// Sums in blocks of 8 registers of i32 (with 2 outputs, 4 each): one
/// broadcast weight and one row pointer serve 8 multiplies (blocks of 16
/// ran the pass 1.2x slower). A block that would pass the end is moved
/// back to end there, redoing some outputs, instead of leaving a tail.
const vertical_lanes = @min(64, 8 * (std.simd.suggestVectorLength(i32) orelse 4));

/// `n` outputs: output i sums `rows[offset * i ..]` times `weights[i]`;
/// `targets[i].len >= lanes`, and every row is at least as long.
fn verticalBlocks(
    comptime lanes: usize,
    comptime n: usize,
    rows: []const []align(1) const u8,
    weights: [n][]const i32,
    offset: usize,
    targets: [n][]u8,
) void {
    const Lanes = @Vector(lanes, i32);
    const len = targets[0].len;
    // The runs of rows under the first output only, both, the second only.
    const both_start = @min(offset, weights[0].len);
    const both_end = @max(offset, weights[0].len);
    var j: usize = 0;
    while (j < len) : (j += lanes) {
        const at = @min(j, len - lanes);
        var sums: [n]Lanes = @splat(@splat(rounding_bias));
        if (n == 1) {
            accumulateRows(lanes, n, .{true}, rows, .{weights[0]}, at, &sums);
        } else {
            accumulateRows(lanes, n, .{ true, false }, rows[0..both_start], .{ weights[0][0..both_start], &.{} }, at, &sums);
            if (offset < weights[0].len) {
                accumulateRows(lanes, n, .{ true, true }, rows[offset..weights[0].len], .{ weights[0][offset..], weights[1] }, at, &sums);
            }
            accumulateRows(lanes, n, .{ false, true }, rows[both_end..], .{ &.{}, weights[1][both_end - offset ..] }, at, &sums);
        }
        inline for (sums, targets) |sum, target| target[at..][0..lanes].* = clip8(lanes, sum);
    }
}

/// Adds row r times `weights[i][r]` to `sums[i]` for every output `i` that
/// `use` names, `lanes` samples from `at`.
inline fn accumulateRows(
    comptime lanes: usize,
    comptime n: usize,
    comptime use: [n]bool,
    rows: []const []align(1) const u8,
    weights: [n][]const i32,
    at: usize,
    sums: *[n]@Vector(lanes, i32),
) void {
    for (rows, 0..) |row, r| {
        const pixels: @Vector(lanes, i32) = @as(@Vector(lanes, u8), row[at..][0..lanes].*);
        inline for (sums, use, weights) |*sum, used, w| if (used) {
            sum.* +%= pixels *% @as(@Vector(lanes, i32), @splat(w[r]));
        };
    }
}

fn verticalScalar(rows: []const []align(1) const u8, weights: []const i32, target: []u8) void {
    for (target, 0..) |*sample, j| {
        var acc: i32 = rounding_bias;
        for (rows, weights) |row, w| acc +%= @as(i32, row[j]) *% w;
        sample.* = clip8(1, .{acc})[0];
    }
}

/// Pillow's RGBA->RGBa and LA->La: colour = (c * a + 128) / 255 rounded with
/// the shift trick `(t + (t >> 8)) >> 8`, alpha unchanged.
fn premultiplyRow(channels: u8, source: []const u8, target: []u8) void {
    switch (channels) {
        inline 2, 4 => |c| premultiply(c, source, target),
        else => unreachable, // Only LA and RGBA are premultiplied.
    }
}

fn alphaShuffle(comptime c: u8, comptime lanes: comptime_int) @Vector(lanes, i32) {
    @setEvalBranchQuota(10 * lanes);
    var mask: [lanes]i32 = undefined;
    for (&mask, 0..) |*m, i| m.* = @intCast(i / c * c + c - 1);
    return mask;
}

fn alphaLanes(comptime c: u8, comptime lanes: comptime_int) @Vector(lanes, bool) {
    @setEvalBranchQuota(10 * lanes);
    var mask: [lanes]bool = undefined;
    for (&mask, 0..) |*m, i| m.* = i % c == c - 1;
    return mask;
}

/// The premultiplied pixels of `pixels`, which start at a pixel. With
/// `t = c * a + 128` (at most 65153), `(t + (t >> 8)) >> 8` equals
/// `(t * 257) >> 16` for every 16-bit `t`, which is one pmulhuw.
fn premultiplyPixels(comptime c: u8, comptime n: usize, pixels: @Vector(n, u8)) @Vector(n, u8) {
    const Wide = @Vector(n, u16);
    const alpha = @shuffle(u8, pixels, undefined, alphaShuffle(c, n));
    const t = @as(Wide, pixels) * @as(Wide, alpha) + @as(Wide, @splat(128));
    const colour: @Vector(n, u8) = @intCast((@as(@Vector(n, u32), t) * @as(@Vector(n, u32), @splat(257))) >> @splat(16));
    return @select(u8, comptime alphaLanes(c, n), pixels, colour);
}

fn premultiply(comptime c: u8, source: []const u8, target: []u8) void {
    const lanes = 16;
    assert(source.len == target.len and source.len % c == 0);
    var i: usize = 0;
    while (i + lanes <= source.len) : (i += lanes) {
        target[i..][0..lanes].* = premultiplyPixels(c, lanes, source[i..][0..lanes].*);
    }
    while (i < source.len) : (i += c) {
        const alpha: u16 = source[i + c - 1];
        for (0..c - 1) |k| {
            const t = @as(u16, source[i + k]) * alpha + 128;
            target[i + k] = @intCast((t + (t >> 8)) >> 8);
        }
        target[i + c - 1] = source[i + c - 1];
    }
}

/// Pillow's RGBa->RGBA and La->LA, in place: colour = min(255 * c / a, 255)
/// with integer division; alpha 0 and 255 keep the colour as it is.
fn unpremultiplyRow(channels: u8, row: []u8) void {
    switch (channels) {
        inline 2, 4 => |c| unpremultiply(c, row),
        else => unreachable, // Only LA and RGBA are premultiplied.
    }
}

fn unpremultiply(comptime c: u8, row: []u8) void {
    const lanes = 16;
    const Float = @Vector(lanes, f32);
    const Bytes = @Vector(lanes, u8);
    assert(row.len % c == 0);
    var i: usize = 0;
    while (i + lanes <= row.len) : (i += lanes) {
        const pixels: Bytes = row[i..][0..lanes].*;
        const alpha = @shuffle(u8, pixels, undefined, alphaShuffle(c, lanes));
        const keep_zero = alpha == @as(Bytes, @splat(0));
        const keep_full = alpha == @as(Bytes, @splat(255));
        // 255 * c < 2^24 is exact in f32, so q = 255c / a is rounded once,
        // by at most q * 2^-24 <= 65025 / (a * 2^24) < 1/a, less than the
        // distance from a non-integer q to the next integer: truncation is
        // C's integer division (the test below tries every colour and
        // alpha). Kept lanes divide by 1 so that no lane is inf or NaN.
        const divisor: Float = @floatFromInt(@select(u8, keep_zero, @as(Bytes, @splat(1)), alpha));
        const quotient = @trunc(@as(Float, @floatFromInt(pixels)) * @as(Float, @splat(255)) / divisor);
        const colour: Bytes = @intFromFloat(@min(quotient, @as(Float, @splat(255))));
        var result = @select(u8, keep_zero, pixels, colour);
        result = @select(u8, keep_full, pixels, result);
        row[i..][0..lanes].* = @select(u8, comptime alphaLanes(c, lanes), pixels, result);
    }
    while (i < row.len) : (i += c) {
        const alpha: u32 = row[i + c - 1];
        if (alpha == 0 or alpha == 255) continue;
        for (row[i..][0 .. c - 1]) |*colour| colour.* = @intCast(@min(255 * @as(u32, colour.*) / alpha, 255));
    }
}

// ---------------------------------------------------------------------------
// 16-bit kernels: f64 weights summed tap by tap in Pillow's order (I;16),
// rounded half up and clamped to 0..65535.

fn round16(comptime n: comptime_int, sum: @Vector(n, f64)) [n]u16 {
    const rounded = @trunc(sum + @as(@Vector(n, f64), @splat(0.5)));
    const clamped = @min(@max(rounded, @as(@Vector(n, f64), @splat(0))), @as(@Vector(n, f64), @splat(65535)));
    return @as(@Vector(n, u16), @intFromFloat(clamped));
}

/// One row, the channels of a pixel in one vector.
fn horizontal16(comptime c: u8, plan: Plan(f64), row: []align(1) const u16, origin: u32, target: []align(1) u16) void {
    const Lanes = @Vector(c, f64);
    assert(target.len == plan.first.len * c);
    for (plan.first, plan.count, 0..) |first, count, xx| {
        const weights = plan.of(xx)[0..count];
        const window = row[(first - origin) * c ..][0 .. count * c];
        var acc: Lanes = @splat(0);
        for (weights, 0..) |w, t| {
            const pixel: @Vector(c, u16) = window[t * c ..][0..c].*;
            acc += @as(Lanes, @floatFromInt(pixel)) * @as(Lanes, @splat(w));
        }
        target[xx * c ..][0..c].* = round16(c, acc);
    }
}

fn verticalPass16(rows: []const []align(1) const u16, weights: []const f64, target: []align(1) u16) void {
    const lanes = 8;
    const Lanes = @Vector(lanes, f64);
    assert(rows.len == weights.len);
    var j: usize = 0;
    while (j + lanes <= target.len) : (j += lanes) {
        var acc: Lanes = @splat(0);
        for (rows, weights) |row, w| {
            const samples: @Vector(lanes, u16) = row[j..][0..lanes].*;
            acc += @as(Lanes, @floatFromInt(samples)) * @as(Lanes, @splat(w));
        }
        target[j..][0..lanes].* = round16(lanes, acc);
    }
    while (j < target.len) : (j += 1) {
        var acc: f64 = 0;
        for (rows, weights) |row, w| acc += @as(f64, @floatFromInt(row[j])) * w;
        target[j] = round16(1, .{acc})[0];
    }
}

// ---------------------------------------------------------------------------
// Nearest neighbour (Pillow's affine transform with the NEAREST filter).

/// Pillow's COORD: truncation toward zero, and out of range is no pixel.
fn nearestIndex(position: f64, size: u32) ?u32 {
    if (position < 0 or position >= @as(f64, @floatFromInt(size))) return null;
    return @intFromFloat(position);
}

/// 8-bit images take Pillow's ImagingScaleAffine, whose sample positions
/// accumulate by repeated addition; 16-bit ones (I;16) its generic transform,
/// which computes `scale * (i + 0.5) + offset`. The two differ in the last
/// bits, so each depth follows its own. Pixels mapped outside the image are
/// zero, as Pillow fills them.
fn resizeNearest(gpa: std.mem.Allocator, src: View, box: Box32, out_width: u32, out_height: u32, out: []u8) Error!void {
    const scale_x = @as(f64, box.right - box.left) / @as(f64, @floatFromInt(out_width));
    const scale_y = @as(f64, box.bottom - box.top) / @as(f64, @floatFromInt(out_height));
    const accumulate = src.bit_depth == 8;
    const columns = try gpa.alloc(?u32, out_width);
    defer gpa.free(columns);
    var x_position = @as(f64, box.left) + scale_x * 0.5;
    for (columns, 0..) |*column, x| {
        if (!accumulate) x_position = scale_x * (@as(f64, @floatFromInt(x)) + 0.5) + box.left;
        column.* = nearestIndex(x_position, src.width);
        x_position += scale_x;
    }
    const pixel_bytes = @as(usize, src.channels) * src.sampleBytes();
    const out_row_bytes = out_width * pixel_bytes;
    var y_position = @as(f64, box.top) + scale_y * 0.5;
    for (0..out_height) |y| {
        if (!accumulate) y_position = scale_y * (@as(f64, @floatFromInt(y)) + 0.5) + box.top;
        const target = out[y * out_row_bytes ..][0..out_row_bytes];
        const row_index = nearestIndex(y_position, src.height);
        y_position += scale_y;
        const source = src.row(row_index orelse {
            @memset(target, 0);
            continue;
        });
        for (columns, 0..) |column, x| {
            const pixel = target[x * pixel_bytes ..][0..pixel_bytes];
            if (column) |index| @memcpy(pixel, source[index * pixel_bytes ..][0..pixel_bytes]) else @memset(pixel, 0);
        }
    }
}

// ---------------------------------------------------------------------------
// Tests. Pillow equivalence at scale lives in the Python harness (see the
// module's report); here: known answers from Pillow 13.0.0, a seeded
// property test against a plain scalar model of Pillow's algorithm, memory
// bounds and allocation failures.

const testing = std.testing;

/// The image the known answers were computed from: channel `ch` at (x, y) is
/// (37x + 91y + 53ch + 7xy) mod 256, alpha (the last channel of LA/RGBA)
/// cycles through 0, 255, 128, 1, 254, 77 along x + 2y; 16-bit samples are
/// (9731x + 27091y + 1733xy) mod 65536.
fn testPattern(gpa: std.mem.Allocator, width: u32, height: u32, channels: u8, bit_depth: u8) ![]u8 {
    const alphas = [_]u8{ 0, 255, 128, 1, 254, 77 };
    const samples = @as(usize, width) * height * channels;
    const bytes = try gpa.alloc(u8, samples * (bit_depth / 8));
    for (0..height) |y| for (0..width) |x| for (0..channels) |ch| {
        const i = (y * width + x) * channels + ch;
        if (bit_depth == 16) {
            std.mem.bytesAsSlice(u16, bytes)[i] = @truncate(x * 9731 + y * 27091 + x * y * 1733);
        } else if ((channels == 2 or channels == 4) and ch == channels - 1) {
            bytes[i] = alphas[(x + 2 * y) % 6];
        } else {
            bytes[i] = @truncate(x * 37 + y * 91 + ch * 53 + x * y * 7);
        }
    };
    return bytes;
}

const KnownAnswer = struct {
    name: []const u8,
    width: u32,
    height: u32,
    channels: u8,
    box: Box,
    out_width: u32,
    out_height: u32,
    filter: Filter,
    expected: []const u8,
};

/// `Image.fromarray(pattern).resize((out_width, out_height), filter, box=box)`
/// with Pillow 13.0.0 (LA/RGBA through its premultiplied path).
const known_answers = [_]KnownAnswer{
    .{ .name = "l_down_fractional", .width = 9, .height = 7, .channels = 1, .box = .{ .left = 0.5, .top = 1.25, .right = 8.75, .bottom = 6.5 }, .out_width = 5, .out_height = 4, .filter = .lanczos3, .expected = &.{ 166, 135, 80, 134, 113, 105, 123, 181, 131, 143, 135, 161, 130, 161, 113, 93, 111, 136, 154, 110 } },
    .{ .name = "rgb_up", .width = 6, .height = 5, .channels = 3, .box = .{ .left = 0, .top = 0, .right = 6, .bottom = 5 }, .out_width = 11, .out_height = 8, .filter = .lanczos3, .expected = &.{ 0, 44, 90, 1, 52, 96, 25, 71, 120, 44, 87, 158, 58, 110, 197, 73, 148, 213, 97, 184, 239, 135, 205, 255, 174, 224, 240, 198, 248, 85, 204, 255, 0, 23, 70, 150, 29, 90, 173, 54, 131, 198, 90, 178, 167, 126, 185, 117, 166, 142, 115, 166, 99, 153, 118, 107, 179, 85, 144, 179, 107, 168, 123, 129, 178, 85, 97, 152, 180, 112, 157, 219, 139, 173, 247, 157, 229, 155, 173, 234, 31, 226, 123, 20, 215, 11, 77, 90, 17, 103, 0, 78, 125, 29, 103, 151, 70, 113, 163, 175, 255, 71, 212, 195, 91, 242, 91, 117, 172, 70, 99, 73, 113, 75, 77, 93, 104, 111, 72, 167, 80, 111, 226, 76, 171, 193, 129, 201, 100, 166, 210, 38, 125, 207, 21, 163, 144, 40, 196, 44, 85, 126, 22, 155, 31, 96, 192, 34, 166, 172, 108, 193, 154, 171, 169, 202, 192, 156, 192, 169, 189, 99, 145, 214, 37, 16, 71, 106, 33, 80, 124, 70, 108, 164, 98, 142, 238, 120, 182, 248, 148, 248, 143, 197, 243, 38, 255, 124, 48, 229, 41, 117, 107, 76, 148, 26, 119, 161, 52, 96, 204, 65, 140, 162, 103, 197, 102, 176, 169, 111, 211, 106, 153, 164, 129, 125, 114, 163, 96, 144, 126, 136, 171, 108, 155, 135, 147, 113, 106, 178, 80, 116, 160, 249, 133, 206, 161, 171, 242, 30, 244, 150, 0, 250, 22, 63, 138, 14, 119, 24, 88, 175, 31, 142, 251, 116, 195, 207, 175, 236, 71, 204, 252, 0 } },
    .{ .name = "rgba_down_box", .width = 10, .height = 9, .channels = 4, .box = .{ .left = 1, .top = 0.5, .right = 9.5, .bottom = 8.75 }, .out_width = 6, .out_height = 3, .filter = .lanczos3, .expected = &.{ 118, 140, 116, 123, 139, 148, 135, 117, 137, 139, 203, 119, 135, 94, 130, 119, 111, 102, 72, 119, 152, 169, 110, 122, 143, 117, 158, 119, 164, 131, 92, 118, 179, 115, 82, 121, 189, 159, 104, 117, 172, 166, 105, 121, 136, 157, 162, 118, 87, 144, 162, 108, 150, 124, 98, 127, 114, 128, 160, 111, 61, 124, 162, 129, 75, 133, 181, 111, 66, 127, 127, 122 } },
    .{ .name = "la_vertical_first", .width = 8, .height = 12, .channels = 2, .box = .{ .left = 0, .top = 2.5, .right = 8, .bottom = 10.5 }, .out_width = 7, .out_height = 4, .filter = .lanczos3, .expected = &.{ 144, 120, 140, 123, 147, 116, 172, 121, 187, 120, 197, 115, 191, 120, 154, 130, 112, 111, 197, 120, 138, 125, 175, 112, 158, 127, 118, 114, 180, 124, 68, 112, 103, 128, 170, 112, 36, 119, 49, 128, 81, 107, 182, 113, 139, 132, 193, 112, 203, 119, 149, 126, 16, 107, 206, 126 } },
    .{ .name = "rgba_crop_round_trip", .width = 6, .height = 5, .channels = 4, .box = .{ .left = 2, .top = 1, .right = 5, .bottom = 3 }, .out_width = 3, .out_height = 2, .filter = .lanczos3, .expected = &.{ 178, 231, 29, 254, 221, 19, 72, 77, 0, 0, 0, 0, 0, 0, 0, 0, 79, 132, 185, 255, 129, 183, 235, 128 } },
    .{ .name = "l_nearest", .width = 9, .height = 7, .channels = 1, .box = .{ .left = 0.5, .top = 0.25, .right = 8.5, .bottom = 6.75 }, .out_width = 4, .out_height = 5, .filter = .nearest, .expected = &.{ 37, 111, 185, 3, 233, 79, 181, 27, 75, 191, 51, 167, 173, 47, 177, 51, 113, 15, 173, 75 } },
    .{ .name = "l_bilinear_near_one", .width = 12, .height = 9, .channels = 1, .box = .{ .left = 0.25, .top = 0.5, .right = 11.5, .bottom = 8.75 }, .out_width = 12, .out_height = 9, .filter = .bilinear, .expected = &.{ 51, 88, 126, 160, 88, 122, 159, 89, 96, 134, 102, 92, 136, 164, 127, 165, 59, 98, 142, 110, 133, 177, 125, 104, 145, 167, 64, 114, 163, 145, 188, 96, 106, 106, 130, 180, 49, 105, 155, 163, 218, 91, 127, 141, 186, 108, 94, 122, 127, 163, 204, 63, 125, 158, 217, 103, 93, 146, 208, 151, 154, 30, 97, 155, 223, 68, 114, 172, 62, 60, 122, 185, 56, 121, 172, 23, 98, 162, 234, 117, 129, 200, 128, 102, 132, 177, 65, 116, 195, 72, 132, 186, 98, 114, 175, 123, 173, 92, 133, 212, 108, 139, 49, 103, 151, 88, 104, 162 } },
    .{ .name = "l_bilinear_down", .width = 13, .height = 11, .channels = 1, .box = .{ .left = 1, .top = 0.5, .right = 12.5, .bottom = 10 }, .out_width = 5, .out_height = 4, .filter = .bilinear, .expected = &.{ 123, 121, 127, 123, 120, 129, 147, 139, 123, 140, 116, 129, 143, 128, 137, 149, 135, 114, 126, 127 } },
    .{ .name = "rgb_nearest_up", .width = 3, .height = 2, .channels = 3, .box = .{ .left = 0, .top = 0, .right = 3, .bottom = 2 }, .out_width = 7, .out_height = 5, .filter = .nearest, .expected = &.{ 0, 53, 106, 0, 53, 106, 37, 90, 143, 37, 90, 143, 37, 90, 143, 74, 127, 180, 74, 127, 180, 0, 53, 106, 0, 53, 106, 37, 90, 143, 37, 90, 143, 37, 90, 143, 74, 127, 180, 74, 127, 180, 91, 144, 197, 91, 144, 197, 135, 188, 241, 135, 188, 241, 135, 188, 241, 179, 232, 29, 179, 232, 29, 91, 144, 197, 91, 144, 197, 135, 188, 241, 135, 188, 241, 135, 188, 241, 179, 232, 29, 179, 232, 29, 91, 144, 197, 91, 144, 197, 135, 188, 241, 135, 188, 241, 135, 188, 241, 179, 232, 29, 179, 232, 29 } },
};

fn packedView(pixels: []const u8, width: u32, height: u32, channels: u8, bit_depth: u8) View {
    const stride = @as(usize, width) * channels * (bit_depth / 8);
    return .{ .pixels = pixels, .width = width, .height = height, .channels = channels, .bit_depth = bit_depth, .stride_bytes = stride };
}

test "resize matches Pillow 13 on known answers" {
    const gpa = testing.allocator;
    for (known_answers) |case| {
        const pixels = try testPattern(gpa, case.width, case.height, case.channels, 8);
        defer gpa.free(pixels);
        const out = try gpa.alloc(u8, case.expected.len);
        defer gpa.free(out);
        const src = packedView(pixels, case.width, case.height, case.channels, 8);
        try resize(gpa, src, case.box, case.out_width, case.out_height, case.filter, .premultiply, out);
        testing.expectEqualSlices(u8, case.expected, out) catch |err| {
            std.debug.print("known answer '{s}' differs\n", .{case.name});
            return err;
        };
    }
}

test "resize matches Pillow's I;16 Lanczos" {
    const gpa = testing.allocator;
    const expected = [_]u16{ 10669, 32539, 32544, 43065, 27983, 56802, 28530, 20764, 34447, 35041, 36303, 22698, 26421, 9570, 43078, 35826, 17712, 37918, 34475, 28557, 27957, 51562, 30709, 27345, 51105, 24385, 39266, 40788, 38858, 26840, 38334, 41074, 12737, 48180, 31507, 32917 };
    const pixels = try testPattern(gpa, 7, 6, 1, 16);
    defer gpa.free(pixels);
    var out: [expected.len]u16 = undefined;
    const box: Box = .{ .left = 0.25, .top = 0.5, .right = 6.5, .bottom = 5.75 };
    try resize(gpa, packedView(pixels, 7, 6, 1, 16), box, 4, 9, .lanczos3, .premultiply, std.mem.sliceAsBytes(&out));
    try testing.expectEqualSlices(u16, &expected, &out);
}

test "premultiply and unpremultiply equal Pillow's integer formulas for every colour and alpha" {
    // 16 lanes per SIMD step: 4 RGBA pixels, then a scalar tail of 3 pixels.
    var source: [7 * 4]u8 = undefined;
    var premultiplied: [7 * 4]u8 = undefined;
    for (0..256) |alpha| for (0..256 / 7 + 1) |block| {
        for (0..7) |p| source[p * 4 ..][0..4].* = .{ @truncate(block * 7 + p), @truncate(block * 7 + p + 1), 255, @intCast(alpha) };
        premultiplyRow(4, &source, &premultiplied);
        var restored = source;
        unpremultiplyRow(4, &restored);
        for (0..7) |p| for (0..3) |ch| {
            const colour: u32 = source[p * 4 + ch];
            const t = colour * alpha + 128;
            try testing.expectEqual(((t >> 8) + t) >> 8, premultiplied[p * 4 + ch]);
            const expected = if (alpha == 0 or alpha == 255) colour else @min(255 * colour / alpha, 255);
            try testing.expectEqual(expected, restored[p * 4 + ch]);
        };
    };
}

test "fully transparent pixels come out as zeros (compatibility.md §5.2)" {
    const gpa = testing.allocator;
    var pixels: [6 * 5 * 4]u8 = undefined;
    for (0..pixels.len / 4) |i| pixels[i * 4 ..][0..4].* = .{ 200, 100, 50, 0 };
    var out: [4 * 3 * 4]u8 = undefined;
    const box: Box = .{ .left = 0.5, .top = 0.5, .right = 5.5, .bottom = 4.5 };
    try resize(gpa, packedView(&pixels, 6, 5, 4, 8), box, 4, 3, .lanczos3, .premultiply, &out);
    for (out) |v| try testing.expectEqual(0, v);
}

/// A plain scalar model of Pillow 13's resize, with its intermediates
/// materialised as Pillow does: premultiply the whole image, run the passes
/// in Pillow's order on full planes (clipping in between), un-premultiply.
/// It shares only the weight formula (`Taps`, `toFixed`) and the order rule
/// with the code under test; those are checked against Pillow itself.
const Model = struct {
    width: usize,
    height: usize,
    channels: usize,
    samples: []i64,

    fn deinit(m: Model, gpa: std.mem.Allocator) void {
        gpa.free(m.samples);
    }

    fn at(m: Model, x: usize, y: usize, ch: usize) i64 {
        return m.samples[(y * m.width + x) * m.channels + ch];
    }

    /// One pass along x (`along_x`) or y, with Pillow's rounding and clip.
    fn pass(m: Model, gpa: std.mem.Allocator, along_x: bool, in0: f32, in1: f32, out_size: u32, bit_depth: u8) !Model {
        var taps = try Taps.init(gpa, .lanczos3, true, @intCast(if (along_x) m.width else m.height), in0, in1, out_size);
        defer taps.deinit(gpa);
        const width = if (along_x) out_size else m.width;
        const height = if (along_x) m.height else out_size;
        const out = try gpa.alloc(i64, width * height * m.channels);
        for (0..height) |y| for (0..width) |x| for (0..m.channels) |ch| {
            const o = if (along_x) x else y;
            const weights = taps.weights[o * taps.ksize ..][0..taps.count[o]];
            var fixed: i64 = rounding_bias;
            var float: f64 = 0;
            for (weights, taps.first[o]..) |w, i| {
                const sample = if (along_x) m.at(i, y, ch) else m.at(x, i, ch);
                fixed += sample * toFixed(w);
                float += @as(f64, @floatFromInt(sample)) * w;
            }
            out[(y * width + x) * m.channels + ch] = if (bit_depth == 8)
                std.math.clamp(fixed >> precision_bits, 0, 255)
            else
                @intFromFloat(std.math.clamp(@trunc(float + 0.5), 0, 65535));
        };
        return .{ .width = width, .height = height, .channels = m.channels, .samples = out };
    }
};

fn modelResize(gpa: std.mem.Allocator, src: View, box: Box, out_width: u32, out_height: u32, alpha: AlphaMode, out: []u8) !void {
    const c = src.channels;
    const premultiplied = alpha == .premultiply and src.bit_depth == 8 and (c == 2 or c == 4);
    var image: Model = .{ .width = src.width, .height = src.height, .channels = c, .samples = try gpa.alloc(i64, @as(usize, src.width) * src.height * c) };
    defer image.deinit(gpa);
    for (0..src.height) |y| for (0..@as(usize, src.width) * c) |i| {
        const row = src.row(@intCast(y));
        image.samples[y * src.width * c + i] = if (src.bit_depth == 8) row[i] else std.mem.bytesAsSlice(u16, row)[i];
    };
    if (premultiplied) for (0..image.samples.len / c) |p| for (0..c - 1) |ch| {
        const t = image.samples[p * c + ch] * image.samples[p * c + c - 1] + 128;
        image.samples[p * c + ch] = ((t >> 8) + t) >> 8;
    };
    const b = Box32.fromBox(box);
    const whole = out_width == src.width and out_height == src.height and box.left == 0 and box.top == 0 and
        box.right == @as(f64, @floatFromInt(src.width)) and box.bottom == @as(f64, @floatFromInt(src.height));
    var result: Model = image;
    if (whole) {
        result = .{ .width = image.width, .height = image.height, .channels = c, .samples = try gpa.dupe(i64, image.samples) };
        // Image.resize's copy happens before premultiplication.
        for (result.samples, 0..) |*v, i| v.* = if (src.bit_depth == 8) src.row(@intCast(i / (src.width * c)))[i % (src.width * c)] else v.*;
    } else if (b.isCrop(out_width, out_height)) {
        result = .{ .width = out_width, .height = out_height, .channels = c, .samples = try gpa.alloc(i64, @as(usize, out_width) * out_height * c) };
        for (0..out_height) |y| for (0..out_width) |x| for (0..c) |ch| {
            result.samples[(y * out_width + x) * c + ch] = image.at(x + @as(usize, @intFromFloat(b.left)), y + @as(usize, @intFromFloat(b.top)), ch);
        };
    } else {
        const vertical_first = verticalFirst(src.width, src.height, out_width, out_height);
        const need_x = out_width != src.width or b.left != 0 or b.right != @as(f32, @floatFromInt(out_width));
        const need_y = out_height != src.height or b.top != 0 or b.bottom != @as(f32, @floatFromInt(out_height));
        var first: ?Model = null;
        defer if (first) |f| f.deinit(gpa);
        if (vertical_first and need_y) {
            first = try image.pass(gpa, false, b.top, b.bottom, out_height, src.bit_depth);
            result = if (need_x) try first.?.pass(gpa, true, b.left, b.right, out_width, src.bit_depth) else try dupeModel(gpa, first.?);
        } else {
            if (need_x) first = try image.pass(gpa, true, b.left, b.right, out_width, src.bit_depth);
            const mid = first orelse image;
            result = if (need_y) try mid.pass(gpa, false, b.top, b.bottom, out_height, src.bit_depth) else try dupeModel(gpa, mid);
        }
    }
    defer result.deinit(gpa);
    if (premultiplied and !whole) for (0..result.samples.len / c) |p| {
        const a = result.samples[p * c + c - 1];
        if (a == 0 or a == 255) continue;
        for (0..c - 1) |ch| result.samples[p * c + ch] = @min(@divTrunc(255 * result.samples[p * c + ch], a), 255);
    };
    for (result.samples, 0..) |v, i| {
        if (src.bit_depth == 8) out[i] = @intCast(v) else std.mem.bytesAsSlice(u16, out)[i] = @intCast(v);
    }
}

fn dupeModel(gpa: std.mem.Allocator, m: Model) !Model {
    return .{ .width = m.width, .height = m.height, .channels = m.channels, .samples = try gpa.dupe(i64, m.samples) };
}

/// A random box: whole image, integer, touching the borders, zero-width,
/// fractional, or the pipeline's centre crop for a random bucket.
fn randomBox(random: std.Random, width: u32, height: u32, out_width: u32, out_height: u32) Box {
    const w: f64 = @floatFromInt(width);
    const h: f64 = @floatFromInt(height);
    switch (random.uintLessThan(u8, 6)) {
        0 => return .{ .left = 0, .top = 0, .right = w, .bottom = h },
        1 => {
            const left = random.uintLessThan(u32, width);
            const top = random.uintLessThan(u32, height);
            const right = random.intRangeAtMost(u32, left + 1, width);
            const bottom = random.intRangeAtMost(u32, top + 1, height);
            return .{ .left = @floatFromInt(left), .top = @floatFromInt(top), .right = @floatFromInt(right), .bottom = @floatFromInt(bottom) };
        },
        2 => return .{ .left = 0, .top = random.float(f64) * h / 2, .right = w, .bottom = h },
        3 => {
            const x = random.float(f64) * w;
            return .{ .left = x, .top = 0, .right = x, .bottom = h };
        },
        4 => {
            const x0 = random.float(f64) * w;
            const y0 = random.float(f64) * h;
            return .{ .left = x0, .top = y0, .right = x0 + random.float(f64) * (w - x0), .bottom = y0 + random.float(f64) * (h - y0) };
        },
        else => return centreCropBox(width, height, out_width, out_height),
    }
}

/// compatibility.md §5.3: cover-resize to (round(w*s), round(h*s)), centre-crop to the
/// bucket, folded into one box in source coordinates.
fn centreCropBox(width: u32, height: u32, out_width: u32, out_height: u32) Box {
    const w: f64 = @floatFromInt(width);
    const h: f64 = @floatFromInt(height);
    const bw: f64 = @floatFromInt(out_width);
    const bh: f64 = @floatFromInt(out_height);
    const s = @max(bw / w, bh / h);
    const nw = @round(w * s);
    const nh = @round(h * s);
    const left = (nw - bw) / 2;
    const top = (nh - bh) / 2;
    return .{ .left = left * w / nw, .top = top * h / nh, .right = (left + bw) * w / nw, .bottom = (top + bh) * h / nh };
}

fn randomSide(random: std.Random) u32 {
    return switch (random.uintLessThan(u8, 10)) {
        0 => 1,
        1 => random.intRangeAtMost(u32, 100, 400),
        else => random.intRangeAtMost(u32, 1, 40),
    };
}

test "resize equals the scalar model on random images, boxes and strides" {
    const gpa = testing.allocator;
    const seed: u64 = 0x5eed_2026;
    var prng = std.Random.DefaultPrng.init(seed);
    const random = prng.random();
    for (0..1500) |case_index| {
        const channels = random.intRangeAtMost(u8, 1, 4);
        const bit_depth: u8 = if (random.uintLessThan(u8, 5) == 0) 16 else 8;
        const width = randomSide(random);
        const height = randomSide(random);
        const out_width = randomSide(random);
        const out_height = randomSide(random);
        const box = randomBox(random, width, height, out_width, out_height);
        const alpha: AlphaMode = if (random.boolean()) .premultiply else .straight;
        const pixel_bytes = @as(usize, channels) * (bit_depth / 8);
        const stride = width * pixel_bytes + random.uintLessThan(usize, 8) * (bit_depth / 8);
        // The buffer ends with the last pixel, so a read past a row's end on
        // the last row leaves it; stride padding is garbage.
        const pixels = try gpa.alloc(u8, (height - 1) * stride + width * pixel_bytes);
        defer gpa.free(pixels);
        random.bytes(pixels);
        if (random.boolean() and bit_depth == 8 and channels % 2 == 0) {
            // Alpha at the extremes, where the un-premultiplication branches.
            for (0..pixels.len / channels) |p| pixels[p * channels + channels - 1] = ([_]u8{ 0, 255, 1, 254 })[random.uintLessThan(u8, 4)];
        }
        const src: View = .{ .pixels = pixels, .width = width, .height = height, .channels = channels, .bit_depth = bit_depth, .stride_bytes = stride };
        const out_len = @as(usize, out_width) * out_height * pixel_bytes;
        const got = try gpa.alloc(u8, out_len);
        defer gpa.free(got);
        const want = try gpa.alloc(u8, out_len);
        defer gpa.free(want);
        try resize(gpa, src, box, out_width, out_height, .lanczos3, alpha, got);
        try modelResize(gpa, src, box, out_width, out_height, alpha, want);
        testing.expectEqualSlices(u8, want, got) catch |err| {
            std.debug.print("seed {x} case {d}: {d}x{d}x{d}@{d} box {any} -> {d}x{d} {s}\n", .{ seed, case_index, width, height, channels, bit_depth, box, out_width, out_height, @tagName(alpha) });
            return err;
        };
    }
}

/// Counts live bytes and their peak.
const CountingAllocator = struct {
    parent: std.mem.Allocator,
    live: usize = 0,
    peak: usize = 0,

    fn allocator(self: *CountingAllocator) std.mem.Allocator {
        return .{ .ptr = self, .vtable = &.{ .alloc = alloc, .resize = std.mem.Allocator.noResize, .remap = std.mem.Allocator.noRemap, .free = free } };
    }

    fn alloc(ctx: *anyopaque, len: usize, alignment: std.mem.Alignment, ret_addr: usize) ?[*]u8 {
        const self: *CountingAllocator = @ptrCast(@alignCast(ctx));
        const memory = self.parent.rawAlloc(len, alignment, ret_addr) orelse return null;
        self.live += len;
        self.peak = @max(self.peak, self.live);
        return memory;
    }

    fn free(ctx: *anyopaque, memory: []u8, alignment: std.mem.Alignment, ret_addr: usize) void {
        const self: *CountingAllocator = @ptrCast(@alignCast(ctx));
        self.parent.rawFree(memory, alignment, ret_addr);
        self.live -= memory.len;
    }
};

test "a 1x20000 source cropped to 352x720 allocates O(output)" {
    // The reference materialises the 352 x 7,040,000 cover-resize (compatibility.md §5.3).
    const gpa = testing.allocator;
    const width = 1;
    const height = 20000;
    const pixels = try gpa.alloc(u8, width * height * 3);
    defer gpa.free(pixels);
    for (pixels, 0..) |*p, i| p.* = @truncate(i *% 2654435761 >> 7);
    const out = try gpa.alloc(u8, 352 * 720 * 3);
    defer gpa.free(out);
    const want = try gpa.alloc(u8, out.len);
    defer gpa.free(want);
    const src = packedView(pixels, width, height, 3, 8);
    const box = centreCropBox(width, height, 352, 720);
    try testing.expect(box.top > 9998 and box.bottom < 10002);
    var counting: CountingAllocator = .{ .parent = gpa };
    try resize(counting.allocator(), src, box, 352, 720, .lanczos3, .straight, out);
    // Weights for 352 + 720 outputs of 7 taps (the split horizontal ones
    // take 128 bytes per output) and one source row: 124 KB when written,
    // against 760 KB of output.
    try testing.expect(counting.peak < out.len / 4);
    try testing.expectEqual(0, counting.live);
    try modelResize(gpa, src, box, 352, 720, .straight, want);
    try testing.expectEqualSlices(u8, want, out);
}

test "a large downscale allocates a small fraction of the source" {
    const gpa = testing.allocator;
    const width = 3000;
    const height = 2000;
    const pixels = try gpa.alloc(u8, width * height * 4);
    defer gpa.free(pixels);
    @memset(pixels, 200);
    const out = try gpa.alloc(u8, 120 * 80 * 4);
    defer gpa.free(out);
    var counting: CountingAllocator = .{ .parent = gpa };
    const box: Box = .{ .left = 0, .top = 0, .right = width, .bottom = height };
    try resize(counting.allocator(), packedView(pixels, width, height, 4, 8), box, 120, 80, .lanczos3, .premultiply, out);
    // Ring: 151 rows x 120 px x 4; weights: (120 + 80) x 151 taps (the
    // split horizontal ones 16 bytes a tap); one premultiplied source row:
    // 523 KB when written, against 24 MB of source.
    try testing.expect(counting.peak < 768 * 1024);
    try testing.expectEqual(0, counting.live);
    for (out) |v| try testing.expectEqual(200, v);
}

fn resizeForAllocationFailures(gpa: std.mem.Allocator, channels: u8, bit_depth: u8, out_width: u32, out_height: u32, filter: Filter) !void {
    var pixels: [12 * 10 * 4 * 2]u8 = undefined;
    for (&pixels, 0..) |*p, i| p.* = @truncate(i * 7);
    const src = packedView(pixels[0 .. 12 * 10 * @as(usize, channels) * (bit_depth / 8)], 12, 10, channels, bit_depth);
    var out: [40 * 40 * 4 * 2]u8 = undefined;
    const box: Box = .{ .left = 0.5, .top = 0.5, .right = 11.5, .bottom = 9.5 };
    const len = @as(usize, out_width) * out_height * channels * (bit_depth / 8);
    try resize(gpa, src, box, out_width, out_height, filter, .premultiply, out[0..len]);
}

test "resize frees everything on every allocation failure" {
    // Horizontal first, vertical first, premultiplied, 16-bit, nearest.
    try testing.checkAllAllocationFailures(testing.allocator, resizeForAllocationFailures, .{ 4, 8, 7, 5, .lanczos3 });
    try testing.checkAllAllocationFailures(testing.allocator, resizeForAllocationFailures, .{ 2, 8, 11, 3, .lanczos3 });
    try testing.checkAllAllocationFailures(testing.allocator, resizeForAllocationFailures, .{ 3, 16, 20, 30, .lanczos3 });
    try testing.checkAllAllocationFailures(testing.allocator, resizeForAllocationFailures, .{ 1, 8, 5, 9, .nearest });
}

test "windows at both ends of rows and columns, one-pixel images, extreme ratios" {
    const gpa = testing.allocator;
    const shapes = [_][4]u32{
        .{ 1, 1, 1, 1 },     .{ 1, 1, 40, 3 },    .{ 1, 1, 1, 300 },   .{ 300, 1, 1, 1 },
        .{ 1, 300, 1, 1 },   .{ 257, 3, 2, 9 },   .{ 9, 257, 13, 2 },  .{ 2, 2, 301, 299 },
        .{ 400, 7, 1, 200 }, .{ 7, 400, 200, 1 }, .{ 17, 16, 16, 17 },
    };
    for (shapes) |shape| for (1..5) |channels| {
        const c: u8 = @intCast(channels);
        const pixels = try testPattern(gpa, shape[0], shape[1], c, 8);
        defer gpa.free(pixels);
        const src = packedView(pixels, shape[0], shape[1], c, 8);
        const len = @as(usize, shape[2]) * shape[3] * c;
        const got = try gpa.alloc(u8, len);
        defer gpa.free(got);
        const want = try gpa.alloc(u8, len);
        defer gpa.free(want);
        const w: f64 = @floatFromInt(shape[0]);
        const h: f64 = @floatFromInt(shape[1]);
        const boxes = [_]Box{
            .{ .left = 0, .top = 0, .right = w, .bottom = h },
            .{ .left = w / 3, .top = 0, .right = w, .bottom = h / 2 },
            .{ .left = 0, .top = h / 2, .right = w / 4, .bottom = h },
            centreCropBox(shape[0], shape[1], shape[2], shape[3]),
        };
        for (boxes) |box| {
            try resize(gpa, src, box, shape[2], shape[3], .lanczos3, .premultiply, got);
            try modelResize(gpa, src, box, shape[2], shape[3], .premultiply, want);
            try testing.expectEqualSlices(u8, want, got);
        }
    };
}

test "transposeIn and transposeOut move every sample, in blocks and tails, for short bands" {
    var bytes: [band_rows][3 * block_bytes + 8]u8 = undefined;
    for (&bytes, 0..) |*row, r| for (row, 0..) |*b, j| {
        b.* = @truncate(r * 131 + j * 7 + 3);
    };
    var rows: [band_rows][]const u8 = undefined;
    for (&rows, &bytes) |*row, *b| row.* = b;
    var columns: [bytes[0].len]BandPairs = undefined;
    var tile: [bytes[0].len]BandBytes = undefined;
    for ([_]usize{ 0, 1, 5, block_bytes - 1, block_bytes, block_bytes + 3, 2 * block_bytes + 7 }) |start| {
        const n = bytes[0].len - start;
        transposeIn(0, &rows, start, columns[0..n]);
        for (columns[0..n], tile[0..n], start..) |column, *t, j| {
            const lanes: [band_rows]i32 = column;
            for (lanes, lane_rows) |pair, r| try testing.expectEqual(@as(i32, bytes[r][j]) * pair_scale, pair);
            t.* = @intCast(column >> @splat(16));
        }
        for (1..band_rows + 1) |count| {
            var out: [band_rows][bytes[0].len + 2]u8 = @splat(@splat(0xee));
            var targets: [band_rows][]u8 = undefined;
            for (targets[0..count], out[0..count]) |*t, *o| t.* = o;
            transposeOut(tile[0..n], targets[0..count], 2);
            for (out, 0..) |o, r| for (o, 0..) |b, j| {
                const want = if (r < count and j >= 2 and j < n + 2) bytes[r][start + j - 2] else 0xee;
                try testing.expectEqual(want, b);
            };
        }
    }
    // Premultiplied on the way, from whole pixels, in blocks and below one.
    for ([_]u8{ 2, 4 }) |c| for ([_]usize{ 0, 4, block_bytes + 4 }) |start| for ([_]usize{ 4, bytes[0].len - start }) |n| {
        switch (c) {
            inline 2, 4 => |channels| transposeIn(channels, &rows, start, columns[0..n]),
            else => unreachable,
        }
        for (rows, 0..) |row, r| {
            var want: [bytes[0].len]u8 = undefined;
            premultiplyRow(c, row[start..][0..n], want[0..n]);
            for (columns[0..n], want[0..n]) |column, w| {
                const lanes: [band_rows]i32 = column;
                try testing.expectEqual(@as(i32, w) * pair_scale, lanes[std.mem.findScalar(usize, &lane_rows, r).?]);
            }
        }
    };
}

test "pairWeight represents every weight up to 1.0078 and pmaddwd multiplies it exactly" {
    const limit = (1 << 22) + (1 << 15) - 1;
    try testing.expectEqual(null, pairWeight(limit + 1));
    try testing.expectEqual(null, pairWeight(-limit - 2));
    var k: i32 = -limit - 1;
    while (k <= limit) : (k += 997) for ([_]i32{ 0, 1, 128, 254, 255 }) |p| {
        const pair = pairWeight(k).?;
        const product = pairDot(band_rows, @splat(p * pair_scale), @splat(pair));
        try testing.expectEqual(@as(BandSums, @splat(p * k)), product);
    };
}

test "lanczos3Many gives lanczos3's bits" {
    var prng = std.Random.DefaultPrng.init(0x1a2c);
    const random = prng.random();
    var values: [4099]f64 = undefined;
    for (&values, 0..) |*v, i| v.* = switch (i % 7) {
        0 => 0.0,
        1 => ([_]f64{ -3.0, 3.0, -2.9999999999999996, 2.9999999999999996, 1e-300, -1e-310, 3.0000000000000004 })[i / 7 % 7],
        else => random.float(f64) * 8.0 - 4.0,
    };
    var many = values;
    lanczos3Many(&many);
    for (values, many) |v, m| try testing.expectEqual(@as(u64, @bitCast(lanczos3(v))), @as(u64, @bitCast(m)));
}

test "sinLanes gives @sin's bits at its branch boundaries and on random arguments" {
    var prng = std.Random.DefaultPrng.init(0x51e);
    const random = prng.random();
    // High words where compiler_rt's reduction changes path (x ~ pi/4,
    // 3pi/4, 5pi/4, 3pi/2, 7pi/4, 2pi, 9pi/4, and pi/2, pi), with random
    // low words; then multiples of pi/2 give or take a few ulps; then
    // arguments as `lanczos3` makes them (|x| < 4 pi) and beyond.
    const highs = [_]u32{ 0x3e500000, 0x3fe921fb, 0x4002d97c, 0x400f6a7a, 0x4012d97c, 0x4015fdbc, 0x401921fb, 0x401c463b, 0x3ff921fb, 0x400921fb };
    var args: std.ArrayList(f64) = .empty;
    defer args.deinit(testing.allocator);
    for (highs) |high| for (0..64) |_| for ([_]u32{ high - 1, high, high + 1 }) |h| for ([_]u64{ 0, 1 << 63 }) |sign| {
        try args.append(testing.allocator, @bitCast(sign | @as(u64, h) << 32 | random.int(u32)));
    };
    for (1..9) |k| for (0..101) |i| {
        const base: u64 = @bitCast(@as(f64, @floatFromInt(k)) * std.math.pi / 2.0);
        try args.append(testing.allocator, @bitCast(base - 50 + i));
    };
    for (0..200_000) |_| try args.append(testing.allocator, (random.float(f64) * 2 - 1) * 4 * std.math.pi);
    for (0..1000) |_| try args.append(testing.allocator, (random.float(f64) * 2 - 1) * 1e6);
    while (args.items.len % 4 != 0) try args.append(testing.allocator, 0.5);
    var i: usize = 0;
    while (i < args.items.len) : (i += 4) {
        const x: Lanes4 = args.items[i..][0..4].*;
        const got: [4]f64 = sinAll(x);
        for (args.items[i..][0..4], got) |a, g| try testing.expectEqual(@as(u64, @bitCast(@sin(a))), @as(u64, @bitCast(g)));
    }
}

test "the cheapest pass order stays within two levels of Pillow's" {
    const gpa = testing.allocator;
    var prng = std.Random.DefaultPrng.init(0x0bde);
    const random = prng.random();
    var worst: u8 = 0;
    for (0..200) |_| {
        const channels = random.intRangeAtMost(u8, 1, 4);
        const width = random.intRangeAtMost(u32, 8, 300);
        const height = random.intRangeAtMost(u32, 8, 300);
        const out_width = random.intRangeAtMost(u32, 1, 300);
        const out_height = random.intRangeAtMost(u32, 1, 300);
        const filter: Filter = if (random.boolean()) .lanczos3 else .bilinear;
        const pixels = try gpa.alloc(u8, @as(usize, width) * height * channels);
        defer gpa.free(pixels);
        // Photograph-like content: smooth waves plus a little noise. (On
        // white noise the first pass clips differently in each order.)
        const fx = random.float(f64) * 0.3 + 0.02;
        const fy = random.float(f64) * 0.3 + 0.02;
        for (pixels, 0..) |*p, i| {
            const x: f64 = @floatFromInt(i / channels % width);
            const y: f64 = @floatFromInt(i / channels / width);
            const c: f64 = @floatFromInt(i % channels);
            const wave = 128.0 + 90.0 * @sin(x * fx + c) * @cos(y * fy - c);
            p.* = @intFromFloat(std.math.clamp(wave + random.float(f64) * 16.0 - 8.0, 0.0, 255.0));
        }
        const box = randomBox(random, width, height, out_width, out_height);
        const len = @as(usize, out_width) * out_height * channels;
        const exact = try gpa.alloc(u8, len);
        defer gpa.free(exact);
        const cheap = try gpa.alloc(u8, len);
        defer gpa.free(cheap);
        const src = packedView(pixels, width, height, channels, 8);
        try resizeOrdered(gpa, src, box, out_width, out_height, filter, .straight, .pillow, exact);
        try resizeOrdered(gpa, src, box, out_width, out_height, filter, .straight, .cheapest, cheap);
        for (exact, cheap) |a, b| worst = @max(worst, if (a > b) a - b else b - a);
    }
    try testing.expect(worst <= 2);
}

test "lanczos3Fast stays within 1e-13 of lanczos3" {
    var prng = std.Random.DefaultPrng.init(0xfa57);
    const random = prng.random();
    var values: [4003]f64 = undefined;
    for (&values, 0..) |*v, i| v.* = switch (i % 5) {
        0 => ([_]f64{ 0.0, -3.0, 3.0, 2.9999999999999996, -2.9999999999999996, 1.0, -2.0, 0.5, 1e-300 })[i / 5 % 9],
        else => random.float(f64) * 8.0 - 4.0,
    };
    var fast = values;
    lanczos3Fast(&fast);
    for (values, fast) |v, f| try testing.expectApproxEqAbs(lanczos3(v), f, 1e-13);
}
