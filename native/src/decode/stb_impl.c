/* stb_impl.c: the one translation unit that compiles stb_image (vendored from
 * Debian's libstb-dev 0.0~git20220908.8b5f1f3+ds-1, stb_image v2.27, plus
 * upstream's JPEG range-check fix 96fe76c: see vendor/stb/VENDORED.md) for
 * libdatago. stb.zig calls the stbi_* functions declared below directly; they
 * stay hidden inside the .so (-fvisibility=hidden).
 *
 * Configuration, and why:
 * - Only the formats stb decodes for us: PNG, BMP, GIF, and JPEG as a fallback
 *   (libjpeg-turbo is the main JPEG path). Fewer formats, less attack surface.
 * - No stdio (we decode from memory), no HDR/linear float paths.
 * - Failure strings stay on: stbi_failure_reason() feeds our error messages.
 *   stb keeps the reason thread-local when the compiler supports it (it picks
 *   _Thread_local / __thread itself; the #error below makes sure it did), which
 *   matters because datago decodes on several threads at once.
 * - Allocation goes through dg_c_malloc/dg_c_realloc/dg_c_free, defined in Zig
 *   (src/alloc_hooks.zig), so tests can count and leak-check stb's memory.
 * - STBI_MAX_DIMENSIONS keeps its default (1 << 24 per side); the real limit is
 *   the caller's max_pixels, checked from the header before decoding.
 * - The global switches (flip on load, unpremultiply, iPhone PNG conversion)
 *   are never set, so they keep their defaults: off.
 */
#include <stddef.h>

void *dg_c_malloc(size_t size);
void *dg_c_realloc(void *ptr, size_t new_size);
void dg_c_free(void *ptr);

#define STBI_MALLOC(sz) dg_c_malloc(sz)
#define STBI_REALLOC(p, newsz) dg_c_realloc(p, newsz)
#define STBI_FREE(p) dg_c_free(p)

#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_NO_STDIO
#define STBI_NO_HDR
#define STBI_NO_LINEAR

#define STB_IMAGE_IMPLEMENTATION
#include "stb_image.h"

#ifndef STBI_THREAD_LOCAL
#error "stb_image has no thread-local failure reason with this compiler"
#endif
