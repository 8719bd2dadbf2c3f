/* libwebp's build configuration for datago (build/codecs.zon compiles libwebp
 * with -DHAVE_CONFIG_H, so its sources include this instead of guessing from
 * compiler macros). One file for every target, in place of autotools' config.h.
 *
 * x86-64: the SSE2 paths (SSE2 is part of x86-64) and the SSE4.1 ones, which
 * libwebp compiles from the *_sse41.c files (-msse4.1) and picks at run time by
 * CPUID. Elsewhere the portable C paths: the _neon files are not vendored.
 * No WEBP_USE_THREAD: datago decodes on its own threads. */
#ifndef DATAGO_WEBP_CONFIG_H
#define DATAGO_WEBP_CONFIG_H

#if defined(__x86_64__)
#define WEBP_HAVE_SSE2 1
#define WEBP_HAVE_SSE41 1
#endif

/* What libwebp detects itself without HAVE_CONFIG_H (Clang has them all). */
#define HAVE_BUILTIN_BSWAP16 1
#define HAVE_BUILTIN_BSWAP32 1
#define HAVE_BUILTIN_BSWAP64 1

#endif
