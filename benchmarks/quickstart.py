"""Quickstart budgets: first run (empty cache: world + pretraining) vs cached rerun, and model quality.

Usage: .venv/bin/python benchmarks/quickstart.py [--smoke]

Prints both wall times, their ratio (measured in this one run), and checks issue 15's budgets and regime:
first run within 12 min including installation (installation is timed by benchmarks/fresh_clone.sh),
cached rerun <= 90 s, and the ``"regime"`` object of the first run against ``workbench.regime.TARGETS``
(benchmarks/regime.py does the same over several world seeds).
"""

import json
import tempfile
import time
from pathlib import Path

from workbench.sweeps import NOTEBOOK_DIR, run_notebook
from workbench.regime import regime_table

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
    print(f"first run (empty cache)   {first_s:7.1f} s   stages {first['timings']}")
    print(f"cached rerun              {rerun_s:7.1f} s   stages {rerun['timings']}")
    print(f"rerun / first             {rerun_s / first_s:7.3f}")
    print(regime_table(first["regime"]))
    if not args.smoke:
        print("goals:", "rerun<=90s", "OK" if rerun_s <= 90 else "MISSED", "| regime targets",
              "OK" if all(first["regime"]["met"].values()) else "MISSED")


if __name__ == "__main__":
    main()
