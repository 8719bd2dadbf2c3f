//! The vendored C codecs for `zig build`: build/codecs.zon says which files
//! and flags (build.py reads the same file for `pip install .` and the
//! wheels); this turns it into one static library per codec.
//!
//! build.zig calls `options(b, target)` once, then `addTo(b, mod, opts)` for the
//! module that imports src/decode/*.zig. Each codec becomes a static library
//! (with its C shim) linked into that module; `linkInto` links the same
//! libraries into a second module (a CPU variant of libdatago).
//!
//! Build options:
//! - `-Djpeg-simd=<bool>`: libjpeg-turbo's SIMD kernels: NASM on x86-64 (Linux
//!   ELF and macOS Mach-O), Neon intrinsics on aarch64 (plain C, no extra tool).
//!   Default: on for aarch64, and on for x86-64 when `nasm` is on PATH. Without
//!   nasm the portable C build (-DJT_NO_SIMD) is used and a loud warning is
//!   printed; with `DATAGO_REQUIRE_SIMD=1` in the environment (release and CI
//!   builds) a build without SIMD on a target that has it (missing nasm, or an
//!   explicit `-Djpeg-simd=false`) fails instead, as does an explicit
//!   `-Djpeg-simd=true` that cannot be honoured. build.py decides the same way.
//! - `-Dcodec-sanitize=<bool>`: fuzzing builds only; see `Options.sanitize`.
//!
//! Zig code sees the choice as `@import("build_options").jpeg_simd` (bool): `addTo`
//! adds `opts.build_options` to the module under the import name `build_options`.
const std = @import("std");

/// build/codecs.zon, whose header comment says what each field means.
pub const Spec = struct {
    common_flags: []const []const u8,
    sanitize_flags: []const []const u8,
    libraries: []const Library,

    pub const Library = struct {
        name: []const u8,
        include: []const []const u8 = &.{},
        simd_off_flags: []const []const u8 = &.{},
        units: []const Unit,
    };

    pub const Unit = struct {
        root: []const u8,
        files: []const []const u8,
        flags: []const []const u8 = &.{},
        include: []const []const u8 = &.{},
        arch: ?std.Target.Cpu.Arch = null,
        simd: ?bool = null,
        nasm: bool = false,
        inputs: []const []const u8 = &.{},

        fn applies(unit: Unit, target: std.Target, jpeg_simd: bool) bool {
            if (unit.arch) |arch| if (arch != target.cpu.arch) return false;
            if (unit.simd) |simd| if (simd != jpeg_simd) return false;
            return true;
        }
    };
};

pub const spec: Spec = @import("codecs.zon");

pub const Options = struct {
    /// The directory that holds vendor/ and src/decode/ (native/). build.zig leaves
    /// the default; a scratch build elsewhere points it at the repository.
    root: std.Build.LazyPath,
    /// Build libjpeg-turbo with its SIMD kernels (which ones: `jpegSimdKind`).
    jpeg_simd: bool,
    /// The nasm executable, when the target's kernels need it and it is on PATH.
    nasm: ?[]const u8,
    /// Compile the vendored C and the shims with UBSan in trap mode instead of
    /// -fno-sanitize=undefined. For fuzzing builds only: vendored C with
    /// undefined behaviour on hostile input, which would then kill the process.
    sanitize: bool,
    /// The `build_options` module contents (holds `jpeg_simd`).
    build_options: *std.Build.Step.Options,
};

pub fn options(b: *std.Build, target: std.Build.ResolvedTarget) Options {
    const requested = b.option(
        bool,
        "jpeg-simd",
        "Build libjpeg-turbo with SIMD (default: on for aarch64, and for x86-64 when nasm is found)",
    );
    const simd_kind = jpegSimdKind(target.result);
    const nasm = if (simd_kind.needsNasm()) b.findProgram(.{ .names = &.{"nasm"} }) else null;
    const require_env = b.graph.environ_map.get("DATAGO_REQUIRE_SIMD");
    const require = if (require_env) |value| std.mem.eql(u8, value, "1") else false;
    const available = switch (simd_kind) {
        .none => false,
        .neon => true,
        .nasm_elf64, .nasm_macho64 => nasm != null,
    };

    const jpeg_simd = requested orelse available;
    if (jpeg_simd and !available) {
        // Only reachable through an explicit -Djpeg-simd=true.
        if (simd_kind == .none) {
            fail("-Djpeg-simd=true: the vendored SIMD is for x86-64 and aarch64 Linux and macOS only", .{});
        }
        fail("-Djpeg-simd=true but `nasm` is not on PATH (apt-get install nasm)", .{});
    }
    if (!jpeg_simd and simd_kind != .none and require) {
        if (requested != null) fail("DATAGO_REQUIRE_SIMD=1 contradicts -Djpeg-simd=false", .{});
        fail("DATAGO_REQUIRE_SIMD=1 but `nasm` is not on PATH: install it " ++
            "(apt-get install nasm), or unset DATAGO_REQUIRE_SIMD to build without SIMD", .{});
    }
    if (!jpeg_simd and simd_kind != .none and requested == null) {
        std.log.warn(
            \\
            \\==========================================================================
            \\ datago: `nasm` not found on PATH: building libjpeg-turbo WITHOUT SIMD.
            \\ JPEG decode will be about 2x slower and JPEG encode about 5x slower.
            \\ Install nasm (apt-get install nasm) and rebuild, or set
            \\ DATAGO_REQUIRE_SIMD=1 to make this an error.
            \\==========================================================================
        , .{});
    }

    const sanitize = b.option(
        bool,
        "codec-sanitize",
        "Fuzzing only: build the vendored C codecs with UBSan traps (default: off)",
    ) orelse false;

    const build_options = b.addOptions();
    build_options.addOption(bool, "jpeg_simd", jpeg_simd);
    return .{
        .root = b.path(""),
        .jpeg_simd = jpeg_simd,
        .nasm = nasm,
        .sanitize = sanitize,
        .build_options = build_options,
    };
}

