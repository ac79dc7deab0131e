"""The cost of checkpoint manifests (``nemo_resrl/runs/manifest.py``): writing one and verifying it, against
hashing every byte, on shard files of a given size.

    PYTHONPATH=. .venv/bin/python bench/bench_manifest.py [--gib 2 --files 2]

The files (random bytes) are written into a temporary directory under ``--dir`` (default /tmp) and evicted
from the page cache (``posix_fadvise DONTNEED``) before each timing, so reads come from the disk as after
a restart; each timing is one pass. Prints seconds and GB/s for: the manifest write (sampled digests of
every file), its verification (sizes + digests), and a full BLAKE2b of the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from nemo_resrl.runs.manifest import manifest_defects, write_manifest


def evict(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0, help="size of each file")
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--dir", default="/tmp")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_manifest_", dir=args.dir))
    try:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(args.files):
            p = root / f"__0_{i}.distcp"
            with open(p, "wb") as f:
                left = int(args.gib * 2**30)
                while left > 0:
                    n = min(left, 64 << 20)
                    f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
                    left -= n
            paths.append(p)
        total = sum(p.stat().st_size for p in paths)

        def timed(label: str, fn) -> None:
            evict(paths)
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            print(f"{label:28s} {dt:8.3f} s  {total / dt / 1e9:8.2f} GB/s of checkpoint", flush=True)

        timed("manifest write (sampled)", lambda: write_manifest(root))
        timed("manifest verify (sampled)", lambda: manifest_defects(root))

        def full() -> None:
            for p in paths:
                h = hashlib.blake2b(digest_size=16)
                with open(p, "rb") as f:
                    while chunk := f.read(8 << 20):
                        h.update(chunk)

        timed("full BLAKE2b (every byte)", full)
        print(f"{args.files} files x {args.gib} GiB = {total / 2**30:.1f} GiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
