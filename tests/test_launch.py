"""``launch``: a bad ``actor.hf_path`` is named offline, before anything is built or a hub is asked."""

from __future__ import annotations

import time

import pytest

from nemo_resrl.cli import main
from nemo_resrl.config import ConfigError
from nemo_resrl.models.hf_files import check_hf_dir


def test_bad_model_directories_are_named_with_what_is_missing(tmp_path):
    with pytest.raises(
        ConfigError, match=r"does not exist \(it looks like a hub id: .*huggingface-cli download"
    ):
        check_hf_dir("Qwen/Qwen3-8B-not-here")
    with pytest.raises(ConfigError, match="does not exist$"):
        check_hf_dir(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_hf_dir(str(tmp_path / "file"))
    with pytest.raises(ConfigError, match="has no config.json"):
        check_hf_dir(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"has no weights \(\*.safetensors or \*.bin"):
        check_hf_dir(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")  # a failed copy: named, not a bridge traceback later
    with pytest.raises(ConfigError, match=r"model.safetensors is empty \(0 bytes\)"):
        check_hf_dir(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes((10_000).to_bytes(8, "little") + b"{}")
    with pytest.raises(ConfigError, match=r"model.safetensors is truncated or not safetensors"):
        check_hf_dir(str(tmp_path))
    header = b'{"__metadata__": {}}'
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    assert check_hf_dir(str(tmp_path)) == tmp_path


def test_a_hub_id_fails_at_once_without_touching_the_run_dir(tmp_path, capsys):
    t0 = time.perf_counter()
    rc = main(["train", "actor.hf_path=someorg/somemodel", f"logging.run_dir={tmp_path / 'run'}"])
    assert rc == 2 and time.perf_counter() - t0 < 30  # no hub retries
    assert "looks like a hub id" in capsys.readouterr().err and not (tmp_path / "run").exists()
