"""Cluster launch: the SLURM launcher config composes, and SLURM's variables trigger
jax.distributed.initialize()'s own detection."""

import pytest

from jaxrec import distributed
from jaxrec.config import DistributedConfig, compose_conf
from jaxrec.errors import JaxrecError


def test_slurm_launcher_config_is_one_group_per_job():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='needs pip install -e ".[cluster]"')
    cfg = compose_conf(["hydra/launcher=slurm_group", "hydra.launcher.nodes=4"], with_hydra=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node) == (4, 1)


def test_cluster_detection_reads_the_task_count(monkeypatch):
    for var in distributed.CLUSTER_SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    assert not distributed.detected_cluster()
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not distributed.detected_cluster()
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.detected_cluster()


def test_a_rank_outside_the_group_fails_before_jax_starts():
    with pytest.raises(JaxrecError, match=r"train.distributed.process_id=2 must lie in 0..1"):
        distributed.initialize(DistributedConfig("127.0.0.1:1234", num_processes=2, process_id=2))
