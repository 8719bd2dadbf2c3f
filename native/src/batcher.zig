//! Bucket batches (`batch_size`): samples of one shape (width, height,
//! channels, bit depth; with crop_and_resize, one bucket) grouped into a
//! `[B, H, W, C]` block, so a training step can stack them without padding.
//!
//! Grouping follows delivery order, which follows docs/design.md: a sample
//! joins the pending group of its shape; a group that reaches `batch_size`
//! becomes a batch at once; at the end of the pass the partial groups come
//! out in the order of their first sample, or are dropped (and counted) with
//! `drop_last`. Every sample is in exactly one batch, deterministically.
//! Pending samples are bounded by shapes x (batch_size - 1); more than
//! `pending_shapes_max` shapes flush the oldest group early, and so does a
//! group whose first sample is more than `resume_mod.window_max` sequence
//! numbers older than the newest sample (a rare bucket would otherwise hold
//! its samples for most of an epoch, and a resume state must name every
//! pending sample: it does so with a bitmap of that window).
const std = @import("std");
const Allocator = std.mem.Allocator;
const abi = @import("abi_types.zig");
const runtime = @import("runtime.zig");
const sample_mod = @import("sample.zig");
const buffers = @import("buffers.zig");
const resume_mod = @import("resume.zig");

/// With crop_and_resize there are tens of buckets; without it shapes are
/// unbounded, and a group waiting forever for company must not hold memory.
pub const pending_shapes_max = 256;

pub const Batch = struct {
    /// Must stay the first field: `datago_batch *` points to it.
    c: abi.Batch,
    gpa: Allocator,
    samples: []*sample_mod.Owned,
    views: []*abi.Sample,
    pixels: []align(16) u8,
    handed_out: bool = false,

    pub fn fromC(ptr: *abi.Batch) *Batch {
        return @fieldParentPtr("c", ptr);
    }

    pub fn destroy(self: *Batch) void {
        const gpa = self.gpa;
        if (self.handed_out) _ = runtime.live_samples.fetchSub(@intCast(self.samples.len), .monotonic);
        for (self.samples) |s| {
            s.in_batch = false;
            s.destroy();
        }
        gpa.free(self.samples);
        gpa.free(self.views);
        buffers.free(gpa, self.pixels);
        gpa.destroy(self);
    }

    pub fn handOut(self: *Batch) *abi.Batch {
        std.debug.assert(!self.handed_out);
        self.handed_out = true;
        _ = runtime.live_samples.fetchAdd(@intCast(self.samples.len), .monotonic);
        return &self.c;
    }
};

const Shape = struct { width: u32, height: u32, channels: u8, bit_depth: u8 };

fn shapeOf(s: *const sample_mod.Owned) Shape {
    const image = s.image.?;
    return .{ .width = image.width, .height = image.height, .channels = image.channels, .bit_depth = image.bit_depth };
}

const Group = struct {
    shape: Shape,
    members: std.ArrayList(*sample_mod.Owned) = .empty,
};

/// Read by stats snapshots without the batcher's lock.
pub const Counters = struct {
    batches: std.atomic.Value(u64) = .init(0),
    partial_batches: std.atomic.Value(u64) = .init(0),
    dropped_samples: std.atomic.Value(u64) = .init(0),
};

