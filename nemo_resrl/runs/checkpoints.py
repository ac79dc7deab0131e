"""Run checkpoints: written atomically, the last K kept, resumable.

Layout under ``root``::

    step_000005/            a complete checkpoint (renamed into place only once fully written)
      actor/                megatron dist-checkpoint: model, optimizer, LR schedule (any TP/PP for the model)
      trainer.json          step, data position, metrics so far, world size: what the loop needs to go on
      rng_rank<r>.pt        torch / python / numpy RNG states of every rank
      manifest.json         every file's size and sampled digest (``manifest.py``), written last
    .partial-step_000010/   a save in progress (or killed midway): ignored, removed by the next save

A kill at any moment leaves the previous complete checkpoint intact: only directories renamed into
place count, and the rename is the last thing a save does. A checkpoint damaged afterwards (a truncated
shard, a missing file) fails its manifest: ``latest_intact()`` then falls back to the newest intact one and
says what was wrong with each it skipped; with none intact, ``CheckpointError`` lists them all. A save
that runs out of disk says so, with the bytes it needs, and leaves no partial directory behind.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from nemo_resrl.common import barrier as _barrier
from nemo_resrl.common import global_rank as _rank
from nemo_resrl.runs.manifest import dist_checkpoint_defects, manifest_defects, read_manifest, write_manifest

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{6,})$")


class Checkpointable(Protocol):
    """What a checkpoint holds of the policy (the Megatron actor: a dist-checkpoint directory)."""

    def save_checkpoint(self, path: Path) -> None: ...

    def load_checkpoint(self, path: Path) -> None: ...


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message names it and what is wrong."""


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@dataclass
class CheckpointInfo:
    """One complete (renamed-in) checkpoint directory and what is wrong with it ([] when intact)."""

    step: int
    path: Path
    defects: list[str] = field(default_factory=list)
    verified: bool = True  # False: no manifest (an older checkpoint): usable but not checked

    def describe(self) -> str:
        return f"{self.path}: " + ("; ".join(self.defects) if self.defects else "intact")


def _megatron_rng_tracker():
    """megatron's tracker of named RNG states (tensor-parallel dropout etc.) once megatron is in use."""
    import sys

    if "megatron.core.tensor_parallel.random" not in sys.modules:
        return None
    from megatron.core.tensor_parallel import random as mrandom

    return mrandom.get_cuda_rng_tracker() if mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED else None


def load_error_text(path: Path, e: BaseException) -> str:
    """What a checkpoint that does not load into the model says: the checkpoint, and for a shape mismatch
    (another model's checkpoint) the tensor and both shapes."""
    text = str(e)
    m = re.search(
        r"Global shape mismatch for loaded \((.*?)\) and expected \((.*?)\) tensor for key (\S+)", text
    )
    if m:
        return (
            f"the checkpoint {path} does not fit this model: its tensor {m.group(3).rstrip(',')} has shape "
            f"({m.group(1)}), the model's ({m.group(2)}). It was saved by another model (actor.hf_path, "
            "actor.arch) or layout; resume with the model it was trained with, or start over "
            "(checkpoint.start_over=true)"
        )
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"the checkpoint {path} does not load into the model: {type(e).__name__}: {first}"


