/*
 * list_samples: reads a folder of images with libdatago and prints each
 * sample's id and size. Uses nothing but datago.h.
 *
 *   cc list_samples.c -I<dir of datago.h> -L<dir of libdatago.so> -ldatago -o list_samples
 *   ./list_samples /path/to/images [limit]
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "datago.h"

/* JSON-escapes a path into a config string (quotes, backslashes, control bytes). */
static int append_json_string(char *out, size_t cap, const char *s) {
    size_t n = 0;
    if (n + 1 >= cap) return -1;
    out[n++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        const char *piece = esc;
        if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; esc[2] = 0; }
        else if (c < 0x20) snprintf(esc, sizeof esc, "\\u%04x", c);
        else { esc[0] = (char)c; esc[1] = 0; }
        size_t len = strlen(piece);
        if (n + len + 2 >= cap) return -1;
        memcpy(out + n, piece, len);
        n += len;
    }
    out[n++] = '"';
    out[n] = 0;
    return (int)n;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FOLDER [LIMIT]\n", argv[0]);
        return 2;
    }
    if (datago_abi_version() != DATAGO_ABI_VERSION) {
        fprintf(stderr, "libdatago ABI %u, header ABI %d\n", datago_abi_version(), DATAGO_ABI_VERSION);
        return 1;
    }
    char root[4096];
    if (append_json_string(root, sizeof root, argv[1]) < 0) {
        fprintf(stderr, "path too long\n");
        return 2;
    }
    char config[8192];
    if (argc > 2)
        snprintf(config, sizeof config,
                 "{\"source_type\": \"file\", \"source_config\": {\"root_path\": %s}, \"limit\": %s}", root, argv[2]);
    else
        snprintf(config, sizeof config, "{\"source_type\": \"file\", \"source_config\": {\"root_path\": %s}}", root);

    datago_loader *loader = NULL;
    if (datago_loader_open(config, strlen(config), &loader) != DATAGO_OK) {
        fprintf(stderr, "config error: %s\n", datago_last_error());
        return 1;
    }

    long count = 0;
    datago_status status;
    datago_sample *sample = NULL;
    while ((status = datago_loader_next(loader, 100, &sample)) != DATAGO_END) {
        if (status == DATAGO_TIMEOUT) continue;
        if (status != DATAGO_OK) {
            fprintf(stderr, "error: %s\n", datago_last_error());
            break;
        }
        const datago_image *image = &sample->image;
        printf("%.*s %dx%d %d %d\n", (int)sample->id.len, sample->id.ptr, image->width, image->height,
               image->channels, image->bit_depth);
        datago_sample_free(sample);
        count++;
    }
    datago_loader_close(loader);

    /* Closing returns at once; wait for native work to drain before exit so
     * leak checkers see a clean process. */
    for (int i = 0; i < 1000 && datago_live_cleanup_threads() > 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "%ld samples, %lld still alive\n", count, (long long)datago_live_samples());
    return status == DATAGO_END ? 0 : 1;
}
