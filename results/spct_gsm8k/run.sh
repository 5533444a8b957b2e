#!/usr/bin/env bash
# The GSM8K SPCT experiment (PLAN.md): runs or resumes every stage, in order.
#
#   results/spct_gsm8k/run.sh            # all stages; rerun after any stop to resume
#   results/spct_gsm8k/run.sh collect    # one stage (split make-pairs collect sft rl adapter
#                                        #   eval-base eval-rft eval-rl report; train-ids
#                                        #   rewrites train_ids.txt; status says where each
#                                        #   stage stands, read only, safe while one runs;
#                                        #   eval-base_grammar eval-rft_grammar
#                                        #   eval-rl_grammar judge the preference items as
#                                        #   the demo would, score grammar on)
#   TIME_LIMIT=3h results/spct_gsm8k/run.sh   # stop after 3 hours (a "piece"); rerun resumes
#
# Resume units: make-pairs and collect per problem / item (their progress logs), sft and rl from
# trainer checkpoints (save_steps in spct.yaml), eval per chunk of items within a shard (grm-plugin
# eval saves each chunk in its --out; a shard whose report.json exists is not run again). Each command's wall time is appended to timings.txt. One invocation runs
# its stages one after the other; separate invocations may run side by side on other stages
# (rl beside eval-rft), or on the same eval stage (its shards are locked one lane each).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=results/spct_gsm8k
DATA=${DATA:-../shared/data}
CFG=$R/spct.yaml
if [[ -n "${TIME_LIMIT:-}" && -z "${_SPCT_TIMED:-}" ]]; then
  # SIGINT first: trainers and our writers stop between records; a rerun picks up from there
  _SPCT_TIMED=1 exec timeout --signal=INT --kill-after=5m "$TIME_LIMIT" "$0" "$@"
fi

step() {  # step NAME CMD...: run CMD, append its wall time to timings.txt
  local name=$1; shift
  local t0=$SECONDS
  echo "+ $*" >&2
  "$@"
  echo "$name $((SECONDS - t0)) s $(date -u +%FT%TZ)" >> $R/timings.txt
}

split() {
  [[ -f $R/data/problems.jsonl ]] && return 0
  step split python $R/split.py --data "$DATA" --out-dir $R/data
}

# make-pairs stops after the first PROBLEMS problems of data/problems.jsonl. 328 (200 items): on
# 2026-12-07 collect was 65 items from the end of them, and going on to ~400 problems (~24 more
# records) would cost a llama-cpp-python build each session (this machine starts bare) on top of
# ~1 h of the 1.5B policy (PLAN.md, update of 2026-12-07 08:20 UTC). Raise it to add items;
# collect then judges only the new ones.
PROBLEMS=${PROBLEMS:-328}

make_pairs() {  # resumes per problem; a finished run starts no server
  split
  local made=0
  [[ -f $R/train.progress.jsonl ]] && made=$(grep -c . $R/train.progress.jsonl || true)
  if (( made < PROBLEMS )); then
    # the policy (spct.yaml make_pairs.engine): the 1.5B model on llama.cpp, port 8091, for
    # this stage only; stopped again however the stage ends
    local gguf
    gguf=$($R/fetch_policy.sh)
    GGUF=$gguf PORT=8091 $R/llama_server.sh > /dev/null
    trap 'PORT=8091 $R/llama_server.sh stop' EXIT
    step make-pairs grm-plugin spct make-pairs $R/data/problems.jsonl --out $R/train.jsonl \
      --config $CFG --limit "$PROBLEMS" --no-progress
    PORT=8091 $R/llama_server.sh stop
    trap - EXIT
  fi
  train_ids
}

train_ids() {  # every id used in training, checked against the held-out ids
  # collect and rl read train.jsonl; rft.jsonl is read too, because collect can have judged an
  # item that a resumed make-pairs then dropped (a problem stopped between its two writes)
  python - "$R" <<'EOF'
import json, sys
from pathlib import Path
r = Path(sys.argv[1])
ids = {}
for name in ("train.jsonl", "rft.jsonl"):
    if (r / name).is_file():
        for ln in (r / name).read_text().splitlines():
            if ln.strip():
                ids.setdefault(json.loads(ln)["id"], None)
held = set((r / "data" / "heldout_ids.txt").read_text().split())
assert not held & set(ids), "a held-out id is in the training items"
(r / "train_ids.txt").write_text("".join(i + "\n" for i in ids))
print(f"train_ids.txt: {len(ids)} ids, none held out")
EOF
}

collect() {  # resumes per item
  step collect grm-plugin spct collect $R/train.jsonl --out $R/rft.jsonl --config $CFG \
    --no-progress
  train_ids
}

sft() {  # resumes from the last checkpoint in models/judge-rft.checkpoints
  if [[ ! -f $R/models/judge-rft/spct_train.json ]]; then
    step sft grm-plugin spct sft $R/rft.jsonl --out $R/models/judge-rft --config $CFG --no-progress
  fi
  # the RFT judge is the adapter alone (~18 MB): committed, so that rl and eval-rft go on
  # where this machine's ignored models/ is gone (a fresh machine) without hours of sft again
  [[ -f $R/adapter_rft/spct_train.json ]] || keep_adapter $R/models/judge-rft $R/adapter_rft
}

