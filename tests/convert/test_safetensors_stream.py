"""The streaming safetensors writer: files the ``safetensors`` library reads back exactly, HF sharding and
index, tensors produced in row blocks, and producers that give the wrong data are refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from nemo_resrl.convert.safetensors_stream import TensorEntry, plan_shards, write_sharded


def _entry(name, t, block_rows=None):
    def produce():
        if block_rows is None:
            yield t
        else:
            for i in range(0, t.shape[0], block_rows):
                yield t[i : i + block_rows]

    return TensorEntry(name, t.dtype, tuple(t.shape), produce)


def test_a_single_file_reads_back_exactly_with_blocks_and_mixed_dtypes(tmp_path):
    ts = {
        "a": torch.randn(7, 5),
        "b": torch.randn(3).to(torch.bfloat16),
        "c": torch.arange(11, dtype=torch.int64).reshape(11, 1),
        "d": torch.randn(2, 3, 4).half(),
    }
    entries = [
        _entry("a", ts["a"], 2),
        _entry("b", ts["b"]),
        _entry("c", ts["c"], 4),
        _entry("d", ts["d"], 1),
    ]
    assert write_sharded(tmp_path, entries, max_shard_bytes=10**9) == ["model.safetensors"]
    back = load_file(tmp_path / "model.safetensors")
    assert back.keys() == ts.keys()
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)
    raw = (tmp_path / "model.safetensors").read_bytes()
    assert (8 + int.from_bytes(raw[:8], "little")) % 8 == 0  # data 8-byte aligned


def test_shards_and_index_follow_hugging_face(tmp_path):
    ts = {f"w{i}": torch.randn(10, 10) for i in range(5)}  # 400 bytes each
    entries = [_entry(k, v) for k, v in ts.items()]
    assert [len(s) for s in plan_shards(entries, 1000)] == [2, 2, 1]
    files = write_sharded(tmp_path, entries, 1000)
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 400
    assert index["weight_map"] == {
        "w0": files[0],
        "w1": files[0],
        "w2": files[1],
        "w3": files[1],
        "w4": files[2],
    }
    back = {}
    for f in files:
        back.update(load_file(tmp_path / f))
    assert all(torch.equal(back[k], v) for k, v in ts.items())
    big = plan_shards([_entry("x", torch.randn(100, 10)), _entry("y", torch.randn(1))], 100)
    assert [len(s) for s in big] == [1, 1]  # a tensor over the limit gets a shard of its own


def test_a_producer_with_the_wrong_rows_or_dtype_is_refused(tmp_path):
    short = TensorEntry("s", torch.float32, (4, 2), lambda: iter([torch.zeros(3, 2)]))
    with pytest.raises(ValueError, match="gave 3 rows"):
        write_sharded(tmp_path, [short], 10**6)
    wrong = TensorEntry("w", torch.float32, (4, 2), lambda: iter([torch.zeros(4, 2, dtype=torch.float64)]))
    with pytest.raises(ValueError, match="expected rows of"):
        write_sharded(tmp_path, [wrong], 10**6)
