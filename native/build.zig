const std = @import("std");
const codecs = @import("build/codecs.zig");

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    // ReleaseSafe by default: a bug must not become silent memory corruption.
    const optimize = b.option(std.lang.Optimize, "optimize", "Optimize mode (default: ReleaseSafe)") orelse .safe;
    const codec_options = codecs.options(b, target);

    const mod = b.createModule(.{
        .root_source_file = b.path("src/root.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        .pic = true,
    });
    codecs.addTo(b, mod, codec_options);
    mod.addIncludePath(b.path("include"));
    if (target.result.abi.isMusl()) {
        mod.addCSourceFiles(.{ .files = &.{"src/compat/musl_statx.c"}, .flags = &.{ "-O2", "-fno-sanitize=undefined" } });
    }
    // The public header as Zig declarations, so abi_header_test.zig can
    // check it against abi_types.zig.
    const header = b.addTranslateC(.{ .root_source_file = b.path("include/datago.h"), .target = target, .optimize = optimize });
    mod.addImport("datago_h", header.createModule());

    const lib = b.addLibrary(.{ .name = "datago", .linkage = .dynamic, .root_module = mod });
    lib.installHeader(b.path("include/datago.h"), "datago.h");
    b.installArtifact(lib);

    const tests = b.addTest(.{ .root_module = mod });
    const run_tests = b.addRunArtifact(tests);
    // The tests use threads, timers and the filesystem: a pass is not a
    // result to cache, so `zig build test` always runs them.
    run_tests.has_side_effects = true;
    b.step("test", "Run the native unit tests").dependOn(&run_tests.step);
    // The same tests as a program (zig-out/bin/datago-tests), for valgrind:
    // .ci/run builds it with -Dcpu=x86_64_v2, whose instructions valgrind knows.
    const install_tests = b.addInstallArtifact(tests, .{ .dest_sub_path = "datago-tests" });
    b.step("install-tests", "Install the native unit tests as a program").dependOn(&install_tests.step);
}
