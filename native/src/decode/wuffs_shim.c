/* wuffs_shim.c: the one translation unit that compiles Wuffs (vendored
 * release/c/wuffs-v0.3.c of Wuffs v0.3.4, unmodified: vendor/wuffs/VENDORED.md)
 * and the only caller of its API. wuffs.zig calls the dg_wuffs_* functions
 * below; everything here is hidden inside the .so (-fvisibility=hidden).
 *
 * Why a shim: Wuffs' API passes its structs (io_buffer, pixel_buffer, image
 * config) by value and by pointer; mirroring them in Zig would tie our code to
 * their private layout. Here they stay C, and Zig sees two calls with plain
 * integers and caller-owned memory.
 *
 * Memory: Wuffs never allocates. The caller provides the decoder's memory
 * (dg_wuffs_decoder_size), the output pixels and the work buffer, all sized
 * from the header before any pixel data is read, so a file can make us spend
 * no more than its declared image (plus the PNG work buffer, about the size of
 * the filtered image). A zlib stream that inflates past the declared image
 * ends in "too much data"; a chunk length past the end of the file in a
 * truncation: nothing grows with what the data claims beyond the header.
 *
 * Configuration: only the modules PNG, GIF and BMP need. Checksums (PNG chunk
 * CRC-32, zlib Adler-32) are verified: Wuffs' default, never turned off here.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define WUFFS_IMPLEMENTATION
#define WUFFS_CONFIG__STATIC_FUNCTIONS
#define WUFFS_CONFIG__MODULES
#define WUFFS_CONFIG__MODULE__BASE
#define WUFFS_CONFIG__MODULE__ADLER32
#define WUFFS_CONFIG__MODULE__BMP
#define WUFFS_CONFIG__MODULE__CRC32
#define WUFFS_CONFIG__MODULE__DEFLATE
#define WUFFS_CONFIG__MODULE__GIF
#define WUFFS_CONFIG__MODULE__LZW
#define WUFFS_CONFIG__MODULE__PNG
#define WUFFS_CONFIG__MODULE__ZLIB
#include "release/c/wuffs-v0.3.c"

/* Shared with wuffs.zig (enum Format, enum Status, enum PixelFormat). */
enum { DG_WUFFS_PNG = 0, DG_WUFFS_GIF = 1, DG_WUFFS_BMP = 2 };
enum {
  DG_WUFFS_OK = 0,
  DG_WUFFS_CORRUPT = 1,
  DG_WUFFS_TRUNCATED = 2,
  DG_WUFFS_UNSUPPORTED = 3,
  DG_WUFFS_BAD_ARGUMENT = 4, /* a caller bug: wuffs.zig panics on it */
};
enum {
  DG_WUFFS_PIXFMT_Y = 0,          /* 1 byte per pixel */
  DG_WUFFS_PIXFMT_RGB = 1,        /* 3 */
  DG_WUFFS_PIXFMT_RGBA = 2,       /* 4, not premultiplied */
  DG_WUFFS_PIXFMT_BGRA_4X16LE = 3 /* 8, not premultiplied */
};

/* Mirrors wuffs.zig's CInfo. */
typedef struct dg_wuffs_info {
  uint32_t width;
  uint32_t height;
  uint64_t workbuf_len;
} dg_wuffs_info;

/* Mirrors wuffs.zig's CReport: Wuffs' status text, e.g. "#png: bad checksum". */
typedef struct dg_wuffs_report {
  char message[96];
  uint32_t message_len;
  int32_t status;
} dg_wuffs_report;

typedef union dg_wuffs_decoder {
  wuffs_png__decoder png;
  wuffs_gif__decoder gif;
  wuffs_bmp__decoder bmp;
} dg_wuffs_decoder;

size_t dg_wuffs_decoder_size(void) { return sizeof(dg_wuffs_decoder); }
size_t dg_wuffs_struct_size(int which) {
  return which == 0 ? sizeof(dg_wuffs_info) : sizeof(dg_wuffs_report);
}

