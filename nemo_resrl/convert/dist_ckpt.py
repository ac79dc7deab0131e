"""Megatron dist-checkpoints (``torch_dist`` format) read and written one box of one tensor at a time,
in a single process, without a model or a process group.

A megatron ``torch_dist`` checkpoint is a PyTorch Distributed Checkpoint (DCP): ``.metadata`` lists every
tensor by key with its GLOBAL shape and the chunks each rank wrote (one per tensor-parallel shard and
stacked layer), whatever TP x PP wrote it. So the full tensor of one layer can be read from any layout:
``DistCheckpointReader.read`` asks DCP for that box only, and DCP reads just the overlapping chunks.

``write_dist_checkpoint`` goes the other way for ``convert_from_hf``: DCP's writer asks the planner for
each chunk's data when it writes it (``SavePlanner.resolve_data``), so chunks are produced lazily and
dropped; one file per chunk keeps torch's writer from holding a file's tensors until the file is done.
megatron's ``dist_checkpointing.load`` reads the result (it also needs ``metadata.json`` and ``common.pt``,
written here).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, create_default_global_save_plan
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    ReadItem,
    SavePlan,
    SavePlanner,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

MEGATRON_METADATA = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}


def _narrow(t: torch.Tensor, offsets, lengths) -> torch.Tensor:
    for dim, (o, n) in enumerate(zip(offsets, lengths, strict=True)):
        t = t.narrow(dim, o, n)
    return t


class _CachedMetadataReader(FileSystemReader):
    """FileSystemReader that parses ``.metadata`` once (it lists the optimizer state too: large)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(str(path))
        self._metadata: Metadata | None = None

    def read_metadata(self, *args, **kwargs) -> Metadata:
        if self._metadata is None:
            self._metadata = super().read_metadata(*args, **kwargs)
        return self._metadata


class _BoxLoadPlanner(DefaultLoadPlanner):
    """Reads the box ``offsets`` / ``sizes`` of tensor ``fqn`` into ``dest`` (shape ``sizes``)."""

    def __init__(self, fqn: str, offsets: tuple[int, ...], dest: torch.Tensor):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.fqn, self.offsets, self.dest = fqn, offsets, dest
        self.covered = 0

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        self.state_dict, self.metadata, self.is_coordinator = {}, metadata, is_coordinator

    def create_local_plan(self) -> LoadPlan:
        md = self.metadata.state_dict_metadata[self.fqn]
        box = ChunkStorageMetadata(offsets=torch.Size(self.offsets), sizes=self.dest.shape)
        items = create_read_items_for_chunk_list(self.fqn, md, [box])
        self.covered = sum(math.prod(it.lengths) for it in items)
        return LoadPlan(items)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        return _narrow(self.dest, read_item.dest_offsets, read_item.lengths)


