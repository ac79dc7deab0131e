import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nemo_resrl.models.logprobs import vocab_parallel_logprobs


def _reference(x, y):
    """float64 log-softmax and entropy written out directly."""
    x = x.double()
    lse = torch.logsumexp(x, dim=-1)
    logp = x.gather(-1, y[:, None]).squeeze(-1) - lse
    p = torch.softmax(x, dim=-1)
    return logp, -(p * torch.log_softmax(x, dim=-1)).sum(-1)


def _data(n=9, v=37, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g, dtype=torch.float64) * scale, torch.randint(0, v, (n,), generator=g)


@pytest.mark.parametrize("chunk", [1, 4, 9, 1000])
def test_matches_reference_for_any_chunking(chunk):
    x, y = _data()
    logp, ent = vocab_parallel_logprobs(x.float(), y, chunk_rows=chunk, with_entropy=True)
    ref_lp, ref_ent = _reference(x.float(), y)
    # float32: lse - E_p[x] cancels for logits of size ~10, so entropy is good to ~1e-6 relative
    torch.testing.assert_close(logp.double(), ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=0)
    assert logp.dtype == torch.float32


def test_gradients_match_autograd_in_float64():
    x, y = _data(n=6, v=13)
    x.requires_grad_(True)
    w_lp, w_ent = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    logp, ent = vocab_parallel_logprobs(x, y, chunk_rows=4, with_entropy=True)
    (logp * w_lp + ent * w_ent).sum().backward()
    got = x.grad.clone()
    x.grad = None
    ref_lp, ref_ent = _reference(x, y)
    (ref_lp * w_lp + ref_ent * w_ent).sum().backward()
    torch.testing.assert_close(got, x.grad, atol=1e-12, rtol=1e-10)
    assert torch.autograd.gradcheck(
        lambda t: vocab_parallel_logprobs(t, y, chunk_rows=2, with_entropy=True),
        (x.detach().requires_grad_(),),
    )


def test_temperature_and_vocabulary_padding_match_reference_with_gradients():
    """softmax(x / T) over the first vocab_size columns; the padding columns get no probability and no
    gradient, and the entropy stays finite (p * x = 0 there)."""
    x, y = _data(n=7, v=20)
    y = y.clamp(max=16)
    x.requires_grad_(True)
    w_lp, w_ent = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    logp, ent = vocab_parallel_logprobs(x, y, chunk_rows=3, with_entropy=True, temperature=0.6, vocab_size=17)
    (logp * w_lp + ent * w_ent).sum().backward()
    got = x.grad.clone()
    x.grad = None
    ref_lp, ref_ent = _reference(x[:, :17] / 0.6, y)
    torch.testing.assert_close(logp, ref_lp, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ent, ref_ent, atol=1e-12, rtol=1e-10)
    (ref_lp * w_lp + ref_ent * w_ent).sum().backward()
    torch.testing.assert_close(got, x.grad, atol=1e-12, rtol=1e-10)
    assert (got[:, 17:] == 0).all()


def test_bf16_logits_are_kept_in_bf16_for_backward():
    """What backward keeps of bf16 logits is the bf16 rows themselves (the plan's logits term), not a
    float32 copy."""
    x, y = _data(n=16, v=64)
    xb = x.bfloat16().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        logp, _ = vocab_parallel_logprobs(xb, y, chunk_rows=5, temperature=0.7, vocab_size=60)
    big = [t for t in saved if t.dim() == 2]
    assert [(t.dtype, tuple(t.shape)) for t in big] == [(torch.bfloat16, (16, 64))]
    logp.sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and (xb.grad[:, 60:] == 0).all()


def test_bf16_logits_give_float32_results_close_to_reference():
    x, y = _data(n=16, v=64)
    logp, _ = vocab_parallel_logprobs(x.bfloat16(), y, chunk_rows=5)
    ref_lp, _ = _reference(x.bfloat16().float(), y)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp.double(), ref_lp, atol=1e-5, rtol=0)


def test_bad_inputs():
    x, y = _data()
    with pytest.raises(ValueError, match="labels"):
        vocab_parallel_logprobs(x, y[:-1])
    with pytest.raises(ValueError, match="integer"):
        vocab_parallel_logprobs(x, y.double())
    with pytest.raises(ValueError, match="chunk_rows"):
        vocab_parallel_logprobs(x, y, chunk_rows=0)


def _tp_worker(rank, world, port, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y = _data(n=11, v=40, seed=3)
        shard = x.chunk(world, dim=1)[rank].clone().requires_grad_(True)
        logp, ent = vocab_parallel_logprobs(
            shard, y, vocab_start=rank * 40 // world, group=dist.group.WORLD, chunk_rows=3, with_entropy=True
        )
        w = torch.linspace(-1, 1, 11, dtype=torch.float64)
        (logp * w + ent * w.flip(0)).sum().backward()
        # By value: a tensor on a queue travels as a shared-memory fd that the receiver fetches from
        # this process, which may have exited by then.
        q.put((rank, logp.detach().numpy(), ent.detach().numpy(), shard.grad.numpy()))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_tensor_parallel_shards_give_the_full_vocabulary_result():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_tp_worker, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=120) for _ in range(2))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    x, y = _data(n=11, v=40, seed=3)
    x.requires_grad_(True)
    ref_lp, ref_ent = _reference(x, y)
    w = torch.linspace(-1, 1, 11, dtype=torch.float64)
    (ref_lp * w + ref_ent * w.flip(0)).sum().backward()
    for rank, *arrays in results:
        logp, ent, grad = (torch.from_numpy(a) for a in arrays)
        torch.testing.assert_close(logp, ref_lp.detach(), atol=1e-12, rtol=0)
        torch.testing.assert_close(ent, ref_ent.detach(), atol=1e-12, rtol=0)
        torch.testing.assert_close(grad, x.grad.chunk(2, dim=1)[rank], atol=1e-12, rtol=0)


@pytest.mark.slow
def test_a_bf16_actor_keeps_its_logits_bf16_and_gathers_only_the_response_rows(tmp_path):
    """megatron's Float16Module upcasts every logit to float32 unless told not to, and backward kept the
    float32 rows. Now: bf16 logits reach the log-prob layer, it allocates the response rows' bf16 logits
    (the plan's logits term, for those rows) and its float32 chunks (the plan's chunk term) and not more,
    and backward keeps the bf16 rows. (A padded vocabulary is masked per chunk: tested above.)"""
    from tests.launch import run_module
    from tests.models.tiny_hf import make_tiny

    model = make_tiny(tmp_path / "qwen3", "qwen3")
    res = run_module("tests.models.bf16_logits_probe", model, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    r = json.loads(res.stdout.split("RESULT ")[-1].splitlines()[0])
    assert r["finite"]
    assert r["logit_dtypes"] == ["torch.bfloat16"]
    assert r["loss_layer_peak"] <= r["planned_logits"] + r["planned_chunks"] + 64 * r["response_tokens"], r
    assert r["saved_logits"] and all(d == "torch.bfloat16" for d, _ in r["saved_logits"]), r
