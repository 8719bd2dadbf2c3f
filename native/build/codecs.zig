//! Vendored C codecs, compiled into libdatago: Wuffs v0.3.4 (PNG, GIF, BMP),
//! libjpeg-turbo 3.1.2 (JPEG decode and encode), libwebp 1.2.4 (WebP decode,
//! first frame of animations). Provenance: native/vendor/*/VENDORED.md.
//!
//! build.zig calls `options(b, target)` once, then `addTo(b, mod, opts)` for the
//! module that imports src/decode/*.zig. Each codec becomes a static library
//! (with its C shim) linked into that module; `linkInto` links the same
//! libraries into a second module (a CPU variant of libdatago).
//!
//! Build options:
//! - `-Djpeg-simd=<bool>`: libjpeg-turbo's SIMD kernels. On x86-64 (Linux ELF and
//!   macOS Mach-O) these are its NASM kernels (AVX2/SSE2, chosen at run time by
//!   CPUID; measured 2.3x faster decode and 4.8x faster encode than the C paths on
//!   1 MP photos, identical pixels); on aarch64 (Linux and macOS) its Neon
//!   intrinsics, plain C that needs no extra tool. Default: on for aarch64, and on
//!   for x86-64 when `nasm` is on PATH. Without nasm the portable C build
//!   (-DJT_NO_SIMD) is used and a loud warning is printed; with
//!   `DATAGO_REQUIRE_SIMD=1` in the environment (release and CI builds) a build
//!   without SIMD on a target that has it (missing nasm, or an explicit
//!   `-Djpeg-simd=false`) fails instead, as does an explicit `-Djpeg-simd=true`
//!   that cannot be honoured.
//! - `-Dcodec-sanitize=<bool>`: fuzzing builds only; see `Options.sanitize`.
//!
//! Zig code sees the choice as `@import("build_options").jpeg_simd` (bool): `addTo`
//! adds `opts.build_options` to the module under the import name `build_options`.
//! More options may be added to that same step (`opts.build_options.addOption`).
//!
//! Every vendored C file is compiled with -DNDEBUG -fno-sanitize=undefined
//! -fvisibility=hidden: ReleaseSafe would otherwise turn C undefined behaviour on
//! hostile input into a SIGILL that kills Python, and without hidden visibility
//! the .so would export (and clash with Pillow's) libjpeg/libwebp/Wuffs symbols.
const std = @import("std");

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
    const libs: Libraries = .{ .all = .{
        addJpeg(b, target, optimize, opts),
        addWebp(b, target, optimize, opts),
        addWuffs(b, target, optimize, opts),
        addLibdeflate(b, target, optimize, opts),
    } };
    linkInto(mod, libs, opts);
    return libs;
}

/// The codec static libraries that `addTo` built, to link into another module
/// (a CPU variant of libdatago) without compiling them a second time.
pub const Libraries = struct { all: [4]*std.Build.Step.Compile };

pub fn linkInto(mod: *std.Build.Module, libs: Libraries, opts: Options) void {
    for (libs.all) |lib| mod.linkLibrary(lib);
    mod.addOptions("build_options", opts.build_options);
}

/// Flags for every vendored C file (see the file comment for why), then `extra`.
fn cFlags(b: *std.Build, opts: Options, extra: []const []const u8) []const []const u8 {
    const common: []const []const u8 = if (opts.sanitize)
        &.{ "-DNDEBUG", "-fvisibility=hidden", "-fsanitize=undefined", "-fsanitize-trap=undefined" }
    else
        &.{ "-DNDEBUG", "-fno-sanitize=undefined", "-fvisibility=hidden" };
    return std.mem.concat(b.allocator, []const u8, &.{ extra, common }) catch @panic("OOM");
}

fn cModule(
    b: *std.Build,
    target: std.Build.ResolvedTarget,
    optimize: std.lang.Optimize,
    opts: Options,
) *std.Build.Module {
    return b.createModule(.{
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        .pic = true,
        .sanitize_c = if (opts.sanitize) .trap else .off,
    });
}

// ---- libjpeg-turbo: the file lists follow native/vendor/libjpeg-turbo/VENDORED.md ("What is here", "Build"). ----

/// libjpeg API sources compiled once (8-bit-agnostic or 8-bit only).
const jpeg_sources_single = [_][]const u8{
    "jcapimin.c", "jchuff.c",   "jcicc.c",      "jcinit.c",  "jclhuff.c", "jcmarker.c",
    "jcmaster.c", "jcomapi.c",  "jcparam.c",    "jcphuff.c", "jctrans.c", "jdapimin.c",
    "jdatadst.c", "jdatasrc.c", "jdhuff.c",     "jdicc.c",   "jdinput.c", "jdlhuff.c",
    "jdmarker.c", "jdmaster.c", "jdphuff.c",    "jdtrans.c", "jerror.c",  "jfdctflt.c",
    "jmemmgr.c",  "jmemnobs.c", "jpeg_nbits.c", "jaricom.c", "jcarith.c", "jdarith.c",
};

