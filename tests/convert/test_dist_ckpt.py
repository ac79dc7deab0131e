"""Dist-checkpoints written lazily chunk by chunk and read back by box, in one process (no process group);
megatron's own loader reading them is covered in ``test_round_trip.py``."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_resrl.convert.dist_ckpt import DistCheckpointReader, DistTensor, write_dist_checkpoint


def _stacked(fqn: str, full: torch.Tensor, calls: list) -> DistTensor:
    t = DistTensor(fqn, full.dtype, tuple(full.shape))
    for i in range(full.shape[0]):

        def produce(i=i):
            calls.append((fqn, i))
            return full[i : i + 1].clone()

        t.chunks.append(((i, *([0] * (full.dim() - 1))), (1, *full.shape[1:]), produce))
    return t


def test_lazy_chunks_round_trip_whole_and_by_box(tmp_path):
    a, b = torch.randn(3, 6, 5), torch.randn(4, 2).to(torch.bfloat16)
    calls: list = []
    tensors = [_stacked("x.a", a, calls), _stacked("x.b", b, calls)]
    assert calls == []  # nothing produced while planning
    write_dist_checkpoint(tmp_path / "ck", tensors)
    assert sorted(calls) == sorted([("x.a", i) for i in range(3)] + [("x.b", i) for i in range(4)])
    r = DistCheckpointReader(tmp_path / "ck")
    assert r.tensors() == {"x.a": ((3, 6, 5), torch.float32), "x.b": ((4, 2), torch.bfloat16)}
    assert torch.equal(r.read("x.a"), a) and torch.equal(r.read("x.b"), b)
    # a box across two saved chunks and inside the rows / columns
    assert torch.equal(r.read("x.a", (1, 2, 1), (2, 3, 4)), a[1:3, 2:5, 1:5])
    meta = json.loads((tmp_path / "ck" / "metadata.json").read_text())
    assert meta["sharded_backend"] == "torch_dist"


def test_incomplete_chunks_and_bad_boxes_are_errors(tmp_path):
    full = torch.randn(3, 2)
    t = _stacked("y", full, [])
    t.chunks.pop()
    with pytest.raises(ValueError, match="cover 4 of 6"):
        write_dist_checkpoint(tmp_path / "ck", [t])
    write_dist_checkpoint(tmp_path / "ok", [_stacked("y", full, [])])
    r = DistCheckpointReader(tmp_path / "ok")
    with pytest.raises(ValueError, match="outside its shape"):
        r.read("y", (2, 0), (2, 2))
    with pytest.raises(KeyError, match="no tensor 'z'"):
        r.read("z")
    with pytest.raises(FileExistsError):
        write_dist_checkpoint(tmp_path / "ok", [_stacked("y", full, [])])
    with pytest.raises(FileNotFoundError, match="not a torch_dist checkpoint"):
        DistCheckpointReader(tmp_path)


def test_a_producer_with_the_wrong_shape_is_refused(tmp_path):
    t = DistTensor("w", torch.float32, (2, 2), [((0, 0), (2, 2), lambda: torch.zeros(2, 3))])
    with pytest.raises(ValueError, match="producer gave"):
        write_dist_checkpoint(tmp_path / "ck", [t])


def test_row_blocks_follow_the_saved_chunks(tmp_path):
    full = torch.randn(10, 4)  # 16 bytes a row
    t = DistTensor("e", full.dtype, (10, 4))
    for r0, r1 in ((0, 2), (2, 4), (4, 5), (5, 10)):
        t.chunks.append(((r0, 0), (r1 - r0, 4), lambda r0=r0, r1=r1: full[r0:r1].clone()))
    write_dist_checkpoint(tmp_path / "ck", [t])
    r = DistCheckpointReader(tmp_path / "ck")
    assert r.row_blocks("e", 10, 16 * 4) == [(0, 4), (4, 5), (5, 10)]  # grouped to 4 rows; 5 rows alone
    assert r.row_blocks("e", 10, 10**6) == [(0, 10)]
    assert r.row_blocks("e", 8, 16) == [(0, 2), (2, 4), (4, 5), (5, 8)]  # stops at n_rows (padding)
    got = torch.cat([r.read("e", (a, 0), (b - a, 4)) for a, b in r.row_blocks("e", 8, 16)])
    assert torch.equal(got, full[:8])