def rng_state() -> dict:
    """This process's random state: the CPU, Python and numpy generators, the current CUDA device's
    generator, and megatron's named tracker states (each a generator state of its own)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    tracker = _megatron_rng_tracker()
    if tracker is not None:
        state["tracker"] = {k: v.clone() for k, v in tracker.get_states().items()}
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tracker = _megatron_rng_tracker()
    if "tracker" in state and tracker is not None:
        tracker.set_states({k: v.clone() for k, v in state["tracker"].items()})


DAMAGED_PREFIX = "damaged-"
CONFIG_FILE = "config.json"


class CheckpointManager:
    """Saves and finds run checkpoints under ``root`` (collective calls: every rank calls them)."""

    def __init__(self, root: str | os.PathLike, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = keep_last

    def complete(self) -> list[tuple[int, Path]]:
        """(step, path) of every renamed-in checkpoint directory, oldest first (intact or not)."""
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def inspect(self, *, digests: bool = True) -> list[CheckpointInfo]:
        """Every renamed-in checkpoint, newest first, with its defects: a missing or unreadable
        ``trainer.json``, files that fail the manifest, missing RNG states of the ranks that saved it."""
        out = []
        for step, path in reversed(self.complete()):
            info = CheckpointInfo(step, path)
            found = manifest_defects(path, digests=digests)
            if found is None:  # an older checkpoint: its dist-checkpoint index still tells truncation
                info.verified = False
                if (path / "actor").is_dir():
                    info.defects += [f"actor/{d}" for d in dist_checkpoint_defects(path / "actor")]
            else:
                info.defects += found
            state = None
            if not (path / "trainer.json").is_file():
                if not any(d.startswith("trainer.json") for d in info.defects):  # the manifest's says it
                    info.defects.append("trainer.json is missing (the trainer state and metrics of the run)")
            else:
                try:
                    state = json.loads((path / "trainer.json").read_text())
                except ValueError as e:
                    info.defects.append(f"trainer.json is not valid JSON ({e})")
            if not (path / "actor").is_dir():
                info.defects.append("actor/ (the model checkpoint) is missing")
            world = (state or {}).get("world_size")
            if world is not None:
                missing = [r for r in range(int(world)) if not (path / f"rng_rank{r}.pt").is_file()]
                if missing:
                    info.defects.append(f"the RNG states of ranks {missing} are missing")
            out.append(info)
        return out

    def latest_intact(self) -> tuple[Path | None, list[CheckpointInfo]]:
        """The newest checkpoint without a defect, and the newer ones skipped for theirs (each is
        logged as a warning that names what was wrong). Raises ``CheckpointError`` listing every checkpoint
        when there are some and none is intact."""
        infos = self.inspect()
        skipped = []
        for info in infos:
            if not info.defects:
                for s in skipped:
                    log.warning("checkpoint skipped, resuming from an older one: %s", s.describe())
                if not info.verified:
                    log.warning(
                        "%s has no manifest (an older checkpoint): resuming from it unverified", info.path
                    )
                return info.path, skipped
            skipped.append(info)
        if skipped:
            listed = "\n  ".join(s.describe() for s in skipped)
            raise CheckpointError(
                f"no intact checkpoint to resume from in {self.root}:\n  {listed}\n"
                "move the damaged ones aside (or delete them) to start from the last good one, or start the "
                "run over (checkpoint.start_over=true)"
            )
        return None, []

    def set_aside(self, damaged: list[CheckpointInfo]) -> list[Path]:
        """Rank 0: rename damaged checkpoints to ``damaged-step_<step>-<time>`` in the same directory (kept
        for inspection, never counted by ``checkpoint.keep_last``, never resumed from); returns where."""
        moved = []
        if _rank() != 0:
            return moved
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for info in damaged:
            dest = info.path.with_name(f"{DAMAGED_PREFIX}{info.path.name}-{stamp}")
            if info.path.is_dir() and not dest.exists():
                os.replace(info.path, dest)
                moved.append(dest)
                log.warning("damaged checkpoint moved aside (not resumed from, not pruned): %s", dest)
        return moved

    def latest(self) -> Path | None:
        """The newest intact checkpoint (sizes checked, not digests), or None."""
        for info in self.inspect(digests=False):
            if not info.defects:
                return info.path
        return None

    def save(self, step: int, actor: Checkpointable, trainer_state: dict, config: dict | None = None) -> Path:
        """Write the checkpoint of ``step`` (after that step finished), then prune to the last K.
        ``config``: the run's resolved config, recorded as ``config.json`` (what a resume compares)."""
        final = self.root / f"step_{step:06d}"
        partial = self.root / f".partial-step_{step:06d}"
        previous = self.complete()
        if _rank() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for p in self.root.glob(".partial-step_*"):
                shutil.rmtree(p, ignore_errors=True)
            partial.mkdir()
        _barrier()
        try:
            actor.save_checkpoint(partial / "actor")
            torch.save(rng_state(), partial / f"rng_rank{_rank()}.pt")
            _barrier()
            if _rank() == 0:
                with open(partial / "trainer.json.tmp", "w") as f:
                    json.dump({**trainer_state, "world_size": _world()}, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(partial / "trainer.json.tmp", partial / "trainer.json")
                if config is not None:
                    (partial / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str))
                write_manifest(partial)
        except BaseException as e:
            if _rank() == 0:
                shutil.rmtree(partial, ignore_errors=True)
            raise self._save_error(step, e, previous) from e
        if _rank() == 0:
            if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
                shutil.rmtree(final)
            os.replace(partial, final)  # the commit point
            for _, old in self.complete()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def _save_error(self, step: int, e: BaseException, previous: list[tuple[int, Path]]) -> BaseException:
        """``e``, or a ``CheckpointError`` saying the disk is full (with the bytes a checkpoint needs)."""
        if isinstance(e, KeyboardInterrupt | SystemExit | GeneratorExit):
            return e
        # torch's CheckpointException is a BaseException that wraps each rank's error as text
        chain, cause = [], e
        while cause is not None and len(chain) < 8:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        text = " ".join(str(c) for c in chain)
        full = any(isinstance(c, OSError) and c.errno == errno.ENOSPC for c in chain)
        full = full or "No space left" in text or "unexpected pos" in text  # torch's writer on a full disk
        if not full:
            return e
        need = None
        for _, path in reversed(previous):
            m = read_manifest(path) if (path / "manifest.json").is_file() else None
            if m:
                need = m["bytes"]
                break
        free = shutil.disk_usage(self.root).free if self.root.exists() else 0
        gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
        needs = f"about {gib(need)} (the previous checkpoint's size)" if need else "as much as one checkpoint"
        return CheckpointError(
            f"no space left on the device of {self.root} while saving the checkpoint of step {step}: it "
            f"needs {needs}, {gib(free)} are free. The partial checkpoint was removed. A run needs room for "
            f"checkpoint.keep_last + 1 = {self.keep_last + 1} checkpoints at its peak."
        )

    def load(self, path: str | os.PathLike, actor: Checkpointable) -> dict:
        """Restore the actor (model, optimizer, schedule), this rank's RNG states; return trainer state."""
        path = Path(path)
        try:
            actor.load_checkpoint(path / "actor")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # torch's CheckpointException is a BaseException
            raise CheckpointError(load_error_text(path, e)) from e
        state = json.loads((path / "trainer.json").read_text())
        rng = path / f"rng_rank{_rank()}.pt"
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=False))
        else:
            log.warning(
                "%s holds no RNG state for rank %d (saved by %s ranks, this run has %d): this rank's random "
                "streams start afresh, so the run will not repeat the uninterrupted one exactly",
                path,
                _rank(),
                state.get("world_size", "?"),
                _world(),
            )
        return state
