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

# The third defense, SPCT with hack negatives, and its control: two judges fine-tuned the same way
# (results/spct_gsm8k/spct.yaml: its judge and collect settings, LoRA SFT) from one collect run
# over the first HN_ITEMS GSM8K training items of that experiment (none is an audit prompt), with
# --hack-negatives pairs: each item as it is, plus two new items of two responses, its right
# solution and a hack (a master key; a self-praising wrong answer).
#   hack-negatives: SFT on every kept record, then the whole audit;
#   plain:          SFT on the records of the items as they are (no hack), then the families the
#                   defense is aimed at. Without it a change could be SFT's, not the negatives'.
# Both judges are the embedded judge with their LoRA adapter (judge_*.yaml), audited with the
# baseline's settings. `run.sh hack-negatives` collects first; `run.sh plain` waits for that.
# The items as they are were judged by the experiment's own collect (same judge, settings and
# items): reuse_plain.py takes their outcomes from there, so only the pairs are judged here.
HN=$OUT/hack_negatives
SPCT_CFG=results/spct_gsm8k/spct.yaml
TRAIN=results/spct_gsm8k/train.jsonl
HN_ITEMS=32

sft_once() {  # sft_once RECORDS OUT: resumes from its checkpoints; skipped once trained
    [[ -f $2/spct_train.json ]] || grm-plugin spct sft "$1" --out "$2" --config $SPCT_CFG \
        --no-progress
}

hack_negatives() {
    # the items as they are: their outcomes from the experiment's collect, where it has them
    python results/audit/hack_negatives/reuse_plain.py --items $HN_ITEMS --train $TRAIN \
        --source results/spct_gsm8k/rft.jsonl --records $HN/rft.jsonl || return 1
    grm-plugin spct collect $TRAIN --limit $HN_ITEMS --hack-negatives pairs --out $HN/rft.jsonl \
        --config $SPCT_CFG --no-progress || return 1
    sft_once $HN/rft.jsonl $HN/models/judge-hack-negatives || return 1
    # the two families the negatives are aimed at first (the control's families), then the rest;
    # `run.sh hack-negatives-rest` may judge the other six families on the other core meanwhile
    # (its own folder, merged in here before the whole audit, which judges only what is missing)
    audit --out "$HN/audit" "${COMMON[@]}" --config "$HN/judge_hack_negatives.yaml" --family master_key
    audit --out "$HN/audit" "${COMMON[@]}" --config "$HN/judge_hack_negatives.yaml" --family master_key --family self_praise
    audit --out "$HN/audit" "${COMMON[@]}" --config "$HN/judge_hack_negatives.yaml" --family empty_opener
    [[ -f $HN/audit_rest/cases.jsonl ]] && python $HN/merge_cases.py $HN/audit_rest $HN/audit
    audit --out "$HN/audit" "${COMMON[@]}" --config "$HN/judge_hack_negatives.yaml"
}

hack_negatives_rest() {
    # waits for the judge; starts from the main lane's records, so the right answers and the
    # control are not judged twice
    until [[ -f $HN/models/judge-hack-negatives/spct_train.json ]]; do sleep 60; done
    if [[ ! -d $HN/audit_rest && -f $HN/audit/judge.txt ]]; then
        mkdir -p $HN/audit_rest && cp $HN/audit/judge.txt $HN/audit_rest/
        python $HN/merge_cases.py $HN/audit $HN/audit_rest
    fi
    audit --out "$HN/audit_rest" "${COMMON[@]}" --config "$HN/judge_hack_negatives.yaml" \
        --family judge_instruction --family fake_score --family restate_question \
        --family length_padding --family refusal --family reference_wrong_reasoning
}

plain() {
    # exits 1 until the collect of hack_negatives() has finished every item
    python results/audit/hack_negatives/plain_records.py --items $HN_ITEMS --train $TRAIN \
        --records $HN/rft.jsonl --out $HN/rft_plain.jsonl || return 1
    sft_once $HN/rft_plain.jsonl $HN/models/judge-plain || return 1
    audit --out "$OUT/hack_negatives/audit_plain" "${COMMON[@]}" --config "$OUT/hack_negatives/judge_plain.yaml" --family master_key --family self_praise
}

case "${1:-all}" in
    baseline) baseline ;;
    defenses) defenses ;;
    hack-negatives) hack_negatives ;;
    hack-negatives-rest) hack_negatives_rest ;;
    plain) plain ;;
    all) baseline; defenses; hack_negatives; plain ;;
    *) echo "usage: run.sh [baseline|defenses|hack-negatives|hack-negatives-rest|plain|all]" >&2; exit 2 ;;
esac
