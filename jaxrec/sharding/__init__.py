"""All partitioning: the mesh, the shard_map strategies and the planner."""
