/*
 * checkpoint: a C training loop that checkpoints its data position with
 * libdatago and resumes from it. Uses nothing but datago.h.
 *
 *   cc checkpoint.c -I<dir of datago.h> -L<dir of libdatago.so> -ldatago -o checkpoint
 *   ./checkpoint CONFIG_JSON STATE_FILE STEPS
 *
 * Reads up to STEPS samples (all of them when STEPS is 0) and prints each
 * sample's id. If STATE_FILE exists, it first restores the state saved
 * there, so the samples continue exactly after the last one the saving run
 * printed; at the end it writes the new state to STATE_FILE.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datago.h"

/* The whole file, NUL-terminated, or NULL when it does not exist. Caller frees. */
static char *read_file(const char *path, size_t *len_out) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len <= 1) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) { free(buf); buf = NULL; break; }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) { buf[len] = 0; *len_out = len; }
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s CONFIG_JSON STATE_FILE STEPS\n", argv[0]);
        return 2;
    }
    const char *config = argv[1], *state_path = argv[2];
    long steps = strtol(argv[3], NULL, 10);
    if (datago_abi_version() != DATAGO_ABI_VERSION) {
        fprintf(stderr, "libdatago has ABI %u, this program was built for %d\n", datago_abi_version(), DATAGO_ABI_VERSION);
        return 1;
    }
    datago_loader *loader = NULL;
    if (datago_loader_open(config, strlen(config), &loader) != DATAGO_OK) {
        fprintf(stderr, "config error: %s\n", datago_last_error());
        return 1;
    }
    size_t saved_len = 0;
    char *saved = read_file(state_path, &saved_len);
    if (saved) {
        datago_status st = datago_loader_restore(loader, saved, saved_len);
        free(saved);
        if (st != DATAGO_OK) {
            fprintf(stderr, "cannot resume: %s\n", datago_last_error());
            datago_loader_close(loader);
            return 1;
        }
    }
    int code = 0;
    for (long i = 0; steps == 0 || i < steps; i++) {
        datago_sample *s = NULL;
        datago_status st = datago_loader_next(loader, -1, &s);
        if (st == DATAGO_END) break;
        if (st != DATAGO_OK) {
            fprintf(stderr, "error: %s\n", datago_last_error());
            code = 1;
            break;
        }
        printf("%.*s\n", (int)s->id.len, s->id.ptr ? s->id.ptr : "");
        datago_sample_free(s);
    }
    /* The state after the last sample printed: ask for its size, then write it. */
    size_t len = 0;
    if (datago_loader_state(loader, NULL, 0, &len) != DATAGO_ERR_ARGUMENT) code = 1;
    char *state = malloc(len + 1);
    if (state && datago_loader_state(loader, state, len + 1, &len) == DATAGO_OK) {
        FILE *f = fopen(state_path, "wb");
        if (!f || fwrite(state, 1, len, f) != len) code = 1;
        if (f) fclose(f);
    } else {
        fprintf(stderr, "cannot take the state: %s\n", datago_last_error());
        code = 1;
    }
    free(state);
    datago_loader_close(loader);
    return code;
}
