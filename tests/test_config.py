"""Config helpers: learning-rate scaling with batch size."""

import os

import pytest

from jaxrec.config import Config, compose_config, scaled_lr, validate
from jaxrec.errors import JaxrecError


@pytest.mark.parametrize("rule,expected", [("none", 1e-3), ("linear", 4e-3), ("sqrt", 2e-3)])
def test_lr_scaling_rules(rule, expected):
    cfg = Config()
    cfg.optimizer.lr_scaling, cfg.optimizer.base_batch_size, cfg.train.batch_size = rule, 256, 1024
    assert scaled_lr(cfg, 1e-3) == pytest.approx(expected)


def test_lr_scaling_needs_an_integer_batch():
    cfg = Config()
    cfg.optimizer.lr_scaling, cfg.train.batch_size = "linear", "auto"
    with pytest.raises(JaxrecError, match="lr_scaling needs an integer train.batch_size"):
        validate(cfg)


def test_simulated_devices_replace_earlier_flags_and_wait_out_a_starved_machine(monkeypatch):
    from jaxrec.config import simulate_cpu_devices

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_dump_to=/tmp/x")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    simulate_cpu_devices(compose_config(["sharding.num_devices=4"]))
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_dump_to=/tmp/x",
        "--xla_force_host_platform_device_count=4",
        "--xla_cpu_collective_call_terminate_timeout_seconds=1800",
    ]
