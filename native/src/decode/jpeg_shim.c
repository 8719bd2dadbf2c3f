/* jpeg_shim.c: the only caller of the libjpeg API in libdatago (vendored
 * libjpeg-turbo 3.1.2). jpeg.zig calls the three dg_jpeg_* entry points below.
 *
 * Error contract: libjpeg reports fatal errors through error_exit, which must not
 * return. Ours formats the message and longjmps back to the setjmp in the same
 * dg_jpeg_* function that owns the libjpeg object, so a longjmp never crosses a
 * Zig frame: every libjpeg call happens inside these functions and Zig only sees
 * a status code. Nothing is printed; warnings (corrupt data that libjpeg
 * recovers from) are counted into the report.
 *
 * All symbols are hidden (-fvisibility=hidden): they are internal to the .so.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* jpegint.h is needed for one fact: whether a frame is lossless (SOF3), which
 * cannot be DCT-scaled, so outputSize() would be wrong for it. */
#define JPEG_INTERNALS
#include "jpeglib.h"
#include "jerror.h"

/* Status codes shared with jpeg.zig (enum Status there). */
enum {
  DG_JPEG_OK = 0,
  DG_JPEG_NOT_JPEG = 1,
  DG_JPEG_CORRUPT = 2,
  DG_JPEG_UNSUPPORTED = 3,
  DG_JPEG_TOO_LARGE = 4,
  DG_JPEG_NO_MEMORY = 5,
  DG_JPEG_BAD_ARGUMENT = 6, /* a caller bug: jpeg.zig asserts on it */
  DG_JPEG_TRUNCATED = 7,
};

/* A legitimate progressive JPEG has about 10 scans; thousands of tiny scans
 * are a known way to make a small file cost minutes of CPU. libjpeg-turbo's
 * own fuzz targets and tjbench stop at 500; so do we. */
#define DG_JPEG_SCANS_MAX 500

/* Mirrors jpeg.zig's CReport. message is NUL-terminated, JMSG_LENGTH_MAX long.
 * status carries the error class across the longjmp: it lives in the caller's
 * memory, not in a local of the function that called setjmp, whose non-volatile
 * locals are indeterminate after a longjmp (C11 7.13.2.1). */
typedef struct dg_jpeg_report {
  char message[JMSG_LENGTH_MAX];
  uint32_t message_len;
  uint32_t warnings;
  int32_t status;
} dg_jpeg_report;

/* Mirrors jpeg.zig's CHeader. */
typedef struct dg_jpeg_header {
  uint32_t width;
  uint32_t height;
  uint32_t components;
  int32_t color_space; /* J_COLOR_SPACE of the file */
  uint32_t progressive;
  uint32_t adobe_marker;
  uint32_t exif_orientation; /* 1..8; 1 when absent or unreadable */
} dg_jpeg_header;

/* Mirrors jpeg.zig's CDecodeArgs. Crop coordinates are in scaled pixels. */
typedef struct dg_jpeg_decode_args {
  uint32_t scale_num; /* 1..8, over 8 */
  uint32_t has_crop;
  uint32_t crop_x;
  uint32_t crop_y;
  uint32_t crop_width;
  uint32_t crop_height;
  uint32_t warnings_are_errors;
} dg_jpeg_decode_args;

/* Mirrors jpeg.zig's CBuffer: an encoder output buffer from malloc, owned by the
 * caller (released with dg_jpeg_free). It lives in the caller's memory, not in
 * a local of the setjmp frame, so it is valid after a longjmp. */
typedef struct dg_jpeg_buffer {
  unsigned char *data;
  size_t size;
  size_t capacity;
} dg_jpeg_buffer;

typedef struct dg_error_mgr {
  struct jpeg_error_mgr pub; /* first: libjpeg casts cinfo->err to this */
  jmp_buf jump;
  dg_jpeg_report *report;
  int warnings_are_errors;
} dg_error_mgr;

static void dg_set_message(dg_jpeg_report *report, const char *text) {
  size_t n = strlen(text);
  if (n >= sizeof(report->message)) n = sizeof(report->message) - 1;
  memcpy(report->message, text, n);
  report->message[n] = '\0';
  report->message_len = (uint32_t)n;
}

static void dg_format_into_report(j_common_ptr cinfo) {
  dg_error_mgr *err = (dg_error_mgr *)cinfo->err;
  char buffer[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, buffer);
  dg_set_message(err->report, buffer);
}

