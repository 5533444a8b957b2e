#!/usr/bin/env bash
# PPO/GRPO with OpenRLHF 0.11.2 and a generative reward model served by grm-plugin.
#
#   1. a judge model behind an OpenAI-compatible server (vLLM here; any server works),
#   2. `grm-plugin serve`: OpenRLHF's remote-RM protocol on 127.0.0.1:5000,
#   3. OpenRLHF, pointed at it with --reward.remote_url.
#
# Every rollout sample becomes one POST /get_reward. The server holds it up to --group-window
# seconds for the other samples of its prompt and judges them together (principles, critiques,
# 1-10 scores), answering (score - 1) / 9 as the reward. A failed judgment never becomes an HTTP
# error (OpenRLHF's client retries only 5 times and then stops the training): the sample gets
# the mean reward of the others judged with it (zero advantage under GRPO), flagged grm_failed.
# A sample judged alone (window closed) is judged pointwise.
set -euo pipefail

# any instruct model can judge; one trained for this format (DeepSeek-GRM style) judges better
JUDGE_MODEL=${JUDGE_MODEL:-Qwen/Qwen2.5-7B-Instruct}
POLICY_MODEL=${POLICY_MODEL:-Qwen/Qwen2.5-1.5B-Instruct}
DATASET=${DATASET:-OpenRLHF/prompt-collection-v0.1}
PORT=${PORT:-5000}
# a shared secret: the server answers 401 without it. OpenRLHF's client sets no headers, but it
# sends a URL's user:password as an Authorization header and leaves them out of its error logs
# (a ?token=... would be logged by OpenRLHF's client whenever a request fails).
export GRM_PLUGIN_TOKEN=${GRM_PLUGIN_TOKEN:-$(python -c 'import secrets; print(secrets.token_hex(16))')}

# 1. the judge: its own GPU, away from the policy's vLLM engines
CUDA_VISIBLE_DEVICES=${JUDGE_GPU:-7} vllm serve "$JUDGE_MODEL" --port 8000 \
    --served-model-name judge --max-model-len 8192 &
JUDGE_PID=$!

# 2. the reward server. --samples 4: four judgments voted per sample (the paper's voting@k).
#    --tokenizer: the POLICY's tokenizer; its special tokens (EOS, padding, chat template) are
#    cut from the decoded query before the judge sees the response. --deadline 150: a request
#    not judged by then gets the failure value, well inside OpenRLHF's 180 s client timeout.
#    --group-size = n_samples_per_prompt below; --group-window 5: samples of a prompt that finish
#    generating up to 5 s after the first are judged with it (later ones form their own group).
grm-plugin serve --server http://127.0.0.1:8000/v1 --server-model judge \
    --samples 4 --max-new-tokens 1024 \
    --tokenizer "$POLICY_MODEL" --deadline 150 \
    --group-size 8 --group-window 5 \
    --host 127.0.0.1 --port "$PORT" &
SERVE_PID=$!
trap 'kill $SERVE_PID $JUDGE_PID 2>/dev/null || true' EXIT

# wait until both answer (loading the judge takes a while)
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null \
    && curl -sf http://127.0.0.1:8000/v1/models >/dev/null; do sleep 5; done

# 3. training. Labels (--data.label_key) become the judge's reference answer when non-empty.
#    Rewards are in [0, 1], which suits --algo.dynamic_filtering_range's default (0, 1).
python -m openrlhf.cli.train_ppo_ray \
    --actor.model_name_or_path "$POLICY_MODEL" \
    --reward.remote_url "http://grm:$GRM_PLUGIN_TOKEN@127.0.0.1:$PORT/get_reward" \
    --data.prompt_dataset "$DATASET" \
    --data.input_key context_messages \
    --data.apply_chat_template \
    --algo.advantage.estimator group_norm \
    --rollout.n_samples_per_prompt 8 \
    --rollout.batch_size 128 \
    --rollout.max_new_tokens 1024 \
    --train.batch_size 128 \
    --data.max_len 2048 \
    --vllm.num_engines 2 \
    --actor.num_gpus_per_node 4 \
    --ckpt.output_dir ./checkpoint/grm-ppo

# Without a server: the .py target judges inside each rollout actor (one judge per actor; the
# actors need GRM_PLUGIN_CONFIG in their environment, e.g. through ray's runtime_env):
#   export GRM_PLUGIN_CONFIG=grm.yaml
#   --reward.remote_url /path/to/grm-plugin/examples/openrlhf_reward_func.py
# (any copy of that file works: it only re-exports grm_plugin.adapters.openrlhf.reward_func)
