#!/usr/bin/env python3
"""What one durable journal commit costs this machine: a small write and its sync, in a file
whose blocks and size are already on disk (as the journal's zero-filled segments are).

For each way of writing it, N writes of SIZE bytes at consecutive offsets, each followed by its
sync, with GAP between them (a commit every few milliseconds, as a coordinator running commands
makes them; 0 for back-to-back commits). Prints the wall time a commit takes and the CPU the
process spends a commit (user and system, over the whole loop, pauses included: the first row,
the loop without writes, is what the pauses and the wakes after them cost on their own).

    python3 benches/sync_cost.py [--n 400] [--size 4096] [--gap-ms 5] [--rounds 2] [--dir /var/tmp]

The ways: `buffered + fdatasync` (what the journal does), `O_DSYNC` (the same in one call),
`O_DIRECT + fdatasync`, and `O_DIRECT | O_DSYNC` (a write-through write, no page cache, and no
inode write when only the time stamps moved). Only files this script creates in DIR are touched.
"""

import argparse
import mmap
import os
import resource
import tempfile
import time

WAYS = [
    # The loop without the write: what the pause and the wake after it cost, to subtract.
    ("(pause alone)", None, False),
    ("buffered + fdatasync", 0, True),
    ("O_DSYNC", os.O_DSYNC, False),
    ("O_DIRECT + fdatasync", os.O_DIRECT, True),
    ("O_DIRECT | O_DSYNC", os.O_DIRECT | os.O_DSYNC, False),
]


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(path, flags, sync, n, size, gap):
    # Zero-filled and synced first, as a journal segment is before its records land in it.
    with open(path, "wb") as f:
        f.write(b"\0" * (n * size + (1 << 20)))
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_RDWR | (flags or 0))
    try:
        # An anonymous mapping is page-aligned, as O_DIRECT needs.
        buf = mmap.mmap(-1, size)
        buf.write(b"x" * size)
        wall = 0.0
        cpu0 = cpu_seconds()
        for i in range(n):
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter()
            if flags is None:
                wall += time.perf_counter() - t0
                continue
            os.pwrite(fd, buf, i * size)
            if sync:
                os.fdatasync(fd)
            wall += time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
    finally:
        os.close(fd)
    return wall / n, cpu / n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=400, help="commits per way and round")
    p.add_argument("--size", type=int, default=4096, help="bytes a commit (a multiple of 4096)")
    p.add_argument("--gap-ms", type=float, default=5.0, help="pause between commits")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dir", default="/var/tmp", help="where the test file goes")
    a = p.parse_args()
    if a.size % 4096:
        p.error("--size must be a multiple of 4096 (O_DIRECT writes whole blocks)")
    with tempfile.TemporaryDirectory(prefix="sync-cost-", dir=a.dir) as d:
        path = os.path.join(d, "segment")
        for r in range(a.rounds):
            for name, flags, sync in WAYS:
                wall, cpu = measure(path, flags, sync, a.n, a.size, a.gap_ms / 1000)
                print(f"round {r + 1}  {name:22s} wall {wall * 1e6:7.1f} µs  CPU {cpu * 1e6:6.1f} µs a commit")


if __name__ == "__main__":
    main()