static int dg_classify(int msg_code) {
  switch (msg_code) {
  case JERR_NO_SOI:
  case JERR_INPUT_EMPTY:
    return DG_JPEG_NOT_JPEG;
  case JERR_OUT_OF_MEMORY:
    return DG_JPEG_NO_MEMORY;
  case JERR_IMAGE_TOO_BIG:
  case JERR_WIDTH_OVERFLOW:
    return DG_JPEG_TOO_LARGE;
  case JERR_BAD_PRECISION:
  case JERR_CONVERSION_NOTIMPL:
  case JERR_NOT_COMPILED:
  case JERR_NOTIMPL:
  case JERR_SOF_UNSUPPORTED:
  case JERR_CCIR601_NOTIMPL:
  case JERR_ARITH_NOTIMPL:
  case JERR_EMPTY_IMAGE:
    return DG_JPEG_UNSUPPORTED;
  default:
    return DG_JPEG_CORRUPT;
  }
}

static void dg_error_exit(j_common_ptr cinfo) {
  dg_error_mgr *err = (dg_error_mgr *)cinfo->err;
  dg_format_into_report(cinfo);
  err->report->status = dg_classify(err->pub.msg_code);
  longjmp(err->jump, 1);
}

/* Never write to stderr: stderr belongs to the host process. */
static void dg_output_message(j_common_ptr cinfo) {
  dg_error_mgr *err = (dg_error_mgr *)cinfo->err;
  if (err->report->message_len == 0) dg_format_into_report(cinfo);
}

/* Which warnings mean the image is not all there or not what was encoded,
 * by libjpeg's warning code (the message text is for people: "Premature end
 * of JPEG file" and "Corrupt JPEG data: premature end of data segment" are
 * both truncations). libjpeg would paint the missing part grey or decode
 * garbage and carry on; we stop and refuse the file (docs/decoding.md). The
 * other warnings (extraneous bytes between markers, an unknown Adobe
 * transform or JFIF revision, a bad ICC marker) leave the pixels intact. */
static int dg_warning_damage(int msg_code) {
  switch (msg_code) {
  case JWRN_JPEG_EOF:    /* the file ends before the last scan does */
  case JWRN_HIT_MARKER:  /* a scan ends (a marker) before its data does */
    return DG_JPEG_TRUNCATED;
  case JWRN_HUFF_BAD_CODE:
  case JWRN_ARITH_BAD_CODE:
  case JWRN_MUST_RESYNC:       /* restart markers out of order */
  case JWRN_NOT_SEQUENTIAL:    /* e.g. a progressive file labelled baseline */
  case JWRN_BOGUS_PROGRESSION: /* progressive scans that do not add up */
    return DG_JPEG_CORRUPT;
  default:
    return DG_JPEG_OK;
  }
}

/* msg_level < 0 is a warning: damaged data that libjpeg papers over, or a
 * harmless oddity. Levels >= 0 are trace messages and are dropped. A damage
 * warning ends the call with its status and text; otherwise the first
 * warning's text is kept. */
static void dg_emit_message(j_common_ptr cinfo, int msg_level) {
  dg_error_mgr *err = (dg_error_mgr *)cinfo->err;
  if (msg_level >= 0) return;
  err->pub.num_warnings++;
  err->report->warnings++;
  int damage = dg_warning_damage(err->pub.msg_code);
  if (err->report->message_len == 0 || damage != DG_JPEG_OK) dg_format_into_report(cinfo);
  if (damage != DG_JPEG_OK) {
    err->report->status = damage;
    longjmp(err->jump, 1);
  }
  if (err->warnings_are_errors) {
    /* Stop at the first warning: the caller will reject the image anyway. */
    err->report->status = DG_JPEG_CORRUPT;
    longjmp(err->jump, 1);
  }
}

static void dg_progress_monitor(j_common_ptr cinfo) {
  if (cinfo->is_decompressor) {
    j_decompress_ptr dinfo = (j_decompress_ptr)cinfo;
    if (dinfo->input_scan_number > DG_JPEG_SCANS_MAX) {
      dg_error_mgr *err = (dg_error_mgr *)cinfo->err;
      char buffer[JMSG_LENGTH_MAX];
      snprintf(buffer, sizeof(buffer), "Progressive JPEG has more than %d scans",
               DG_JPEG_SCANS_MAX);
      dg_set_message(err->report, buffer);
      err->report->status = DG_JPEG_CORRUPT;
      longjmp(err->jump, 1);
    }
  }
}

