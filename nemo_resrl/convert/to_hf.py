"""``convert_to_hf``: a Megatron checkpoint of this project (saved at any TP x PP) -> a Hugging Face
directory (safetensors shards, config, tokenizer, generation config) that transformers and vLLM load.

Streaming: one layer's tensor is read from the dist-checkpoint at a time (``DistCheckpointReader`` asks for
that box only), split into its HF tensors and written into the current safetensors shard; large tensors
(embedding, output layer) move in blocks of rows. Peak memory is about one layer tensor plus one block, so
an 8B model converts on a machine with far less memory than the model (``bench/bench_convert.py``).

The HF config and tokenizer come from the checkpoint's ``hf/`` directory (saved with every checkpoint) or
from ``hf_config_dir`` (the model the run started from) for checkpoints written before that existed. The
output is written to ``<out>.partial`` and renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from nemo_resrl.convert.dist_ckpt import DistCheckpointReader
from nemo_resrl.convert.guards import check_output, check_source, partial_output
from nemo_resrl.convert.safetensors_stream import TensorEntry, write_sharded
from nemo_resrl.models import hf_mapping as M
from nemo_resrl.models.hf_files import ACTOR_META, HF_META_DIR, copy_hf_meta_files
from nemo_resrl.models.hf_mapping import ConversionError, ModelShape

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
DEFAULT_SHARD_BYTES = 5 * 2**30  # transformers' default max_shard_size "5GB"
BLOCK_BYTES = 256 * 2**20  # rows of the embedding / output layer moved at a time (or one saved chunk)


def find_actor_checkpoint(path: str | os.PathLike) -> Path:
    """The actor dist-checkpoint directory for ``path``: an actor dir, a step dir (``step_000010``), a
    checkpoints root or a run dir (both: the latest complete step)."""
    from nemo_resrl.runs.checkpoints import CheckpointManager

    p = Path(path)
    if (p / ACTOR_META).is_file():
        return p
    if (p / "actor" / ACTOR_META).is_file():
        return p / "actor"
    for root in (p, p / "checkpoints"):
        infos = CheckpointManager(root).inspect()  # newest first, manifests verified (digests too)
        intact = [i for i in infos if not i.defects and (i.path / "actor" / ACTOR_META).is_file()]
        if intact:
            for damaged in infos[: infos.index(intact[0])]:
                logger.warning("converting the newest intact checkpoint, %s; skipped %s", intact[0].path,
                               damaged.describe())  # fmt: skip
            return intact[0].path / "actor"
        if infos:
            listed = "\n  ".join(i.describe() for i in infos)
            raise ConversionError(f"no intact checkpoint to convert in {root}:\n  {listed}")
    raise NotACheckpoint(
        f"{p} is not a checkpoint of this project: expected an actor dir (with {ACTOR_META}), a step dir, "
        "a checkpoints dir or a run dir with a complete checkpoint"
    )


class NotACheckpoint(ConversionError):
    """A path that holds no checkpoint of this project at all (as opposed to damaged ones)."""


def checkpoint_step(actor_dir: Path) -> int | None:
    """The training step an actor checkpoint was saved at (its metadata), if recorded."""
    try:
        return json.loads((actor_dir / ACTOR_META).read_text()).get("step")
    except (OSError, ValueError):
        return None


def is_project_checkpoint(path: str | os.PathLike) -> bool:
    try:
        find_actor_checkpoint(path)
        return True
    except NotACheckpoint:
        return False


def _hf_meta_dir(actor_dir: Path, hf_config_dir: str | os.PathLike | None) -> Path:
    if hf_config_dir is not None:
        d = Path(hf_config_dir)
    else:
        d = actor_dir / HF_META_DIR
        if not (d / "config.json").is_file():
            raise ConversionError(
                f"{actor_dir} has no {HF_META_DIR}/config.json (saved before checkpoints carried it): pass "
                "hf_config_dir (--hf-config), the HF model the run started from"
            )
    if not (d / "config.json").is_file():
        raise ConversionError(f"{d} has no config.json")
    return d


class _LayerSource:
    """Reads megatron layer tensors: stacked ``decoder.layers.<suffix>`` [L, ...] (megatron-core 0.16) or
    per-layer ``decoder.layers.<i>.<suffix>``; keeps the last one read (q, k and v come from one read)."""

    def __init__(self, reader: DistCheckpointReader, shape: ModelShape):
        self.reader, self.shape = reader, shape
        self.saved = reader.tensors()
        self._last: tuple[tuple[str, int], torch.Tensor] | None = None

    def key_and_box(self, suffix: str, i: int, e: int = 0) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
        want = self.shape.megatron_layer_shape(suffix)
        stacked = M.LAYER_PREFIX + suffix
        E = self.shape.experts_of(suffix)
        if E:  # stacked [L, E, ...] (megatron-core's SequentialMLP / grouped-expert format)
            if stacked not in self.saved:
                raise ConversionError(f"the checkpoint has no {stacked}")
            got = self.saved[stacked][0]
            if got != (self.shape.num_layers, E, *want):
                raise ConversionError(
                    f"{stacked}: saved shape {got}, config says {(self.shape.num_layers, E, *want)}"
                )
            return stacked, (i, e, *([0] * len(want))), (1, 1, *want)
        if stacked in self.saved:
            got = self.saved[stacked][0]
            if got != (self.shape.num_layers, *want):
                raise ConversionError(
                    f"{stacked}: saved shape {got}, config says {(self.shape.num_layers, *want)}"
                )
            return stacked, (i, *([0] * len(want))), (1, *want)
        single = f"{M.LAYER_PREFIX}{i}.{suffix}"
        if single in self.saved:
            if self.saved[single][0] != want:
                raise ConversionError(f"{single}: saved shape {self.saved[single][0]}, config says {want}")
            return single, (0,) * len(want), want
        raise ConversionError(f"the checkpoint has no {stacked} (nor {single})")

    def read(self, suffix: str, i: int, e: int = 0) -> torch.Tensor:
        if self._last is not None and self._last[0] == (suffix, i, e):
            return self._last[1]
        key, offsets, sizes = self.key_and_box(suffix, i, e)
        t = self.reader.read(key, offsets, sizes).reshape(self.shape.megatron_layer_shape(suffix))
        self._last = ((suffix, i, e), t)
        return t

    def dtype(self, suffix: str) -> torch.dtype:
        key = self.key_and_box(suffix, 0)[0]
        return self.saved[key][1]


def hf_entries(
    reader: DistCheckpointReader, shape: ModelShape, dtype: torch.dtype | None
) -> list[TensorEntry]:
    """The HF tensors of the checkpoint, in HF order, each with a producer that reads it when written."""
    src = _LayerSource(reader, shape)
    saved = src.saved
    out_dtype = dtype or saved[M.EMBEDDING][1]

    def rows_of(key: str, n_rows: int):
        def produce() -> Iterator[torch.Tensor]:
            cols = saved[key][0][1:]
            for r0, r1 in reader.row_blocks(key, n_rows, BLOCK_BYTES):
                yield reader.read(key, (r0, *([0] * len(cols))), (r1 - r0, *cols)).to(out_dtype)

        return produce

    for key in (M.EMBEDDING, M.FINAL_NORM):
        if key not in saved:
            raise ConversionError(f"the checkpoint has no {key} (not a model checkpoint of this project?)")
    emb_rows, emb_cols = saved[M.EMBEDDING][0]
    if emb_cols != shape.hidden or emb_rows < shape.vocab:
        raise ConversionError(
            f"{M.EMBEDDING}: saved shape {saved[M.EMBEDDING][0]} does not fit the config's "
            f"vocab_size={shape.vocab}, hidden_size={shape.hidden}"
        )
    has_output = M.OUTPUT_LAYER in saved
    if has_output == shape.tied:
        raise ConversionError(
            f"the config says tie_word_embeddings={shape.tied} but the checkpoint "
            f"{'has' if has_output else 'has no'} {M.OUTPUT_LAYER}"
        )
    entries = [
        TensorEntry(
            "model.embed_tokens.weight",
            out_dtype,
            (shape.vocab, shape.hidden),
            rows_of(M.EMBEDDING, shape.vocab),
        )
    ]
    for i in range(shape.num_layers):
        for suffix in shape.layer_suffixes():
            experts = range(shape.experts_of(suffix)) if shape.experts_of(suffix) else [None]
            for e in experts:
                for j, (hf_suffix, hf_shape) in enumerate(shape.hf_layer_shapes(suffix)):

                    def produce(suffix=suffix, i=i, j=j, e=e) -> Iterator[torch.Tensor]:
                        parts = M.split_layer_tensor(suffix, src.read(suffix, i, e or 0), shape)
                        yield parts[j][1].to(out_dtype)

                    name = M.hf_layer_name(i, hf_suffix, e)
                    entries.append(TensorEntry(name, out_dtype, hf_shape, produce))
    final_shape = saved[M.FINAL_NORM][0]

    def final_norm() -> Iterator[torch.Tensor]:
        yield reader.read(M.FINAL_NORM).to(out_dtype)

    entries.append(TensorEntry("model.norm.weight", out_dtype, final_shape, final_norm))
    if has_output:
        entries.append(
            TensorEntry(
                "lm_head.weight", out_dtype, (shape.vocab, shape.hidden), rows_of(M.OUTPUT_LAYER, shape.vocab)
            )
        )
    return entries


def convert_to_hf(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str | None = None,
    hf_config_dir: str | os.PathLike | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Convert ``checkpoint`` (see ``find_actor_checkpoint``) into the HF directory ``out_dir``.

    ``dtype``: fp32 | bf16 | fp16 (default: the checkpoint's). Returns ``out_dir``.
    """
    actor_dir = find_actor_checkpoint(checkpoint)
    out = Path(out_dir)
    check_output(out, [Path(checkpoint), actor_dir], overwrite)
    check_source(actor_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    meta_dir = _hf_meta_dir(actor_dir, hf_config_dir)
    hf_config = json.loads((meta_dir / "config.json").read_text())
    shape = ModelShape.from_hf_config(hf_config)
    try:
        reader = DistCheckpointReader(actor_dir)
        entries = hf_entries(reader, shape, DTYPES[dtype] if dtype else None)
        out_dtype = entries[0].dtype
    except (ConversionError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # torch's CheckpointException is a BaseException
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConversionError(
            f"reading the checkpoint {actor_dir} failed ({type(e).__name__}: {first})"
        ) from e

    with partial_output(out, actor_dir) as partial:
        files = write_sharded(partial, entries, max_shard_bytes)
        copy_hf_meta_files(meta_dir, partial)
        hf_config["torch_dtype"] = HF_DTYPE_NAMES[out_dtype]  # transformers 4 and vLLM read this key
        if "dtype" in hf_config:  # transformers 5 writes this one
            hf_config["dtype"] = HF_DTYPE_NAMES[out_dtype]
        (partial / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    logger.info(
        "converted %s -> %s (%d tensors, %d files, %s)", actor_dir, out, len(entries), len(files), out_dtype
    )
    return out
