"""Prompt datasets: jsonl / parquet through HF datasets, chat template, over-length and malformed rows."""

from __future__ import annotations

import json

import pytest

from nemo_resrl.data import DataConfig, DatasetError, load_prompts
from nemo_resrl.data.prompts import load_eval_prompts

CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    """A real (tiny) HF fast tokenizer: whitespace word level, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "what is one two three plus minus the answer ? . , : x y z a b c d e f g long".split()
    specials = ["<unk>", "<|user|>", "<|system|>", "<|assistant|>", "<|end|>"]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": specials[1:]})
    fast.chat_template = CHAT
    return fast


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_jsonl_rows_get_the_chat_template_and_keep_their_answers(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "p.jsonl", [{"q": "what is one plus two ?", "a": 3}, {"q": "x y z", "a": "c"}])
    cfg = DataConfig(source="jsonl", path=path, prompt_key="q", answer_key="a", system_prompt="the answer")
    out = load_prompts(cfg, tokenizer)
    assert out.stats == {"rows": 2, "malformed_skipped": 0, "overlong_dropped": 0, "kept": 2}
    first = out.records[0]
    assert first["answer"] == "3" and first["row"] == 1  # numbers become strings
    text = tokenizer.decode(first["prompt_ids"])
    assert text == "<|system|> the answer <|end|> <|user|> what is one plus two ? <|end|> <|assistant|>"
    assert "<unk>" not in text


def test_prompt_template_and_no_chat_template(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "p.jsonl", [{"problem": "one plus two", "answer": "3"}])
    cfg = DataConfig(source="jsonl", path=path, chat_template=False, prompt_template="what is {prompt} ?")
    out = load_prompts(cfg, tokenizer)
    assert tokenizer.decode(out.records[0]["prompt_ids"]) == "what is one plus two ?"


def test_overlong_prompts_are_dropped_and_counted(tmp_path, tokenizer):
    rows = [{"problem": "one two", "answer": "1"}, {"problem": " ".join(["long"] * 40), "answer": "2"}]
    cfg = DataConfig(source="jsonl", path=_jsonl(tmp_path / "p.jsonl", rows), max_prompt_tokens=16)
    out = load_prompts(cfg, tokenizer)
    assert out.stats["overlong_dropped"] == 1 and out.stats["kept"] == 1
    assert out.records[0]["answer"] == "1"
    with pytest.raises(DatasetError, match="no usable prompt.*1 longer than"):
        load_prompts(
            DataConfig(source="jsonl", path=_jsonl(tmp_path / "q.jsonl", rows[1:]), max_prompt_tokens=16),
            tokenizer,
        )


def test_broken_jsonl_lines_are_named_by_line_number(tmp_path, tokenizer):
    rows = [
        {"problem": "one", "answer": "1"},
        '{"problem": "two", "answer": ',
        '["a list"]',
        {"problem": "x", "answer": "4"},
    ]
    path = _jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DatasetError) as e:
        load_prompts(DataConfig(source="jsonl", path=path), tokenizer)
    msg = str(e.value)
    assert "2 malformed row(s)" in msg and "row 2: not valid JSON" in msg and "row 3: a JSON list" in msg
    assert "data.on_bad_row=skip" in msg
    out = load_prompts(DataConfig(source="jsonl", path=path, on_bad_row="skip"), tokenizer)
    assert [r["row"] for r in out.records] == [1, 4]
    assert out.stats == {"rows": 4, "malformed_skipped": 2, "overlong_dropped": 0, "kept": 2}


def test_broken_lines_and_rows_with_bad_fields_are_named_together(tmp_path, tokenizer):
    """Before, the rows whose fields are missing or empty were named only on the next run, after the broken
    lines had been fixed."""
    rows = [{"problem": "one", "answer": "1"}, '{"problem": "two", ', {"problem": "", "answer": "3"}]
    path = _jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DatasetError) as e:
        load_prompts(DataConfig(source="jsonl", path=path), tokenizer)
    msg = str(e.value)
    assert (
        "2 malformed row(s)" in msg
        and "row 2: not valid JSON" in msg
        and "row 3: 'problem' is missing" in msg
    )


def test_a_glob_that_matches_nothing_is_named(tmp_path, tokenizer):
    with pytest.raises(DatasetError, match=r"data.path .*\*.jsonl' matches no file"):
        load_prompts(DataConfig(source="jsonl", path=str(tmp_path / "*.jsonl")), tokenizer)


def test_rows_without_prompt_or_answer_are_named(tmp_path, tokenizer):
    rows = [
        {"problem": "one", "answer": "1"},
        {"problem": "", "answer": "1"},
        {"problem": "two", "answer": None},
        {"problem": 5, "answer": "1"},
        {"problem": "three", "answer": "3"},
    ]
    path = _jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DatasetError) as e:
        load_prompts(DataConfig(source="jsonl", path=path), tokenizer)
    msg = str(e.value)
    assert "3 malformed row(s)" in msg
    assert "row 2: 'problem' is missing" in msg and "row 3: 'answer' is missing" in msg and "row 4:" in msg
    out = load_prompts(DataConfig(source="jsonl", path=path, on_bad_row="skip"), tokenizer)
    assert [r["row"] for r in out.records] == [1, 5] and out.stats["malformed_skipped"] == 3


def test_a_missing_field_names_the_key_and_the_fields(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "p.jsonl", [{"question": "one", "answer": "1"}])
    with pytest.raises(DatasetError, match=r"prompt_key='problem'.*\['answer', 'question'\]"):
        load_prompts(DataConfig(source="jsonl", path=path), tokenizer)


def test_parquet_through_hf_datasets(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    table = pa.table({"problem": ["one plus two", None, "x y"], "answer": ["3", "4", "z"]})
    pq.write_table(table, path)
    with pytest.raises(DatasetError, match="row 2: 'problem' is missing"):
        load_prompts(DataConfig(source="parquet", path=str(path)), tokenizer)
    out = load_prompts(DataConfig(source="parquet", path=str(path), on_bad_row="skip"), tokenizer)
    assert [r["prompt"] for r in out.records] == ["one plus two", "x y"] and out.stats["rows"] == 3


def test_missing_file_and_missing_chat_template(tmp_path, tokenizer):
    with pytest.raises(DatasetError, match="does not exist"):
        load_prompts(DataConfig(source="jsonl", path=str(tmp_path / "nope.jsonl")), tokenizer)
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, unk_token="<unk>")
    path = _jsonl(tmp_path / "p.jsonl", [{"problem": "one", "answer": "1"}])
    with pytest.raises(DatasetError, match="data.chat_template=false"):
        load_prompts(DataConfig(source="jsonl", path=path), plain)


def test_reasoning_gym_prompts_and_held_out_eval_prompts(tokenizer):
    cfg = DataConfig(task="basic_arithmetic", size=8, chat_template=False, max_prompt_tokens=64)
    out = load_prompts(cfg, tokenizer)
    assert out.stats["rows"] == 8 and out.stats["kept"] == 8
    assert all(r["task"] == "basic_arithmetic" and "entry" in r for r in out.records)
    held = load_eval_prompts(cfg, tokenizer, 4)
    assert len(held.records) == 4
    assert [r["prompt"] for r in held.records] != [r["prompt"] for r in out.records[:4]]  # another seed
    with pytest.raises(DatasetError, match="reasoning-gym task 'no_such_task'"):
        load_prompts(DataConfig(task="no_such_task", chat_template=False), tokenizer)


def test_an_empty_file_and_a_missing_eval_file_are_named_by_their_key(tmp_path, tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match=r"data.path .*empty.jsonl' is empty: no rows"):
        load_prompts(DataConfig(source="jsonl", path=str(empty)), tokenizer)
    good = _jsonl(tmp_path / "train.jsonl", [{"problem": "1+1", "answer": "2"}])
    cfg = DataConfig(source="jsonl", path=good, eval_path=str(tmp_path / "held_out.jsonl"))
    with pytest.raises(DatasetError, match=r"^data.eval_path .*held_out.jsonl' does not exist"):
        load_eval_prompts(cfg, tokenizer, 4)