#ifdef WITH_SIMD
extern int jsimd_can_idct_islow(void);

static void dg_init_simd_once(void) { (void)jsimd_can_idct_islow(); }
#endif

/* jsimd.c's SIMD-support flags are process-wide here, not thread-local
 * (gen/jconfigint.h): fill them once, before the first decode or encode, so
 * that worker threads only ever read them. */
static void dg_init_simd(void) {
#ifdef WITH_SIMD
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, dg_init_simd_once);
#endif
}

/* Every entry point starts here. */
static void dg_init_error(dg_error_mgr *err, dg_jpeg_report *report, int warnings_are_errors) {
  dg_init_simd();
  jpeg_std_error(&err->pub);
  err->pub.error_exit = dg_error_exit;
  err->pub.output_message = dg_output_message;
  err->pub.emit_message = dg_emit_message;
  err->report = report;
  err->warnings_are_errors = warnings_are_errors;
  report->message[0] = '\0';
  report->message_len = 0;
  report->warnings = 0;
  report->status = DG_JPEG_OK;
}

static uint32_t dg_read16(const JOCTET *p, int little) {
  return little ? (uint32_t)p[0] | ((uint32_t)p[1] << 8) : ((uint32_t)p[0] << 8) | (uint32_t)p[1];
}

static uint32_t dg_read32(const JOCTET *p, int little) {
  return little ? dg_read16(p, 1) | (dg_read16(p + 2, 1) << 16)
                : (dg_read16(p, 0) << 16) | dg_read16(p + 2, 0);
}

/* The orientation tag (0x0112) from IFD0 of an APP1 "Exif\0\0" payload, or 1.
 * Every offset comes from the file, so each read is bounds-checked against
 * len before it happens; anything odd gives 1 (no rotation), as Pillow's
 * exif_transpose does for an unreadable tag. */
static uint32_t dg_exif_orientation(const JOCTET *data, size_t len) {
  static const JOCTET exif_magic[6] = { 'E', 'x', 'i', 'f', 0, 0 };
  const JOCTET *tiff;
  size_t tiff_len, ifd, entry_count, i;
  int little;
  if (len < 6 + 8 || memcmp(data, exif_magic, 6) != 0) return 1;
  tiff = data + 6;
  tiff_len = len - 6;
  if (tiff[0] == 'I' && tiff[1] == 'I') little = 1;
  else if (tiff[0] == 'M' && tiff[1] == 'M') little = 0;
  else return 1;
  if (dg_read16(tiff + 2, little) != 42) return 1;
  ifd = dg_read32(tiff + 4, little);
  if (ifd > tiff_len || tiff_len - ifd < 2) return 1;
  entry_count = dg_read16(tiff + ifd, little);
  for (i = 0; i < entry_count; i++) {
    size_t entry = ifd + 2 + i * 12;
    uint32_t tag, type, count, value;
    if (entry > tiff_len || tiff_len - entry < 12) return 1;
    tag = dg_read16(tiff + entry, little);
    if (tag != 0x0112) continue;
    type = dg_read16(tiff + entry + 2, little);
    count = dg_read32(tiff + entry + 4, little);
    if (type != 3 || count != 1) return 1; /* must be one SHORT */
    value = dg_read16(tiff + entry + 8, little);
    return (value >= 1 && value <= 8) ? value : 1;
  }
  return 1;
}

static uint32_t dg_find_orientation(j_decompress_ptr cinfo) {
  jpeg_saved_marker_ptr marker;
  for (marker = cinfo->marker_list; marker != NULL; marker = marker->next) {
    if (marker->marker == JPEG_APP0 + 1 && marker->data_length >= 6 &&
        memcmp(marker->data, "Exif\0\0", 6) == 0) {
      /* The first Exif block wins, as in Pillow. */
      return dg_exif_orientation(marker->data, marker->data_length);
    }
  }
  return 1;
}

/* Checks what the 8-bit libjpeg API can decode to the same pixels as Pillow. */
static int dg_check_supported(j_decompress_ptr cinfo, dg_jpeg_report *report) {
  char buffer[JMSG_LENGTH_MAX];
  if (cinfo->data_precision != 8) {
    snprintf(buffer, sizeof(buffer), "Unsupported JPEG data precision %d", cinfo->data_precision);
    dg_set_message(report, buffer);
    return DG_JPEG_UNSUPPORTED;
  }
  if (cinfo->master->lossless) {
    dg_set_message(report, "Lossless JPEG is not supported");
    return DG_JPEG_UNSUPPORTED;
  }
  return DG_JPEG_OK;
}

