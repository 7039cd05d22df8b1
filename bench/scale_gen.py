#!/usr/bin/env python3
"""Generates the scaling bench's tree: COUNT small files, PER_DIR to a directory.

Every file's bytes are a function of the seed and its number, and no two
files are alike (so deduplication does not shrink the work): a header line
naming the file, then up to MAX_SIZE bytes of text. MAX_SIZE 0 makes every
file empty (the CI guard's shape: pure metadata, no data blobs).

    scale_gen.py DIR COUNT [--per-dir 1000] [--max-size 512] [--seed 20240611]

Writes DIR.complete (beside the tree, with the parameters) when done; an existing tree with
the same parameters is kept, any other is replaced.
"""

import argparse
import os
import random
import shutil
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("count", type=int)
    ap.add_argument("--per-dir", type=int, default=1000)
    ap.add_argument("--max-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=20240611)
    a = ap.parse_args()
    stamp = f"count={a.count} per_dir={a.per_dir} max_size={a.max_size} seed={a.seed}\n"
    marker = a.dir.rstrip("/") + ".complete"
    try:
        with open(marker) as f:
            if f.read() == stamp:
                return 0
    except OSError:
        pass
    shutil.rmtree(a.dir, ignore_errors=True)
    rng = random.Random(a.seed)
    words = [b"alpha", b"bravo", b"charlie", b"delta", b"echo", b"foxtrot", b"golf", b"hotel"]
    filler = b" ".join(rng.choice(words) for _ in range(4096)) + b"\n"
    for i in range(a.count):
        d = os.path.join(a.dir, f"d{i // (a.per_dir * 100):03d}", f"d{(i // a.per_dir) % 100:02d}")
        if i % a.per_dir == 0:
            os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"f{i:07d}.txt")
        if a.max_size == 0:
            data = b""
        else:
            size = rng.randrange(a.max_size + 1)
            start = rng.randrange(len(filler) - size) if size < len(filler) else 0
            data = b"file %d\n" % i + filler[start:start + size]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if data:
            os.write(fd, data)
        os.close(fd)
    with open(marker, "w") as f:
        f.write(stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
