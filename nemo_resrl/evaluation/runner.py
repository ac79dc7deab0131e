"""``run_eval``: sample n responses per problem with vLLM, grade them with math-verify and report Avg@n,
pass@k and maj@k per benchmark and overall, as ``eval.json``, ``samples.jsonl`` and ``pass_at_k.png``.

Problems that cannot be sampled or graded (see ``benchmarks.py``; also ``prompt_too_long``: the prompt
leaves no room for a response in ``max_model_len``) stay in the denominator with 0 on every metric and
are counted per benchmark. Responses that are empty, or whose answer cannot be parsed, are graded
wrong by the grader and counted (``grading``: the grader's reasons; ``empty_responses``). Overall
numbers are given both as ``micro`` (every problem of every benchmark weighs the same) and ``macro``
(the mean of the benchmarks).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from nemo_resrl.config.eval import EvalConfig
from nemo_resrl.data.prompts import prompt_ids
from nemo_resrl.evaluation.benchmarks import Benchmark, load_benchmark
from nemo_resrl.evaluation.metrics import avg_at_n, expected_maj_at_k, ks_for, normalise_answer, pass_at_k

logger = logging.getLogger(__name__)
FIGSIZE, DPI = (6.4, 4.8), 100  # pass_at_k.png is 640 x 480 pixels


def problem_metrics(correct: list[bool], answers: list[str | None], ks: list[int]) -> dict:
    """Avg@n, pass@k and maj@k of one problem's n graded samples."""
    n, c = len(correct), sum(correct)
    maj = {k: expected_maj_at_k(answers, correct, k) for k in ks}
    return {
        "avg": avg_at_n(correct),
        "pass": {k: pass_at_k(n, c, k) for k in ks},
        "maj": {k: v for k, (v, _) in maj.items()},
        "maj_methods": {m for _, m in maj.values()},
    }


def aggregate(per_problem: list[dict], ks: list[int], n: int) -> dict:
    """Means over problems of ``problem_metrics`` results."""
    m = len(per_problem)
    methods = set().union(*(p["maj_methods"] for p in per_problem)) if per_problem else set()
    return {
        "n_problems": m,
        f"avg@{n}": sum(p["avg"] for p in per_problem) / m,
        "pass@k": {str(k): sum(p["pass"][k] for p in per_problem) / m for k in ks},
        "maj@k": {str(k): sum(p["maj"][k] for p in per_problem) / m for k in ks},
        "maj_method": "monte_carlo (2000 draws) for some problems" if "monte_carlo" in methods else "exact",
    }