/// Which of libjpeg-turbo's SIMD implementations a target gets, following its
/// simd/CMakeLists.txt: NASM in the object format of the OS on x86-64, the Neon
/// intrinsics (NEON_INTRINSICS, what CMake picks for Clang) on aarch64.
pub const JpegSimdKind = enum {
    none,
    nasm_elf64,
    nasm_macho64,
    neon,

    fn needsNasm(kind: JpegSimdKind) bool {
        return kind == .nasm_elf64 or kind == .nasm_macho64;
    }
};

pub fn jpegSimdKind(target: std.Target) JpegSimdKind {
    return switch (target.cpu.arch) {
        .x86_64 => switch (target.os.tag) {
            .linux => .nasm_elf64,
            .macos => .nasm_macho64,
            else => .none,
        },
        .aarch64 => switch (target.os.tag) {
            .linux, .macos => .neon,
            else => .none,
        },
        else => .none,
    };
}

/// Stops the configure phase with a message (no option listing, unlike an
/// invalid -D option).
fn fail(comptime format: []const u8, args: anytype) noreturn {
    std.log.err(format, args);
    std.process.exit(1);
}

pub fn addTo(b: *std.Build, mod: *std.Build.Module, opts: Options) Libraries {
    const target = mod.resolved_target orelse @panic("codecs.addTo: the module needs a target");
    const optimize = mod.optimize orelse .safe;
    var libs: Libraries = .{ .all = undefined };
    for (spec.libraries, &libs.all) |library, *out| out.* = addLibrary(b, library, target, optimize, opts);
    linkInto(mod, libs, opts);
    return libs;
}

/// The codec static libraries that `addTo` built, to link into another module
/// (a CPU variant of libdatago) without compiling them a second time.
pub const Libraries = struct { all: [spec.libraries.len]*std.Build.Step.Compile };

pub fn linkInto(mod: *std.Build.Module, libs: Libraries, opts: Options) void {
    for (libs.all) |lib| mod.linkLibrary(lib);
    mod.addOptions("build_options", opts.build_options);
}

/// One library of codecs.zon as a static library `datago_<name>`.
fn addLibrary(
    b: *std.Build,
    library: Spec.Library,
    target: std.Build.ResolvedTarget,
    optimize: std.lang.Optimize,
    opts: Options,
) *std.Build.Step.Compile {
    const mod = b.createModule(.{
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        .pic = true,
        .sanitize_c = if (opts.sanitize) .trap else .off,
    });
    for (library.include) |path| mod.addIncludePath(opts.root.path(b, path));
    for (library.units) |unit| {
        if (!unit.applies(target.result, opts.jpeg_simd)) continue;
        const root = opts.root.path(b, unit.root);
        for (unit.include) |path| if (!unit.nasm) mod.addIncludePath(opts.root.path(b, path));
        if (unit.nasm) {
            addNasm(b, mod, unit, root, opts);
            continue;
        }
        const common = if (opts.sanitize) spec.sanitize_flags else spec.common_flags;
        const simd_off: []const []const u8 = if (opts.jpeg_simd) &.{} else library.simd_off_flags;
        const flags = std.mem.concat(b.allocator, []const u8, &.{ unit.flags, simd_off, common }) catch @panic("OOM");
        mod.addCSourceFiles(.{ .root = root, .files = unit.files, .flags = flags });
    }
    return b.addLibrary(.{ .name = b.fmt("datago_{s}", .{library.name}), .linkage = .static, .root_module = mod });
}

/// Assembles a `nasm` unit, one object per file, into `mod`.
fn addNasm(b: *std.Build, mod: *std.Build.Module, unit: Spec.Unit, root: std.Build.LazyPath, opts: Options) void {
    const nasm = opts.nasm.?; // options() sets jpeg_simd only when nasm is there.
    for (unit.files) |file| {
        const run = b.addSystemCommand(&.{nasm});
        run.addArgs(nasmFormat(mod.resolved_target.?.result));
        run.addArgs(unit.flags);
        for (unit.include) |path| run.addPrefixedDirectoryArg("-I", opts.root.path(b, path));
        run.addFileArg(root.path(b, file));
        run.addArg("-o");
        mod.addObjectFile(run.addOutputFileArg(b.fmt("{s}.o", .{std.fs.path.stem(file)})));
        for (unit.inputs) |input| run.addFileInput(opts.root.path(b, input));
    }
}

/// The object format and its define, as libjpeg-turbo's CMake passes them.
fn nasmFormat(target: std.Target) []const []const u8 {
    return switch (jpegSimdKind(target)) {
        .nasm_elf64 => &.{ "-f", "elf64", "-DELF" },
        .nasm_macho64 => &.{ "-f", "macho64", "-DMACHO" },
        .none, .neon => unreachable, // no nasm unit applies to these targets
    };
}