/* Reads the header of the JPEG in data[0..len] into *header. Allocates only
 * libjpeg's small header state; no pixel memory. */
int dg_jpeg_read_header(const uint8_t *data, size_t len, dg_jpeg_header *header,
                        dg_jpeg_report *report) {
  struct jpeg_decompress_struct cinfo;
  dg_error_mgr err;
  int status;

  memset(&cinfo, 0, sizeof(cinfo));
  dg_init_error(&err, report, 0);
  cinfo.err = &err.pub;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return report->status;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, (unsigned long)len);
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);

  status = dg_check_supported(&cinfo, report);
  if (status == DG_JPEG_OK) {
    header->width = cinfo.image_width;
    header->height = cinfo.image_height;
    header->components = (uint32_t)cinfo.num_components;
    header->color_space = (int32_t)cinfo.jpeg_color_space;
    header->progressive = cinfo.progressive_mode ? 1 : 0;
    header->adobe_marker = cinfo.saw_Adobe_marker ? 1 : 0;
    header->exif_orientation = dg_find_orientation(&cinfo);
  }
  jpeg_destroy_decompress(&cinfo);
  return status;
}

/* Pillow reads every CMYK/YCCK JPEG as Adobe-inverted ("CMYK;I") and its
 * convert("RGB") computes nk - nk*C/255 with nk = 255 - K (Convert.c cmyk2rgb,
 * MULDIV255 rounding). In libjpeg's raw (inverted) samples, nk is the raw K and
 * C is 255 - raw C. */
static void dg_cmyk_to_rgb(const JSAMPLE *in, uint8_t *out, JDIMENSION count) {
  JDIMENSION i;
  for (i = 0; i < count; i++, in += 4, out += 3) {
    unsigned nk = in[3];
    int c;
    for (c = 0; c < 3; c++) {
      unsigned t = (255u - in[c]) * nk + 128u;
      out[c] = (uint8_t)(nk - (((t >> 8) + t) >> 8));
    }
  }
}

/* Decodes the JPEG in data[0..len] into out, rows tightly packed: the whole
 * image at scale_num/8, or the crop window of it. out_len must equal the size
 * of that region times the output channels (1 for grayscale, 3 otherwise);
 * anything else is DG_JPEG_BAD_ARGUMENT before a pixel is written. */
