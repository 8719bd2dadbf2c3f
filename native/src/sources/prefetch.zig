//! The reader stage: a bounded queue between the one reader thread that
//! streams a source (source.zig) and the decode workers, who take items by
//! sequence number. The reader puts item `s` into slot `s % capacity` once
//! the item `capacity` places earlier has been taken, so at most
//! `capacity` (`prefetch_buffer_size`) items wait in memory; a worker that
//! claimed `s` waits until it arrives, the stream ends before it, the
//! stream fails, or the stage is closed.
//!
//! Ownership: a put item belongs to the stage until a worker takes it, then
//! to that worker (`Item.release`); items never taken are released by
//! `close` and `deinit`.
const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;

const abi = @import("../abi_types.zig");
const source = @import("source.zig");

pub const Taken = union(enum) {
    item: source.Item,
    /// The stream ended before this sequence number.
    end,
    /// The stream failed (see `failureText`) or the stage was closed.
    stopped,
};

pub const Prefetch = struct {
    gpa: Allocator,
    io: Io,
    mutex: Io.Mutex = .init,
    slots: []Slot,
    /// Sequence number of the next item the reader puts.
    put_seq: u64 = 0,
    state: enum { streaming, finished, failed, closed } = .streaming,
    failure: source.Failure = .{},
    /// The reader waits here for its slot to be taken.
    room: Io.Condition = .init,
    reader_waiting: bool = false,
    /// Items in the stage. A waiting reader is woken only once at most half
    /// the stage is full, so it refills in bursts instead of switching with
    /// a worker on every item (on one core that switch cost a tiny image
    /// about a tenth of its decode).
    queued: usize = 0,
    /// Called by `close`, outside the lock (see `setInterrupt`).
    interrupt: ?Interrupt = null,

    const Slot = struct {
        item: ?source.Item = null,
        /// Workers waiting for this slot's next item.
        waiters: u32 = 0,
        arrived: Io.Condition = .init,
    };

    /// What `close` calls to wake a reader blocked outside the stage (in a
    /// socket read): it must not block.
    pub const Interrupt = struct {
        context: *anyopaque,
        call: *const fn (*anyopaque) void,
    };

    pub fn init(gpa: Allocator, io: Io, capacity: u32) Allocator.Error!Prefetch {
        std.debug.assert(capacity > 0);
        const slots = try gpa.alloc(Slot, capacity);
        @memset(slots, .{});
        return .{ .gpa = gpa, .io = io, .slots = slots };
    }

    /// Reader side, before the first `put`: the stream resumes at `seq`
    /// (a checkpoint's), so its first item gets that sequence number; the
    /// workers claim from there on. Slots stay `seq % capacity`.
    pub fn setFirstSeq(self: *Prefetch, seq: u64) void {
        self.mutex.lockUncancelable(self.io);
        defer self.mutex.unlock(self.io);
        std.debug.assert(self.queued == 0 and (self.put_seq == 0 or self.put_seq == seq));
        self.put_seq = seq;
        // A worker that claimed `seq` early waits on its slot: `put` wakes it.
    }

    /// Releases items never taken. No thread may use the stage any more.
    pub fn deinit(self: *Prefetch) void {
        self.releaseAll();
        self.gpa.free(self.slots);
        self.* = undefined;
    }

    /// Reader side: waits for room for the next item and stores it. Returns
    /// error.Closed (and releases `item`) once the stage is closed.
    pub fn put(self: *Prefetch, item: source.Item) error{Closed}!void {
        var owned = item;
        self.mutex.lockUncancelable(self.io);
        defer self.mutex.unlock(self.io);
        std.debug.assert(self.state == .streaming or self.state == .closed);
        const slot = &self.slots[self.put_seq % self.slots.len];
        if (self.state != .closed and slot.item != null) {
            self.reader_waiting = true;
            while (self.state != .closed and slot.item != null) self.room.waitUncancelable(self.io, &self.mutex);
            self.reader_waiting = false;
        }
        if (self.state == .closed) {
            owned.release(self.gpa);
            return error.Closed;
        }
        slot.item = owned;
        self.put_seq += 1;
        self.queued += 1;
        if (slot.waiters > 0) slot.arrived.broadcast(self.io);
    }

    /// Reader side: the stream is over after `put_seq` items. Idempotent.
    pub fn finish(self: *Prefetch) void {
        self.mutex.lockUncancelable(self.io);
        defer self.mutex.unlock(self.io);
        if (self.state == .streaming) self.state = .finished;
        self.wakeAllLocked();
    }

    /// Reader side: the stream failed as a whole.
    pub fn fail(self: *Prefetch, comptime fmt: []const u8, args: anytype) void {
        self.failAs(.source, fmt, args);
    }

    /// Reader side: the stream failed as a whole, with the error kind the
    /// caller sees.
    pub fn failAs(self: *Prefetch, kind: source.FailureKind, comptime fmt: []const u8, args: anytype) void {
        self.mutex.lockUncancelable(self.io);
        defer self.mutex.unlock(self.io);
        if (self.state != .streaming) return;
        self.failure.set(fmt, args) catch {};
        self.failure.kind = kind;
        self.state = .failed;
        self.wakeAllLocked();
    }

    /// Worker side: waits for item `seq`.
    pub fn take(self: *Prefetch, seq: u64) Taken {
        self.mutex.lockUncancelable(self.io);
        defer self.mutex.unlock(self.io);
        const slot = &self.slots[seq % self.slots.len];
        while (true) {
            switch (self.state) {
                .failed, .closed => return .stopped,
                .finished => if (seq >= self.put_seq) return .end,
                .streaming => {},
            }
            if (seq < self.put_seq) {
                // Claims are unique per sequence number: nobody took it yet.
                const item = slot.item.?;
                slot.item = null;
                self.queued -= 1;
                if (self.reader_waiting) {
                    // Every queued item is taken in the end, and each take
                    // looks again: the reader is woken by the first take
                    // that finds its slot free and the stage half empty.
                    const reader_slot = &self.slots[self.put_seq % self.slots.len];
                    if (reader_slot.item == null and self.queued * 2 <= self.slots.len) self.room.signal(self.io);
                }
                return .{ .item = item };
            }
            slot.waiters += 1;
            slot.arrived.waitUncancelable(self.io, &self.mutex);
            slot.waiters -= 1;
        }
    }

    /// Wakes every waiter: the reader's `put` fails with error.Closed and
    /// `take` returns `.stopped`. Queued items are released, and the
    /// interrupt (if set) is called. Idempotent.
    pub fn close(self: *Prefetch) void {
        self.mutex.lockUncancelable(self.io);
        self.state = .closed;
        self.releaseAll();
        self.wakeAllLocked();
        // Called under the lock: `setInterrupt(null)` then guarantees the
        // context is no longer in use.
        if (self.interrupt) |i| i.call(i.context);
        self.mutex.unlock(self.io);
    }

    /// Reader side: what `close` calls to interrupt a blocking read, or
    /// null to stop (before the context goes away). Called at once when the
    /// stage is already closed.
    pub fn setInterrupt(self: *Prefetch, interrupt: ?Interrupt) void {
        self.mutex.lockUncancelable(self.io);
        defer self.mutex.unlock(self.io);
        self.interrupt = interrupt;
        if (self.state == .closed) if (interrupt) |i| i.call(i.context);
    }

    fn wakeAllLocked(self: *Prefetch) void {
        self.room.broadcast(self.io);
        for (self.slots) |*slot| if (slot.waiters > 0) slot.arrived.broadcast(self.io);
    }

    /// The number of items of a finished stream; null before its end.
    /// Reader side: whether the stage was closed (the pass stopped): a
    /// reader between two reads stops there instead of fetching more.
    pub fn isClosed(self: *Prefetch) bool {
        self.mutex.lockUncancelable(self.io);
        defer self.mutex.unlock(self.io);
        return self.state == .closed;
    }

    pub fn total(self: *Prefetch) ?u64 {
        self.mutex.lockUncancelable(self.io);
        defer self.mutex.unlock(self.io);
        return if (self.state == .finished) self.put_seq else null;
    }

    /// The failure of a failed stream. Valid until `deinit`.
    pub fn failureText(self: *Prefetch) ?[]const u8 {
        self.mutex.lockUncancelable(self.io);
        defer self.mutex.unlock(self.io);
        return if (self.state == .failed) self.failure.text() else null;
    }

    fn releaseAll(self: *Prefetch) void {
        for (self.slots) |*slot| if (slot.item) |*item| {
            item.release(self.gpa);
            slot.item = null;
        };
        self.queued = 0;
    }
};