static int dg_classify(const char *repr) {
  if (repr == wuffs_base__suspension__short_read || repr == wuffs_base__error__not_enough_data ||
      strstr(repr, "truncated input") != NULL) {
    /* The input buffer is closed (it is the whole file): more data needed = cut short. */
    return DG_WUFFS_TRUNCATED;
  }
  if (repr == wuffs_base__error__bad_argument || repr == wuffs_base__error__bad_argument_length_too_short ||
      repr == wuffs_base__error__bad_workbuf_length || repr == wuffs_base__error__bad_sizeof_receiver ||
      repr == wuffs_base__error__bad_wuffs_version || repr == wuffs_base__error__bad_call_sequence ||
      repr == wuffs_base__error__initialize_not_called) {
    return DG_WUFFS_BAD_ARGUMENT;
  }
  if (strstr(repr, "unsupported") != NULL) return DG_WUFFS_UNSUPPORTED;
  return DG_WUFFS_CORRUPT;
}

static int dg_fail(dg_wuffs_report *report, const char *repr, int status) {
  size_t n = strlen(repr);
  if (n >= sizeof(report->message)) n = sizeof(report->message) - 1;
  memcpy(report->message, repr, n);
  report->message[n] = '\0';
  report->message_len = (uint32_t)n;
  report->status = status;
  return status;
}

static int dg_check(dg_wuffs_report *report, wuffs_base__status status) {
  if (status.repr == NULL) return DG_WUFFS_OK;
  return dg_fail(report, status.repr, dg_classify(status.repr));
}

static wuffs_base__image_decoder *dg_init(int format, dg_wuffs_decoder *d, wuffs_base__status *status) {
  /* LEAVE_INTERNAL_BUFFERS_UNINITIALIZED: Wuffs proves that it writes them
   * before reading them, and zeroing ~40 KiB per image is measurable. */
  const uint32_t flags = WUFFS_INITIALIZE__LEAVE_INTERNAL_BUFFERS_UNINITIALIZED;
  switch (format) {
  case DG_WUFFS_PNG:
    *status = wuffs_png__decoder__initialize(&d->png, sizeof(d->png), WUFFS_VERSION, flags);
    return wuffs_png__decoder__upcast_as__wuffs_base__image_decoder(&d->png);
  case DG_WUFFS_GIF:
    *status = wuffs_gif__decoder__initialize(&d->gif, sizeof(d->gif), WUFFS_VERSION, flags);
    return wuffs_gif__decoder__upcast_as__wuffs_base__image_decoder(&d->gif);
  case DG_WUFFS_BMP:
    *status = wuffs_bmp__decoder__initialize(&d->bmp, sizeof(d->bmp), WUFFS_VERSION, flags);
    return wuffs_bmp__decoder__upcast_as__wuffs_base__image_decoder(&d->bmp);
  default:
    *status = wuffs_base__make_status(wuffs_base__error__bad_argument);
    return NULL;
  }
}

static void dg_reset(dg_wuffs_report *report) {
  report->message[0] = '\0';
  report->message_len = 0;
  report->status = DG_WUFFS_OK;
}

/* Initialises the decoder in `decoder` (dg_wuffs_decoder_size bytes, 16-byte
 * aligned) and reads the image header. Reads no pixel data. */
static int dg_open(int format, void *decoder, const uint8_t *data, size_t len,
                   wuffs_base__io_buffer *src, wuffs_base__image_config *config,
                   wuffs_base__image_decoder **out, dg_wuffs_report *report) {
  wuffs_base__status status;
  wuffs_base__image_decoder *dec = dg_init(format, (dg_wuffs_decoder *)decoder, &status);
  if (dg_check(report, status) != DG_WUFFS_OK) return report->status;
  /* closed = true: this is the whole file, so "need more" means truncated. */
  *src = wuffs_base__ptr_u8__reader((uint8_t *)data, len, true);
  *config = wuffs_base__null_image_config();
  if (dg_check(report, wuffs_base__image_decoder__decode_image_config(dec, config, src)) != DG_WUFFS_OK) {
    return report->status;
  }
  *out = dec;
  return DG_WUFFS_OK;
}

