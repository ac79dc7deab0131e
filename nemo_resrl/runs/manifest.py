"""A checkpoint's manifest: every file's size and a sampled digest, written last, checked before a resume or
a conversion trusts the directory.

The digest is BLAKE2b over the file's size and blocks of ``BLOCK`` bytes taken every ``STRIDE`` bytes (the
first and the last block always): it catches truncation (size), a torn or zero-filled tail, and
corruption of the sampled blocks, at a cost that stays small for multi-GB shards (about 1/64 of the bytes
are read; ``docs/trainer.md`` has the measured cost). It is not a cryptographic guarantee over every
byte; a failure to load what it passed still names the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
BLOCK = 1 << 20  # 1 MiB
STRIDE = 64 << 20  # one block every 64 MiB


def sampled_digest(path: Path, block: int = BLOCK, stride: int = STRIDE) -> str:
    """BLAKE2b (16 bytes) of the size and the sampled blocks of ``path`` (module docstring)."""
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    offsets = sorted({*range(0, size, stride), max(0, size - block)})
    with open(path, "rb") as f:
        for off in offsets:
            f.seek(off)
            h.update(f.read(block))
    return h.hexdigest()


def write_manifest(root: Path) -> dict:
    """List every file under ``root`` (but the manifest) with its size and digest; written atomically."""
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"):
            files[p.relative_to(root).as_posix()] = {"bytes": p.stat().st_size, "digest": sampled_digest(p)}
    manifest = {"version": 1, "files": files, "bytes": sum(f["bytes"] for f in files.values())}
    tmp = root / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)
    return manifest


def read_manifest(root: Path) -> dict | None:
    p = root / MANIFEST
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def manifest_defects(root: Path, *, digests: bool = True) -> list[str] | None:
    """What is wrong with ``root`` against its manifest ([] when intact); None when it has no manifest
    (written before manifests existed)."""
    try:
        manifest = read_manifest(root)
    except (OSError, ValueError) as e:
        return [f"{MANIFEST} unreadable ({type(e).__name__}: {e})"]
    if manifest is None:
        return None
    defects = []
    for rel, want in manifest["files"].items():
        p = root / rel
        if not p.is_file():
            defects.append(f"{rel} is missing")
            continue
        size = p.stat().st_size
        if size != want["bytes"]:
            defects.append(
                f"{rel} has {size} bytes, the manifest says {want['bytes']} (truncated or overwritten)"
            )
        elif digests and sampled_digest(p) != want["digest"]:
            defects.append(f"{rel} does not match its digest (its contents changed)")
    return defects


def dist_checkpoint_defects(root: Path) -> list[str]:
    """What is wrong with a torch-distributed (DCP) checkpoint directory, from its own index alone: a
    missing or unreadable ``.metadata``, shard files that are missing or shorter than the byte ranges the
    index points into (truncated). Works for checkpoints without a manifest (converted ones, older ones)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        meta = FileSystemReader(str(root)).read_metadata()
    except Exception as e:
        return [f"its index (.metadata) does not load ({type(e).__name__}: {e})"]
    need: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    defects = []
    for rel, n in sorted(need.items()):
        p = root / rel
        if not p.is_file():
            defects.append(f"{rel} is missing")
        elif p.stat().st_size < n:
            defects.append(f"{rel} has {p.stat().st_size} bytes, its index needs {n} (truncated)")
    return defects