pub const Batcher = struct {
    gpa: Allocator,
    batch_size: u32,
    drop_last: bool,
    epoch: u64,
    /// Pending groups in the order of their first sample.
    groups: std.ArrayList(Group) = .empty,
    /// Batches made at the end of the pass, waiting to be taken.
    ready: std.ArrayList(*Batch) = .empty,
    ready_head: usize = 0,
    finished: bool = false,
    counters: Counters = .{},
    /// equal_per_rank: the batches this pass hands out, exactly (null: no
    /// such rule), and those handed out so far.
    batches_max: ?u64 = null,
    handed: u64 = 0,

    pub fn deinit(self: *Batcher) void {
        for (self.groups.items) |*g| {
            for (g.members.items) |s| s.destroy();
            g.members.deinit(self.gpa);
        }
        self.groups.deinit(self.gpa);
        for (self.ready.items[self.ready_head..]) |b| b.destroy();
        self.ready.deinit(self.gpa);
        self.* = undefined;
    }

    /// Adds the next sample in delivery order; returns a batch when its
    /// group is full. Takes ownership of `s` (also on failure). Samples
    /// without a raw image are refused by config.zig (pre-encoding) and
    /// cannot occur.
    pub fn add(self: *Batcher, s: *sample_mod.Owned) Allocator.Error!?*Batch {
        errdefer s.destroy();
        while (self.groups.items.len > 0 and self.groups.items[0].members.items[0].c.index + resume_mod.window_max < s.c.index) try self.flushOldest();
        const shape = shapeOf(s);
        const index = for (self.groups.items, 0..) |g, i| {
            if (std.meta.eql(g.shape, shape)) break i;
        } else blk: {
            if (self.groups.items.len == pending_shapes_max) try self.flushOldest();
            try self.groups.append(self.gpa, .{ .shape = shape });
            break :blk self.groups.items.len - 1;
        };
        try self.groups.items[index].members.append(self.gpa, s);
        if (self.groups.items[index].members.items.len < self.batch_size) return null;
        var group = self.groups.orderedRemove(index);
        defer group.members.deinit(self.gpa);
        const batch = try self.assemble(group);
        // Behind batches flushed early, so that the order of batches does
        // not depend on when the caller took them (a resumed run flushes
        // them at another call).
        if (self.ready_head < self.ready.items.len) {
            self.ready.append(self.gpa, batch) catch |err| {
                batch.destroy();
                return err;
            };
            return null;
        }
        return batch;
    }

    /// The sequence numbers of the samples held and not yet in a batch
    /// handed out (pending groups and batches not yet taken), appended to
    /// `out` in no particular order.
    pub fn pendingSeqs(self: *const Batcher, gpa: Allocator, out: *std.ArrayList(u64)) Allocator.Error!void {
        for (self.groups.items) |g| for (g.members.items) |s| try out.append(gpa, s.c.index);
        for (self.ready.items[self.ready_head..]) |b| for (b.samples) |s| try out.append(gpa, s.c.index);
    }

    fn flushOldest(self: *Batcher) Allocator.Error!void {
        var group = self.groups.orderedRemove(0);
        defer group.members.deinit(self.gpa);
        try self.ready.append(self.gpa, try self.assemble(group));
    }

    /// The end of the pass: partial groups become batches in order (or are
    /// dropped with drop_last).
    pub fn finish(self: *Batcher) Allocator.Error!void {
        self.finished = true;
        if (self.batches_max) |max| return self.finishEqual(max);
        while (self.groups.items.len > 0) {
            if (self.drop_last) {
                var group = self.groups.orderedRemove(0);
                _ = self.counters.dropped_samples.fetchAdd(group.members.items.len, .monotonic);
                for (group.members.items) |s| s.destroy();
                group.members.deinit(self.gpa);
            } else {
                try self.flushOldest();
            }
        }
    }

    /// Counts a batch handed to the caller; under equal_per_rank the last
    /// one ends the pass, dropping (and counting) what is still held.
    pub fn handedOut(self: *Batcher) void {
        self.handed += 1;
        const max = self.batches_max orelse return;
        if (self.handed < max) return;
        self.finished = true;
        self.dropGroups();
        for (self.ready.items[self.ready_head..]) |b| {
            _ = self.counters.dropped_samples.fetchAdd(b.samples.len, .monotonic);
            b.destroy();
        }
        self.ready_head = self.ready.items.len;
    }

    fn dropGroups(self: *Batcher) void {
        for (self.groups.items) |*g| {
            _ = self.counters.dropped_samples.fetchAdd(g.members.items.len, .monotonic);
            for (g.members.items) |s| s.destroy();
            g.members.deinit(self.gpa);
        }
        self.groups.clearRetainingCapacity();
    }

    /// The end of the pass under equal_per_rank: as many of the partial
    /// groups as make up `batches_max` (the largest, ties by first sample;
    /// there are always enough, since every group holds fewer than
    /// batch_size samples), emitted in the order of their first sample; the
    /// others dropped and counted.
    fn finishEqual(self: *Batcher, max: u64) Allocator.Error!void {
        const groups = self.groups.items;
        const queued = self.ready.items.len - self.ready_head;
        const need: usize = @intCast(@min(max -| (self.handed + queued), groups.len));
        const chosen = try self.gpa.alloc(bool, groups.len);
        defer self.gpa.free(chosen);
        @memset(chosen, false);
        for (0..need) |_| {
            var best: ?usize = null;
            for (groups, 0..) |g, i| {
                if (chosen[i]) continue;
                if (best == null or g.members.items.len > groups[best.?].members.items.len) best = i;
            }
            chosen[best.?] = true;
        }
        // Assembling takes a group's samples; what is left is dropped.
        for (groups, chosen) |*g, take| {
            if (!take) continue;
            const batch = self.assemble(g.*) catch |err| {
                g.members.clearRetainingCapacity();
                return err;
            };
            g.members.clearRetainingCapacity();
            self.ready.append(self.gpa, batch) catch |err| {
                batch.destroy();
                return err;
            };
        }
        self.dropGroups();
    }

    pub fn popReady(self: *Batcher) ?*Batch {
        if (self.ready_head == self.ready.items.len) return null;
        defer self.ready_head += 1;
        return self.ready.items[self.ready_head];
    }

    /// Copies the group's pixels into one block (the one copy batching
    /// costs, done natively) and re-points each sample's image into it.
    /// Takes the group's samples.
    fn assemble(self: *Batcher, group: Group) Allocator.Error!*Batch {
        const members = group.members.items;
        errdefer for (members) |s| s.destroy();
        const shape = group.shape;
        const frame = @as(usize, shape.width) * shape.height * shape.channels * (shape.bit_depth / 8);
        const pixels = try buffers.alloc(self.gpa, frame * members.len);
        errdefer buffers.free(self.gpa, pixels);
        const samples = try self.gpa.dupe(*sample_mod.Owned, members);
        errdefer self.gpa.free(samples);
        const views = try self.gpa.alloc(*abi.Sample, members.len);
        errdefer self.gpa.free(views);
        const batch = try self.gpa.create(Batch);
        for (samples, views, 0..) |s, *view, i| {
            const slot = pixels[i * frame ..][0..frame];
            var image = &s.image.?;
            @memcpy(slot, image.data);
            image.freeBacking(self.gpa);
            image.data = slot;
            image.backing = &.{};
            s.c.image.data = slot.ptr;
            s.in_batch = true;
            view.* = &s.c;
        }
        batch.* = .{
            .c = .{
                .count = @intCast(members.len),
                .width = @intCast(shape.width),
                .height = @intCast(shape.height),
                .channels = shape.channels,
                .bit_depth = shape.bit_depth,
                .images = pixels.ptr,
                .images_len = pixels.len,
                .samples = views.ptr,
                .epoch = self.epoch,
            },
            .gpa = self.gpa,
            .samples = samples,
            .views = views,
            .pixels = pixels,
        };
        _ = self.counters.batches.fetchAdd(1, .monotonic);
        if (members.len < self.batch_size) _ = self.counters.partial_batches.fetchAdd(1, .monotonic);
        return batch;
    }
};

