/*
 * datago.h - the C ABI of libdatago, a high-throughput image data loader.
 *
 * This header is the only door into the library. It is hand-written; a Zig test
 * (native/src/abi_header_test.zig) @cImports it and checks every size, offset and
 * constant against the Zig side, and the Python package builds its cffi
 * declarations from this same file.
 *
 * Lifecycle:  open -> [start] -> next ... next -> stop / close
 *
 *   datago_loader *loader;
 *   if (datago_loader_open(json, strlen(json), &loader) != DATAGO_OK) {
 *       fprintf(stderr, "%s\n", datago_last_error());
 *       return 1;
 *   }
 *   datago_sample *s;
 *   datago_status st;
 *   while ((st = datago_loader_next(loader, 100, &s)) != DATAGO_END) {
 *       if (st == DATAGO_TIMEOUT) continue;       // nothing ready yet: poll again
 *       if (st != DATAGO_OK) { fprintf(stderr, "%s\n", datago_last_error()); break; }
 *       use(s->image.data, s->image.width, s->image.height, s->image.channels);
 *       datago_sample_free(s);
 *   }
 *   datago_loader_close(loader);
 *
 * Ownership, in one paragraph: the caller owns a loader from a successful open
 * until it passes it to datago_loader_close, and owns each sample from a
 * successful next until it passes it to datago_sample_free. Every pointer inside
 * a sample is borrowed from that sample and dies with it. A sample does not
 * point into loader memory: it stays valid after its loader is stopped or
 * closed. Strings returned by datago_version are static; the string returned
 * by datago_last_error is owned by the library (see there).
 *
 * Errors: every call that can fail returns a datago_status; on failure a
 * thread-local message (datago_last_error) says what went wrong. Nothing in the
 * library aborts or panics the host process on bad configuration or bad data.
 * Out-parameters are set to NULL when a call fails.
 */
#ifndef DATAGO_H
#define DATAGO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped with any change to a struct layout, a status value or a rule below.
 * Compare with datago_abi_version() at run time. */
#define DATAGO_ABI_VERSION 2

/* Result of every fallible call. Values are appended, never renumbered; the
 * enum is pinned to the size of an int on both sides by DATAGO_STATUS_MAX. */
typedef enum datago_status {
    DATAGO_OK = 0,              /* success; for next: a sample is in *sample_out */
    DATAGO_END = 1,             /* next: the pass is over (end of data, limit reached or stopped) */
    DATAGO_TIMEOUT = 2,         /* next: nothing arrived within timeout_ms; call again */
    DATAGO_ERR_ARGUMENT = -1,   /* a NULL or out-of-range argument */
    DATAGO_ERR_CONFIG = -2,     /* the configuration is invalid; the message names the key */
    DATAGO_ERR_SOURCE = -3,     /* the source failed as a whole (unreadable root, every file failed,
                                   max_error_fraction exceeded); the message names the cause */
    DATAGO_ERR_DECODE = -4,     /* an image could not be decoded (single-image calls only: the
                                   loader skips and counts undecodable files instead) */
    DATAGO_ERR_NO_MEMORY = -5,  /* an allocation failed */
    DATAGO_ERR_MISUSE = -7,     /* a call in the wrong state: a loader inherited across fork(),
                                   get_sample on a batching loader, ... */
    DATAGO_ERR_INTERNAL = -8,   /* a bug in libdatago (a worker hit a safety check); please report */
    DATAGO_ERR_AUTH = -9,       /* next: the server refused the credentials (a Dataroom 403); the
                                   message names the URL and the server's detail; the pass is over */
    DATAGO_STATUS_MAX = 0x7fffffff
} datago_status;

