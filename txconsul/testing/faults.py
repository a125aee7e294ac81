# -*- test-case-name: txconsul.test.cluster.test_disk -*-
"""
Faults injected into real processes (FAULTS.md section 1).

``build_fsync_shim`` compiles the LD_PRELOAD library of FAULTS.md 1.1 that
makes ``fsync`` and ``fdatasync`` fail with EIO, into a directory of the
caller's (nothing binary is kept in the repository). A process started with
``LD_PRELOAD=<shim> FAIL_FSYNC_AFTER=N`` sees its calls fail after N good
ones; with ``FAIL_FSYNC_ARMED_BY=<path>`` as well, calls are counted only
once that file exists, so a test can let a server start and then break its
disk at the moment it chooses. The first failure is written to the process's
standard error as ``failfsync: fsync failed (EIO)``: the proof that the fault
happened.
"""

from __future__ import annotations

import os
import shutil
import subprocess

SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int calls;
static int reported;

static int fail(const char *what) {
    const char *after = getenv("FAIL_FSYNC_AFTER");
    const char *armed = getenv("FAIL_FSYNC_ARMED_BY");
    if (!after || (armed && access(armed, F_OK) != 0))
        return 0;
    if (++calls <= atoi(after))
        return 0;
    if (!reported) {
        static const char prefix[] = "failfsync: ";
        static const char suffix[] = " failed (EIO)\n";
        reported = 1;
        (void)!write(2, prefix, sizeof prefix - 1);
        (void)!write(2, what, strlen(what));
        (void)!write(2, suffix, sizeof suffix - 1);
    }
    errno = EIO;
    return 1;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return fail("fsync") ? -1 : real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return fail("fdatasync") ? -1 : real(fd);
}
"""

#: what the shim writes to standard error at its first failure
SHIM_MARK = b"failfsync: "


class ShimUnavailable(Exception):
    """No C compiler here (Debian: ``apt-get install gcc``), or it failed."""


def build_fsync_shim(directory: str) -> str:
    """Compile the shim into ``directory``; the path of the ``.so``."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ShimUnavailable("no C compiler found (apt-get install gcc)")
    os.makedirs(directory, exist_ok=True)
    source = os.path.join(directory, "failfsync.c")
    library = os.path.join(directory, "failfsync.so")
    with open(source, "w") as f:
        f.write(SHIM_SOURCE)
    done = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-o", library, source, "-ldl"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise ShimUnavailable(f"{cc} failed to build the fsync shim:\n{done.stderr}")
    return library


def fsync_failure_env(library: str, armed_by: str, after: int = 0) -> dict[str, str]:
    """The environment of a process whose fsyncs fail once ``armed_by`` exists."""
    return {
        "LD_PRELOAD": library,
        "FAIL_FSYNC_AFTER": str(after),
        "FAIL_FSYNC_ARMED_BY": armed_by,
    }