int dg_jpeg_decode(const uint8_t *data, size_t len, const dg_jpeg_decode_args *args,
                   uint8_t *out, size_t out_len, dg_jpeg_report *report) {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_progress_mgr progress;
  dg_error_mgr err;
  JDIMENSION x, y, width, height, row, out_channels, skip_x;
  JSAMPROW bounce = NULL;
  int status;

  memset(&cinfo, 0, sizeof(cinfo));
  dg_init_error(&err, report, args->warnings_are_errors != 0);
  cinfo.err = &err.pub;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return report->status;
  }
  jpeg_create_decompress(&cinfo);
  progress.progress_monitor = dg_progress_monitor;
  cinfo.progress = &progress;
  jpeg_mem_src(&cinfo, data, (unsigned long)len);
  jpeg_read_header(&cinfo, TRUE);

  status = dg_check_supported(&cinfo, report);
  if (status != DG_JPEG_OK) goto done;
  switch (cinfo.jpeg_color_space) {
  case JCS_GRAYSCALE:
    cinfo.out_color_space = JCS_GRAYSCALE;
    out_channels = 1;
    break;
  case JCS_YCbCr:
  case JCS_RGB:
    cinfo.out_color_space = JCS_RGB;
    out_channels = 3;
    break;
  case JCS_CMYK:
  case JCS_YCCK:
    /* libjpeg only converts these to CMYK (YCCK internally); RGB is ours. */
    cinfo.out_color_space = JCS_CMYK;
    out_channels = 3;
    break;
  default:
    dg_set_message(report, "Unsupported JPEG color space");
    status = DG_JPEG_UNSUPPORTED;
    goto done;
  }
  if (args->scale_num < 1 || args->scale_num > 8) {
    dg_set_message(report, "scale_num out of range");
    status = DG_JPEG_BAD_ARGUMENT;
    goto done;
  }
  /* Pillow's settings, which are also libjpeg's defaults; set them anyway so
   * that a change of default cannot silently break pixel equality. */
  cinfo.scale_num = args->scale_num;
  cinfo.scale_denom = 8;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  cinfo.do_block_smoothing = TRUE;
  jpeg_start_decompress(&cinfo);

  if (args->has_crop) {
    x = args->crop_x;
    y = args->crop_y;
    width = args->crop_width;
    height = args->crop_height;
    if (width == 0 || height == 0 || x > cinfo.output_width ||
        width > cinfo.output_width - x || y > cinfo.output_height ||
        height > cinfo.output_height - y) {
      dg_set_message(report, "crop window outside the scaled image");
      status = DG_JPEG_BAD_ARGUMENT;
      goto done;
    }
  } else {
    x = 0;
    y = 0;
    width = cinfo.output_width;
    height = cinfo.output_height;
  }
  if ((size_t)width * height * out_channels != out_len) {
    dg_set_message(report, "output buffer size does not match the decoded region");
    status = DG_JPEG_BAD_ARGUMENT;
    goto done;
  }

  skip_x = 0;
  if (width < cinfo.output_width) {
    /* Fancy upsampling treats the first and last decoded columns as image
     * edges, so a tight crop differs from the same window of a full decode by
     * a few levels at its sides. One extra column on each side (clamped to
     * the image), dropped below, makes them equal (432/432 random crops in
     * the libjpeg-turbo notes, re-checked by the bench script). */
    JDIMENSION left = x > 0 ? x - 1 : 0;
    JDIMENSION right = x + width < cinfo.output_width ? x + width + 1 : cinfo.output_width;
    JDIMENSION crop_x = left, crop_width = right - left;
    jpeg_crop_scanline(&cinfo, &crop_x, &crop_width);
    skip_x = x - crop_x;
  }
  if (y > 0 && jpeg_skip_scanlines(&cinfo, y) != y) {
    dg_set_message(report, "could not skip to the crop window");
    status = DG_JPEG_CORRUPT;
    goto done;
  }

  /* A bounce row is needed unless libjpeg's row is exactly our output row. */
  if (skip_x != 0 || cinfo.output_width != width || cinfo.out_color_space == JCS_CMYK) {
    bounce = (JSAMPROW)(*cinfo.mem->alloc_large)(
        (j_common_ptr)&cinfo, JPOOL_IMAGE,
        (size_t)cinfo.output_width * (size_t)cinfo.output_components);
  }
  for (row = 0; row < height; row++) {
    uint8_t *dst = out + (size_t)row * width * out_channels;
    JSAMPROW src_row = bounce != NULL ? bounce : (JSAMPROW)dst;
    if (jpeg_read_scanlines(&cinfo, &src_row, 1) != 1) {
      dg_set_message(report, "JPEG decoder returned no row");
      status = DG_JPEG_CORRUPT;
      goto done;
    }
    if (bounce == NULL) continue;
    if (cinfo.out_color_space == JCS_CMYK)
      dg_cmyk_to_rgb(bounce + (size_t)skip_x * 4, dst, width);
    else
      memcpy(dst, bounce + (size_t)skip_x * out_channels, (size_t)width * out_channels);
  }
  /* No jpeg_finish_decompress: the rest of the file (or of the image below a
   * crop) is not needed, and destroy aborts cleanly. */
  status = DG_JPEG_OK;

done:
  jpeg_destroy_decompress(&cinfo);
  return status;
}

/* A destination manager that grows a malloc'd buffer owned by the caller.
 * Unlike jpeg_mem_dest, whose buffer leaks when an error longjmps out after it
 * has grown, the current block is always in buffer->data. */
typedef struct dg_destination {
  struct jpeg_destination_mgr pub;
  dg_jpeg_buffer *buffer;
} dg_destination;

static void dg_init_destination(j_compress_ptr cinfo) {
  dg_destination *dest = (dg_destination *)cinfo->dest;
  dg_jpeg_buffer *buffer = dest->buffer;
  if (buffer->data == NULL) {
    /* A q90 RGB JPEG is rarely above 1/4 of the raw size. */
    size_t guess = (size_t)cinfo->image_width * cinfo->image_height *
                   (size_t)cinfo->input_components / 4 + 4096;
    buffer->data = (unsigned char *)malloc(guess);
    if (buffer->data == NULL) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 10);
    buffer->capacity = guess;
  }
  buffer->size = 0;
  dest->pub.next_output_byte = buffer->data;
  dest->pub.free_in_buffer = buffer->capacity;
}

