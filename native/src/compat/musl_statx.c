/* statx for musl builds (build.zig adds this file only there).
 *
 * Zig's standard library calls libc's statx whenever it links musl, but musl
 * exports statx only from 1.2.5 (2024): a library that imports it fails to
 * load on every older musl ("Error relocating libdatago.so: statx: symbol not
 * found"; Debian 12 and Alpine up to 3.19 ship 1.2.3-1.2.4), while the
 * musllinux_1_2 tag promises any musl 1.2. Defined here, hidden, the
 * reference binds inside libdatago and makes the system call itself (Linux
 * 4.11+), as the glibc 2.17 build of the same Zig code already does. */
#include <sys/syscall.h>
#include <unistd.h>

struct statx;

__attribute__((visibility("hidden"))) int statx(int dirfd, const char *path, int flags, unsigned mask,
                                                struct statx *buf) {
    /* musl's syscall() returns -1 and sets errno on failure, as statx does. */
    return (int)syscall(SYS_statx, dirfd, path, flags, mask, buf);
}
