"""``convert_from_hf``: a Hugging Face directory (Qwen3, Qwen3-MoE, Qwen2, Llama safetensors) -> a Megatron
dist-checkpoint of this project's actor (model only), which ``MegatronActor.load_checkpoint(path,
with_optimizer=False)`` loads at any TP x PP (x EP).

Streaming: each chunk of the checkpoint (one layer of one megatron tensor, one expert of one layer, or a
block of embedding rows) is built from lazily opened safetensors slices when DCP writes it, then dropped;
peak memory is about one layer's fused tensor and its HF parts. Layers are stacked as megatron-core saves
them: key ``decoder.layers.<suffix>``, global shape [L, ...] ([L, E, ...] for experts), one chunk per
layer (per layer and expert). The HF config and tokenizer are
copied into ``<out>/hf/`` so the result converts back with ``convert_to_hf``. Written to ``<out>.partial``
and renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from nemo_resrl.convert.dist_ckpt import DistTensor, write_dist_checkpoint
from nemo_resrl.convert.guards import check_output, partial_output
from nemo_resrl.convert.safetensors_stream import INDEX_FILE, SINGLE_FILE
from nemo_resrl.convert.to_hf import BLOCK_BYTES, DTYPES
from nemo_resrl.models import hf_mapping as M
from nemo_resrl.models.hf_files import ACTOR_META, HF_META_DIR, copy_hf_meta_files
from nemo_resrl.models.hf_mapping import ConversionError, ModelShape

logger = logging.getLogger(__name__)


class HFWeights:
    """Lazy access to the tensors of an HF safetensors directory (single file or sharded with an index).

    Each access opens its file and closes it again: a file kept open stays memory-mapped, and the pages
    read through it would stay in the process's RSS for the whole conversion (16 GB for an 8B model).
    """

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        self.hf_dir = hf_dir
        if (hf_dir / INDEX_FILE).is_file():
            self.weight_map = json.loads((hf_dir / INDEX_FILE).read_text())["weight_map"]
        elif (hf_dir / SINGLE_FILE).is_file():
            with safe_open(hf_dir / SINGLE_FILE, framework="pt") as f:
                self.weight_map = dict.fromkeys(f.keys(), SINGLE_FILE)
        else:
            raise ConversionError(
                f"{hf_dir} has no {SINGLE_FILE} or {INDEX_FILE} (only safetensors are read)"
            )

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _open(self, name: str):
        from safetensors import safe_open

        if name not in self.weight_map:
            raise ConversionError(f"the HF checkpoint has no tensor {name}")
        return safe_open(self.hf_dir / self.weight_map[name], framework="pt")

    def shape(self, name: str) -> tuple[int, ...]:
        with self._open(name) as f:
            return tuple(f.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        with self._open(name) as f:
            return f.get_tensor(name).clone()  # owns its memory: no view into the mapping

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        with self._open(name) as f:
            return f.get_slice(name)[start:stop].clone()


def megatron_tensors(w: HFWeights, shape: ModelShape, dtype: torch.dtype) -> list[DistTensor]:
    """The model's megatron dist-checkpoint tensors, each chunk produced from the HF tensors when written."""

    def row_chunks(key: str, hf_name: str) -> DistTensor:
        got = w.shape(hf_name)
        if got != (shape.vocab, shape.hidden):
            raise ConversionError(f"{hf_name}: shape {got}, config says {(shape.vocab, shape.hidden)}")
        t = DistTensor(key, dtype, got)
        step = max(1, BLOCK_BYTES // (shape.hidden * dtype.itemsize))
        for r in range(0, shape.vocab, step):
            n = min(step, shape.vocab - r)
            t.chunks.append(((r, 0), (n, shape.hidden), lambda r=r, n=n: w.rows(hf_name, r, r + n).to(dtype)))
        return t

    def checked(name: str, want: tuple[int, ...]) -> torch.Tensor:
        t = w.get(name)
        if tuple(t.shape) != want:
            raise ConversionError(f"{name}: shape {tuple(t.shape)}, config says {want}")
        return t

    out = [row_chunks(M.EMBEDDING, "model.embed_tokens.weight")]
    for suffix in shape.layer_suffixes():
        one = shape.megatron_layer_shape(suffix)
        E = shape.experts_of(suffix)
        if E:  # [L, E, ...]: one chunk per (layer, expert)
            t = DistTensor(M.LAYER_PREFIX + suffix, dtype, (shape.num_layers, E, *one))
            for i in range(shape.num_layers):
                for e in range(E):

                    def produce(suffix=suffix, i=i, e=e) -> torch.Tensor:
                        parts = [
                            checked(M.hf_layer_name(i, s, e), sh) for s, sh in shape.hf_layer_shapes(suffix)
                        ]
                        return M.merge_layer_tensor(suffix, parts, shape).to(dtype)[None, None]

                    t.chunks.append(((i, e, *([0] * len(one))), (1, 1, *one), produce))
            out.append(t)
            continue
        t = DistTensor(M.LAYER_PREFIX + suffix, dtype, (shape.num_layers, *one))
        for i in range(shape.num_layers):

            def produce(suffix=suffix, i=i) -> torch.Tensor:
                parts = [checked(M.hf_layer_name(i, s), sh) for s, sh in shape.hf_layer_shapes(suffix)]
                return M.merge_layer_tensor(suffix, parts, shape).to(dtype).unsqueeze(0)

            t.chunks.append(((i, *([0] * len(one))), (1, *one), produce))
        out.append(t)
    norm = DistTensor(M.FINAL_NORM, dtype, (shape.hidden,))
    norm.chunks.append(
        ((0,), (shape.hidden,), lambda: checked("model.norm.weight", (shape.hidden,)).to(dtype))
    )
    out.append(norm)
    if not shape.tied:
        out.append(row_chunks(M.OUTPUT_LAYER, "lm_head.weight"))
    return out


def convert_from_hf(
    hf_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert the HF directory ``hf_dir`` into the actor dist-checkpoint ``out_dir``; returns ``out_dir``.

    ``dtype``: fp32 | bf16 | fp16 (default: the dtype of the HF embedding tensor).
    """
    hf_dir, out = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise ConversionError(f"{hf_dir} has no config.json (not a Hugging Face model directory)")
    check_output(out, [hf_dir], overwrite)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    hf_config = json.loads((hf_dir / "config.json").read_text())
    shape = ModelShape.from_hf_config(hf_config)
    w = HFWeights(hf_dir)
    if shape.tied and "lm_head.weight" in w:
        logger.info("tie_word_embeddings: lm_head.weight in %s is ignored (megatron ties it too)", hf_dir)
    out_dtype = DTYPES[dtype] if dtype else w.get("model.norm.weight").dtype
    with partial_output(out, hf_dir) as partial:
        write_dist_checkpoint(partial, megatron_tensors(w, shape, out_dtype))
        copy_hf_meta_files(hf_dir, partial / HF_META_DIR)
        meta = {
            "hf_path": str(hf_dir),
            "converted_from_hf": True,
            "with_optimizer": False,
            "optim_sharding": "dp_reshardable",
            "tensor_parallel": 1,
            "pipeline_parallel": 1,
            "step": 0,
        }
        (partial / ACTOR_META).write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    logger.info("converted %s -> %s (%s)", hf_dir, out, out_dtype)
    return out
