"""What a conversion checks before it writes: the output must not overlap its source (``--overwrite``
would delete it) nor lie in a run directory a trainer is using; the source checkpoint must be intact
(its manifest when it has one, and the shard sizes its own index needs). A failed conversion leaves no
``OUT.partial`` behind."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from nemo_resrl.models.hf_mapping import ConversionError

RUN_MARKERS = ("metrics.jsonl", "checkpoints", ".lock", "trainer.json")
MAX_SCAN_ENTRIES = 100_000


def run_dirs_in(root: Path) -> list[Path]:
    """Run directories at or below ``root``: directories holding a run's metrics, checkpoints, lock or
    trainer state, or a run's checkpoint steps (the first ``MAX_SCAN_ENTRIES`` directory entries are
    looked at; a larger tree counts as holding one, so that it is never deleted unseen)."""
    import os

    found, seen = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        seen += len(dirnames) + len(filenames)
        run_parts = any(m in filenames or m in dirnames for m in RUN_MARKERS)
        if run_parts or any(d.startswith("step_") for d in dirnames):  # a run's checkpoints directory
            found.append(Path(dirpath))
            dirnames.clear()  # what lies below belongs to that run
        if seen > MAX_SCAN_ENTRIES:
            found.append(Path(dirpath))
            break
    return found


def check_output(out: Path, sources: list[Path], overwrite: bool) -> None:
    """Refuse an output equal to, above or inside a source, one inside a locked run directory, one that is
    or holds a run directory (``--overwrite`` would delete it), or a non-empty one without ``overwrite``."""
    from nemo_resrl.runs.run_dir import existing_run, locked_run_dir_of

    dst = out.resolve()
    for src in (s.resolve() for s in sources):
        if dst == src or dst in src.parents:
            raise ConversionError(
                f"the output {out} is (or contains) the checkpoint {src}: choose another OUT"
            )
        if src in dst.parents:
            raise ConversionError(f"the output {out} lies inside the source {src}: choose another OUT")
    locked = locked_run_dir_of(dst)
    if locked is not None:
        run_dir, holder = locked
        raise ConversionError(
            f"the output {out} lies in the run directory {run_dir}, which a trainer is using (host "
            f"{holder.get('host', '?')} pid {holder.get('pid', '?')}): write elsewhere, or wait for it"
        )
    if out.exists() and any(out.iterdir()):
        runs = run_dirs_in(out)
        if runs:
            what = "; ".join(f"{r} ({existing_run(r) or 'a run directory'})" for r in runs[:3])
            raise ConversionError(
                f"{out} is or holds a training run, which --overwrite never deletes: {what}. Choose another "
                "OUT, or remove the run yourself if you mean to (e.g. rm -r " + str(runs[0]) + ")"
            )
        if not overwrite:
            raise ConversionError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")


def check_source(actor_dir: Path) -> None:
    """Refuse a damaged checkpoint, naming what is wrong: the step directory's manifest (if any), then the
    dist-checkpoint's own index."""
    from nemo_resrl.runs.manifest import dist_checkpoint_defects, manifest_defects

    step_dir = actor_dir.parent
    defects = [d for d in (manifest_defects(step_dir) or []) if d.startswith(f"{actor_dir.name}/")]
    defects += dist_checkpoint_defects(actor_dir)
    if defects:
        raise ConversionError(f"the checkpoint {actor_dir} is damaged: " + "; ".join(dict.fromkeys(defects)))


@contextlib.contextmanager
def partial_output(out: Path, source: Path) -> Iterator[Path]:
    """``OUT.partial`` to write into; removed if the block fails, whose error then names the source."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except (ConversionError, KeyboardInterrupt, SystemExit):
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except BaseException as e:  # torch's CheckpointException is a BaseException
        shutil.rmtree(partial, ignore_errors=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConversionError(
            f"converting {source} failed ({type(e).__name__}: {first}); nothing was written to {out}"
        ) from e
