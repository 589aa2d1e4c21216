"""Evaluate a saved checkpoint without training.

    python -m jaxrec.evaluate <run_dir> [--step N] [--part test|valid]

Uses the config saved in the checkpoint; with sharding.num_devices-style simulation off, it runs
on the devices present, whatever plan the run was trained with (checkpoints are plan-independent).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from jaxrec.config import Config, to_config
from jaxrec.errors import JaxrecError, cli_errors


def config_from_dict(saved: dict) -> Config:
    return to_config(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), saved)))


def restore_run(run_dir: Path, step: int | None = None, one_device: bool = False):
    """(cfg, dataset, engine, state, step) of a run dir's checkpoint (default: the latest),
    laid out on the devices present (or on one device, unsharded)."""
    import jax

    from jaxrec.checkpoint import Checkpointer
    from jaxrec.data.dataset import load_dataset
    from jaxrec.train_lib import build_engine

    ckpt_dir = Path(run_dir).absolute() / "checkpoints"
    if not ckpt_dir.is_dir():
        raise JaxrecError(f"{run_dir} has no checkpoints/ directory (is it a jaxrec run dir?)")
    ckpt = Checkpointer(ckpt_dir, every=0, keep=1_000_000, async_save=False)
    try:
        saved = ckpt.all_steps()
        if not saved:
            raise JaxrecError(f"{ckpt_dir} holds no finished checkpoint")
        if step is not None and step not in saved:
            raise JaxrecError(f"{ckpt_dir} has no checkpoint of step {step}; it has steps "
                              f"{', '.join(map(str, saved))}")
        cfg = config_from_dict(_readable_meta(ckpt, [step] if step is not None else saved[::-1])["config"])
        cfg.sharding.num_devices = None
        if one_device:
            cfg.sharding.strategy, cfg.sharding.tables = "none", {}
            cfg.sharding.mesh.data = cfg.sharding.mesh.model = 1
        dataset = load_dataset(cfg.data)
        engine = build_engine(cfg, dataset.schema, devices=jax.devices()[:1] if one_device else None)
        state, _, step = ckpt.restore(engine, None, step)
    finally:
        ckpt.close()
    return cfg, dataset, engine, state, step


def _readable_meta(ckpt, steps: list[int]) -> dict:
    """The metadata of the first of `steps` whose metadata reads (restore then verifies the arrays)."""
    for step in steps:
        try:
            return ckpt.read_meta(step)
        except Exception:  # a damaged checkpoint: Checkpointer.restore says which and falls back
            continue
    raise JaxrecError(f"no checkpoint in {ckpt.directory} has readable metadata (steps {steps})")


def evaluate_checkpoint(run_dir: Path, step: int | None = None, part: str = "test") -> dict:
    from jaxrec.train_lib import make_evaluator

    _, dataset, engine, state, step = restore_run(run_dir, step)
    return {"step": step, "part": part, "metrics": make_evaluator(engine, dataset)(state, part)}


@cli_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--part", choices=("test", "valid"), default="test")
    args = parser.parse_args(argv)
    print(json.dumps(evaluate_checkpoint(args.run_dir, args.step, args.part), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
