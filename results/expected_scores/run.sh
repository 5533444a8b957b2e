#!/usr/bin/env bash
# Fixed k vs adaptive k vs expected-score voting, one draw, embedded judge, CPU.
# Items: the first 10 held-out items of the SPCT split (results/spct/data/heldout.jsonl, split
# by sha256(id); the judge was never tuned on them).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=results/expected_scores
python $R/decode_vs_forced.py int8 > $R/decode_vs_forced.txt
python $R/decode_vs_forced.py none >> $R/decode_vs_forced.txt
/usr/bin/time -v grm-plugin eval results/spct/data/heldout.jsonl --config $R/judge.yaml \
  --samples 1,4 --adaptive --expected-scores --limit 10 --out $R/eval --no-progress 2> $R/time.txt
python $R/summarize.py