int dg_wuffs_read_info(int format, void *decoder, const uint8_t *data, size_t len,
                       dg_wuffs_info *info, dg_wuffs_report *report) {
  dg_reset(report);
  wuffs_base__io_buffer src;
  wuffs_base__image_config config;
  wuffs_base__image_decoder *dec = NULL;
  if (dg_open(format, decoder, data, len, &src, &config, &dec, report) != DG_WUFFS_OK) return report->status;
  info->width = wuffs_base__pixel_config__width(&config.pixcfg);
  info->height = wuffs_base__pixel_config__height(&config.pixcfg);
  info->workbuf_len = wuffs_base__image_decoder__workbuf_len(dec).max_incl;
  return DG_WUFFS_OK;
}

static uint32_t dg_pixfmt(int which) {
  switch (which) {
  case DG_WUFFS_PIXFMT_Y:
    return WUFFS_BASE__PIXEL_FORMAT__Y;
  case DG_WUFFS_PIXFMT_RGB:
    return WUFFS_BASE__PIXEL_FORMAT__RGB;
  case DG_WUFFS_PIXFMT_RGBA:
    return WUFFS_BASE__PIXEL_FORMAT__RGBA_NONPREMUL;
  case DG_WUFFS_PIXFMT_BGRA_4X16LE:
    return WUFFS_BASE__PIXEL_FORMAT__BGRA_NONPREMUL_4X16LE;
  default:
    return 0;
  }
}

/* Decodes the first frame into `out` (width * height pixels of `pixfmt`, rows
 * tightly packed). `work` must hold the info's workbuf_len bytes. Pixels the
 * frame does not cover (a GIF frame smaller than its screen) keep what `out`
 * held: the caller zeroes it when that can happen. */
int dg_wuffs_decode(int format, void *decoder, const uint8_t *data, size_t len, int pixfmt,
                    uint8_t *out, size_t out_len, uint8_t *work, size_t work_len,
                    dg_wuffs_report *report) {
  dg_reset(report);
  wuffs_base__io_buffer src;
  wuffs_base__image_config config;
  wuffs_base__image_decoder *dec = NULL;
  if (dg_open(format, decoder, data, len, &src, &config, &dec, report) != DG_WUFFS_OK) return report->status;
  uint32_t width = wuffs_base__pixel_config__width(&config.pixcfg);
  uint32_t height = wuffs_base__pixel_config__height(&config.pixcfg);
  uint32_t wanted = dg_pixfmt(pixfmt);
  if (wanted == 0) return dg_fail(report, "dg_wuffs_decode: bad pixel format", DG_WUFFS_BAD_ARGUMENT);
  wuffs_base__pixel_config__set(&config.pixcfg, wanted, WUFFS_BASE__PIXEL_SUBSAMPLING__NONE, width, height);
  wuffs_base__pixel_buffer buffer;
  if (dg_check(report, wuffs_base__pixel_buffer__set_from_slice(&buffer, &config.pixcfg,
                                                               wuffs_base__make_slice_u8(out, out_len))) !=
      DG_WUFFS_OK) {
    return report->status;
  }
  /* The frame must fill the buffer exactly: a too-short buffer is our bug. */
  wuffs_base__pixel_format format_of_out = wuffs_base__pixel_config__pixel_format(&config.pixcfg);
  uint64_t bytes_per_pixel = wuffs_base__pixel_format__bits_per_pixel(&format_of_out) / 8;
  if ((uint64_t)width * height * bytes_per_pixel != out_len) {
    return dg_fail(report, "dg_wuffs_decode: output length differs from the image", DG_WUFFS_BAD_ARGUMENT);
  }
  wuffs_base__status status = wuffs_base__image_decoder__decode_frame(
      dec, &buffer, &src, WUFFS_BASE__PIXEL_BLEND__SRC, wuffs_base__make_slice_u8(work, work_len), NULL);
  if (status.repr == wuffs_base__note__end_of_data) {
    /* A GIF with a screen but no image. */
    return dg_fail(report, "#gif: no image in the file", DG_WUFFS_CORRUPT);
  }
  return dg_check(report, status);
}
