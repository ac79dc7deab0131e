"""Run checkpoints: written atomically, the last K kept, resumable.

Layout under ``root``::

    step_000005/            a complete checkpoint (renamed into place only once fully written)
      actor/                megatron dist-checkpoint: model, optimizer, LR schedule (any TP/PP for the model)
      trainer.json          step, data position, metrics so far: what the loop needs to go on
      rng_rank<r>.pt        torch / python / numpy RNG states of every rank
    .partial-step_000010/   a save in progress (or killed midway): ignored, removed by the next save

A kill at any moment leaves the previous complete checkpoint intact: ``latest()`` only returns
directories that were renamed into place, and the rename is the last thing a save does.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from nemo_resrl.common import barrier as _barrier
from nemo_resrl.common import global_rank as _rank

_STEP_DIR = re.compile(r"^step_(\d{6,})$")


class Checkpointable(Protocol):
    """What a checkpoint holds of the policy (the Megatron actor: a dist-checkpoint directory)."""

    def save_checkpoint(self, path: Path) -> None: ...

    def load_checkpoint(self, path: Path) -> None: ...


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


class CheckpointManager:
    """Saves and finds run checkpoints under ``root`` (collective calls: every rank calls them)."""

    def __init__(self, root: str | os.PathLike, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = keep_last

    def complete(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete checkpoint, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and (p / "trainer.json").is_file():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1][1] if done else None

    def save(self, step: int, actor: Checkpointable, trainer_state: dict) -> Path:
        """Write the checkpoint of ``step`` (after that step finished), then prune to the last K."""
        final = self.root / f"step_{step:06d}"
        partial = self.root / f".partial-step_{step:06d}"
        if _rank() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for p in self.root.glob(".partial-step_*"):
                shutil.rmtree(p, ignore_errors=True)
            partial.mkdir()
        _barrier()
        actor.save_checkpoint(partial / "actor")
        torch.save(rng_state(), partial / f"rng_rank{_rank()}.pt")
        _barrier()
        if _rank() == 0:
            with open(partial / "trainer.json.tmp", "w") as f:
                json.dump(trainer_state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial / "trainer.json.tmp", partial / "trainer.json")
            if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
                shutil.rmtree(final)
            os.replace(partial, final)  # the commit point
            for _, old in self.complete()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, path: str | os.PathLike, actor: Checkpointable) -> dict:
        """Restore the actor (model, optimizer, schedule), this rank's RNG states; return trainer state."""
        path = Path(path)
        actor.load_checkpoint(path / "actor")
        rng = path / f"rng_rank{_rank()}.pt"
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=False))
        return json.loads((path / "trainer.json").read_text())
