"""One accounting of communication: bytes each device receives per step, read from compiled HLO.

Ring algorithms over a replica group of g devices, in bytes of the collective's result r:
  all-gather      (g - 1) / g x r      every device receives the g - 1 pieces it lacks
  reduce-scatter  (g - 1) x r          r is 1/g of what it reduces; g - 1 partial pieces arrive
  all-reduce      2 (g - 1) / g x r    a reduce-scatter, then an all-gather
  all-to-all      (g - 1) / g x r      all pieces but the one a device keeps for itself
  collective-permute  r
A collective over groups of one device moves nothing. Async pairs count once, at `-done`.

Control flow counts the step a normal batch takes: the body of a `while` once (jaxrec's loops
are the row exchange's rounds, 1 trip unless a bucket overflowed its capacity), and of a
`conditional` the branch that moves the most bytes (the train step's update branch; the other
one only counts a skipped non-finite step). Benchmarks, `jaxrec.plan` and tests use this; the
planner's estimate (sharding.memory) is checked against it.
"""

from __future__ import annotations

import re

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-to-all", "all-reduce", "collective-permute")
DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
}
_COLLECTIVE = re.compile(r"= (.+?) (" + "|".join(COLLECTIVES) + r")(-done)?\(")
_ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_LISTED_GROUP = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[\d+,(\d+)\]<=")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_PARTITIONS = re.compile(r"num_partitions=(\d+)")
_CALLED = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_ASYNC_START = re.compile(r"%?([\w.\-]+) = .*?-start\(.*replica_groups")
_ASYNC_DONE = re.compile(r"-done\(%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_RING = {
    "all-gather": lambda g: (g - 1) / g,
    "reduce-scatter": lambda g: g - 1,
    "all-reduce": lambda g: 2 * (g - 1) / g,
    "all-to-all": lambda g: (g - 1) / g,
    "collective-permute": lambda g: 1,
}


def group_size(line: str, num_devices: int) -> int:
    """Devices per replica group of a collective (listed, iota or mesh form; none: all devices)."""
    if match := _LISTED_GROUP.search(line):
        return len(match.group(1).split(",")) if match.group(1) else num_devices
    if match := _IOTA_GROUPS.search(line):
        return int(match.group(1))
    if match := _MESH_GROUPS.search(line):
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", match.group(1)))
        return int(np.prod([int(sizes[axis]) for axis in re.findall(r"'(\w+)'", match.group(2))]))
    return num_devices


def result_bytes(line: str) -> int:
    """Bytes of a collective instruction's result (every member of a tuple)."""
    shapes = _COLLECTIVE.search(line).group(1)
    return sum(
        DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
        for dtype, dims in _ARRAY.findall(shapes)
    )


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
    """Computation name -> its instruction lines, and the entry's name (a bare list of
    instructions, without headers, is read as the entry)."""
    if not any(_HEADER.match(line) for line in hlo_text.splitlines()):
        return {"entry": hlo_text.splitlines()}, "entry"
    bodies, entry, current = {}, None, None
    for line in hlo_text.splitlines():
        if current is None:
            if match := _HEADER.match(line):
                current = match.group(1)
                bodies[current] = []
                if line.startswith("ENTRY"):
                    entry = current
        elif line.startswith("}"):
            current = None
        else:
            bodies[current].append(line)
    return bodies, entry


def received_bytes_by_op(hlo_text: str) -> dict[str, float]:
    """Bytes one device receives per normal step, by collective opcode (see the module docstring)."""
    devices = int(m.group(1)) if (m := _PARTITIONS.search(hlo_text)) else 1
    bodies, entry = _computations(hlo_text)
    memo: dict[str, dict[str, float]] = {}
    started: dict[str, int] = {}  # async -start instruction -> its group size, read at its -done

    def visit(name: str) -> dict[str, float]:
        if name in memo:
            return memo[name]
        memo[name] = totals = dict.fromkeys(COLLECTIVES, 0.0)
        for line in bodies.get(name, ()):
            if start := _ASYNC_START.search(line):
                started[start.group(1)] = group_size(line, devices)
            if match := _COLLECTIVE.search(line):
                done = _ASYNC_DONE.search(line) if match.group(3) else None
                g = started.get(done.group(1), devices) if done else group_size(line, devices)
                if g > 1:
                    totals[match.group(2)] += _RING[match.group(2)](g) * result_bytes(line)
            called = [visit(c) for c in _CALLED.findall(line)]
            if branches := _BRANCHES.search(line):
                options = [visit(b.strip().lstrip("%")) for b in branches.group(1).split(",")]
                called.append(max(options, key=lambda t: sum(t.values())))
            elif " conditional(" in line and len(called) == 2:
                called = [max(called, key=lambda t: sum(t.values()))]
            for sub in called:
                for op, value in sub.items():
                    totals[op] += value
        return totals

    return visit(entry) if entry else dict.fromkeys(COLLECTIVES, 0.0)


def received_bytes_per_device(hlo_text: str) -> float:
    """Total bytes one device receives from collectives in one normal step."""
    return sum(received_bytes_by_op(hlo_text).values())
