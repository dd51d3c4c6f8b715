"""Does the demo teacher recipe give the same teacher on every fresh run? (the book's premise guard is not
enough: a recipe whose outcome flips with the last bit of floating point is a defect).

Trains the demo profile's teacher ``--runs`` times, each in a fresh process with its own empty checkpoint
store (the data is shared and generated once), and prints its metrics per run and the largest difference
between runs. Usage::

    python benchmarks/check_teacher_determinism.py --runs 3 [--profile demo]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap

CHILD = textwrap.dedent("""
    import json, sys
    from apnb import recipes as R
    from apnb import runner
    from apnb.store import Store
    p = runner.params_for(runner.repo_root() / "notebooks/00_synthetic_benchmark.ipynb", sys.argv[1])
    row = R.setup(p["benchmark"], p["teacher_recipe"], store=Store(sys.argv[2])).row
    print(json.dumps({k: row[k] for k in ["mAP", "mAP_nocue", "AUC", "point_acc", "point_acc_tol"]}))
""")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", default="demo")
    args = ap.parse_args()
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as store:
            out = subprocess.run([sys.executable, "-c", CHILD, args.profile, store], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(f"run {i + 1}: " + "  ".join(f"{k} {v:.4f}" for k, v in rows[-1].items()), flush=True)
    worst = max(abs(r[k] - rows[0][k]) for r in rows for k in rows[0])
    print(f"largest difference between runs: {worst:.2e}")


if __name__ == "__main__":
    main()
