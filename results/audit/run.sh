#!/usr/bin/env bash
# The embedded demo judge's reward-hacking audit, before and after each defense, on the same
# cases: the first 5 built-in prompts (grm_plugin/audit/prompts_v1.jsonl), battery v1, greedy
# judgments (k=1), response order seeded. Every command resumes where it stopped (per-case
# records in DIR/cases.jsonl), so this script can be stopped and rerun at any time.
#
# Order: the master-key family before and after both defenses first (the headline hack; ~1 CPU
# hour on 2 cores), then every family before and with the reference-guided prompt. The
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

audit --out "$OUT/baseline" "${COMMON[@]}" --family master_key
audit --out "$OUT/minimal_content" "${COMMON[@]}" --family master_key --minimal-content
audit --out "$OUT/reference_guided" "${COMMON[@]}" --family master_key --reference-guided
audit --out "$OUT/baseline" "${COMMON[@]}"
audit --out "$OUT/reference_guided" "${COMMON[@]}" --reference-guided
