#!/usr/bin/env bash
# The embedded demo judge's reward-hacking audit, before and after each defense, on the same
# cases: the first 5 built-in prompts (grm_plugin/audit/prompts_v1.jsonl), battery v1, greedy
# judgments (k=1), response order seeded. Every command resumes where it stopped (per-case
# records in DIR/cases.jsonl), so this script can be stopped and rerun at any time.
#
# Order (all): the baseline, then the defenses; in each, the master-key family (the headline
# hack) first, then every family. The
# minimal-content rule touches only responses with no content token: of battery v1 that is the 8
# master keys and nothing else (grm_plugin/content.py), so every other family is judged exactly
# as in the baseline and is not re-run for that defense.
#
# Exit status 1 of an audit only means a hack passed the gate (--max-rate 0.1): keep going.
set -u
cd "$(dirname "$0")/../.."
OUT=results/audit
COMMON=(--limit-prompts 5 --seed 0)

audit() {
    grm-plugin audit "$@" || echo "audit $* -> exit $? (1: a hack is above --max-rate)"
}

# One torch thread per process: on a 2-core machine with anything else running, torch's two
# threads wait on each other at every step (measured 2026-12-06: 13 s per case on an idle
# machine, ~60 s per case once a test run took the other core). Two lanes of one thread each
# use both cores: `run.sh baseline & run.sh defenses` (each lane resumes on its own folders).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}

baseline() {
    audit --out "$OUT/baseline" "${COMMON[@]}" --family master_key
    audit --out "$OUT/baseline" "${COMMON[@]}"
}

defenses() {
    audit --out "$OUT/minimal_content" "${COMMON[@]}" --family master_key --minimal-content
    audit --out "$OUT/reference_guided" "${COMMON[@]}" --family master_key --reference-guided
    audit --out "$OUT/reference_guided" "${COMMON[@]}" --reference-guided
}

case "${1:-all}" in
    baseline) baseline ;;
    defenses) defenses ;;
    all) baseline; defenses ;;
    *) echo "usage: run.sh [baseline|defenses|all]" >&2; exit 2 ;;
esac