/// Sources built once per sample precision through src/wrapper/NAME-{8,12,16}.c
/// (never compile src/NAME.c directly: the 12/16-bit symbols would be missing).
const jpeg_sources_8_12_16 = [_][]const u8{
    "jcapistd", "jccolor",  "jcdiffct", "jclossls", "jcmainct", "jcprepct", "jcsample", "jdapistd",
    "jdcolor",  "jddiffct", "jdlossls", "jdmainct", "jdpostct", "jdsample", "jutils",
};
const jpeg_sources_8_12 = [_][]const u8{
    "jccoefct", "jcdctmgr", "jdcoefct", "jddctmgr", "jdmerge", "jfdctfst", "jfdctint",
    "jidctflt", "jidctfst", "jidctint", "jidctred", "jquant1", "jquant2",
};

const jpeg_wrapper_sources = blk: {
    var files: [jpeg_sources_8_12_16.len * 3 + jpeg_sources_8_12.len * 2][]const u8 = undefined;
    var i: usize = 0;
    for (jpeg_sources_8_12_16) |name| {
        for ([_][]const u8{ "8", "12", "16" }) |bits| {
            files[i] = "wrapper/" ++ name ++ "-" ++ bits ++ ".c";
            i += 1;
        }
    }
    for (jpeg_sources_8_12) |name| {
        for ([_][]const u8{ "8", "12" }) |bits| {
            files[i] = "wrapper/" ++ name ++ "-" ++ bits ++ ".c";
            i += 1;
        }
    }
    break :blk files;
};

/// The 27 NASM kernels. The *ext-*.asm files are %included by these, not assembled.
const jpeg_nasm_sources = [_][]const u8{
    "jsimdcpu",      "jfdctflt-sse",  "jccolor-sse2",  "jcgray-sse2",   "jchuff-sse2",
    "jcphuff-sse2",  "jcsample-sse2", "jdcolor-sse2",  "jdmerge-sse2",  "jdsample-sse2",
    "jfdctfst-sse2", "jfdctint-sse2", "jidctflt-sse2", "jidctfst-sse2", "jidctint-sse2",
    "jidctred-sse2", "jquantf-sse2",  "jquanti-sse2",  "jccolor-avx2",  "jcgray-avx2",
    "jcsample-avx2", "jdcolor-avx2",  "jdmerge-avx2",  "jdsample-avx2", "jfdctint-avx2",
    "jidctint-avx2", "jquanti-avx2",
};

/// Assembler inputs that are not on the command line; listed so edits re-run nasm.
const jpeg_nasm_includes = [_][]const u8{
    "nasm/jsimdext.inc",        "nasm/jsimdcfg.inc",        "nasm/jdct.inc",
    "nasm/jcolsamp.inc",        "x86_64/jccolext-avx2.asm", "x86_64/jccolext-sse2.asm",
    "x86_64/jcgryext-avx2.asm", "x86_64/jcgryext-sse2.asm", "x86_64/jdcolext-avx2.asm",
    "x86_64/jdcolext-sse2.asm", "x86_64/jdmrgext-avx2.asm", "x86_64/jdmrgext-sse2.asm",
};

/// The Neon intrinsics build for aarch64 (simd/CMakeLists.txt with NEON_INTRINSICS):
/// the dispatcher, the aarch64 Huffman encoder and the shared kernels. The
/// *ext-neon.c files are #included by these, not compiled.
const jpeg_neon_sources = [_][]const u8{
    "arm/aarch64/jsimd.c", "arm/aarch64/jchuff-neon.c", "arm/jccolor-neon.c",  "arm/jcgray-neon.c",
    "arm/jcphuff-neon.c",  "arm/jcsample-neon.c",       "arm/jdcolor-neon.c",  "arm/jdmerge-neon.c",
    "arm/jdsample-neon.c", "arm/jfdctfst-neon.c",       "arm/jfdctint-neon.c", "arm/jidctfst-neon.c",
    "arm/jidctint-neon.c", "arm/jidctred-neon.c",       "arm/jquanti-neon.c",
};