/* How the bytes of an image view are to be read. */
typedef enum datago_encoding {
    DATAGO_ENCODING_RAW = 0,    /* pixels: row-major, interleaved channels (L, LA, RGB, RGBA) */
    DATAGO_ENCODING_PNG = 1,    /* a complete PNG file */
    DATAGO_ENCODING_JPEG = 2,   /* a complete JPEG file */
    DATAGO_ENCODING_MAX = 0x7fffffff
} datago_encoding;

/* Where a sample came from. */
typedef enum datago_source_kind {
    DATAGO_SOURCE_FILE = 0,
    DATAGO_SOURCE_WEBDATASET = 1,
    DATAGO_SOURCE_DATAROOM = 2,
    DATAGO_SOURCE_MEMORY = 3,   /* datago_transform */
    DATAGO_SOURCE_KIND_MAX = 0x7fffffff
} datago_source_kind;

/* A string borrowed from its sample: `len` bytes at `ptr`, not NUL-terminated,
 * not necessarily UTF-8 (file paths are raw bytes). ptr may be NULL when len is 0. */
typedef struct datago_str {
    const char *ptr;
    uint64_t len;
} datago_str;

/* One image of a sample. Borrowed from the sample; dies with it.
 * An absent image has data NULL, data_len 0 and every size 0. */
typedef struct datago_image {
    const uint8_t *data;        /* raw pixels or an encoded file; see encoding */
    uint64_t data_len;          /* bytes at data */
    int32_t width;              /* of what data holds, after any crop/resize */
    int32_t height;
    int32_t original_width;     /* of the decoded source image, before any transform */
    int32_t original_height;
    int32_t channels;           /* raw: 1 L, 2 LA, 3 RGB, 4 RGBA; -1 when encoded; 0 absent */
    int32_t bit_depth;          /* 8, or 16 (samples are little-endian uint16); 0 absent */
    int32_t encoding;           /* a datago_encoding */
    uint32_t stride_bytes;      /* raw: bytes per row (width * channels * bit_depth / 8, no
                                   padding); 0 when encoded or absent */
    /* Crop record: the box of the original image (in original pixels, Pillow's
     * box convention: left, top, right, bottom as floats) that the output covers,
     * and the scale factor applied to it. Without crop_and_resize: the whole
     * image and 1.0. Absent image: zeros. */
    double crop_left;
    double crop_top;
    double crop_right;
    double crop_bottom;
    double scale;
} datago_image;

/* A named image (masks, additional images). Borrowed from the sample. */
typedef struct datago_named_image {
    datago_str name;
    datago_image image;
} datago_named_image;

/* An opaque byte payload (latents). Borrowed from the sample. */
typedef struct datago_latent {
    datago_str name;
    const uint8_t *data;
    uint64_t len;
} datago_latent;

/* A sample. Owned by the caller from a successful datago_loader_next until
 * datago_sample_free; every pointer in it is borrowed from it. Read-only. */
typedef struct datago_sample {
    uint32_t size;                          /* sizeof(datago_sample) as built: fields may be
                                               appended in later ABI versions */
    int32_t source_kind;                    /* a datago_source_kind */
    datago_str id;                          /* file source: the path bytes, root_path joined
                                               with the path relative to it, exactly as given;
                                               WebDataset: the sample key; Dataroom: the id */
    datago_str source;                      /* "filesystem", the shard URL, or the Dataroom source */
    datago_str attributes_json;             /* a JSON object as text; "{}" when none */
    int64_t duplicate_state;                /* 0 for files and shards; Dataroom value or -1 */
    uint64_t index;                         /* position of this sample in the order of its
                                               (rank, worker) for this pass (docs/design.md) */
    uint64_t epoch;                         /* pass number of the loader: 0, then +1 per new pass */
    datago_image image;                     /* the main image */
    const datago_named_image *masks;        /* mask_count entries */
    uint64_t mask_count;
    const datago_named_image *additional_images;   /* additional_image_count entries */
    uint64_t additional_image_count;
    const datago_latent *latents;           /* latent_count entries */
    uint64_t latent_count;
    const datago_str *tags;                 /* tag_count entries */
    uint64_t tag_count;
    const float *coca_embedding;            /* coca_embedding_len floats */
    uint64_t coca_embedding_len;
    /* ABI version 2 (size >= offsetof(datago_sample, reserved) + 4): */
    uint32_t padded;                        /* 1: a repeat added by "equal_per_rank": "pad"
                                               so that ranks yield equal counts; evaluation
                                               should ignore it */
    uint32_t reserved;
} datago_sample;

