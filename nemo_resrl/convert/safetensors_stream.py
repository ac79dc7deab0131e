"""Safetensors files written tensor by tensor, so a conversion never holds more than one tensor (or one
block of rows of a large one) in memory.

``safetensors.torch.save_file`` needs every tensor of a file in memory at once; an 8B model in bf16 is
16 GB. The format is simple enough to stream: an 8-byte little-endian header length, a JSON header with
each tensor's dtype, shape and byte range, then the raw bytes in header order. The header is known before
any data is produced (names, shapes and dtypes come from the source checkpoint's metadata), so each tensor
is written as it is produced and dropped. Files written here are read back by the ``safetensors`` library
in the tests.

Sharding follows Hugging Face: one file ``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` plus
``model.safetensors.index.json`` ({"metadata": {"total_size": bytes}, "weight_map": {name: file}}).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPE_NAMES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# A producer yields the tensor's data as contiguous blocks of whole rows (along dim 0), in order; a small
# tensor is simply one block. Each block is written and dropped before the next is asked for.
Producer = Callable[[], Iterable[torch.Tensor]]


@dataclass(frozen=True)
class TensorEntry:
    """One output tensor: its name, dtype, shape and the producer of its data."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Producer

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def _header(entries: list[TensorEntry]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        if e.dtype not in DTYPE_NAMES:
            raise ValueError(f"{e.name}: dtype {e.dtype} has no safetensors name")
        header[e.name] = {
            "dtype": DTYPE_NAMES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the reference writer does


def _write_blocks(f, e: TensorEntry) -> None:
    rows = e.shape[0] if e.shape else 1
    seen = 0
    written = 0
    for block in e.produce():
        if block.dtype != e.dtype or tuple(block.shape[1:]) != tuple(e.shape[1:]):
            raise ValueError(
                f"{e.name}: producer gave a block {tuple(block.shape)} {block.dtype}, "
                f"expected rows of {tuple(e.shape[1:])} {e.dtype}"
            )
        block = block.detach().cpu().contiguous()
        seen += block.shape[0] if e.shape else 1
        f.write(memoryview(block.view(-1).view(torch.uint8).numpy()))
        written += block.numel() * block.element_size()
    if seen != rows or written != e.nbytes:
        raise ValueError(
            f"{e.name}: producer gave {seen} rows ({written} bytes), expected {rows} ({e.nbytes})"
        )


def write_safetensors_file(path: str | os.PathLike, entries: list[TensorEntry]) -> int:
    """Write ``entries`` into one safetensors file, streaming; returns the data bytes written."""
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in one safetensors file")
    header = _header(entries)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for e in entries:
            _write_blocks(f, e)
    return sum(e.nbytes for e in entries)


def plan_shards(entries: list[TensorEntry], max_shard_bytes: int) -> list[list[TensorEntry]]:
    """Split ``entries`` (kept in order) into shards of at most ``max_shard_bytes`` (a tensor larger than
    that gets a shard of its own), as ``transformers``' ``save_pretrained`` does."""
    shards: list[list[TensorEntry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def write_sharded(out_dir: str | os.PathLike, entries: list[TensorEntry], max_shard_bytes: int) -> list[str]:
    """Write ``entries`` as HF-style safetensors shards (+ index when more than one); returns file names."""
    out_dir = Path(out_dir)
    shards = plan_shards(entries, max_shard_bytes)
    if len(shards) == 1:
        write_safetensors_file(out_dir / SINGLE_FILE, shards[0])
        return [SINGLE_FILE]
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    total = 0
    for name, shard in zip(files, shards, strict=True):
        total += write_safetensors_file(out_dir / name, shard)
        weight_map.update({e.name: name for e in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return files
