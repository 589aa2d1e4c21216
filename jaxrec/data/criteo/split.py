"""Which split each line of the Criteo logs belongs to, from its line number alone.

split=days, the convention of DLRM and MLPerf: the logs are days in order; the days before the
last are train, and the last day is cut in half by line order, the first half (rounded up) test
and the second half valid (as NVIDIA's and MLPerf's DLRM preprocessing cut day 23 of Terabyte).
Several input files are one day each (day_0 .. day_23); a single file (Kaggle's train.txt, 7
days) is cut into 7 days of equal line counts, the remainder going to the first days (DLRM's
data_utils).

split=random: a line is test with probability test_ratio and valid with valid_ratio, from a
hash of (seed, line number): no permutation is held, any piece decides its lines alone, and the
split does not depend on how the files were cut into pieces.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "valid", "test")  # split codes 0, 1, 2
KAGGLE_DAYS = 7


def split_plan(options: dict, lines_per_file: list[int]) -> dict:
    """The split in line numbers over all input files (counted across files, from 0)."""
    if options["split"] == "random":
        return {
            "kind": "random",
            "seed": options["seed"],
            "valid_ratio": options["valid_ratio"],
            "test_ratio": options["test_ratio"],
        }
    if len(lines_per_file) == 1:
        base, extra = divmod(lines_per_file[0], KAGGLE_DAYS)
        days = [base + (d < extra) for d in range(KAGGLE_DAYS)]
    else:
        days = list(lines_per_file)
    last_start = sum(days[:-1])
    test_lines = -(-days[-1] // 2)
    return {
        "kind": "days",
        "day_lines": days,
        "train_lines": [0, last_start],
        "test_lines": [last_start, last_start + test_lines],
        "valid_lines": [last_start + test_lines, last_start + days[-1]],
    }


def assign_splits(plan: dict, options: dict, line: np.ndarray) -> np.ndarray:
    """uint8 [n]: 0 train, 1 valid, 2 test, for global line numbers `line` [n]."""
    if plan["kind"] == "random":
        u = _uniform(plan["seed"], line)
        return np.where(u < plan["test_ratio"], 2, np.where(u < plan["test_ratio"] + plan["valid_ratio"], 1, 0)).astype(
            np.uint8
        )
    return np.where(line < plan["test_lines"][0], 0, np.where(line < plan["test_lines"][1], 2, 1)).astype(np.uint8)


def _uniform(seed: int, index: np.ndarray) -> np.ndarray:
    """float64 [n] in [0, 1): splitmix64 of (seed, index), a fixed function of both."""
    with np.errstate(over="ignore"):
        z = np.asarray(index, np.uint64) + np.uint64(seed + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
