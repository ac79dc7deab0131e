r"""Math answers graded with math-verify, in a process pool with timeouts the parent enforces.

Why a process pool: math-verify parses LaTeX with antlr and compares with sympy, and some answers make
sympy run for ever (``\boxed{10^{10^{10}}}`` does). Its own timeout uses ``signal.alarm``, which only
works in the main thread of the main interpreter, so it cannot guard a trainer's helper threads. Here each
answer runs in a worker process with math-verify's timeouts off; the parent gives every answer
``timeout_s`` seconds from the moment it was handed to an idle worker, and when one runs over it KILLS the
pool (a hung sympy call cannot be interrupted any other way), scores that answer 0 (``timeout``), resubmits
the answers that were in flight beside it and goes on with a fresh pool. A worker process that dies
(segfault, OOM kill) breaks the pool too: the answers in flight are then retried one at a time, so only the
answer that kills its worker again is scored 0 (``crash``).

At most ``workers`` answers are in flight, so a submitted answer starts at once and its deadline measures
its own run time, not time spent queued behind others.

The rule: the response's LAST ``\boxed{...}`` (``extract_last_boxed``) against the gold answer, both parsed
as ``\boxed{...}`` by math-verify and compared with ``verify(gold, pred)`` (gold first: the comparison is not
symmetric). A response without a complete box scores 0 (``no_boxed_answer``) without reaching the pool.
"""

from __future__ import annotations

import collections
import functools
import inspect
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from nemo_resrl.common import die_with_parent
from nemo_resrl.rewards.base import (
    CRASH,
    GOLD_PARSE_ERROR,
    NO_BOXED_ANSWER,
    OK,
    PARSE_ERROR,
    REASONS,
    TIMEOUT,
    RewardResult,
    extract_last_boxed,
    make_result,
)

logger = logging.getLogger(__name__)

# (boxed content of the response, gold answer) -> (reason, correct). Must be a module-level function so
# that it pickles by reference into the worker processes.
GradeFn = Callable[[str, str], "tuple[str, bool]"]

# Reasons a worker may return; anything else is treated as a crash.
_WORKER_REASONS = frozenset({OK, PARSE_ERROR, GOLD_PARSE_ERROR, CRASH})


@functools.cache
def _no_timeout_kwargs(fn: Callable, name: str) -> dict:
    """``{name: None}`` when ``fn`` takes that keyword (math-verify 0.9 does), else ``{}`` (releases without
    the argument have no alarm to switch off). Cached: called for every answer."""
    try:
        return {name: None} if name in inspect.signature(fn).parameters else {}
    except (TypeError, ValueError):
        return {}


def _as_boxed(answer: str) -> str:
    """The string math-verify should parse for one answer: wrapped in ``\\boxed{}`` unless it already has a
    box or ``$`` delimiters. The box anchors the LaTeX extractor: bare ``1,2,3`` would otherwise parse as
    the number 1.2, and bare ``\\frac{\\sqrt{3}}{2}`` not at all."""
    s = answer.strip()
    if "\\boxed" in s or (s.startswith("$") and s.endswith("$") and len(s) > 1):
        return s
    return "\\boxed{" + s + "}"


def grade_one(pred: str, gold: str) -> tuple[str, bool]:
    """Worker: grade one extracted answer against its gold answer; returns (reason, correct).

    Runs inside a pool process. math-verify's own (signal based) timeouts are switched off: the parent
    enforces the time limit by killing the process.
    """
    from math_verify import parse, verify

    parse_kw = _no_timeout_kwargs(parse, "parsing_timeout")
    verify_kw = _no_timeout_kwargs(verify, "timeout_seconds")
    try:
        gold_parsed = parse(_as_boxed(gold), **parse_kw)
        if not gold_parsed:
            # A gold answer the box does not suit (e.g. "10\%" parsed only as a string): try it bare.
            gold_parsed = parse(gold, **parse_kw)
    except Exception:
        return GOLD_PARSE_ERROR, False
    if not gold_parsed:
        return GOLD_PARSE_ERROR, False
    try:
        pred_parsed = parse(_as_boxed(pred), **parse_kw)
    except Exception:
        return PARSE_ERROR, False
    if not pred_parsed:
        return PARSE_ERROR, False
    try:
        return OK, bool(verify(gold_parsed, pred_parsed, **verify_kw))
    except Exception:
        return CRASH, False