/// An item that owns a copy of `bytes` and `id` in one allocation.
pub fn ownedItem(gpa: Allocator, bytes: []const u8, id: []const u8, kind: abi.SourceKind, source_name: []const u8) Allocator.Error!source.Item {
    const backing = try gpa.alloc(u8, bytes.len + id.len);
    @memcpy(backing[0..bytes.len], bytes);
    @memcpy(backing[bytes.len..], id);
    return .{
        .bytes = backing[0..bytes.len],
        .kind = kind,
        .id = .{ .plain = backing[bytes.len..] },
        .source_name = source_name,
        .backing = backing,
    };
}

const testing = std.testing;

test "items arrive in order through a small stage, every one exactly once" {
    const io = testing.io;
    var stage = try Prefetch.init(testing.allocator, io, 3);
    defer stage.deinit();
    const count = 50;
    const Reader = struct {
        fn run(s: *Prefetch) void {
            for (0..count) |i| {
                var text: [16]u8 = undefined;
                const id = std.fmt.bufPrint(&text, "{d}", .{i}) catch unreachable;
                const item = ownedItem(testing.allocator, id, id, .file, "test") catch return s.fail("oom", .{});
                s.put(item) catch return;
            }
            s.finish();
        }
    };
    const Worker = struct {
        fn run(s: *Prefetch, next: *std.atomic.Value(u64), seen: *[count]std.atomic.Value(u32)) void {
            while (true) {
                const seq = next.fetchAdd(1, .monotonic);
                switch (s.take(seq)) {
                    .item => |item| {
                        var it = item;
                        defer it.release(testing.allocator);
                        const index = std.fmt.parseInt(usize, it.bytes, 10) catch unreachable;
                        std.debug.assert(index == seq);
                        _ = seen[index].fetchAdd(1, .monotonic);
                    },
                    .end, .stopped => return,
                }
            }
        }
    };
    var next: std.atomic.Value(u64) = .init(0);
    var seen: [count]std.atomic.Value(u32) = @splat(.init(0));
    const reader = try std.Thread.spawn(.{}, Reader.run, .{&stage});
    var workers: [3]std.Thread = undefined;
    for (&workers) |*w| w.* = try std.Thread.spawn(.{}, Worker.run, .{ &stage, &next, &seen });
    reader.join();
    for (workers) |w| w.join();
    for (seen) |s| try testing.expectEqual(@as(u32, 1), s.load(.monotonic));
    try testing.expectEqual(@as(?u64, count), stage.total());
}

