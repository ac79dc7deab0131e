"""The stack's versions are checked where first used, with errors naming what was found and needed."""

from __future__ import annotations

import pytest

from nemo_resrl.compat.versions import MEGATRON_CORE, VLLM, StackVersionError, check_megatron_core, check_vllm


@pytest.mark.slow
def test_the_installed_stack_passes():
    check_megatron_core()
    check_vllm()


def test_a_too_old_megatron_core_or_vllm_is_named_with_the_version_needed():
    with pytest.raises(
        StackVersionError, match=rf"megatron-core 0.15.3 is installed; .* >= {MEGATRON_CORE[0]}"
    ):
        check_megatron_core("0.15.3")
    with pytest.raises(StackVersionError, match=rf"vllm 0.31.0 is installed; .* >= {VLLM[0]}"):
        check_vllm("0.31.0")


def test_a_vllm_whose_reload_weights_takes_no_iterator_is_refused():
    def reload_weights(self, weights_path=None):  # the signature of an older model runner
        pass

    with pytest.raises(StackVersionError, match="takes no weights_iterator"):
        check_vllm("0.40.0", reload_weights=reload_weights)


def test_an_untested_newer_version_only_warns(caplog):
    check_megatron_core("0.19.2")
    assert "not the tested version" in caplog.text
