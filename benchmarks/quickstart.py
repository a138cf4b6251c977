"""Quickstart budgets: first run (empty cache: world + pretraining) vs cached rerun, and model quality.

Usage: .venv/bin/python benchmarks/quickstart.py [--smoke]

Prints both wall times, their ratio (measured in this one run), and checks the skeleton's goals:
first run <= 15 min including installation (installation is timed by benchmarks/fresh_clone.sh),
cached rerun <= 3 min, teacher zero-shot HM >= 0.80 and >= 15 points above the student's.
"""

import json
import tempfile
import time
from pathlib import Path

from workbench.pipeline import NOTEBOOK_DIR, run_notebook

import harness


def timed_run(run_dir: Path, cache_dir: Path, smoke: bool) -> tuple[float, dict]:
    start = time.perf_counter()
    run_notebook(NOTEBOOK_DIR / "00_quickstart.ipynb", run_dir, {"smoke": smoke, "cache_dir": str(cache_dir)},
                 progress=False)
    return time.perf_counter() - start, json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first_s, first = timed_run(root / "first", root / "cache", args.smoke)
        rerun_s, rerun = timed_run(root / "rerun", root / "cache", args.smoke)
    assert rerun["teacher"]["from_cache"] and rerun["student"]["from_cache"], "rerun did not use the cache"
    teacher_hm = first["results"]["teacher zero-shot"]["hm"]
    student_hm = first["results"]["student zero-shot"]["hm"]
    print(f"first run (empty cache)   {first_s:7.1f} s   stages {first['timings']}")
    print(f"cached rerun              {rerun_s:7.1f} s   stages {rerun['timings']}")
    print(f"rerun / first             {rerun_s / first_s:7.3f}")
    print(f"teacher zero-shot HM      {teacher_hm:7.3f}   (goal >= 0.80)")
    print(f"student zero-shot HM      {student_hm:7.3f}   (goal: teacher - student >= 0.15, got {teacher_hm - student_hm:.3f})")
    if not args.smoke:
        print("goals:", "rerun<=180s", "OK" if rerun_s <= 180 else "MISSED", "| teacher>=0.80",
              "OK" if teacher_hm >= 0.80 else "MISSED", "| gap>=0.15", "OK" if teacher_hm - student_hm >= 0.15 else "MISSED")


if __name__ == "__main__":
    main()