/* A batch of samples of one shape (batch_size): their images stacked in one
 * block, ready to view as [count, height, width, channels]. Owned by the
 * caller from a successful datago_loader_next_batch until datago_batch_free;
 * every pointer in it is borrowed from it. */
typedef struct datago_batch {
    uint32_t size;                          /* sizeof(datago_batch) as built */
    uint32_t count;                         /* samples in the batch (< batch_size only for
                                               the partial batches at the end of a pass) */
    int32_t width;                          /* shape shared by every image of the batch */
    int32_t height;
    int32_t channels;
    int32_t bit_depth;                      /* 8, or 16 (little-endian uint16 samples) */
    const uint8_t *images;                  /* count * height * width * channels samples */
    uint64_t images_len;                    /* bytes at images */
    datago_sample *const *samples;          /* count samples, owned by the batch: each one's
                                               image.data points into images; do not pass
                                               them to datago_sample_free (it ignores them) */
    uint64_t epoch;
} datago_batch;

/* ---- Versions -------------------------------------------------------------- */

/* DATAGO_ABI_VERSION of the library. Thread-safe. Never fails. */
uint32_t datago_abi_version(void);

/* The library version, e.g. "0.1.0". Static string. Thread-safe. Never fails. */
const char *datago_version(void);

/* A JSON object describing the build: version, ABI, optimize mode, CPU
 * target, the decoders and their versions, whether libjpeg-turbo was built
 * with its SIMD kernels ("jpeg_simd_built") and which it uses on this CPU
 * ("jpeg_simd": "avx2", "sse2" or "none"). Owned by the library, valid until
 * the next call on the same thread. Thread-safe. Never fails. */
const char *datago_build_info(void);

/* ---- Errors ---------------------------------------------------------------- */

/* The message of the last failed call on this thread, NUL-terminated, or "" if
 * none failed yet. Owned by the library: valid until the next fallible call on
 * the same thread. datago_sample_free, datago_loader_stop, datago_loader_close,
 * datago_live_* and the version calls never change it. Thread-safe. */
const char *datago_last_error(void);

/* ---- Loader ---------------------------------------------------------------- */

/* Opaque: one per open ... close. */
typedef struct datago_loader datago_loader;

/* CONSTRUCTOR. Parses and validates a JSON configuration (docs/design.md and
 * the README list the keys) and creates a loader. Does no I/O and starts no
 * thread: the first pass begins at datago_loader_start or the first next.
 * config_json need not be NUL-terminated and is not retained.
 * Returns DATAGO_OK, DATAGO_ERR_ARGUMENT (NULL pointer), DATAGO_ERR_CONFIG
 * (message names the key) or DATAGO_ERR_NO_MEMORY. Thread-safe. */
datago_status datago_loader_open(const char *config_json, size_t config_len,
                                 datago_loader **loader_out /* OUT: caller owns */);

/* METHOD. Begins a pass if none is running: the first one, or a new one after
 * the end of data or a stop (the epoch then increases by one). A no-op while a
 * pass is running. Returns DATAGO_OK, DATAGO_ERR_ARGUMENT, DATAGO_ERR_MISUSE
 * (loader inherited across fork) or DATAGO_ERR_NO_MEMORY. Thread-safe. */
datago_status datago_loader_start(datago_loader *loader);

