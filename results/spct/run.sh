#!/usr/bin/env bash
# The CPU SPCT run recorded in results/spct/README.md, step by step (run from the repo root).
# Each step's wall time goes to results/spct/timings.txt; the fine-tuned judge goes to
# results/spct/models/ (git-ignored: ~2 GB of float32 weights).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=results/spct
step() { local name=$1; shift; local t0=$SECONDS; echo "+ $*" >&2; "$@"; echo "$name $((SECONDS - t0)) s" >> $R/timings.txt; }
case "${1:-all}" in
  split|all)
    step split python $R/make_split.py ../shared/data/preference_dev.jsonl --out-dir $R/data ;;&
  collect|all)
    step collect grm-plugin spct collect $R/data/train.jsonl --out $R/rft.jsonl --config $R/spct.yaml --no-progress ;;&
  sft|all)
    step sft grm-plugin spct sft $R/rft.jsonl --out $R/models/judge-sft --lora --config $R/spct.yaml --no-progress ;;&
  eval-before|all)
    step eval-before grm-plugin eval $R/data/heldout.jsonl --config $R/judge_before.yaml --samples 1,4 --adaptive --limit 10 --out $R/eval_before --no-progress ;;&
  eval-after|all)
    step eval-after grm-plugin eval $R/data/heldout.jsonl --config $R/judge_after.yaml --samples 1,4 --adaptive --limit 10 --out $R/eval_after --no-progress ;;
esac