fn addJpeg(
    b: *std.Build,
    target: std.Build.ResolvedTarget,
    optimize: std.lang.Optimize,
    opts: Options,
) *std.Build.Step.Compile {
    const vendor = opts.root.path(b, "vendor/libjpeg-turbo");
    const jmod = cModule(b, target, optimize, opts);
    // gen/ first: it holds the hand-written jconfig.h, jconfigint.h, jversion.h.
    jmod.addIncludePath(vendor.path(b, "gen"));
    jmod.addIncludePath(vendor.path(b, "src"));

    const flags = cFlags(b, opts, if (opts.jpeg_simd) &.{"-O3"} else &.{ "-O3", "-DJT_NO_SIMD" });
    const src = vendor.path(b, "src");
    jmod.addCSourceFiles(.{ .root = src, .files = &jpeg_sources_single, .flags = flags });
    jmod.addCSourceFiles(.{ .root = src, .files = &jpeg_wrapper_sources, .flags = flags });
    const shim = &.{"src/decode/jpeg_shim.c"};
    jmod.addCSourceFiles(.{ .root = opts.root, .files = shim, .flags = flags });

    if (opts.jpeg_simd) {
        const simd = vendor.path(b, "simd");
        switch (jpegSimdKind(target.result)) {
            .none => unreachable, // options() refuses jpeg_simd for such a target.
            .neon => {
                // gen/arm holds neon-compat.h, which the Neon sources include by
                // bare name (CMake puts its configured copy on the include path).
                jmod.addIncludePath(vendor.path(b, "gen/arm"));
                const neon_flags = cFlags(b, opts, &.{ "-O3", "-DNEON_INTRINSICS" });
                jmod.addCSourceFiles(.{ .root = simd, .files = &jpeg_neon_sources, .flags = neon_flags });
            },
            .nasm_elf64, .nasm_macho64 => |kind| {
                jmod.addCSourceFiles(.{ .root = simd, .files = &.{"x86_64/jsimd.c"}, .flags = flags });
                const nasm = opts.nasm.?; // options() guarantees it when jpeg_simd is set.
                // The object format and its define, as libjpeg-turbo's CMake passes them.
                const format: []const []const u8 = if (kind == .nasm_elf64)
                    &.{ "-f", "elf64", "-DELF" }
                else
                    &.{ "-f", "macho64", "-DMACHO" };
                for (jpeg_nasm_sources) |name| {
                    const run = b.addSystemCommand(&.{nasm});
                    run.addArgs(format);
                    run.addArgs(&.{ "-D__x86_64__", "-DPIC" });
                    run.addPrefixedDirectoryArg("-I", simd.path(b, "nasm"));
                    run.addPrefixedDirectoryArg("-I", simd.path(b, "x86_64"));
                    run.addFileArg(simd.path(b, b.fmt("x86_64/{s}.asm", .{name})));
                    run.addArg("-o");
                    const object = run.addOutputFileArg(b.fmt("{s}.o", .{name}));
                    for (jpeg_nasm_includes) |include| run.addFileInput(simd.path(b, include));
                    jmod.addObjectFile(object);
                }
            },
        }
    }
    return b.addLibrary(.{ .name = "datago_jpeg", .linkage = .static, .root_module = jmod });
}

// ---- libwebp: decoder + demux, per native/vendor/libwebp/VENDORED.md ("What is here", "Build"). ----

const webp_sources = [_][]const u8{
    "src/dec/alpha_dec.c",       "src/dec/buffer_dec.c",         "src/dec/frame_dec.c",
    "src/dec/idec_dec.c",        "src/dec/io_dec.c",             "src/dec/quant_dec.c",
    "src/dec/tree_dec.c",        "src/dec/vp8_dec.c",            "src/dec/vp8l_dec.c",
    "src/dec/webp_dec.c",        "src/dsp/alpha_processing.c",   "src/dsp/cpu.c",
    "src/dsp/dec.c",             "src/dsp/dec_clip_tables.c",    "src/dsp/filters.c",
    "src/dsp/lossless.c",        "src/dsp/rescaler.c",           "src/dsp/upsampling.c",
    "src/dsp/yuv.c",             "src/utils/bit_reader_utils.c", "src/utils/color_cache_utils.c",
    "src/utils/filters_utils.c", "src/utils/huffman_utils.c",    "src/utils/quant_levels_dec_utils.c",
    "src/utils/random_utils.c",  "src/utils/rescaler_utils.c",   "src/utils/thread_utils.c",
    "src/utils/utils.c",         "src/demux/demux.c",            "src/demux/anim_decode.c",
};
/// SSE2 is part of x86-64; these are compiled on x86-64 only.
const webp_sources_sse2 = [_][]const u8{
    "src/dsp/alpha_processing_sse2.c", "src/dsp/dec_sse2.c",      "src/dsp/filters_sse2.c",
    "src/dsp/lossless_sse2.c",         "src/dsp/rescaler_sse2.c", "src/dsp/upsampling_sse2.c",
    "src/dsp/yuv_sse2.c",
};
/// Compiled with -msse4.1; everything else with -DWEBP_HAVE_SSE41 so that the
/// generic init functions call these, behind libwebp's CPUID check at run time.
const webp_sources_sse41 = [_][]const u8{
    "src/dsp/alpha_processing_sse41.c", "src/dsp/dec_sse41.c", "src/dsp/lossless_sse41.c",
    "src/dsp/upsampling_sse41.c",       "src/dsp/yuv_sse41.c",
};

