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

    // The tests' module: the Zig code with the codecs linked in.
    const mod = zigModule(b, target, optimize);
    // The public header as Zig declarations, so abi_header_test.zig can
    // check it against abi_types.zig. Tests only: translate-c is compiled
    // on first use (about a minute on a cold cache), and the library must
    // not wait for it.
    const header = b.addTranslateC(.{ .root_source_file = b.path("include/datago.h"), .target = target, .optimize = optimize });
    mod.addImport("datago_h", header.createModule());
    const codec_libs = codecs.addTo(b, mod, codec_options);
    addMuslCompat(b, mod);

    const lib = library(b, "datago", zigModule(b, target, optimize), codec_libs, codec_options);
    lib.installHeader(b.path("include/datago.h"), "datago.h");
    b.installArtifact(lib);

    if (variant_cpu) |cpu_name| {
        // Only the Zig code is compiled again for the variant CPU: the C
        // codecs choose their SIMD kernels by CPUID at run time, so the
        // variant links the libraries built above (the Zig resize kernels are
        // what x86_64_v3 speeds up).
        const model = target.result.cpu.arch.parseCpuModel(cpu_name) orelse {
            std.log.err("-Dvariant-cpu={s}: not a CPU model of {s}", .{ cpu_name, @tagName(target.result.cpu.arch) });
            std.process.exit(1);
        };
        var query = target.query;
        query.cpu_model = .{ .explicit = model };
        query.cpu_features_add = .empty;
        query.cpu_features_sub = .empty;
        const variant_zig = zigModule(b, b.resolveTargetQuery(query), optimize);
        const name = b.fmt("datago_{s}", .{cpu_name});
        b.installArtifact(library(b, name, variant_zig, codec_libs, codec_options));
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

/// The Zig code of libdatago for one target.
fn zigModule(b: *std.Build, target: std.Build.ResolvedTarget, optimize: std.lang.Optimize) *std.Build.Module {
    const mod = b.createModule(.{
        .root_source_file = b.path("src/root.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        .pic = true,
    });
    mod.addIncludePath(b.path("include"));
    return mod;
}

/// libdatago from the Zig code in `zig` and the codecs. The Zig code is
/// compiled as an object of its own, so that its compilation (the longest
/// step: one LLVM module) does not wait for the C codecs: they build on
/// the other cores meanwhile, and only the link needs both.
fn library(
    b: *std.Build,
    name: []const u8,
    zig: *std.Build.Module,
    codec_libs: codecs.Libraries,
    codec_options: codecs.Options,
) *std.Build.Step.Compile {
    zig.addOptions("build_options", codec_options.build_options);
    const object = b.addObject(.{ .name = b.fmt("{s}_zig", .{name}), .root_module = zig });
    const mod = b.createModule(.{
        .target = zig.resolved_target,
        .optimize = zig.optimize,
        .link_libc = true,
        .pic = true,
    });
    mod.addObject(object);
    // Objects and libraries only: a module with C sources or Zig imports
    // but no root source file fails to compile (std.start finds no root).
    for (codec_libs.all) |codec| mod.linkLibrary(codec);
    if (mod.resolved_target.?.result.abi.isMusl()) {
        const compat = b.createModule(.{ .target = zig.resolved_target, .optimize = zig.optimize, .link_libc = true, .pic = true });
        addMuslCompat(b, compat);
        // An object, not an archive: an archive member would lose to libc's statx.
        mod.addObject(b.addObject(.{ .name = b.fmt("{s}_musl_compat", .{name}), .root_module = compat }));
    }
    return b.addLibrary(.{ .name = name, .linkage = .dynamic, .root_module = mod });
}

/// See src/compat/musl_statx.c.
fn addMuslCompat(b: *std.Build, mod: *std.Build.Module) void {
    if (mod.resolved_target.?.result.abi.isMusl()) {
        mod.addCSourceFiles(.{ .root = b.path(""), .files = &.{"src/compat/musl_statx.c"}, .flags = &.{ "-O2", "-fno-sanitize=undefined" } });
    }
}