/* METHOD. Waits for the next sample of the running pass (starting the first
 * pass of a never-started loader). timeout_ms < 0 waits until a sample or the
 * end; otherwise at most timeout_ms milliseconds.
 * Returns DATAGO_OK (*sample_out set; the caller owns it), DATAGO_END (the pass
 * is over: data exhausted, limit reached or stopped; repeated on every later
 * call until a new start), DATAGO_TIMEOUT, DATAGO_ERR_SOURCE (the pass failed
 * as a whole; the pass is over), DATAGO_ERR_ARGUMENT, DATAGO_ERR_MISUSE or
 * DATAGO_ERR_INTERNAL; for a Dataroom source also DATAGO_ERR_AUTH (403) and
 * DATAGO_ERR_CONFIG (the server refused a filter with 400). Samples come in the order of docs/design.md whatever the
 * thread count. May be called from several threads at once: each sample goes
 * to exactly one caller. */
datago_status datago_loader_next(datago_loader *loader, int64_t timeout_ms,
                                 datago_sample **sample_out /* OUT: caller owns */);

/* METHOD. The batch counterpart of datago_loader_next, for loaders opened
 * with "batch_size": samples are taken in the order of docs/design.md and
 * grouped by shape (one bucket with crop_and_resize); a group becomes a batch
 * when it holds batch_size samples; at the end of the pass the partial
 * groups follow in order, or are dropped (and counted) with "drop_last".
 * Every sample is in exactly one batch. Same statuses as datago_loader_next;
 * DATAGO_ERR_MISUSE on a loader without batch_size (and datago_loader_next
 * is DATAGO_ERR_MISUSE on one with it). */
datago_status datago_loader_next_batch(datago_loader *loader, int64_t timeout_ms,
                                       datago_batch **batch_out /* OUT: caller owns */);

/* METHOD. Ends the running pass: queued work is cancelled and every waiting
 * next returns DATAGO_END promptly. Returns without waiting for decodes in
 * flight (they finish on their own and are counted by
 * datago_live_cleanup_threads). Idempotent; NULL is a no-op; any thread. */
void datago_loader_stop(datago_loader *loader);

/* DESTRUCTOR. Stops the loader and releases it; the handle is dead afterwards.
 * Returns promptly. Samples already handed out stay valid. NULL is a no-op.
 * Must not race with another call on the same handle (use stop for that).
 * A loader inherited across fork() is abandoned, not closed (its threads do
 * not exist in the child). */
void datago_loader_close(datago_loader *loader);

/* METHOD. Statistics of the current or last pass as one JSON object: samples
 * and bytes delivered, failures per cause (io, empty, not_image, corrupt,
 * truncated, too_large, unsupported, no_memory), per-stage time (read,
 * decode, transform, encode: count, total, mean, p50, p99), the time callers
 * of next waited, queue depths, thread count, listing size and time,
 * listing entries skipped per cause ("skipped"), the shuffle seed in use
 * ("seed": given or drawn at open; null without random_sampling) and what
 * the pass waits for ("waiting_for": text, or null), and where this (rank,
 * worker) stands ("cursor": seed, epoch, rank, world_size, worker,
 * num_workers, position = next sequence number not handed out).
 * Writes a NUL-terminated document into buffer when it fits (capacity
 * includes the NUL) and sets *length_out (may be NULL) to its length without
 * the NUL. Returns DATAGO_OK, or DATAGO_ERR_ARGUMENT when buffer is NULL or
 * too small (then *length_out says how much is needed). Before the first
 * pass the document is {"seed": ...} alone. Thread-safe; cheap enough to
 * poll. */
datago_status datago_loader_stats(datago_loader *loader, char *buffer, size_t capacity,
                                  size_t *length_out);

/* ---- Checkpoint and resume (ABI version 2) ---------------------------------- */

