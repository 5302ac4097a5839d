"""Distance to the paper at 1e6 samples of each ablation run: ours - paper, nats per datapoint.

    python results/ablations-1e6/summarize.py [FOLDER]

FOLDER is where run.sh wrote (the same default, results/runs/ablations-1e6); SUMMARY.md is
`summarize.py results/ablations-1e6`, the committed runs."""

import sys
from pathlib import Path

import pandas as pd

from vaerepro.analysis.compare import compare_run
from vaerepro.analysis.tables import to_markdown

root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/runs/ablations-1e6")
runs = sorted(root.glob("*-seed*"))
if not runs:
    sys.exit(f"{root}: no ablation runs (VARIANT-seedN folders); give the folder run.sh wrote")
rows = []
for run in runs:
    variant, seed = run.name.rsplit("-seed", 1)
    detail, _ = compare_run(run)
    last = detail[detail.samples == detail.samples.max()]
    for r in last.itertuples():
        rows.append(
            {
                "variant": variant,
                "seed": int(seed),
                "N_z": r.nz,
                "split": r.split,
                "ours": r.mean,  # one seed per folder: the mean is that run
                "diff": r.diff,
            }
        )
df = pd.DataFrame(rows)
table = df.pivot_table(
    index=["N_z", "variant"], columns=["split", "seed"], values="diff"
).sort_index()
table.columns = [f"{split} diff seed {seed}" for split, seed in table.columns]
for split in ("train", "test"):
    cols = [c for c in table.columns if c.startswith(split)]
    table[f"{split} diff mean"] = table[cols].mean(axis=1)
order = ["paper", "no-weight-decay", "torch-adagrad", "train-size-60000", "epoch-sampling"]
table = table.reset_index()
table["variant"] = pd.Categorical(table.variant, order)
table = table.sort_values(["N_z", "variant"])
print(to_markdown(table))
