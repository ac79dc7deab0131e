"""The console shows the project's lines; the run's log file holds everything, start-up included."""

import logging
import warnings

import pytest

from nemo_resrl.common.logs import RUN_LOG, attach_run_log, setup_logging


@pytest.fixture
def fresh_logging(monkeypatch):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    monkeypatch.delenv("VLLM_CONFIGURE_LOGGING", raising=False)
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL", raising=False)
    yield
    from transformers.utils import logging as hf_logging

    hf_logging.enable_default_handler()
    hf_logging.disable_propagation()
    for h in list(root.handlers):
        if h not in saved[0]:
            root.removeHandler(h)
            h.close()
    root.setLevel(saved[1])
    logging.captureWarnings(False)


def _say_everything():
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers.modeling_utils").warning("torch_dtype is deprecated")
    logging.getLogger("nemo_resrl.training.loop").info("step table line")
    logging.getLogger("nemo_resrl.runs.run_dir").warning("project warning")
    logging.getLogger("vllm.model_executor").info("vllm refit info")
    logging.getLogger("megatron.core").warning("library warning")
    logging.getLogger("megatron.core").error("library error")
    warnings.warn("Apex is not installed. Falling back to Torch Norm", UserWarning, stacklevel=1)


def test_the_console_shows_the_project_and_errors_the_file_everything(fresh_logging, capsys, tmp_path):
    import os

    setup_logging()
    assert os.environ["VLLM_CONFIGURE_LOGGING"] == "0"  # vLLM's records propagate instead of printing
    logging.getLogger("transformers").warning("said before the run dir was known")
    path = attach_run_log(tmp_path)
    _say_everything()
    console = capsys.readouterr().err
    assert "step table line" in console and "project warning" in console and "library error" in console
    for hidden in (
        "vllm refit info",
        "library warning",
        "Apex is not installed",
        "said before",
        "torch_dtype",
    ):
        assert hidden not in console
    logging.getLogger().handlers[-1].flush()
    text = (tmp_path / RUN_LOG).read_text()
    assert path == tmp_path / RUN_LOG
    for line in (
        "said before",
        "step table line",
        "vllm refit info",
        "library warning",
        "Apex is not",
        "torch_dtype",
    ):
        assert line in text
    assert text.index("said before") < text.index("step table line")  # start-up first


def test_verbose_shows_the_libraries_too(fresh_logging, capsys):
    setup_logging(verbose=True)
    _say_everything()
    console = capsys.readouterr().err
    for line in (
        "step table line",
        "vllm refit info",
        "library warning",
        "Apex is not installed",
        "torch_dtype",
    ):
        assert line in console


def test_a_second_setup_replaces_the_first(fresh_logging, capsys):
    setup_logging()
    setup_logging()
    logging.getLogger("nemo_resrl").info("once")
    assert capsys.readouterr().err.count("once") == 1


def test_library_prints_become_log_records_unless_verbose(fresh_logging, capsys, tmp_path):
    from nemo_resrl.common.logs import library_prints

    setup_logging()
    attach_run_log(tmp_path)
    with library_prints("megatron.bridge"):
        print(" > number of parameters on (tensor, pipeline) model parallel rank (0, 0): 42")
    assert "number of parameters" not in capsys.readouterr().out
    logging.getLogger().handlers[-1].flush()
    assert "megatron.bridge:  > number of parameters" in (tmp_path / RUN_LOG).read_text()
    setup_logging(verbose=True)
    with library_prints("megatron.bridge"):
        print("shown")
    assert "shown" in capsys.readouterr().out