class DistCheckpointReader:
    """Random access to the tensors of one dist-checkpoint directory (one process, no model)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / ".metadata").is_file():
            raise FileNotFoundError(f"{self.path} is not a torch_dist checkpoint (no .metadata)")
        self._reader = _CachedMetadataReader(self.path)
        self.metadata = self._reader.read_metadata()

    def tensors(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """key -> (global shape, dtype) of every tensor saved (model and optimizer)."""
        return {
            k: (tuple(v.size), v.properties.dtype)
            for k, v in self.metadata.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)
        }

    def row_blocks(self, fqn: str, n_rows: int, max_bytes: int) -> list[tuple[int, int]]:
        """Row ranges [r0, r1) covering rows 0..n_rows of ``fqn`` for reading it block by block.

        DCP reads a saved chunk whole even when a smaller box is asked for, so blocks follow the saved
        chunks' row boundaries (each chunk is read once): consecutive chunks are grouped up to
        ``max_bytes``, and a chunk larger than that is a block of its own.
        """
        md = self.metadata.state_dict_metadata[fqn]
        row_bytes = max(1, math.prod(md.size[1:]) * md.properties.dtype.itemsize)
        cuts = sorted(
            {int(c.offsets[0]) for c in md.chunks} | {int(c.offsets[0] + c.sizes[0]) for c in md.chunks}
        )
        cuts = [c for c in cuts if 0 < c < n_rows] + [n_rows]
        blocks, start, prev = [], 0, 0
        for c in cuts:  # [prev, c) is a run of rows that saved chunks start and end on
            if prev > start and (c - start) * row_bytes > max_bytes:
                blocks.append((start, prev))
                start = prev
            prev = c
        blocks.append((start, n_rows))
        return blocks

    def read(
        self, fqn: str, offsets: tuple[int, ...] | None = None, sizes: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """Box [offsets, offsets + sizes) of tensor ``fqn`` (default: all of it), in its saved dtype."""
        md = self.metadata.state_dict_metadata.get(fqn)
        if not isinstance(md, TensorStorageMetadata):
            raise KeyError(f"{self.path}: no tensor {fqn!r} in the checkpoint")
        shape = tuple(md.size)
        offsets = tuple(offsets) if offsets is not None else (0,) * len(shape)
        sizes = (
            tuple(sizes) if sizes is not None else tuple(s - o for s, o in zip(shape, offsets, strict=True))
        )
        if any(o < 0 or o + s > n for o, s, n in zip(offsets, sizes, shape, strict=True)):
            raise ValueError(f"{fqn}: box {offsets}+{sizes} is outside its shape {shape}")
        dest = torch.empty(sizes, dtype=md.properties.dtype)
        planner = _BoxLoadPlanner(fqn, offsets, dest)
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({}, storage_reader=self._reader, planner=planner, no_dist=True)
        if planner.covered != dest.numel():
            raise ValueError(
                f"{self.path}: the saved chunks of {fqn} cover {planner.covered} of the {dest.numel()} "
                f"elements asked for (an incomplete checkpoint?)"
            )
        return dest


@dataclass
class DistTensor:
    """One tensor to write: its key, dtype, global shape and chunks (offsets, sizes, producer)."""

    fqn: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    chunks: list[tuple[tuple[int, ...], tuple[int, ...], Callable[[], torch.Tensor]]] = field(
        default_factory=list
    )


class _LazySavePlanner(SavePlanner):
    """Plans the chunks of ``tensors`` and asks their producers for the data only when DCP writes it."""

    def __init__(self, tensors: list[DistTensor]):
        self.tensors = tensors
        self.producers: dict[tuple[str, tuple[int, ...]], tuple[tuple[int, ...], torch.dtype, Callable]] = {}

    def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False) -> None:
        self.is_coordinator = is_coordinator

    def create_local_plan(self) -> SavePlan:
        items = []
        for t in self.tensors:
            props = TensorProperties(dtype=t.dtype)
            for offsets, sizes, produce in t.chunks:
                chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
                items.append(
                    WriteItem(
                        index=MetadataIndex(t.fqn, torch.Size(offsets)),
                        type=WriteItemType.SHARD,
                        tensor_data=TensorWriteData(chunk=chunk, properties=props, size=torch.Size(t.shape)),
                    )
                )
                self.producers[(t.fqn, tuple(offsets))] = (tuple(sizes), t.dtype, produce)
        self.plan = SavePlan(items)
        return self.plan

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        return create_default_global_save_plan(all_plans)

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        self.plan = new_plan
        return new_plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor:
        key = (write_item.index.fqn, tuple(write_item.index.offset))
        sizes, dtype, produce = self.producers[key]
        t = produce()
        if tuple(t.shape) != sizes or t.dtype != dtype:
            raise ValueError(
                f"{key[0]} at {key[1]}: producer gave {tuple(t.shape)} {t.dtype}, expected {sizes} {dtype}"
            )
        return t.contiguous()


def write_dist_checkpoint(
    path: str | os.PathLike, tensors: list[DistTensor], common: dict | None = None
) -> None:
    """Write ``tensors`` as a megatron ``torch_dist`` checkpoint at ``path`` (created; must not hold one)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if (path / ".metadata").exists():
        raise FileExistsError(f"{path} already holds a checkpoint")
    for t in tensors:  # every element written exactly once, or megatron's loader would fail far away
        covered = sum(math.prod(s) for _, s, _ in t.chunks)
        if covered != math.prod(t.shape):
            raise ValueError(f"{t.fqn}: chunks cover {covered} of {math.prod(t.shape)} elements")
    writer = FileSystemWriter(str(path), single_file_per_rank=False, thread_count=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            dcp.save({}, storage_writer=writer, planner=_LazySavePlanner(tensors), no_dist=True)
        except CheckpointException as e:  # DCP wraps what a producer raised: surface that
            # failures: rank -> (exception, traceback) in torch 2.13, the exception itself in older ones
            causes = [f[0] if isinstance(f, tuple) else f for f in e.failures.values()]
            causes = [c for c in causes if isinstance(c, Exception)]
            raise (causes[0] if causes else e) from e
    torch.save(common or {}, path / "common.pt")
    (path / "metadata.json").write_text(json.dumps(MEGATRON_METADATA))
