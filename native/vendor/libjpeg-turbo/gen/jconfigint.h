/* jconfigint.h for libdatago: written by hand from src/jconfigint.h.in
 * (libjpeg-turbo 3.1.2) with the values CMake produces for GCC/Clang on an
 * LP64 Linux target (FORCE_INLINE on). -DJT_NO_SIMD selects the portable build. */

/* libjpeg-turbo build number */
#define BUILD  "datago"

/* How to hide global symbols. */
#define HIDDEN  __attribute__((visibility("hidden")))

/* Compiler's inline keyword */
#undef inline

/* How to obtain function inlining. */
#define INLINE  __inline__ __attribute__((always_inline))

/* How to obtain thread-local storage. Only simd/x86_64/jsimd.c uses it, for
 * its two SIMD-support flags, and it reads them once per IDCT block: in a
 * shared library each read is a __tls_get_addr call (2.5% of a 4 MP decode).
 * datago makes them plain statics instead and sets them once per process,
 * before any decode, with pthread_once (dg_jpeg_init_simd in jpeg_shim.c);
 * after that they are only read. (CMake writes __thread here.) */
#define THREAD_LOCAL

/* Define to the full name of this package. */
#define PACKAGE_NAME  "libjpeg-turbo"

/* Version number of package */
#define VERSION  "3.1.2"

/* The size of `size_t', as computed by sizeof. */
#define SIZEOF_SIZE_T  8

/* Define if your compiler has __builtin_ctzl() and sizeof(unsigned long) == sizeof(size_t). */
#define HAVE_BUILTIN_CTZL

/* Define to 1 if you have the <intrin.h> header file. */
/* #undef HAVE_INTRIN_H */

#if defined(__has_attribute)
#if __has_attribute(fallthrough)
#define FALLTHROUGH  __attribute__((fallthrough));
#else
#define FALLTHROUGH
#endif
#else
#define FALLTHROUGH
#endif

/*
 * Define BITS_IN_JSAMPLE as either
 *   8   for 8-bit sample values (the usual setting)
 *   12  for 12-bit sample values
 * Only 8 and 12 are legal data precisions for lossy JPEG according to the
 * JPEG standard, and the IJG code does not support anything else!
 */

#ifndef BITS_IN_JSAMPLE
#define BITS_IN_JSAMPLE  8      /* use 8 or 12 */
#endif

#undef C_ARITH_CODING_SUPPORTED
#undef D_ARITH_CODING_SUPPORTED
#undef WITH_SIMD

/* SIMD and arithmetic coding are 8-bit only: 12/16-bit objects must not see them. */
#if BITS_IN_JSAMPLE == 8

/* Support arithmetic encoding */
#define C_ARITH_CODING_SUPPORTED 1

/* Support arithmetic decoding */
#define D_ARITH_CODING_SUPPORTED 1

/* Use accelerated SIMD routines. */
#ifndef JT_NO_SIMD
#define WITH_SIMD 1
#endif

#endif
