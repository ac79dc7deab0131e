"""What a conversion checks before it writes: the output must not overlap its source (``--overwrite``
would delete it) nor lie in a run directory a trainer is using; the source checkpoint must be intact
(its manifest when it has one, and the shard sizes its own index needs). A failed conversion leaves no
``OUT.partial`` behind."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from nemo_resrl.convert.mapping import ConversionError


def check_output(out: Path, sources: list[Path], overwrite: bool) -> None:
    """Refuse an output equal to, above or inside a source, one inside a locked run directory, or a
    non-empty one without ``overwrite``."""
    from nemo_resrl.training.run_dir import locked_run_dir_of

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
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConversionError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")


def check_source(actor_dir: Path) -> None:
    """Refuse a damaged checkpoint, naming what is wrong: the step directory's manifest (if any), then the
    dist-checkpoint's own index."""
    from nemo_resrl.manifest import dist_checkpoint_defects, manifest_defects

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
