"""Evaluate a saved checkpoint without training.

    python -m jaxrec.evaluate <run_dir> [--step N] [--part test|valid]

Uses the config saved in the checkpoint and runs on the devices present, whatever plan the run
was trained with (checkpoints are plan-independent): the run's own mesh when it fits them, else
one device with the tables unsharded (as export restores), which says so on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from jaxrec.errors import JaxrecError, cli_errors

log = logging.getLogger("jaxrec.evaluate")


def evaluate_checkpoint(
    run_dir: Path, step: int | None = None, part: str = "test", num_devices: int | None = None
) -> dict:
    """num_devices: the devices to evaluate on (default: all present)."""
    import jax

    from jaxrec.restore import restore_run
    from jaxrec.train_lib import make_evaluator

    num_devices = jax.device_count() if num_devices is None else num_devices
    too_large = trained_mesh_too_large(Path(run_dir), step, num_devices)
    if too_large:
        log.warning("%s; evaluating on one device, tables unsharded", too_large)
    _, dataset, engine, state, step = restore_run(run_dir, step, one_device=bool(too_large))
    return {"step": step, "part": part, "metrics": make_evaluator(engine, dataset)(state, part)}


def trained_mesh_too_large(run_dir: Path, step: int | None, num_devices: int) -> str | None:
    """Why the mesh saved with the checkpoint (the step's, or the newest readable) does not fit
    `num_devices` devices, or None when it fits or cannot be read (restore_run then says why)."""
    from jaxrec.checkpoint import Checkpointer
    from jaxrec.config import config_from_dict
    from jaxrec.sharding.mesh import resolve_mesh_shape

    ckpt_dir = run_dir.absolute() / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    ckpt = Checkpointer(ckpt_dir, every=0, keep=1_000_000, async_save=False)
    try:
        for candidate in [step] if step is not None else ckpt.all_steps()[::-1]:
            try:
                mesh = config_from_dict(ckpt.read_meta(candidate)["config"]).sharding.mesh
            except Exception:  # damaged or missing: restore_run reports it or falls back
                continue
            try:
                resolve_mesh_shape(mesh, num_devices)
            except JaxrecError as err:
                return f"the run was trained on a mesh that does not fit here ({err})"
            return None
    finally:
        ckpt.close()
    return None


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