def plot_pass_at_k(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    curves = [(name, b["pass@k"], "-") for name, b in report["benchmarks"].items()]
    if len(curves) > 1:
        curves.append(("overall (micro)", report["overall"]["micro"]["pass@k"], "--"))
    for name, pk, style in curves:
        ks = [int(k) for k in pk]
        ax.plot(ks, [100 * v for v in pk.values()], style, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(f"pass@k, n = {report['sampling']['n']}: {Path(report['model_source']).name}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": the size stays FIGSIZE * DPI
    plt.close(fig)
    return path


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate ``cfg.model`` on ``cfg.benchmarks``; returns the report written to ``eval.json``."""
    from transformers import AutoTokenizer

    from nemo_resrl.convert import resolve_hf_model
    from nemo_resrl.rewards.base import extract_last_boxed
    from nemo_resrl.rewards.math import MathGrader
    from nemo_resrl.rollout.engine import RolloutEngine

    t0 = time.perf_counter()
    benches: list[Benchmark] = [
        load_benchmark(p, name, cfg.problem_key, cfg.answer_key)
        for p, name in zip(cfg.benchmarks, cfg.benchmark_names(), strict=True)
    ]
    out = Path(cfg.output_dir)  # created only once the input is known to be usable
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    provenance: dict = {}
    try:
        hf_dir = resolve_hf_model(cfg.model, out / "work", provenance=provenance)
    except BaseException:
        if created:  # a missing or damaged model leaves no empty output directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    if cfg.chat_template and not getattr(tokenizer, "chat_template", None):
        from nemo_resrl.config import ConfigError

        raise ConfigError("chat_template=true but the model's tokenizer has no chat template")

    # prompts of every usable problem of every benchmark, sampled in one vLLM call
    jobs: list[tuple[int, int]] = []  # (benchmark, problem) of each prompt
    prompts: list[list[int]] = []
    for b_i, b in enumerate(benches):
        for p_i, p in enumerate(b.problems):
            if p.issue:  # nothing to sample from, or nothing to grade against: 0, counted
                continue
            text = cfg.prompt_template.replace("{problem}", p.problem)
            ids = prompt_ids(tokenizer, text, cfg.system_prompt, cfg.chat_template)
            if len(ids) >= cfg.max_model_len:
                p.issue = "prompt_too_long"
                b.issues["prompt_too_long"] += 1
                continue
            jobs.append((b_i, p_i))
            prompts.append(ids)
    s = cfg.sampling
    engine = RolloutEngine(hf_dir, cfg)  # the eval config is a RolloutConfig
    logger.info("sampling %d x %d responses", len(prompts), s.n)
    batch = engine.generate(prompts) if prompts else None
    texts: dict[tuple[int, int], list[str]] = {}
    lengths: dict[tuple[int, int], list[int]] = {}
    truncated: dict[tuple[int, int], int] = {}
    if batch is not None:
        decoded = tokenizer.batch_decode(batch.responses, skip_special_tokens=True)
        for j, text, n_tok, cut in zip(
            batch.prompt_index.tolist(),
            decoded,
            batch.lengths.tolist(),
            batch.truncated.tolist(),
            strict=True,
        ):
            key = jobs[j]
            texts.setdefault(key, []).append(text)
            lengths.setdefault(key, []).append(int(n_tok))
            truncated[key] = truncated.get(key, 0) + int(cut)

    ks = ks_for(s.n)
    report: dict = {
        "model_source": str(cfg.model),
        "model": str(hf_dir),
        "checkpoint": provenance.get("checkpoint"),  # the checkpoint evaluated, for a run or checkpoint dir
        "checkpoint_step": provenance.get("step"),
        "sampling": {
            "n": s.n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "max_tokens": s.max_tokens,
            "seed": s.seed,
        },
        "ks": ks,
        "benchmarks": {},
    }
    all_problems: list[dict] = []
    with (
        MathGrader(workers=cfg.grader_workers, timeout_s=cfg.grader_timeout_s) as grader,
        open(out / "samples.jsonl", "w") as samples,
    ):
        for b_i, b in enumerate(benches):
            graded_keys = [(b_i, p_i) for p_i, p in enumerate(b.problems) if (b_i, p_i) in texts and p.answer]
            flat = [t for k in graded_keys for t in texts[k]]
            golds = [b.problems[k[1]].answer for k in graded_keys for _ in texts[k]]
            result = grader.grade(flat, golds) if flat else None
            correct_flat = result.correct.tolist() if result is not None else []
            per_problem, empty, n_trunc, toks = [], 0, 0, []
            pos = 0
            for p_i, p in enumerate(b.problems):
                key = (b_i, p_i)
                resp = texts.get(key, [])
                empty += sum(1 for t in resp if not t.strip())
                n_trunc += truncated.get(key, 0)
                toks += lengths.get(key, [])
                if key in graded_keys:
                    corr = [bool(c) for c in correct_flat[pos : pos + len(resp)]]
                    pos += len(resp)
                else:  # unusable problem, or no gold answer: every sample is wrong
                    corr = [False] * s.n
                answers = [normalise_answer(extract_last_boxed(t)) for t in resp] or [None] * s.n
                pm = problem_metrics(corr, answers, ks)
                per_problem.append(pm)
                row = {
                    "benchmark": b.name,
                    "line": p.line,
                    "issue": p.issue,
                    "answer": p.answer,
                    "responses": resp,
                    "extracted": answers,
                    "correct": corr,
                }
                samples.write(json.dumps(row) + "\n")
            agg = aggregate(per_problem, ks, s.n)
            agg.update(
                {
                    "file": str(b.path),
                    "input_issues": dict(b.issues),
                    "grading": {
                        k: int(v) for k, v in (result.counts if result is not None else Counter()).items()
                    },
                    "empty_responses": empty,
                    "truncated_responses": n_trunc,
                    "mean_response_tokens": sum(toks) / len(toks) if toks else 0.0,
                }
            )
            report["benchmarks"][b.name] = agg
            all_problems += per_problem
    micro = aggregate(all_problems, ks, s.n)
    bs = list(report["benchmarks"].values())
    macro = {
        f"avg@{s.n}": sum(b[f"avg@{s.n}"] for b in bs) / len(bs),
        "pass@k": {str(k): sum(b["pass@k"][str(k)] for b in bs) / len(bs) for k in ks},
        "maj@k": {str(k): sum(b["maj@k"][str(k)] for b in bs) / len(bs) for k in ks},
    }
    report["overall"] = {"micro": micro, "macro": macro}
    report["wall_s"] = time.perf_counter() - t0
    (out / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_pass_at_k(report, out / "pass_at_k.png")
    return report


def format_table(report: dict) -> str:
    n, ks = report["sampling"]["n"], report["ks"]
    head = ["benchmark", "problems", f"avg@{n}"] + [f"pass@{k}" for k in ks] + [f"maj@{ks[-1]}"]
    rows = [head]
    items = [*report["benchmarks"].items(), ("overall", report["overall"]["micro"])]
    for name, b in items:
        row = [name, str(b["n_problems"]), f"{100 * b[f'avg@{n}']:.1f}"]
        row += [f"{100 * b['pass@k'][str(k)]:.1f}" for k in ks] + [f"{100 * b['maj@k'][str(ks[-1])]:.1f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
