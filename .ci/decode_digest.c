/*
 * decode_digest: decodes each file given through datago_transform, as a
 * loader would, once untouched and once into 64 px aspect buckets (DCT-scaled
 * JPEG decode, crop, resize), and prints one line per file and pass: the
 * output size, channels and an FNV-1a hash of the pixels. The build info goes
 * to stderr. .ci/check_wheels.py runs it against every library it can
 * execute and requires the same lines as the x86-64 build's: a wheel for
 * another platform must decode pixel for pixel the same.
 *
 *   decode_digest FILE...
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datago.h"

static const char *const CONFIGS[] = {
    "null",
    "{\"crop_and_resize\": true, \"default_image_size\": 64, \"downsampling_ratio\": 16,"
    " \"min_aspect_ratio\": 0.5, \"max_aspect_ratio\": 2.0}",
};

static uint64_t fnv1a(const uint8_t *data, uint64_t len) {
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (uint64_t i = 0; i < len; i++) {
        hash ^= data[i];
        hash *= 0x100000001b3ULL;
    }
    return hash;
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *file = fopen(path, "rb");
    if (!file) return NULL;
    uint8_t *data = NULL;
    size_t cap = 0;
    *len = 0;
    for (;;) {
        if (*len == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            uint8_t *grown = realloc(data, cap);
            if (!grown) break;
            data = grown;
        }
        size_t got = fread(data + *len, 1, cap - *len, file);
        if (got == 0) break;
        *len += got;
    }
    fclose(file);
    return data;
}

int main(int argc, char **argv) {
    if (datago_abi_version() != DATAGO_ABI_VERSION) {
        fprintf(stderr, "libdatago ABI %u, header ABI %d\n", datago_abi_version(), DATAGO_ABI_VERSION);
        return 1;
    }
    fprintf(stderr, "%s\n", datago_build_info());
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        size_t len = 0;
        uint8_t *data = read_file(argv[i], &len);
        if (!data) {
            fprintf(stderr, "%s: cannot read\n", argv[i]);
            return 1;
        }
        const char *name = strrchr(argv[i], '/') ? strrchr(argv[i], '/') + 1 : argv[i];
        for (size_t c = 0; c < sizeof CONFIGS / sizeof CONFIGS[0]; c++) {
            datago_sample *sample = NULL;
            if (datago_transform(CONFIGS[c], strlen(CONFIGS[c]), data, len, NULL, 0, NULL, 0, &sample) != DATAGO_OK) {
                fprintf(stderr, "%s: %s\n", name, datago_last_error());
                failed = 1;
                continue;
            }
            const datago_image *image = &sample->image;
            printf("%s pass %zu: %dx%d %d %016llx\n", name, c, image->width, image->height, image->channels,
                   (unsigned long long)fnv1a(image->data, image->data_len));
            datago_sample_free(sample);
        }
        free(data);
    }
    return failed;
}
