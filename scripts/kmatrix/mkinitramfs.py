#!/usr/bin/env python3
"""Writes an uncompressed initramfs (cpio "newc") for the kernel-matrix guests.

usage: mkinitramfs.py OUT DEST=SRC [DEST=SRC ...]

Each DEST is a path inside the guest (e.g. /init, /kmatrix/errors), SRC a host file; its
permission bits are kept. Parent directories are created. Only python3's standard library,
so no cpio package is needed on the host.
"""
import os
import stat
import sys


def header(ino, mode, size, name, nlink=1, rdev=(0, 0)):
    name_b = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name_b), 0]
    h = b"070701" + b"".join(b"%08x" % f for f in fields) + name_b
    return h + b"\0" * (-len(h) % 4)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, pairs = sys.argv[1], sys.argv[2:]
    entries = {}
    for p in pairs:
        dest, src = p.split("=", 1)
        dest = dest.strip("/")
        if not dest or dest in entries:
            sys.exit(f"bad or repeated destination: {p}")
        entries[dest] = src
    dirs = {"dev", "proc", "sys", "tmp"}
    for dest in entries:
        parts = dest.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    ino = 1
    with open(out + ".tmp", "wb") as f:
        for d in sorted(dirs):
            f.write(header(ino, stat.S_IFDIR | 0o755, 0, d, nlink=2))
            ino += 1
        # /dev/console before devtmpfs is mounted: the kernel opens it for init's stdio.
        f.write(header(ino, stat.S_IFCHR | 0o600, 0, "dev/console", rdev=(5, 1)))
        ino += 1
        for dest in sorted(entries):
            src = entries[dest]
            with open(src, "rb") as s:
                data = s.read()
            perm = stat.S_IMODE(os.stat(src).st_mode)
            f.write(header(ino, stat.S_IFREG | perm, len(data), dest))
            f.write(data + b"\0" * (-len(data) % 4))
            ino += 1
        f.write(header(0, 0, 0, "TRAILER!!!"))
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
