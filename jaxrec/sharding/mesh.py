"""The device mesh: axes `data` (batch split, tables replicated) and `model` (tables split)."""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh

from jaxrec.config import MeshConfig
from jaxrec.errors import JaxrecError
from jaxrec.sharding.strategies import DATA, MODEL


def resolve_mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int]:
    """Replaces a -1 axis by all remaining devices and checks the product fits."""
    data, model = cfg.data, cfg.model
    if data == -1 and model == -1:
        raise JaxrecError("config keys sharding.mesh.data and sharding.mesh.model are both -1; at most one may be")
    if data == -1:
        data = num_devices // model
    if model == -1:
        model = num_devices // data
    if data < 1 or model < 1 or data * model > num_devices:
        raise JaxrecError(
            f"sharding.mesh data={cfg.data} x model={cfg.model} needs {data * model} devices; "
            f"{num_devices} are available ({jax.default_backend()})"
        )
    return data, model


def make_mesh(shape: tuple[int, int], devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())[: shape[0] * shape[1]]
    return jax.make_mesh(shape, (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)
