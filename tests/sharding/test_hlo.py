"""The communication accounting (sharding.hlo) checked by hand, and the planner's estimate against it."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxrec.config import compose_config
from jaxrec.data.types import Schema
from jaxrec.sharding.hlo import received_bytes_by_op
from jaxrec.sharding.memory import estimate_memory
from jaxrec.train_lib import abstract_inputs, build_engine, make_train_step


def test_every_collective_kind_on_a_2x4_mesh_by_hand():
    """f32[8] per device on a (data 2, model 4) mesh; g = 4 over `model`, 8 over both axes.
    all-gather -> f32[32] (128 B): 3/4 x 128 = 96; reduce-scatter -> f32[8] (32 B): 3 x 32 = 96;
    all-to-all of f32[8] in a while loop (its body once): 3/4 x 32 = 24; psum over all 8 devices
    in one branch of a cond (the busier branch counts): 2 x 7/8 x 32 = 56."""
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)

    def per_device(x, trips):
        gathered = jax.lax.all_gather(x, "model", tiled=True)
        y = jax.lax.psum_scatter(gathered, "model", tiled=True)
        y = jax.lax.fori_loop(0, trips[0], lambda _, c: c + jax.lax.all_to_all(c, "model", 0, 0, tiled=True), y)
        return jax.lax.cond(trips[0] > 0, lambda c: jax.lax.psum(c, ("data", "model")), lambda c: c, y)

    fn = jax.jit(
        jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(("data", "model")), P()), out_specs=P(("data", "model")), check_vma=False
        )
    )
    hlo = fn.lower(jax.ShapeDtypeStruct((64,), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.int32)).compile().as_text()
    assert received_bytes_by_op(hlo) == {
        "all-gather": 96,
        "reduce-scatter": 96,
        "all-to-all": 24,
        "all-reduce": 56,
        "collective-permute": 0,
    }


def test_group_forms_async_pairs_and_one_device_groups():
    hlo = """
  %all_gather.9 = f32[256,4]{1,0} all-gather(%x), channel_id=1, replica_groups={{0,1,2,3}}, dimensions={0}
  %all-reduce.13 = (f32[1,4]{1,0}, pred[], s32[3]{0}) all-reduce(%a, %b, %c), replica_groups=mesh['axis_0'=4,'axis_1'=1] {'axis_0'}, to_apply=%add
  %reduce_scatter.7 = bf16[64,4]{1,0} reduce-scatter(%y), replica_groups=[2,4]<=[8], dimensions={0}
  %all_gather.1 = s32[128]{0} all-gather(%z), replica_groups={{0},{1}}, dimensions={0}
  %all-reduce.2 = f32[8]{0} all-reduce(%w), replica_groups=mesh['axis_0'=4,'axis_1'=1] {'axis_1'}, to_apply=%add
  %all-gather-start = (f32[4]{0}, f32[16]{0}) all-gather-start(%v), replica_groups={{0,1,2,3}}
  %all-gather-done = f32[16]{0} all-gather-done(%all-gather-start)
"""
    # g = 4 everywhere but the one-device groups: 3/4 x (4096 + 64 at -done); 2 x 3/4 x 29; 3 x 512
    assert received_bytes_by_op(hlo) == {
        "all-gather": 3120,
        "all-reduce": 43.5,
        "reduce-scatter": 1536,
        "all-to-all": 0,
        "collective-permute": 0,
    }


@pytest.mark.parametrize("strategy,mesh", [("row_wise", (2, 4)), ("data_parallel", (8, 1)), ("column_wise", (2, 4))])
def test_planner_estimate_equals_the_compiled_step(strategy, mesh):
    """MF without biases, so the embeddings are all the traffic but the dense all-reduce (none)."""
    cfg = compose_config([])
    cfg.sharding.strategy = strategy
    cfg.sharding.mesh.data, cfg.sharding.mesh.model = mesh
    cfg.model.dim, cfg.model.use_bias, cfg.train.batch_size = 16, False, 256
    engine = build_engine(cfg, Schema(1000, 300))
    hlo = make_train_step(engine).lower(*abstract_inputs(engine, 256)).compile().as_text()
    xla = sum(received_bytes_by_op(hlo).values())
    planned = estimate_memory(engine.plan, 256).comm_bytes_received_per_device
    assert abs(planned - xla) / xla < 0.10, (planned, xla)
