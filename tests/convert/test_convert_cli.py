"""``nemo-resrl convert`` and ``resolve_hf_model`` (no Megatron model needed: from-hf then to-hf)."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import load_file

from nemo_resrl.cli import main
from nemo_resrl.convert import ConversionError, resolve_hf_model
from nemo_resrl.convert.cli import parse_size
from tests.models.tiny_hf import make_tiny


def test_from_hf_then_to_hf_through_the_cli_is_exact_in_bf16(tmp_path, capsys):
    hf = make_tiny(tmp_path / "qwen3", "qwen3")
    assert main(["convert", "from-hf", str(hf), str(tmp_path / "mg")]) == 0
    assert "peak RSS" in capsys.readouterr().out
    out = tmp_path / "back"
    assert main(["convert", "to-hf", str(tmp_path / "mg"), str(out), "--dtype", "bf16"]) == 0
    ref, got = load_file(hf / "model.safetensors"), load_file(out / "model.safetensors")
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k].to(torch.bfloat16)) for k in ref)
    # a second run does not silently replace the output
    assert main(["convert", "to-hf", str(tmp_path / "mg"), str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["convert", "to-hf", str(tmp_path / "mg"), str(out), "--overwrite"]) == 0


def test_bad_inputs_exit_2_with_the_reason(tmp_path, capsys):
    assert main(["convert", "to-hf", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "is not a checkpoint of this project" in capsys.readouterr().err
    assert main(["convert", "from-hf", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "has no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: unknown direction
        main(["convert", "sideways", "a", "b"])


def test_an_output_that_overlaps_its_source_is_refused_even_with_overwrite(tmp_path, capsys):
    hf = make_tiny(tmp_path / "qwen3", "qwen3")
    run = tmp_path / "run" / "checkpoints" / "step_000001"
    assert main(["convert", "from-hf", str(hf), str(run / "actor")]) == 0
    for out in (run / "actor", run, tmp_path / "run", run / "actor" / "hf"):
        assert main(["convert", "to-hf", str(run), str(out), "--overwrite"]) == 2, out
        assert "choose another OUT" in capsys.readouterr().err
    assert (run / "actor" / "nemo_resrl_actor.json").is_file()  # nothing was deleted
    assert main(["convert", "from-hf", str(hf), str(hf), "--overwrite"]) == 2
    assert (hf / "model.safetensors").is_file()


def test_a_damaged_checkpoint_is_named_and_leaves_no_partial_output(tmp_path, capsys):
    hf = make_tiny(tmp_path / "qwen3", "qwen3")
    assert main(["convert", "from-hf", str(hf), str(tmp_path / "mg")]) == 0
    shard = next((tmp_path / "mg").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated
    assert main(["convert", "to-hf", str(tmp_path / "mg"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"is damaged: {shard.name} has 1000 bytes" in err and "Traceback" not in err
    assert not list(tmp_path.glob("out*"))
    # damage the index cannot see (the same size, other bytes): the reading fails, named, nothing written
    assert main(["convert", "from-hf", str(hf), str(tmp_path / "mg2")]) == 0
    shard = next((tmp_path / "mg2").glob("*.distcp"))
    shard.write_bytes(b"\0" * shard.stat().st_size)
    assert main(["convert", "to-hf", str(tmp_path / "mg2"), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'mg2'} failed" in err and "Traceback" not in err and not list(tmp_path.glob("out2*"))


def test_a_run_whose_checkpoints_are_all_damaged_is_refused_listing_each(tmp_path, capsys, caplog):
    """Before: "converting the newest intact checkpoint" (sizes only), then "it is damaged" (digests)."""
    import shutil

    from nemo_resrl.runs.manifest import write_manifest

    hf = make_tiny(tmp_path / "qwen3", "qwen3")
    assert main(["convert", "from-hf", str(hf), str(tmp_path / "mg")]) == 0
    step = tmp_path / "run" / "checkpoints" / "step_000001"
    shutil.copytree(tmp_path / "mg", step / "actor")
    (step / "trainer.json").write_text('{"step": 1, "history": [], "world_size": 1}')
    (step / "rng_rank0.pt").write_bytes(b"x")
    write_manifest(step)
    shard = next((step / "actor").glob("*.distcp"))
    shard.write_bytes(b"\0" * shard.stat().st_size)  # the same size, other bytes: only the digest tells
    assert main(["convert", "to-hf", str(tmp_path / "run"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint to convert" in err and "step_000001" in err and shard.name in err, err
    assert "converting the newest intact" not in caplog.text and not (tmp_path / "out").exists()


def test_writing_into_a_run_dir_a_trainer_holds_is_refused(tmp_path, capsys):
    from nemo_resrl.runs.run_dir import RunDirLock

    hf = make_tiny(tmp_path / "qwen3", "qwen3")
    with RunDirLock(tmp_path / "run"):
        assert main(["convert", "from-hf", str(hf), str(tmp_path / "run" / "mg")]) == 2
    assert "which a trainer is using" in capsys.readouterr().err and not (tmp_path / "run" / "mg").exists()


def test_overwrite_never_deletes_a_run_directory_or_a_folder_holding_one(tmp_path, capsys):
    """``--overwrite`` onto a finished run's directory, onto a folder that holds a run (a live one too),
    onto a run's checkpoints: refused, naming the run; nothing deleted. An ordinary non-empty OUT is
    still replaced."""
    from nemo_resrl.runs.run_dir import RunDirLock

    hf = make_tiny(tmp_path / "qwen3", "qwen3")
    run = tmp_path / "parent" / "run"
    (run / "checkpoints" / "step_000002").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
    (tmp_path / "parent" / "notes.txt").write_text("keep me")
    for out in (run, tmp_path / "parent", run / "checkpoints"):
        assert main(["convert", "from-hf", str(hf), str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "never deletes" in err and str(run) in err and "Traceback" not in err, err
    with RunDirLock(run):  # a live trainer in it: the same
        assert main(["convert", "from-hf", str(hf), str(tmp_path / "parent"), "--overwrite"]) == 2
    assert "2 metrics rows" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text().count("step") == 2 and (
        run / "checkpoints" / "step_000002"
    ).is_dir()
    assert (tmp_path / "parent" / "notes.txt").read_text() == "keep me"
    other = tmp_path / "other"
    other.mkdir()
    (other / "old.bin").write_bytes(b"x")
    assert main(["convert", "from-hf", str(hf), str(other), "--overwrite"]) == 0
    assert not (other / "old.bin").exists()


def test_sizes_parse_like_transformers():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("512MiB") == 512 * 2**20 and parse_size("100") == 100
    for bad in ("5XB", "-1", "0", "GB"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)


def test_resolve_hf_model_passes_hf_dirs_and_converts_checkpoints(tmp_path):
    hf = make_tiny(tmp_path / "llama", "llama", tie=True)
    assert resolve_hf_model(hf, tmp_path / "work") == hf
    main(["convert", "from-hf", str(hf), str(tmp_path / "ck" / "actor")])
    prov: dict = {}
    got = resolve_hf_model(tmp_path / "ck", tmp_path / "work", provenance=prov)  # a step-style dir: actor/
    assert got == tmp_path / "work" / "hf_model" and (got / "config.json").is_file()
    assert prov["checkpoint"] == str(tmp_path / "ck" / "actor") and "step" in prov  # what eval records
    ref, back = load_file(hf / "model.safetensors"), load_file(got / "model.safetensors")
    assert back.keys() == ref.keys() and all(torch.equal(back[k], ref[k]) for k in ref)
    with pytest.raises(ConversionError, match="neither a Hugging Face model directory"):
        resolve_hf_model(tmp_path / "work" / "nothing", tmp_path / "work")


def test_to_hf_reads_per_layer_keys_as_well_as_stacked_ones(tmp_path):
    """megatron-core may save layer i of a tensor as ``decoder.layers.<i>.<name>`` instead of stacking the
    layers into one [L, ...] key: the same model written that way converts to the same HF tensors."""
    from nemo_resrl.convert.dist_ckpt import DistCheckpointReader, DistTensor, write_dist_checkpoint
    from nemo_resrl.convert.from_hf import convert_from_hf
    from nemo_resrl.convert.to_hf import convert_to_hf

    hf = make_tiny(tmp_path / "qwen3", "qwen3")
    stacked = convert_from_hf(hf, tmp_path / "stacked")
    r = DistCheckpointReader(stacked)
    tensors = []
    for key, (shape, dtype) in r.tensors().items():
        if key.startswith("decoder.layers."):
            suffix = key[len("decoder.layers.") :]
            for i in range(shape[0]):
                t = DistTensor(f"decoder.layers.{i}.{suffix}", dtype, shape[1:])
                t.chunks.append(
                    ((0,) * (len(shape) - 1), shape[1:], lambda key=key, i=i: r.read(key)[i].clone())
                )
                tensors.append(t)
        else:
            tensors.append(
                DistTensor(key, dtype, shape, [((0,) * len(shape), shape, lambda key=key: r.read(key))])
            )
    per_layer = tmp_path / "per_layer" / "actor"
    write_dist_checkpoint(per_layer, tensors)
    (per_layer / "nemo_resrl_actor.json").write_text((stacked / "nemo_resrl_actor.json").read_text())
    assert not any(k.startswith("decoder.layers.self") for k in DistCheckpointReader(per_layer).tensors())
    back = convert_to_hf(per_layer, tmp_path / "back", hf_config_dir=hf)
    ref, got = load_file(hf / "model.safetensors"), load_file(back / "model.safetensors")
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
