"""The config layer names the algorithm registries' entries without importing them: both must agree."""

from nemo_resrl.algorithms.advantages import ADVANTAGE_ESTIMATORS
from nemo_resrl.algorithms.losses import POLICY_LOSSES
from nemo_resrl.config.specs import ADVANTAGE_ESTIMATOR_NAMES, ALGORITHM_SPECS, POLICY_LOSS_NAMES


def test_the_config_names_every_registered_function_and_no_other():
    assert sorted(ADVANTAGE_ESTIMATOR_NAMES) == ADVANTAGE_ESTIMATORS.names()
    assert sorted(POLICY_LOSS_NAMES) == POLICY_LOSSES.names()


def test_every_algorithm_spec_uses_a_registered_estimator():
    for name in ALGORITHM_SPECS.names():
        assert ALGORITHM_SPECS.get(name).estimator in ADVANTAGE_ESTIMATORS