test "close wakes a blocked reader and releases what was queued" {
    const io = testing.io;
    var stage = try Prefetch.init(testing.allocator, io, 1);
    defer stage.deinit();
    try stage.put(try ownedItem(testing.allocator, "a", "0", .file, "test"));
    const Reader = struct {
        fn run(s: *Prefetch, result: *?anyerror) void {
            const item = ownedItem(testing.allocator, "b", "1", .file, "test") catch unreachable;
            s.put(item) catch |err| {
                result.* = err;
            };
        }
    };
    var result: ?anyerror = null;
    const reader = try std.Thread.spawn(.{}, Reader.run, .{ &stage, &result });
    io.sleep(.fromMilliseconds(20), .awake) catch {};
    stage.close();
    reader.join();
    try testing.expectEqual(@as(?anyerror, error.Closed), result);
    try testing.expect(stage.take(0) == .stopped);
}

test "a failed stream stops the takers and keeps its reason" {
    const io = testing.io;
    var stage = try Prefetch.init(testing.allocator, io, 2);
    defer stage.deinit();
    stage.fail("shard {d} is not a tar", .{3});
    try testing.expect(stage.take(0) == .stopped);
    try testing.expectEqualStrings("shard 3 is not a tar", stage.failureText().?);
    try testing.expectEqual(@as(?u64, null), stage.total());
}

test "a reader that waits behind one queued item is woken when it is taken" {
    const io = testing.io;
    var stage = try Prefetch.init(testing.allocator, io, 4);
    defer stage.deinit();
    for (0..4) |i| {
        var text: [4]u8 = undefined;
        const id = std.fmt.bufPrint(&text, "{d}", .{i}) catch unreachable;
        try stage.put(try ownedItem(testing.allocator, id, id, .file, "test"));
    }
    // Items 1-3 leave before the reader waits; only item 0 holds it back.
    for (1..4) |seq| {
        var item = stage.take(seq).item;
        item.release(testing.allocator);
    }
    const Reader = struct {
        fn run(s: *Prefetch) void {
            const item = ownedItem(testing.allocator, "4", "4", .file, "test") catch unreachable;
            s.put(item) catch return;
            s.finish();
        }
    };
    const reader = try std.Thread.spawn(.{}, Reader.run, .{&stage});
    io.sleep(.fromMilliseconds(20), .awake) catch {};
    for ([_]u64{ 0, 4 }) |seq| {
        var item = stage.take(seq).item;
        item.release(testing.allocator);
    }
    reader.join();
    try testing.expect(stage.take(5) == .end);
}

test "a waiting reader is woken even when its own slot is freed last" {
    const io = testing.io;
    var stage = try Prefetch.init(testing.allocator, io, 4);
    defer stage.deinit();
    for (0..4) |i| {
        var text: [4]u8 = undefined;
        const id = std.fmt.bufPrint(&text, "{d}", .{i}) catch unreachable;
        try stage.put(try ownedItem(testing.allocator, id, id, .file, "test"));
    }
    const Reader = struct {
        fn run(s: *Prefetch) void {
            // Waits for slot 0 (item 0's), freed by the last take below.
            const item = ownedItem(testing.allocator, "4", "4", .file, "test") catch unreachable;
            s.put(item) catch return;
            s.finish();
        }
    };
    const reader = try std.Thread.spawn(.{}, Reader.run, .{&stage});
    for ([_]u64{ 3, 1, 2, 0, 4 }) |seq| {
        var item = stage.take(seq).item;
        item.release(testing.allocator);
    }
    reader.join();
    try testing.expect(stage.take(5) == .end);
}
