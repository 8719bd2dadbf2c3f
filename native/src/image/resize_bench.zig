//! Times `resize` on typical bucket work, single thread, CPU time (min and
//! median of runs), with libc's allocator as the library uses. Run from
//! native/ for each CPU level we ship:
//!   python -m ziglang run -lc -O ReleaseSafe -mcpu x86_64_v2 src/image/resize_bench.zig
//!   python -m ziglang run -lc -O ReleaseSafe -mcpu x86_64_v3 src/image/resize_bench.zig
//! Pillow's times for the same cases come from the scratch Python harness
//! described in the change that added resize.zig; timing claims live in
//! benches like this one, never in a test.
const std = @import("std");
const resize = @import("resize.zig");

const Case = struct { name: []const u8, width: u32, height: u32, out_width: u32, out_height: u32, bucket: bool };

const cases = [_]Case{
    .{ .name = "1000x750 -> 592x432 bucket", .width = 1000, .height = 750, .out_width = 592, .out_height = 432, .bucket = true },
    .{ .name = "2000x1500 -> 1184x864 bucket", .width = 2000, .height = 1500, .out_width = 1184, .out_height = 864, .bucket = true },
    .{ .name = "2304x1728 -> 1184x864 bucket", .width = 2304, .height = 1728, .out_width = 1184, .out_height = 864, .bucket = true },
    .{ .name = "3000x1000 -> 1440x704 bucket", .width = 3000, .height = 1000, .out_width = 1440, .out_height = 704, .bucket = true },
    .{ .name = "1200x2400 -> 704x1440 bucket", .width = 1200, .height = 2400, .out_width = 704, .out_height = 1440, .bucket = true },
    .{ .name = "640x480 -> 1184x864 bucket", .width = 640, .height = 480, .out_width = 1184, .out_height = 864, .bucket = true },
};

/// The cover-resize and centre crop of compatibility.md §5.3 as one box.
fn bucketBox(case: Case) resize.Box {
    const w: f64 = @floatFromInt(case.width);
    const h: f64 = @floatFromInt(case.height);
    if (!case.bucket) return .{ .left = 0, .top = 0, .right = w, .bottom = h };
    const bw: f64 = @floatFromInt(case.out_width);
    const bh: f64 = @floatFromInt(case.out_height);
    const s = @max(bw / w, bh / h);
    const nw = @round(w * s);
    const nh = @round(h * s);
    const left = (nw - bw) / 2;
    const top = (nh - bh) / 2;
    return .{ .left = left * w / nw, .top = top * h / nh, .right = (left + bw) * w / nw, .bottom = (top + bh) * h / nh };
}

pub fn main(init: std.process.Init) !void {
    // Not `init.gpa`: in safe builds it poisons freed memory, a memset of
    // every scratch block that the library's `c_allocator` does not do.
    const gpa = std.heap.c_allocator;
    const runs = 21;
    std.debug.print("{s:<32} {s:>4} {s:>9} {s:>9}\n", .{ "case", "mode", "min ms", "median ms" });
    for (cases) |case| for ([_]u8{ 1, 3, 4 }) |channels| {
        const pixels = try gpa.alloc(u8, @as(usize, case.width) * case.height * channels);
        defer gpa.free(pixels);
        for (pixels, 0..) |*p, i| p.* = @truncate((i *% 2654435761) >> 11);
        const out = try gpa.alloc(u8, @as(usize, case.out_width) * case.out_height * channels);
        defer gpa.free(out);
        const src: resize.View = .{ .pixels = pixels, .width = case.width, .height = case.height, .channels = channels, .bit_depth = 8, .stride_bytes = @as(usize, case.width) * channels };
        var times: [runs]i96 = undefined;
        try resize.resize(gpa, src, bucketBox(case), case.out_width, case.out_height, .lanczos3, .premultiply, out);
        for (&times) |*t| {
            const start = std.Io.Clock.cpu_thread.now(init.io);
            try resize.resize(gpa, src, bucketBox(case), case.out_width, case.out_height, .lanczos3, .premultiply, out);
            t.* = start.durationTo(std.Io.Clock.cpu_thread.now(init.io)).nanoseconds;
        }
        std.mem.sortUnstable(i96, &times, {}, std.sort.asc(i96));
        const mode = ([_][]const u8{ "L", "LA", "RGB", "RGBA" })[channels - 1];
        std.debug.print("{s:<32} {s:>4} {d:>9.2} {d:>9.2}\n", .{ case.name, mode, milliseconds(times[0]), milliseconds(times[runs / 2]) });
    };
}

fn milliseconds(ns: i96) f64 {
    return @as(f64, @floatFromInt(ns)) / 1e6;
}
