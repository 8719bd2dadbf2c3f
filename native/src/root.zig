//! libdatago's root: the exported C ABI (abi.zig), process-wide std options,
//! the panic policy, and every module's tests.
const std = @import("std");

pub const abi = @import("abi.zig");
const pipeline = @import("pipeline.zig");

pub const std_options: std.Options = .{
    // No 256 KiB sigaltstack per worker thread, and no handlers of ours under
    // the host's (std's defaults give every std.Thread a thread-local
    // alternate signal stack; a library loaded by Python wants neither).
    .signal_stack_size = null,
    .enable_segfault_handler = false,
};

/// A failed safety check on one of our worker threads ends only that thread
/// and fails its pass (the consumer gets DATAGO_ERR_INTERNAL); on a host
/// thread there is no safe way back, and the default handler aborts with a
/// message and a trace.
pub const panic = std.debug.FullPanic(datagoPanic);

fn datagoPanic(msg: []const u8, first_trace_addr: ?usize) noreturn {
    if (pipeline.current_pass) |pass| {
        pass.panicked.store(true, .release);
        std.debug.print("datago: internal error on a worker thread: {s}\n", .{msg});
        std.c.pthread_exit(null);
    }
    std.debug.defaultPanic(msg, first_trace_addr);
}

comptime {
    _ = abi;
}

test {
    std.testing.refAllDecls(@This());
    _ = @import("config.zig");
    _ = @import("sources/order.zig");
    _ = @import("resume.zig");
    _ = @import("runtime.zig");
    _ = @import("log.zig");
    _ = @import("sample.zig");
    _ = @import("sources/files.zig");
    _ = @import("sources/source.zig");
    _ = @import("sources/file_source.zig");
    _ = @import("sources/prefetch.zig");
    _ = @import("sources/braces.zig");
    _ = @import("sources/shard_split.zig");
    _ = @import("sources/shard_lanes.zig");
    _ = @import("sources/tar.zig");
    _ = @import("sources/wds_group.zig");
    _ = @import("sources/wds_source.zig");
    _ = @import("sources/wds_checkpoint.zig");
    _ = @import("sources/http.zig");
    _ = @import("sources/http_test.zig");
    _ = @import("sources/shard_cache.zig");
    _ = @import("sources/gcs_listing.zig");
    _ = @import("sources/shuffle_buffer.zig");
    _ = @import("sources/dataroom_query.zig");
    _ = @import("sources/dataroom_record.zig");
    _ = @import("sources/db_source.zig");
    _ = @import("decode/decoder.zig");
    _ = @import("decode/wuffs.zig");
    _ = @import("decode/png_fast.zig");
    _ = @import("stats.zig");
    _ = @import("batcher.zig");
    _ = @import("buffers.zig");
    _ = @import("image/bucket.zig");
    _ = @import("image/convert.zig");
    _ = @import("encode/png.zig");
    _ = @import("image/orient.zig");
    _ = @import("stages/process.zig");
    _ = @import("stages/oneshot.zig");
    _ = @import("image/resize.zig");
    _ = @import("image/ycc.zig");
    _ = @import("pipeline_test.zig");
    _ = @import("abi_header_test.zig");
}