/* METHOD. The resume state of this loader as one JSON object (docs/design.md
 * §3): the seed, the epoch, where this (rank, worker) stands in it, and the
 * fingerprint of what it reads. Small (well under 4 KiB) whatever the
 * dataset. After the last sample or batch a caller was handed, it names
 * exactly what is left of the epoch: samples decoded but not yet handed out,
 * and samples waiting in a partial bucket batch, count as not delivered.
 * A state taken after the end of a pass resumes at the start of the next
 * epoch. Same buffer convention as datago_loader_stats.
 * Returns DATAGO_OK, DATAGO_ERR_ARGUMENT (buffer NULL or too small; then
 * *length_out says how much is needed), DATAGO_ERR_MISUSE or
 * DATAGO_ERR_NO_MEMORY. Thread-safe. */
datago_status datago_loader_state(datago_loader *loader, char *buffer, size_t capacity,
                                  size_t *length_out);

/* METHOD. Makes the next pass continue a saved state: exactly after the last
 * sample the saving loader handed out. state_json is one state from
 * datago_loader_state, or a JSON array of the states of every rank and
 * worker of a run (needed to resume with another world_size or
 * num_workers: the rest of the epoch is then split over the new shape). Not
 * retained. Call it after open and before the first pass (or after a stop
 * or the end of a pass). A state that does not belong to this configuration
 * (another source, seed, shuffle settings, or, checked when the pass lists
 * its data, another listing) is refused: here with DATAGO_ERR_CONFIG, or by
 * the first next with DATAGO_ERR_CONFIG. Returns DATAGO_OK,
 * DATAGO_ERR_ARGUMENT, DATAGO_ERR_CONFIG (the message says why),
 * DATAGO_ERR_MISUSE (a pass is running) or DATAGO_ERR_NO_MEMORY. */
datago_status datago_loader_restore(datago_loader *loader, const char *state_json,
                                    size_t state_len);

/* ---- Samples --------------------------------------------------------------- */

/* DESTRUCTOR. Frees a sample and everything it points to. NULL is a no-op.
 * Any thread, also after its loader was closed. */
void datago_sample_free(datago_sample *sample);

/* ---- Images without a loader ---------------------------------------------- */

/* An encoded image given by the caller: a complete JPEG, PNG, BMP, GIF or
 * WebP file, and a name (for masks and additional images). Borrowed. */
typedef struct datago_encoded {
    datago_str name;
    const uint8_t *data;
    uint64_t len;
} datago_encoded;

/* One aspect-ratio bucket. */
typedef struct datago_bucket {
    int32_t width;
    int32_t height;
    double aspect_ratio;    /* the bucket's key: width / height rounded to 3 decimals */
} datago_bucket;

/* Where an image of a given size goes: the bucket and the box of the source
 * (original pixels, Pillow's box convention) that is resampled into it. */
typedef struct datago_fit {
    int32_t width;          /* output size (the bucket's) */
    int32_t height;
    double crop_left;
    double crop_top;
    double crop_right;
    double crop_bottom;
    double scale;           /* s of the cover resize (1.0 when nothing changes) */
    double aspect_ratio;    /* the bucket's key; 0 without crop_and_resize */
} datago_fit;

/* Decodes and transforms one sample's images with an image_config (JSON, as
 * in a loader's "image_config"; "null" means no processing), exactly as a
 * loader would: the main image picks its bucket, masks and additional images
 * are resized into the same bucket (masks stay single-channel, PNG when
 * pre-encoded, nearest-neighbour with "mask_resample": "nearest"). image may
 * be NULL (then each other image picks its own bucket). The inputs are not
 * retained. On success *sample_out (caller owns; free with
 * datago_sample_free) has source_kind DATAGO_SOURCE_MEMORY and an empty id.
 * Returns DATAGO_OK, DATAGO_ERR_ARGUMENT, DATAGO_ERR_CONFIG,
 * DATAGO_ERR_DECODE (the message names the image) or DATAGO_ERR_NO_MEMORY.
 * Thread-safe. */