static boolean dg_empty_output_buffer(j_compress_ptr cinfo) {
  dg_destination *dest = (dg_destination *)cinfo->dest;
  dg_jpeg_buffer *buffer = dest->buffer;
  /* libjpeg calls this only when the whole buffer is full. */
  size_t used = buffer->capacity;
  size_t capacity = used * 2;
  unsigned char *grown = (unsigned char *)realloc(buffer->data, capacity);
  if (grown == NULL) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 11);
  buffer->data = grown;
  buffer->capacity = capacity;
  dest->pub.next_output_byte = grown + used;
  dest->pub.free_in_buffer = capacity - used;
  return TRUE;
}

static void dg_term_destination(j_compress_ptr cinfo) {
  dg_destination *dest = (dg_destination *)cinfo->dest;
  dest->buffer->size = dest->buffer->capacity - dest->pub.free_in_buffer;
}

/* Encodes width x height pixels (channels 1 = gray or 3 = RGB, rows tightly
 * packed) as a baseline JPEG with libjpeg's defaults, which are Pillow's:
 * jpeg_set_quality(quality), 4:2:0 for RGB, Huffman tables not optimised,
 * JFIF APP0. On success buffer->data[0..size] is the file; on any status the
 * caller releases buffer->data with dg_jpeg_free (it may be NULL). */
int dg_jpeg_encode(const uint8_t *pixels, uint32_t width, uint32_t height, uint32_t channels,
                   uint32_t quality, dg_jpeg_buffer *buffer, dg_jpeg_report *report) {
  struct jpeg_compress_struct cinfo;
  dg_error_mgr err;
  dg_destination dest;

  memset(&cinfo, 0, sizeof(cinfo));
  dg_init_error(&err, report, 0);
  cinfo.err = &err.pub;
  if (setjmp(err.jump)) {
    jpeg_destroy_compress(&cinfo);
    return report->status;
  }
  if ((channels != 1 && channels != 3) || quality < 1 || quality > 100 || width == 0 ||
      height == 0) {
    dg_set_message(report, "bad encode arguments");
    return DG_JPEG_BAD_ARGUMENT;
  }
  jpeg_create_compress(&cinfo);
  dest.pub.init_destination = dg_init_destination;
  dest.pub.empty_output_buffer = dg_empty_output_buffer;
  dest.pub.term_destination = dg_term_destination;
  dest.buffer = buffer;
  cinfo.dest = &dest.pub;

  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = (int)channels;
  cinfo.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, (int)quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = (JSAMPROW)(pixels + (size_t)cinfo.next_scanline * width * channels);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  return DG_JPEG_OK;
}

/* Releases an encoder buffer (free); NULL is a no-op. */
void dg_jpeg_free(unsigned char *data) { free(data); }

/* Layout check for jpeg.zig's extern struct mirrors. */
size_t dg_jpeg_struct_size(int which) {
  switch (which) {
  case 0: return sizeof(dg_jpeg_report);
  case 1: return sizeof(dg_jpeg_header);
  case 2: return sizeof(dg_jpeg_decode_args);
  case 3: return sizeof(dg_jpeg_buffer);
  default: return 0;
  }
}

/* The SIMD instruction sets libjpeg-turbo found on this CPU (JSIMD_SSE2 0x08,
 * JSIMD_NEON 0x10, JSIMD_AVX2 0x80), or 0 in the portable build. Its
 * JSIMD_FORCE* environment variables narrow the choice further at run time. */
#if defined(WITH_SIMD) && defined(__x86_64__)
extern unsigned int jpeg_simd_cpu_support(void);
#endif
unsigned int dg_jpeg_simd_flags(void) {
#if defined(WITH_SIMD) && defined(__x86_64__)
  return jpeg_simd_cpu_support();
#elif defined(WITH_SIMD) && defined(__aarch64__)
  /* The aarch64 dispatcher has no flags getter; asking it whether a kernel
   * runs gives the same answer, JSIMD_FORCENONE included. */
  dg_init_simd();
  return jsimd_can_idct_islow() ? 0x10 : 0;
#else
  return 0;
#endif
}

/* ---- Planar decode (jpeg_read_raw_data) ----------------------------------
 * For a subsampled YCbCr file, the component planes as stored: no chroma
 * upsampling and no colour conversion at full size. The caller resamples the
 * planes straight into the output size and converts colour there, which is
 * cheaper when the output is smaller than the image. */

