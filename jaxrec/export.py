"""Export a trained run as a serving bundle (see jaxrec.serving.bundle for the layout).

    python -m jaxrec.export <run_dir> --out <dir> [--precision float32|bfloat16|int8] [--step N]
        [--overwrite] [--report] [--index auto|none|hnsw|hnsw_l2|ivf|pq] [--index-param NAME=VALUE ...]
        [--index-recall R]

--index builds an ANN index (FAISS, the `ann` extra) over the stored item vectors. The index's
search setting (hnsw ef_search, ivf nprobe, pq rerank) is tuned to the smallest that reaches
recall@10 >= --index-recall (default 0.96) on 500 known users, and recall@10 against exact search
is then measured on 500 others. auto (the default) keeps exact retrieval below 100,000 items (or
when faiss is missing) and from there builds hnsw and pq, tunes both, and keeps the one that
answered the tuning queries faster.
--index-param overrides a setting of the named kind, e.g. ef_search=256 (hnsw: m,
ef_construction, ef_search; ivf: nlist, nprobe; pq: subspaces, rerank); a search setting given
this way is used as it is, not tuned.

--report also writes every precision to a temporary directory, reloads it, and prints each
one's size and test HR@10 / NDCG@10 next to float32 (and the metrics of every user served
through the cold-start encoder), saving the table as precision_report.json in the bundle directory;
with an index, it also ranks the test users through the index and prints HR@10 / NDCG@10 against
exact search on the same vectors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxrec.errors import JaxrecError, cli_errors
from jaxrec.progress import write_json_atomic
from jaxrec.serving.ann import KINDS, TARGET_RECALL
from jaxrec.serving.bundle import PRECISIONS, bundle_bytes

REPORT_COLUMNS = ("precision", "bundle_bytes", "vector_bytes", "hr@10", "hr@10_change", "ndcg@10", "ndcg@10_change")


def report_markdown(records: list[dict]) -> str:
    lines = ["| " + " | ".join(REPORT_COLUMNS) + " |", "|" + "---|" * len(REPORT_COLUMNS)]
    for r in records:
        cells = [r["precision"], f"{r['bundle_bytes']:,}", f"{r['vector_bytes']:,}"]
        cells += [f"{r[k]:+.4f}" if k.endswith("_change") else f"{r[k]:.4f}" for k in REPORT_COLUMNS[3:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_index_params(pairs: list[str]) -> dict[str, int]:
    """["ef_search=256", ...] -> {"ef_search": 256}; every index setting is an integer."""
    params = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if not value.strip().isdigit():
            raise JaxrecError(f"--index-param {pair!r} must be NAME=INTEGER, e.g. ef_search=256")
        params[name.strip()] = int(value)
    return params


@cli_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help="storage of the vectors")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument("--report", action="store_true", help="compare every precision (size, HR@10, NDCG@10)")
    parser.add_argument(
        "--index",
        default="auto",
        choices=("auto", "none", *KINDS),
        help="ANN index to build (default auto: the faster of hnsw and pq from 100,000 items, exact below)",
    )
    parser.add_argument(
        "--index-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an index setting, e.g. ef_search=256 (repeatable)",
    )
    parser.add_argument(
        "--index-recall",
        type=float,
        default=TARGET_RECALL,
        help=f"recall@10 the index's search setting is tuned to reach (default {TARGET_RECALL})",
    )
    args = parser.parse_args(argv)
    index_params = parse_index_params(args.index_param)
    if not 0 < args.index_recall <= 1:  # also refuses nan
        raise JaxrecError(f"--index-recall must be in (0, 1], got {args.index_recall}")
    if index_params and args.index == "auto":
        raise JaxrecError(f"--index-param sets a setting of one index kind: name it with --index ({', '.join(KINDS)})")

    from jaxrec.serving.exporter import (
        check_bundle_out,
        cold_start_description,
        cold_start_metrics,
        export_run,
        index_report,
        load_run,
        precision_report,
    )

    check_bundle_out(args.out, args.run_dir, args.overwrite)  # before the run loads
    run = load_run(args.run_dir, args.step)
    path = export_run(
        run,
        args.out,
        args.precision,
        overwrite=args.overwrite,
        index=args.index,
        index_params=index_params,
        index_recall=args.index_recall,
    )
    manifest = json.loads((path / "manifest.json").read_text())
    metrics, index = manifest["metrics"], manifest.get("index") or {}
    print(
        json.dumps(
            {
                "bundle": str(path),
                "precision": args.precision,
                "bytes": bundle_bytes(path),
                "step": run.step,
                "hr@10": metrics.get("hr@10"),
                "ndcg@10": metrics.get("ndcg@10"),
                "index": index.get("kind"),
                "index_params": index.get("params"),
                "index_recall@10": index.get("recall@10"),
                "index_build_seconds": index.get("build_seconds"),
            },
            indent=2,
        )
    )
    if args.report:
        records = precision_report(run)
        cold = cold_start_metrics(run)
        print(report_markdown(records))
        served = index_report(run, path)
        if served:
            print(
                f"{served['index']} index ({served['precision']}, recall@10 {served['recall@10']:.4f} at export): "
                f"hr@10 {served['index_hr@10']:.4f} ({served['hr@10_change']:+.4f} vs exact), "
                f"ndcg@10 {served['index_ndcg@10']:.4f} ({served['ndcg@10_change']:+.4f})"
            )
        if cold:
            print(
                f"cold start (every user served as new, {cold_start_description(run.encoder)}; float32): "
                f"hr@10 {cold['hr@10']:.4f}, ndcg@10 {cold['ndcg@10']:.4f}"
            )
        write_json_atomic(
            path / "precision_report.json",
            {
                "records": records,
                "cold_start": cold,
                "index": served,
                "step": run.step,
                "dataset": run.dataset.name,
                "model": run.cfg.model.name,
            },
        )


if __name__ == "__main__":
    main()