datago_status datago_transform(const char *image_config_json, size_t config_len,
                               const uint8_t *image, size_t image_len,
                               const datago_encoded *masks, size_t mask_count,
                               const datago_encoded *additional_images, size_t additional_count,
                               datago_sample **sample_out /* OUT: caller owns */);

/* The bucket table of an image_config with crop_and_resize, sorted by
 * aspect ratio. Writes at most capacity entries to buckets_out (may be NULL
 * when capacity is 0) and sets *count_out to the table's size. Returns
 * DATAGO_OK, DATAGO_ERR_CONFIG (also when crop_and_resize is false) or
 * DATAGO_ERR_ARGUMENT. Thread-safe. */
datago_status datago_buckets(const char *image_config_json, size_t config_len,
                             datago_bucket *buckets_out, size_t capacity, size_t *count_out);

/* The bucket and crop box an image of width x height gets under an
 * image_config (without crop_and_resize: the image unchanged). Returns
 * DATAGO_OK, DATAGO_ERR_CONFIG or DATAGO_ERR_ARGUMENT (non-positive size).
 * Thread-safe. */
datago_status datago_fit_image(const char *image_config_json, size_t config_len,
                               int32_t width, int32_t height, datago_fit *fit_out);

/* DESTRUCTOR. Frees a batch and its samples. NULL is a no-op. Any thread,
 * also after its loader was closed. */
void datago_batch_free(datago_batch *batch);

/* ---- Counters (for leak tests and shutdown checks) ------------------------ */

/* Samples handed out and not yet freed, library-wide. Thread-safe. */
int64_t datago_live_samples(void);

/* Stopped or closed passes whose native work is still finishing (0 when all is
 * drained), library-wide; datago.live_cleanup_threads() in Python. */
int64_t datago_live_cleanup_threads(void);

/* ---- Logging ------------------------------------------------------------- */

/* Installs the native logger once per process (docs/compatibility.md §8). level is one of
 * "error", "warn", "info", "debug", "trace", "off" (any case), or NULL for the
 * default ("error"). RUST_LOG (or DATAGO_LOG), when set, wins over level.
 * Without a call, the first pass installs it at "warn". Lines go to stderr.
 * *installed_out (may be NULL) is 1 if this call installed the logger, 0 if
 * it was installed before. Returns DATAGO_OK or DATAGO_ERR_ARGUMENT (unknown
 * level: nothing is installed). Thread-safe. */
datago_status datago_log_init(const char *level, int32_t *installed_out);

/* Sends log lines to an in-memory queue instead of stderr (enabled != 0), so
 * a host can forward them (the Python package hands them to its logging,
 * logger "datago"). Native threads never wait for the host: when the queue
 * (1024 lines) is full the oldest line is dropped and counted. enabled == 0
 * sends later lines to stderr again and wakes every datago_log_read waiter
 * (so a host can stop its reading thread at exit); queued lines stay
 * readable. Thread-safe. */
void datago_log_capture(int32_t enabled);

/* Makes a datago_log_read waiting now, or the next one about to wait,
 * return at once with what is queued (possibly nothing): a host flushing its
 * queue need not wait out its reading thread's timeout. Thread-safe. */
void datago_log_wake(void);

/* Waits up to timeout_ms (< 0: without limit) for captured lines and copies
 * whole lines into buffer while they fit, each "<level>\t<module>\t<message>\n"
 * with level 1 error, 2 warn, 3 info, 4 debug, 5 trace. *length_out gets the
 * bytes written (0 on timeout, or at once when capture is off and nothing
 * is queued), *dropped_out (may be NULL) the lines lost since the last call.
 * Returns DATAGO_OK or DATAGO_ERR_ARGUMENT. */
datago_status datago_log_read(int64_t timeout_ms, char *buffer, size_t capacity, size_t *length_out,
                              uint64_t *dropped_out);

#ifdef __cplusplus
}
#endif

#endif /* DATAGO_H */
