"""The ``slurm`` fixture: one real single-node Slurm (munged, slurmctld, slurmd on this machine) for the
tests of this directory, installed with apt-get when missing (root), started once, stopped at the end.
Where it cannot be installed or started the tests skip and say why (set NEMO_RESRL_APT_INSTALL=0 to
never install)."""

from __future__ import annotations

import pytest

from tests.slurm.cluster import LocalSlurm, Unavailable, ensure_installed


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    try:
        ensure_installed()
    except Unavailable as e:
        pytest.skip(f"no Slurm: {e}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm-cluster"))
    try:
        cluster.start()
    except Unavailable as e:
        cluster.stop()
        pytest.skip(f"Slurm would not start here: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