/* Mirrors jpeg.zig's CPlanes. */
typedef struct dg_jpeg_planes {
  uint32_t width[3];      /* each plane's size at the chosen scale */
  uint32_t height[3];
  uint32_t rows[3];       /* each plane's rows per jpeg_read_raw_data call */
  uint32_t h_ratio;       /* luma pixels per chroma pixel in the output planes: */
  uint32_t v_ratio;       /*   1 or 2 (scaling may upscale chroma in the IDCT) */
  uint32_t eligible;      /* YCbCr, 3 components, chroma 1x1 and Y 2x2 or 2x1 */
  uint32_t padded_width[3]; /* bytes libjpeg writes per plane row (whole blocks) */
} dg_jpeg_planes;

size_t dg_jpeg_planes_struct_size(void) { return sizeof(dg_jpeg_planes); }

static int dg_planes_setup(struct jpeg_decompress_struct *cinfo, uint32_t scale_num, dg_jpeg_planes *planes,
                           dg_jpeg_report *report) {
  int c;
  int status = dg_check_supported(cinfo, report);
  if (status != DG_JPEG_OK) return status;
  memset(planes, 0, sizeof(*planes));
  if (cinfo->jpeg_color_space != JCS_YCbCr || cinfo->num_components != 3) return DG_JPEG_OK;
  if (cinfo->comp_info[1].h_samp_factor != 1 || cinfo->comp_info[1].v_samp_factor != 1 ||
      cinfo->comp_info[2].h_samp_factor != 1 || cinfo->comp_info[2].v_samp_factor != 1 ||
      cinfo->comp_info[0].h_samp_factor != 2 || cinfo->comp_info[0].v_samp_factor > 2)
    return DG_JPEG_OK;
  cinfo->scale_num = scale_num;
  cinfo->scale_denom = 8;
  cinfo->dct_method = JDCT_ISLOW;
  cinfo->raw_data_out = TRUE;
  cinfo->do_fancy_upsampling = FALSE;
  cinfo->do_block_smoothing = TRUE;
  cinfo->out_color_space = JCS_YCbCr;
  jpeg_start_decompress(cinfo);
  for (c = 0; c < 3; c++) {
    jpeg_component_info *comp = &cinfo->comp_info[c];
    planes->width[c] = comp->downsampled_width;
    planes->height[c] = comp->downsampled_height;
    /* With DCT scaling libjpeg may scale chroma up in its IDCT instead of
     * upsampling (jdmaster.c), so a plane's rows per call and its ratio to
     * luma follow the component's DCT_scaled_size, not only its factors. */
    planes->rows[c] = (uint32_t)(comp->v_samp_factor * comp->DCT_scaled_size);
    planes->padded_width[c] = (uint32_t)(comp->width_in_blocks * comp->DCT_scaled_size);
  }
  planes->h_ratio = (uint32_t)(cinfo->comp_info[0].h_samp_factor * cinfo->comp_info[0].DCT_scaled_size) /
                    (uint32_t)(cinfo->comp_info[1].h_samp_factor * cinfo->comp_info[1].DCT_scaled_size);
  planes->v_ratio = planes->rows[0] / planes->rows[1];
  planes->eligible = (planes->h_ratio == 1 || planes->h_ratio == 2) && (planes->v_ratio == 1 || planes->v_ratio == 2) &&
                     planes->rows[1] == planes->rows[2];
  return DG_JPEG_OK;
}

/* The plane layout of the JPEG in data[0..len] at scale_num/8, without
 * decoding pixels. planes->eligible is 0 for files this path does not take. */
int dg_jpeg_planes_layout(const uint8_t *data, size_t len, uint32_t scale_num, dg_jpeg_planes *planes,
                          dg_jpeg_report *report) {
  struct jpeg_decompress_struct cinfo;
  dg_error_mgr err;
  int status;
  memset(&cinfo, 0, sizeof(cinfo));
  dg_init_error(&err, report, 0);
  cinfo.err = &err.pub;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return report->status;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, (unsigned long)len);
  jpeg_read_header(&cinfo, TRUE);
  status = dg_planes_setup(&cinfo, scale_num, planes, report);
  jpeg_destroy_decompress(&cinfo);
  return status;
}

/* Decodes luma rows [row_begin, row_end) of the planes (and the chroma rows
 * they cover: [row_begin / v, ceil(row_end / v)) with v the luma's vertical
 * factor) into out[c], rows stride[c] bytes apart, each row the plane's full
 * width. Rows above row_begin are decoded and dropped; decoding stops after
 * row_end. The layout must be the one dg_jpeg_planes_layout reported (else
 * DG_JPEG_BAD_ARGUMENT). Where stride[c] >= padded_width[c], libjpeg writes
 * the rows straight into out[c] (whole blocks: each row padded_width[c]
 * bytes, the last one included, so out[c] must hold them); otherwise rows
 * are copied from a scratch row. */
