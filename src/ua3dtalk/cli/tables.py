"""``ua3dtalk-tables``: the paper's tables from saved runs (DESIGN §9).

    ua3dtalk-tables --runs outputs/runs --table ablation
    ua3dtalk-tables --runs outputs/runs/paper_mead outputs/runs/baseline_talkinggaussian --table paper_t2 --format latex
    ua3dtalk-tables --runs outputs/runs --table ablation --format json   # mean, ci95, std, n of every cell
    ua3dtalk-tables --wandb my-team/ua3dtalk --table ablation            # online wandb runs (summaries)

Every ``metrics.json`` under the given directories is one run (written by ``ua3dtalk-train``); a file that
is not valid JSON or not a JSON object is an error naming the file. Runs are grouped by experiment name;
each cell is ``mean ± h`` over the group's runs (seeds × subjects), where ``h`` is the half-width of the
two-sided 95 % Student-t confidence interval of the mean, ``h = t(0.975, n−1) · s / √n`` (``s`` the
sample standard deviation, ``n`` the runs that have the metric). The ``n`` column counts the row's runs; a
cell whose ``n`` differs (metric missing or non-finite in some runs) says ``(n=k)``, and a cell of a single
run prints ``value (n=1)``: no interval. The ``test/<metric>`` key is used when present, else
``val/<metric>``. The best mean of each column is bold (lower or higher is better per metric, arrows in the
header).

E-FID is one column per feature extractor (``test/efid_landmark`` → ``E-FID (landmark)``, ``efid_regressor``,
``efid_3dmm`` …): numbers of different extractors are not comparable and are never averaged together.

Published numbers from a cited yaml (``experiments/published/*.yaml``) are appended after the runs' rows,
marked with their citation ``[k]`` and never averaged with the runs (a published E-FID goes to its own
column, named after the extractor the yaml states in ``e_fid_extractor``, else marked as not stated); the
sources under the table name the paper and the table the numbers were copied from (``source.table``, or a
row's own ``source_table``). The paper's relative claims are set against the same *kind* of change in the
runs (our full model vs. our baseline), followed by a line saying what the runs compare and on which data.

Tables:

* ``paper_t1`` — regular dataset (HDTF-style subjects): runs whose dataset is regular.
* ``paper_t2`` — emotional dataset (MEAD-style): runs whose dataset is emotional, except ablation rows.
* ``ablation`` — ``paper_mead`` (full model), every ``abl_*`` row and the ``baseline_*`` rows.

``--experiments PATTERN...`` (fnmatch) replaces the selection; ``--dataset NAME`` keeps the runs of one
dataset directory name (e.g. ``mead``, ``synth_small_emotional``).
"""
from __future__ import annotations

import argparse
import sys

from ..reporting.runs import METRICS, TABLES, TablesError, find_runs, wandb_runs
from ..reporting.tables import FORMATS, default_published_dir, load_published, make_table
from .args import Parser

def main(argv=None) -> int:
    ap = Parser(prog="ua3dtalk-tables", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--runs", nargs="*", default=[], help="run directories or parents of run directories")
    ap.add_argument("--wandb", nargs="*", default=[], metavar="ENTITY/PROJECT",
                    help="also read the runs of these wandb projects (online API)")
    ap.add_argument("--table", required=True, choices=sorted(TABLES))
    ap.add_argument("--format", default="md", choices=list(FORMATS),
                    help="md, latex, or json (every cell's mean, ci95, std, n)")
    ap.add_argument("--published", nargs="*", default=None,
                    help="published-number yamls or directories (default: experiments/published/; "
                         "--published with no file: none)")
    ap.add_argument("--experiments", nargs="*", default=None, help="experiment name patterns (replace the selection)")
    ap.add_argument("--dataset", default=None, help="keep the runs of this dataset directory name only")
    ap.add_argument("--metrics", default=None, help="comma-separated metric ids: " + ", ".join(METRICS)
                    + " (e_fid: a column per extractor; e_fid_<extractor>: that one)")
    ap.add_argument("--out", default=None, help="write the table to this file (atomically) instead of stdout")
    a = ap.parse_args(argv)
    try:
        if not a.runs and not a.wandb:
            raise TablesError("give --runs DIR... and/or --wandb ENTITY/PROJECT")
        if a.out:
            from ..utils.io import OutputError, check_output

            try:
                check_output(a.out, "--out", {f"--runs[{i}]": r for i, r in enumerate(a.runs)},
                             reads_back=("metrics.json",))
            except OutputError as e:
                raise TablesError(str(e)) from None
        runs = find_runs(a.runs)
        for p in a.wandb:
            runs += wandb_runs(p)
        if a.published is None:
            d = default_published_dir()
            pub = load_published([d]) if d else []
        else:
            pub = load_published(a.published)
        text = make_table(runs, a.table, a.format, pub, a.experiments, a.dataset,
                          a.metrics.split(",") if a.metrics else None)
    except TablesError as e:
        print(f"ua3dtalk-tables: {e}", file=sys.stderr)
        return 2
    if a.out:
        from ..utils.io import atomic_write_text

        atomic_write_text(a.out, text)
        print(f"ua3dtalk-tables: wrote {a.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
