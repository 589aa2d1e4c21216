"""Config helpers: learning-rate scaling with batch size."""

import pytest

from jaxrec.config import Config, scaled_lr, validate
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
