"""Export a trained run as a serving bundle (see jaxrec.serving.bundle for the layout).

    python -m jaxrec.export <run_dir> --out <dir> [--precision float32|bfloat16|int8] [--step N]
        [--overwrite] [--report]

--report also writes every precision to a temporary directory, reloads it, and prints each
one's size and test HR@10 / NDCG@10 next to float32 (and the metrics of every user served
through the cold-start encoder), saving the table as precision_report.json in the bundle directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxrec.errors import cli_errors
from jaxrec.progress import write_json_atomic
from jaxrec.serving.bundle import PRECISIONS, bundle_bytes

REPORT_COLUMNS = ("precision", "bundle_bytes", "vector_bytes", "hr@10", "hr@10_change", "ndcg@10", "ndcg@10_change")


def report_markdown(records: list[dict]) -> str:
    lines = ["| " + " | ".join(REPORT_COLUMNS) + " |", "|" + "---|" * len(REPORT_COLUMNS)]
    for r in records:
        cells = [r["precision"], f"{r['bundle_bytes']:,}", f"{r['vector_bytes']:,}"]
        cells += [f"{r[k]:+.4f}" if k.endswith("_change") else f"{r[k]:.4f}" for k in REPORT_COLUMNS[3:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help="storage of the vectors")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument("--report", action="store_true", help="compare every precision (size, HR@10, NDCG@10)")
    args = parser.parse_args(argv)

    from jaxrec.serving.exporter import (
        cold_start_description, cold_start_metrics, export_run, load_run, precision_report,
    )

    run = load_run(args.run_dir, args.step)
    path = export_run(run, args.out, args.precision, overwrite=args.overwrite)
    metrics = json.loads((path / "manifest.json").read_text())["metrics"]
    print(json.dumps({"bundle": str(path), "precision": args.precision, "bytes": bundle_bytes(path), "step": run.step,
                      "hr@10": metrics.get("hr@10"), "ndcg@10": metrics.get("ndcg@10")}, indent=2))
    if args.report:
        records = precision_report(run)
        cold = cold_start_metrics(run)
        print(report_markdown(records))
        if cold:
            print(f"cold start (every user served as new, {cold_start_description(run.encoder)}; float32): "
                  f"hr@10 {cold['hr@10']:.4f}, ndcg@10 {cold['ndcg@10']:.4f}")
        write_json_atomic(path / "precision_report.json", {"records": records, "cold_start": cold, "step": run.step,
                                                           "dataset": run.dataset.name, "model": run.cfg.model.name})


if __name__ == "__main__":
    main()
