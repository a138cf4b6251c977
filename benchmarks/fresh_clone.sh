#!/usr/bin/env bash
# Times what a newcomer does: clone, `make demo` (venv + install + first quickstart run), then `make demo`
# again (cached rerun). Usage: bash benchmarks/fresh_clone.sh [target-dir]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-$(mktemp -d)/ame-workbench}"
git clone -q "$repo" "$target"
cd "$target"
t0=$(date +%s); make demo > first.log 2>&1; t1=$(date +%s)
make demo > rerun.log 2>&1; t2=$(date +%s)
echo "make demo, fresh clone (install + first run): $((t1 - t0)) s"
echo "make demo, cached rerun:                      $((t2 - t1)) s"
echo "ratio rerun/first: $(python3 -c "print(round(($t2-$t1)/($t1-$t0), 3))")"
grep -A8 '^| model' rerun.log