def _init_worker() -> None:
    """Pool initializer: silence math-verify's "timeout is disabled" warning (disabling it is deliberate
    here) and grade one answer, so that its lazy set-up (about 0.3 s) is paid during the pool's start,
    not inside the first real answer's time limit."""
    die_with_parent()  # a kill -9 of the trainer must not orphan its graders
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    grade_one("\\frac{1}{2}", "0.5")


def _ping(delay: float) -> int:
    """Warm-up task. The short sleep keeps every worker busy while the others are started, so the pool
    really starts ``workers`` processes now instead of one more later, inside some answer's time limit."""
    time.sleep(delay)
    return os.getpid()


def default_mp_context() -> str:
    """``forkserver`` where available (fresh workers fork from a server that has imported math-verify
    once: a pool restarted after a timeout is ready in milliseconds), else ``spawn``. Never ``fork``: the
    trainer has threads and CUDA state that must not be forked."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class MathGrader:
    r"""Grades responses against gold answers with math-verify; see the module docstring for the rule.

    ``grade(responses, golds)`` returns a ``RewardResult`` (reward 1.0 correct, 0.0 otherwise) and never
    raises for a bad response. Use as a context manager, or call ``close()``, to stop the worker processes.

    workers:         worker processes (answers graded at once).
    timeout_s:       time limit of ONE answer, measured from when a worker takes it.
    mp_context:      ``forkserver`` or ``spawn`` (default: ``default_mp_context()``).
    start_timeout_s: time allowed for the pool to start (imports included), separately from ``timeout_s``.
    grade_fn:        the per-answer function run in the workers, ``(pred, gold) -> (reason, correct)``;
                     a module-level function (it is pickled by reference). Default ``grade_one``.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        *,
        mp_context: str | None = None,
        start_timeout_s: float = 120.0,
        grade_fn: GradeFn = grade_one,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.workers = int(workers)
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.mp_context = mp_context or default_mp_context()
        self.grade_fn = grade_fn
        self.pools_started = 0  # how many pools this grader has started (restarts after timeouts included)
        self._pool: ProcessPoolExecutor | None = None

    # ------------------------------------------------------------------ pool life cycle
    def _start_pool(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context(self.mp_context)
        if self.mp_context == "forkserver":
            # Only takes effect if the fork server is not running yet (then it is process-wide).
            ctx.set_forkserver_preload([__name__, "math_verify"])
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_init_worker)
        warm = [pool.submit(_ping, 0.05) for _ in range(self.workers)]
        done, not_done = wait(warm, timeout=self.start_timeout_s)
        failed = [f for f in done if f.exception() is not None]
        if not_done or failed:
            self._kill(pool)
            cause = failed[0].exception() if failed else None
            raise RuntimeError(
                f"math grading pool ({self.mp_context}, {self.workers} workers) did not start within "
                f"{self.start_timeout_s} s"
            ) from cause
        self.pools_started += 1
        return pool

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = self._start_pool()
        return self._pool

    @staticmethod
    def _kill(pool: ProcessPoolExecutor) -> None:
        """Stop a pool NOW, hung workers included (``shutdown`` alone would wait for them)."""
        # ProcessPoolExecutor has no public way to kill its workers before Python 3.14 (kill_workers).
        if hasattr(pool, "kill_workers"):
            pool.kill_workers()
            procs = []
        else:
            procs = list((getattr(pool, "_processes", None) or {}).values())
            for p in procs:
                if p.is_alive():
                    p.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(timeout=5.0)

    def _drop_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            self._kill(pool)

    def close(self) -> None:
        """Stops the worker processes. The grader may still be used: the next ``grade`` starts a pool."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> MathGrader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ grading
    def grade(self, responses: Sequence[str], golds: Sequence[str]) -> RewardResult:
        """Grades responses[i] against golds[i]; [N] rewards (1.0 correct, 0.0 otherwise) with counts."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        golds = [str(g) for g in golds]
        n = len(responses)
        reasons: list[str | None] = [None] * n
        correct = [False] * n
        preds: list[str | None] = [extract_last_boxed(r) if isinstance(r, str) else None for r in responses]
        todo: collections.deque[int] = collections.deque()
        for i, pred in enumerate(preds):
            if pred is None:
                reasons[i] = NO_BOXED_ANSWER
            else:
                todo.append(i)
        isolate: collections.deque[int] = collections.deque()  # in flight when a worker died: retry alone
        # future -> (index, deadline, ran alone)
        inflight: dict[Future, tuple[int, float, bool]] = {}

        def record(i: int, fut: Future) -> None:
            out = fut.result()
            if (
                isinstance(out, tuple)
                and len(out) == 2
                and out[0] in _WORKER_REASONS
                and isinstance(out[1], (bool, int))
            ):
                reasons[i], correct[i] = out[0], bool(out[1]) and out[0] == OK
            else:
                logger.warning("math grader: worker returned %r for answer %d; scored as a crash", out, i)
                reasons[i] = CRASH

        def settle_after_kill(alone_on_break: bool) -> None:
            """The pool is gone: keep results that made it out, resubmit the rest."""
            if inflight:
                wait(list(inflight), timeout=5.0)
            for fut, (i, _, alone) in list(inflight.items()):
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    record(i, fut)
                elif alone_on_break and alone:
                    reasons[i] = CRASH
                elif alone_on_break:
                    isolate.append(i)
                else:
                    todo.appendleft(i)
            inflight.clear()

        while todo or isolate or inflight:
            pool = self._ensure_pool()
            # Submit: never more than `workers` in flight (so each starts at once); suspects run alone.
            submit_failed = False
            while True:
                if isolate:
                    if inflight:
                        break
                    queue, alone = isolate, True
                elif todo and len(inflight) < self.workers:
                    queue, alone = todo, False
                else:
                    break
                i = queue[0]
                try:
                    fut = pool.submit(self.grade_fn, preds[i], golds[i])
                except BrokenProcessPool:  # a worker died since the last check: handled below
                    submit_failed = True
                    break
                queue.popleft()
                inflight[fut] = (i, time.monotonic() + self.timeout_s, alone)
                if alone:
                    break

            next_deadline = min(d for _, d, _ in inflight.values()) if inflight else time.monotonic()
            done, _ = wait(
                list(inflight),
                timeout=max(0.0, next_deadline - time.monotonic()),
                return_when=FIRST_COMPLETED,
            )

            broken = False
            for fut in done:
                i, _, alone = inflight.pop(fut)
                exc = fut.exception()
                if exc is None:
                    record(i, fut)
                elif isinstance(exc, BrokenProcessPool):
                    broken = True
                    if alone:
                        logger.warning("math grader: answer %d killed its worker; scored as a crash", i)
                        reasons[i] = CRASH
                    else:
                        isolate.append(i)
                else:
                    logger.warning("math grader: answer %d raised %r; scored as a crash", i, exc)
                    reasons[i] = CRASH
            if broken or submit_failed:
                self._drop_pool()
                settle_after_kill(alone_on_break=True)
                continue

            now = time.monotonic()
            expired = [f for f, (_, d, _) in inflight.items() if now >= d and not f.done()]
            if expired:
                for fut in expired:
                    i, _, _ = inflight.pop(fut)
                    logger.warning(
                        "math grader: answer %d ran past %.3g s; killing the pool. answer: %.200r",
                        i,
                        self.timeout_s,
                        preds[i],
                    )
                    reasons[i] = TIMEOUT
                self._drop_pool()
                settle_after_kill(alone_on_break=False)

        assert all(r in REASONS for r in reasons), reasons
        rewards = [1.0 if c else 0.0 for c in correct]
        return make_result(rewards, correct, reasons)  # type: ignore[arg-type]


def grade_math(
    responses: Sequence[str], golds: Sequence[str], workers: int = 2, timeout_s: float = 5.0
) -> RewardResult:
    """One-shot convenience: grades one batch with a temporary ``MathGrader`` (starts and stops a pool;
    a trainer should keep one ``MathGrader`` for the whole run instead)."""
    with MathGrader(workers=workers, timeout_s=timeout_s) as grader:
        return grader.grade(responses, golds)
