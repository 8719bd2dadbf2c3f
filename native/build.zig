const std = @import("std");
const codecs = @import("build/codecs.zig");

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    // ReleaseSafe by default: a bug must not become silent memory corruption.
    const optimize = b.option(std.lang.Optimize, "optimize", "Optimize mode (default: ReleaseSafe)") orelse .safe;
    const codec_options = codecs.options(b, target);

    const variant_cpu = b.option(
        []const u8,
        "variant-cpu",
        "Also build libdatago_<CPU> for this CPU model of the target's architecture (e.g. x86_64_v3)",
    );

    const mod = rootModule(b, target, optimize);
    const codec_libs = codecs.addTo(b, mod, codec_options);

    const lib = b.addLibrary(.{ .name = "datago", .linkage = .dynamic, .root_module = mod });
    lib.installHeader(b.path("include/datago.h"), "datago.h");
    b.installArtifact(lib);

    if (variant_cpu) |cpu_name| {
        // Only the Zig code is compiled again for the variant CPU: the C
        // codecs choose their SIMD kernels by CPUID at run time, so the
        // variant links the libraries built above (the Zig resize kernels are
        // what x86_64_v3 speeds up). In one graph, the two Zig compilations
        // also run side by side.
        const model = target.result.cpu.arch.parseCpuModel(cpu_name) orelse {
            std.log.err("-Dvariant-cpu={s}: not a CPU model of {s}", .{ cpu_name, @tagName(target.result.cpu.arch) });
            std.process.exit(1);
        };
        var query = target.query;
        query.cpu_model = .{ .explicit = model };
        query.cpu_features_add = .empty;
        query.cpu_features_sub = .empty;
        const variant_mod = rootModule(b, b.resolveTargetQuery(query), optimize);
        codecs.linkInto(variant_mod, codec_libs, codec_options);
        const name = b.fmt("datago_{s}", .{cpu_name});
        b.installArtifact(b.addLibrary(.{ .name = name, .linkage = .dynamic, .root_module = variant_mod }));
    }

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

/// The module of libdatago (and of its tests) for one target.
fn rootModule(b: *std.Build, target: std.Build.ResolvedTarget, optimize: std.lang.Optimize) *std.Build.Module {
    const mod = b.createModule(.{
        .root_source_file = b.path("src/root.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        .pic = true,
    });
    mod.addIncludePath(b.path("include"));
    if (target.result.abi.isMusl()) {
        mod.addCSourceFiles(.{ .files = &.{"src/compat/musl_statx.c"}, .flags = &.{ "-O2", "-fno-sanitize=undefined" } });
    }
    // The public header as Zig declarations, so abi_header_test.zig can
    // check it against abi_types.zig.
    const header = b.addTranslateC(.{ .root_source_file = b.path("include/datago.h"), .target = target, .optimize = optimize });
    mod.addImport("datago_h", header.createModule());
    return mod;
}
