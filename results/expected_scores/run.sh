#!/usr/bin/env bash
# Fixed k vs adaptive k vs expected-score voting, one draw, embedded judge, CPU.
# Items: the first 10 held-out items of the SPCT split (results/spct/data/heldout.jsonl, split
# by sha256(id); the judge was never tuned on them).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=results/expected_scores
/usr/bin/time -v grm-plugin eval results/spct/data/heldout.jsonl --config results/spct/judge_before.yaml \
  --samples 1,4 --adaptive --expected-scores --limit 10 --out $R/eval --no-progress 2> $R/time.txt
