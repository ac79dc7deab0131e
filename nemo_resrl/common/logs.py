"""Where log records go: the console shows the project's own lines, the run's log file holds everything.

A training run's console is for the person watching it: the start-up summary, the per-step table,
warnings and errors of ``nemo_resrl``, the end. What the libraries say (megatron-core's and
TransformerEngine / Apex fallback warnings, transformers, vLLM's INFO lines at start-up and at every refit,
Python ``warnings``) goes to the run directory's ``train.log`` (``attach_run_log``) and, with
``verbose=True`` (``nemo-resrl train -v``), to the console as well. Errors (level ERROR and above) reach the
console from any logger. Records emitted before the run directory is known are buffered and written to
the file when it is attached, so the file holds the whole start-up.

vLLM installs its own console handler unless ``VLLM_CONFIGURE_LOGGING=0``, and transformers its own
(propagation off): ``setup_logging`` sets the first (when the user has not, before vLLM is imported) and
hands transformers' records to the root logger, so both reach the file like any library's. Warnings of
torch's C++ core (``TORCH_CPP_LOG_LEVEL``, read when torch is first imported) and progress bars printed by
libraries cannot be routed: outside ``verbose`` the first are limited to errors and megatron-bridge's
prints are turned into log records (``library_prints``).
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

PROJECT_LOGGER = "nemo_resrl"
RUN_LOG = "train.log"
_BUFFER = 20_000  # records kept from start-up until the run's log file is attached
_verbose = True  # until setup_logging says otherwise, a library's prints stay on the console


class _ConsoleFilter(logging.Filter):
    """The project's records at INFO and above, anyone's at ERROR and above (all of them when verbose)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.levelno >= logging.ERROR:
            return True
        return record.name == PROJECT_LOGGER or record.name.startswith(PROJECT_LOGGER + ".")


class _StartupBuffer(logging.Handler):
    """The last ``_BUFFER`` records, kept until the run's log file is attached (then written to it)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: collections.deque[logging.LogRecord] = collections.deque(maxlen=_BUFFER)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _formatter() -> logging.Formatter:
    rank = os.environ.get("RANK", "0")
    return logging.Formatter(f"[rank {rank}] %(levelname)s %(name)s: %(message)s")


def setup_logging(verbose: bool = False) -> None:
    """Route every record (module docstring): the console filtered, a buffer for the run's log file.
    Idempotent: a second call replaces the handlers of the first."""
    global _verbose
    _verbose = verbose
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    if not verbose:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    else:
        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_nemo_resrl", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.INFO)
    console = logging.StreamHandler()
    console.setFormatter(_formatter())
    console.addFilter(_ConsoleFilter(verbose))
    buffer = _StartupBuffer()
    for h in (console, buffer):
        h._nemo_resrl = True  # type: ignore[attr-defined]
        root.addHandler(h)
    logging.getLogger(PROJECT_LOGGER).setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger: the file, not the console


def attach_run_log(run_dir: str | os.PathLike) -> Path:
    """Append every record from now on, and the buffered start-up records, to ``run_dir/train.log``;
    returns its path. Without ``setup_logging`` first, only the records from now on are written."""
    path = Path(run_dir) / RUN_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s " + _formatter()._fmt))  # type: ignore[operator]
    handler._nemo_resrl = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _StartupBuffer):
            for record in h.records:
                handler.handle(record)
            root.removeHandler(h)
            h.close()
    root.addHandler(handler)
    return path


@contextlib.contextmanager
def library_prints(logger_name: str) -> Iterator[None]:
    """What a library ``print``s to stdout inside the block (megatron-bridge's parameter count and load
    progress) becomes INFO records of ``logger_name``: the run's log file, not the console. Verbose (or
    without ``setup_logging``), the prints stay on the console."""
    if _verbose:
        yield
        return
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        log = logging.getLogger(logger_name)
        for line in buf.getvalue().splitlines():
            if line.strip():
                log.info("%s", line.rstrip())