restore_rft() {  # models/judge-rft from the committed adapter_rft/, where it is missing
  if [[ ! -f $R/models/judge-rft/spct_train.json && -f $R/adapter_rft/spct_train.json ]]; then
    keep_adapter $R/adapter_rft $R/models/judge-rft
  fi
}

rl() {  # resumes from the last checkpoint in models/judge-rl.checkpoints
  [[ -f $R/models/judge-rl/spct_train.json ]] && return 0
  step rl grm-plugin spct rl $R/train.jsonl --base $R/models/judge-rft --out $R/models/judge-rl \
    --config $CFG --no-progress
}

keep_adapter() {  # keep_adapter SRC DEST: copy an adapter folder, checked against its manifest
  # (sha256; <= 32 MiB, what may be committed), with a SHA256SUMS beside it
  local src=$1 dest=$2 f
  mkdir -p "$dest"
  for f in adapter_config.json adapter_model.safetensors spct_adapter.json spct_train.json; do
    if [[ -f $src/$f ]]; then cp "$src/$f" "$dest/"; fi
  done
  python - "$dest" <<'EOF'
import json, sys
from pathlib import Path
from grm_plugin.engines.transformers_engine import check_adapter_weights, file_sha256
d = Path(sys.argv[1])
manifest = json.loads((d / "spct_adapter.json").read_text())
check_adapter_weights(d, manifest)
weights = d / manifest["weights"]
size = weights.stat().st_size
assert size <= 32 * 2**20, f"{weights} is {size / 2**20:.1f} MiB (> 32 MiB)"
sha = file_sha256(weights)
(d / "SHA256SUMS").write_text(f"{sha}  {weights.name}\n")
print(f"{d}: {size / 2**20:.1f} MiB, sha256 {sha}")
EOF
}

adapter() {  # the final judge's LoRA adapter (rl saves it stacked onto the RFT one) -> adapter/
  [[ -f $R/models/judge-rl/spct_adapter.json ]] || { echo "no rl adapter yet" >&2; exit 1; }
  keep_adapter $R/models/judge-rl $R/adapter  # its sha256 goes in the README
}

evaluate() {  # evaluate STAGE: every held-out shard, then the preference items; per shard
  # Several lanes may run `run.sh eval-STAGE` at once (one thread each, e.g. two for eval-rl
  # once rl is done): each takes a shard no other lane holds (a lock per shard, released when
  # its process ends, however it ends) and skips the held ones.
  local stage=$1 shard name ks lock
  shift
  local shards=("$@")
  [[ ${#shards[@]} -eq 0 ]] && shards=($R/data/heldout_k8_*.jsonl $R/data/heldout_k1_*.jsonl $R/data/preference.jsonl)
  mkdir -p $R/eval/$stage
  for shard in "${shards[@]}"; do
    name=$(basename "$shard" .jsonl)
    [[ -f $R/eval/$stage/$name/report.json ]] && continue
    exec {lock}> "$R/eval/$stage/$name.lock"
    if ! flock -n "$lock"; then
      echo "eval-$stage $name: another lane has it" >&2
      exec {lock}>&-
      continue
    fi
    # the lane that held it may have finished it meanwhile
    if [[ -f $R/eval/$stage/$name/report.json ]]; then exec {lock}>&-; continue; fi
    ks=1
    [[ $name == heldout_k8_* ]] && ks=1,2,4,8
    # one draw of max(k) samples per item; k < 8 are its first k samples. --seed: the same
    # response orders for every stage, so stages differ only in the judge. --chunk-size 4: at
    # most 4 items (32 judgments, ~20 min here) lost to a stop
    step "eval-$stage-$name" grm-plugin eval "$shard" --config $R/judge_$stage.yaml \
      --samples $ks --seed 0 --chunk-size 4 --out $R/eval/$stage/$name --no-progress
    exec {lock}>&-
  done
}

report() {
  step report python $R/per_item.py
}

stages=("$@")
[[ ${#stages[@]} -eq 0 ]] && stages=(split make-pairs collect sft rl adapter eval-base eval-rft eval-rl report)
restore_rft
for s in "${stages[@]}"; do
  case $s in
    split) split ;;
    make-pairs) make_pairs ;;
    train-ids) train_ids ;;
    collect) collect ;;
    sft) sft ;;
    rl) rl ;;
    adapter) adapter ;;
    eval-base) evaluate base ;;
    eval-rft) evaluate rft ;;
    eval-rl) evaluate rl ;;
    # not stages: each judge as the demo runs it (score grammar on), on the preference items,
    # to decide whether the trained judge becomes the demo's default (judge_*_grammar.yaml)
    eval-base_grammar|eval-rft_grammar|eval-rl_grammar)
      evaluate "${s#eval-}" $R/data/preference.jsonl ;;
    report) report ;;
    status) python $R/status.py ;;
    *) echo "unknown stage: $s" >&2; exit 2 ;;
  esac
done