const testing = std.testing;

fn fake(gpa: Allocator, width: u32, index: u64) !*sample_mod.Owned {
    const backing = try sample_mod.Pixels.alloc(gpa, width * 2);
    @memset(backing, @intCast(index));
    return sample_mod.build(gpa, .{
        .kind = .memory,
        .id = .{ .plain = "x" },
        .source = "t",
        .image = .{ .data = backing, .backing = backing, .width = width, .height = 2, .channels = 1, .bit_depth = 8, .original_width = width, .original_height = 2, .crop = .{ 0, 0, 1, 1 } },
        .index = index,
    });
}

test "groups by shape, emits full groups at once and partial ones at the end" {
    var b: Batcher = .{ .gpa = testing.allocator, .batch_size = 2, .drop_last = false, .epoch = 3 };
    defer b.deinit();
    try testing.expect(try b.add(try fake(testing.allocator, 4, 0)) == null);
    try testing.expect(try b.add(try fake(testing.allocator, 5, 1)) == null);
    const first = (try b.add(try fake(testing.allocator, 4, 2))).?;
    defer first.destroy();
    try testing.expectEqual(@as(u32, 2), first.c.count);
    try testing.expectEqual(@as(u64, 0), first.samples[0].c.index);
    try testing.expectEqual(@as(u64, 2), first.samples[1].c.index);
    try testing.expectEqualSlices(u8, &.{ 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2 }, first.pixels);
    try testing.expect(first.samples[1].c.image.data.? == first.pixels.ptr + 8);
    try b.finish();
    const last = b.popReady().?;
    defer last.destroy();
    try testing.expectEqual(@as(u32, 1), last.c.count);
    try testing.expectEqual(@as(i32, 5), last.c.width);
    try testing.expect(b.popReady() == null);
    try testing.expectEqual(@as(u64, 2), b.counters.batches.load(.monotonic));
    try testing.expectEqual(@as(u64, 1), b.counters.partial_batches.load(.monotonic));
}

test "drop_last drops and counts the partial groups" {
    var b: Batcher = .{ .gpa = testing.allocator, .batch_size = 3, .drop_last = true, .epoch = 0 };
    defer b.deinit();
    for (0..4) |i| {
        if (try b.add(try fake(testing.allocator, 4, i))) |batch| batch.destroy();
    }
    try b.finish();
    try testing.expect(b.popReady() == null);
    try testing.expectEqual(@as(u64, 1), b.counters.dropped_samples.load(.monotonic));
}