fn addWebp(
    b: *std.Build,
    target: std.Build.ResolvedTarget,
    optimize: std.lang.Optimize,
    opts: Options,
) *std.Build.Step.Compile {
    const vendor = opts.root.path(b, "vendor/libwebp");
    const wmod = cModule(b, target, optimize, opts);
    // Sources include "src/..." relative to the libwebp root.
    wmod.addIncludePath(vendor);
    // WEBP_EXTERN=extern: libwebp marks its API visibility("default") regardless of
    // -fvisibility=hidden; without this the .so exported 33 WebP*/VP8* symbols.
    const base = cFlags(b, opts, &.{ "-O2", "-DWEBP_EXTERN=extern" });
    if (target.result.cpu.arch == .x86_64) {
        const flags = cFlags(b, opts, &.{ "-O2", "-DWEBP_EXTERN=extern", "-DWEBP_HAVE_SSE41" });
        wmod.addCSourceFiles(.{ .root = vendor, .files = &webp_sources, .flags = flags });
        wmod.addCSourceFiles(.{ .root = vendor, .files = &webp_sources_sse2, .flags = flags });
        const sse41 = cFlags(b, opts, &.{ "-O2", "-DWEBP_EXTERN=extern", "-msse4.1" });
        wmod.addCSourceFiles(.{ .root = vendor, .files = &webp_sources_sse41, .flags = sse41 });
    } else {
        // Other targets: the plain C paths (the _neon files are not vendored yet).
        // HAVE_CONFIG_H with an empty src/webp/config.h stops src/dsp/cpu.h from
        // turning on SIMD paths by compiler macros (native/vendor/libwebp/VENDORED.md, "Build").
        const config = b.addWriteFiles();
        _ = config.add("src/webp/config.h", "/* empty: portable C paths only */\n");
        wmod.addIncludePath(config.getDirectory());
        const flags = cFlags(b, opts, &.{ "-O2", "-DWEBP_EXTERN=extern", "-DHAVE_CONFIG_H" });
        wmod.addCSourceFiles(.{ .root = vendor, .files = &webp_sources, .flags = flags });
    }
    const shim = &.{"src/decode/webp_shim.c"};
    wmod.addCSourceFiles(.{ .root = opts.root, .files = shim, .flags = base });
    return b.addLibrary(.{ .name = "datago_webp", .linkage = .static, .root_module = wmod });
}

// ---- Wuffs: one translation unit, configured in src/decode/wuffs_shim.c. ----

fn addWuffs(
    b: *std.Build,
    target: std.Build.ResolvedTarget,
    optimize: std.lang.Optimize,
    opts: Options,
) *std.Build.Step.Compile {
    const wmod = cModule(b, target, optimize, opts);
    wmod.addIncludePath(opts.root.path(b, "vendor/wuffs"));
    wmod.addCSourceFiles(.{
        .root = opts.root,
        .files = &.{"src/decode/wuffs_shim.c"},
        // -O3, as Wuffs' own example and benchmark builds use.
        .flags = cFlags(b, opts, &.{"-O3"}),
    });
    return b.addLibrary(.{ .name = "datago_wuffs", .linkage = .static, .root_module = wmod });
}

// ---- libdeflate: decompressor, zlib wrapper, Adler-32 and CRC-32 only. ----

const libdeflate_sources = [_][]const u8{
    "lib/deflate_decompress.c",
    "lib/zlib_decompress.c",
    "lib/adler32.c",
    "lib/crc32.c",
    "lib/utils.c",
    "lib/x86/cpu_features.c",
    "lib/arm/cpu_features.c",
};

fn addLibdeflate(
    b: *std.Build,
    target: std.Build.ResolvedTarget,
    optimize: std.lang.Optimize,
    opts: Options,
) *std.Build.Step.Compile {
    const dmod = cModule(b, target, optimize, opts);
    const vendor = opts.root.path(b, "vendor/libdeflate");
    dmod.addIncludePath(vendor);
    // lib/lib_common.h marks the API `__attribute__((visibility("default")))`
    // with no way to override it, which would export libdeflate_* from our .so
    // past -fvisibility=hidden. Attribute names are macro-expanded, so this
    // turns that one attribute into "hidden" without touching the source.
    const hide = "-Dvisibility(x)=__visibility__(\"hidden\")";
    // -O2, as libdeflate's own CMake release build uses.
    const flags = cFlags(b, opts, &.{ "-O2", hide });
    dmod.addCSourceFiles(.{ .root = vendor, .files = &libdeflate_sources, .flags = flags });
    return b.addLibrary(.{ .name = "datago_libdeflate", .linkage = .static, .root_module = dmod });
}