int dg_jpeg_decode_planes(const uint8_t *data, size_t len, uint32_t scale_num, uint32_t row_begin,
                          uint32_t row_end, uint8_t *const out[3], const size_t stride[3],
                          dg_jpeg_report *report) {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_progress_mgr progress;
  dg_error_mgr err;
  dg_jpeg_planes planes;
  JSAMPARRAY rows[3] = { NULL, NULL, NULL };
  JSAMPIMAGE image;
  uint32_t v, c, first_chroma, done_rows;
  int status;

  memset(&cinfo, 0, sizeof(cinfo));
  dg_init_error(&err, report, 0);
  cinfo.err = &err.pub;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return report->status;
  }
  jpeg_create_decompress(&cinfo);
  progress.progress_monitor = dg_progress_monitor;
  cinfo.progress = &progress;
  jpeg_mem_src(&cinfo, data, (unsigned long)len);
  jpeg_read_header(&cinfo, TRUE);
  status = dg_planes_setup(&cinfo, scale_num, &planes, report);
  if (status != DG_JPEG_OK) goto done;
  if (!planes.eligible || row_begin >= row_end || row_end > planes.height[0]) {
    dg_set_message(report, "planar decode: file or row range not eligible");
    status = DG_JPEG_BAD_ARGUMENT;
    goto done;
  }
  v = planes.v_ratio;
  first_chroma = row_begin / v;
  /* One iMCU row of each component: scratch rows (rows[c]), and the row
   * pointers libjpeg writes through (image[c]), re-aimed before each call. */
  image = (JSAMPIMAGE)(*cinfo.mem->alloc_small)((j_common_ptr)&cinfo, JPOOL_IMAGE, 3 * sizeof(JSAMPARRAY));
  for (c = 0; c < 3; c++) {
    rows[c] = (*cinfo.mem->alloc_sarray)((j_common_ptr)&cinfo, JPOOL_IMAGE, planes.padded_width[c], planes.rows[c]);
    image[c] = (JSAMPARRAY)(*cinfo.mem->alloc_small)((j_common_ptr)&cinfo, JPOOL_IMAGE, planes.rows[c] * sizeof(JSAMPROW));
  }
  for (done_rows = 0; done_rows < row_end; done_rows += planes.rows[0]) {
    /* Rows in range go straight to out[c] where it has room for whole
     * blocks; every other row (above the range, past it, padding) to
     * scratch. */
    for (c = 0; c < 3; c++) {
      uint32_t per_call = planes.rows[c];
      uint32_t base = done_rows / planes.rows[0] * per_call;
      uint32_t lo = c == 0 ? row_begin : first_chroma;
      uint32_t hi = c == 0 ? row_end : (row_end + v - 1) / v;
      int direct = stride[c] >= planes.padded_width[c];
      uint32_t r;
      if (hi > planes.height[c]) hi = planes.height[c];
      for (r = 0; r < per_call; r++) {
        uint32_t plane_row = base + r;
        image[c][r] = direct && plane_row >= lo && plane_row < hi ? out[c] + (size_t)(plane_row - lo) * stride[c] : rows[c][r];
      }
    }
    if (jpeg_read_raw_data(&cinfo, image, planes.rows[0]) == 0) {
      dg_set_message(report, "JPEG decoder returned no rows");
      status = DG_JPEG_CORRUPT;
      goto done;
    }
    for (c = 0; c < 3; c++) {
      uint32_t per_call = planes.rows[c];
      uint32_t base = done_rows / planes.rows[0] * per_call;
      uint32_t lo = c == 0 ? row_begin : first_chroma;
      uint32_t hi = c == 0 ? row_end : (row_end + v - 1) / v;
      uint32_t r;
      if (hi > planes.height[c]) hi = planes.height[c];
      if (stride[c] >= planes.padded_width[c]) continue;
      for (r = 0; r < per_call; r++) {
        uint32_t plane_row = base + r;
        if (plane_row < lo || plane_row >= hi) continue;
        memcpy(out[c] + (size_t)(plane_row - lo) * stride[c], rows[c][r], planes.width[c]);
      }
    }
  }
  status = DG_JPEG_OK;

done:
  jpeg_destroy_decompress(&cinfo);
  return status;
}
