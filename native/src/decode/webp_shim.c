/* webp_shim.c: the only caller of libwebp in libdatago (vendored Debian libwebp
 * 1.2.4-0.2+deb12u1). It keeps libwebp's versioned config structs
 * (WebPDecoderConfig, WebPAnimDecoderOptions, initialised by macros) on the C
 * side; webp.zig sees plain status codes.
 *
 * libwebp never longjmps or exits: every failure is a return value. All symbols
 * are hidden (-fvisibility=hidden, WEBP_EXTERN=extern).
 */
#include <stdint.h>
#include <string.h>

#include "src/webp/decode.h"
#include "src/webp/demux.h"

/* Status codes shared with webp.zig (enum Status there). */
enum {
  DG_WEBP_OK = 0,
  DG_WEBP_NOT_WEBP = 1,
  DG_WEBP_CORRUPT = 2,
  DG_WEBP_UNSUPPORTED = 3,
  DG_WEBP_NO_MEMORY = 4,
  DG_WEBP_BAD_ARGUMENT = 5, /* a caller bug: webp.zig asserts on it */
};

/* Mirrors webp.zig's CInfo. */
typedef struct dg_webp_info_t {
  uint32_t width;  /* canvas size for animations */
  uint32_t height;
  uint32_t has_alpha;
  uint32_t has_animation;
} dg_webp_info_t;

static int dg_status(VP8StatusCode status) {
  switch (status) {
  case VP8_STATUS_OK:
    return DG_WEBP_OK;
  case VP8_STATUS_OUT_OF_MEMORY:
    return DG_WEBP_NO_MEMORY;
  case VP8_STATUS_UNSUPPORTED_FEATURE:
    return DG_WEBP_UNSUPPORTED;
  case VP8_STATUS_INVALID_PARAM:
    return DG_WEBP_BAD_ARGUMENT;
  default: /* BITSTREAM_ERROR, NOT_ENOUGH_DATA (truncated), SUSPENDED, USER_ABORT */
    return DG_WEBP_CORRUPT;
  }
}

/* Pillow accepts only the RIFF container ("RIFF" size "WEBP"); libwebp would
 * also take a bare VP8/VP8L bitstream, which no WebP file is. */
static int dg_is_riff_webp(const uint8_t *data, size_t len) {
  return len >= 12 && memcmp(data, "RIFF", 4) == 0 && memcmp(data + 8, "WEBP", 4) == 0;
}

/* Reads the size and flags from the headers of data[0..len]; no allocation. */
int dg_webp_info(const uint8_t *data, size_t len, dg_webp_info_t *info) {
  WebPBitstreamFeatures features;
  VP8StatusCode status;
  if (!dg_is_riff_webp(data, len)) return DG_WEBP_NOT_WEBP;
  status = WebPGetFeatures(data, len, &features);
  if (status != VP8_STATUS_OK) return dg_status(status);
  if (features.width <= 0 || features.height <= 0) return DG_WEBP_CORRUPT;
  info->width = (uint32_t)features.width;
  info->height = (uint32_t)features.height;
  info->has_alpha = features.has_alpha ? 1 : 0;
  info->has_animation = features.has_animation ? 1 : 0;
  return DG_WEBP_OK;
}

/* The first frame of an animation, composited on the canvas the way Pillow
 * (which also uses WebPAnimDecoder) shows it: non-premultiplied RGBA. */
static int dg_decode_first_frame(const uint8_t *data, size_t len, uint32_t channels,
                                 uint8_t *out, size_t out_len) {
  WebPAnimDecoderOptions options;
  WebPAnimDecoder *decoder;
  WebPAnimInfo anim;
  WebPData webp_data;
  uint8_t *frame;
  int timestamp;
  size_t i, pixels;

  if (!WebPAnimDecoderOptionsInit(&options)) return DG_WEBP_BAD_ARGUMENT;
  options.color_mode = MODE_RGBA;
  options.use_threads = 0; /* datago decodes on its own worker threads */
  webp_data.bytes = data;
  webp_data.size = len;
  /* NULL covers both a malformed container and a failed allocation; the demuxer
   * does not say which. Corrupt is the likelier on hostile input. */
  decoder = WebPAnimDecoderNew(&webp_data, &options);
  if (decoder == NULL) return DG_WEBP_CORRUPT;
  if (!WebPAnimDecoderGetInfo(decoder, &anim) ||
      (size_t)anim.canvas_width * anim.canvas_height * channels != out_len) {
    WebPAnimDecoderDelete(decoder);
    return DG_WEBP_BAD_ARGUMENT;
  }
  if (!WebPAnimDecoderGetNext(decoder, &frame, &timestamp)) {
    WebPAnimDecoderDelete(decoder);
    return DG_WEBP_CORRUPT;
  }
  pixels = (size_t)anim.canvas_width * anim.canvas_height;
  if (channels == 4) {
    memcpy(out, frame, pixels * 4);
  } else {
    for (i = 0; i < pixels; i++) memcpy(out + i * 3, frame + i * 4, 3);
  }
  WebPAnimDecoderDelete(decoder);
  return DG_WEBP_OK;
}

/* Decodes data[0..len] into out as RGB (channels 3) or non-premultiplied RGBA
 * (channels 4), rows tightly packed; an animation yields its first frame.
 * out_len must be width * height * channels. */
int dg_webp_decode(const uint8_t *data, size_t len, uint32_t channels, uint8_t *out,
                   size_t out_len) {
  WebPDecoderConfig config;
  dg_webp_info_t info;
  VP8StatusCode status;
  int result;

  if (channels != 3 && channels != 4) return DG_WEBP_BAD_ARGUMENT;
  result = dg_webp_info(data, len, &info);
  if (result != DG_WEBP_OK) return result;
  if ((size_t)info.width * info.height * channels != out_len) return DG_WEBP_BAD_ARGUMENT;
  if (info.has_animation) return dg_decode_first_frame(data, len, channels, out, out_len);

  if (!WebPInitDecoderConfig(&config)) return DG_WEBP_BAD_ARGUMENT;
  config.output.colorspace = channels == 4 ? MODE_RGBA : MODE_RGB;
  /* Decode straight into the caller's buffer: no libwebp-side copy. */
  config.output.is_external_memory = 1;
  config.output.u.RGBA.rgba = out;
  config.output.u.RGBA.stride = (int)(info.width * channels);
  config.output.u.RGBA.size = out_len;
  status = WebPDecode(data, len, &config);
  WebPFreeDecBuffer(&config.output); /* a no-op for external memory; kept for symmetry */
  return dg_status(status);
}

/* Layout check for webp.zig's extern struct mirror. */
size_t dg_webp_info_size(void) { return sizeof(dg_webp_info_t); }
