#!/usr/bin/env bash
# Issue 8's recipe search: each line trains with medical_fine_tuning.py and prints one row of the summary.
#   bash experiments/run.sh NAME [--SETTING=value ...]     e.g. bash experiments/run.sh lr1e-3 --LEARNING_RATE=1e-3
# Results land in outputs/experiments/NAME/ (results.json, evaluation/report.md); experiments/LOG.md records them.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; shift
out=outputs/experiments/$name
mkdir -p outputs/experiments
start=$(date +%s)
.venv/bin/python medical_fine_tuning.py --OUTPUT_DIR="$out" --REPORT_TO=none --PUSH_TO_HUB=False "$@" \
  > "$out.log" 2>&1 || { echo "$name FAILED (see $out.log)"; exit 1; }
.venv/bin/python - "$out" "$name" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
out, name, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = json.load(open(f"{out}/results.json"))
ev, t = r["evaluation"], r["timings_s"]
cell = lambda m, k: f"{ev[m][k]['value']:.3f}"
print(f"| {name} | {t['train'] / 60:.1f} | {seconds / 60:.1f} | {cell('base', 'format_compliance')} -> "
      f"{cell('tuned', 'format_compliance')} | {cell('base', 'rouge_l')} -> {cell('tuned', 'rouge_l')} | "
      f"{cell('base', 'perplexity')} -> {cell('tuned', 'perplexity')} | {r['metrics']['answer_statuses']} |")
PY
