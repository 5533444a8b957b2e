#!/usr/bin/env bash
# GRPO with verl 0.9.1 and a generative reward model (grm-plugin) as the reward: the `grm`
# reward manager judges the rollout.n responses of each prompt together (chunks of group_size).
#
#   pip install verl==0.9.1 ./grm-plugin          # plus verl's GPU extras (vllm, flash-attn...)
#   GRM_PLUGIN_CONFIG=judge.yaml bash examples/verl_run.sh          # judge: e.g. a vLLM server
#   JUDGE_IN_VERL=1 JUDGE_MODEL=/models/judge bash examples/verl_run.sh   # verl launches it
#
# The data files are verl parquet files (e.g. from verl's examples/data_preprocess/gsm8k.py):
# reward_model.ground_truth becomes the judge's reference answer; the prompt is the sample's
# raw_prompt.
set -euo pipefail

TRAIN=${TRAIN:-$HOME/data/gsm8k/train.parquet}
VAL=${VAL:-$HOME/data/gsm8k/test.parquet}
POLICY=${POLICY:-Qwen/Qwen2.5-0.5B-Instruct}
N=${N:-4}   # responses per prompt (GRPO group), judged together
# A grm-plugin JudgeConfig, e.g.
#   engine: {type: openai, base_url: http://127.0.0.1:8000/v1, model: judge}
#   sampling: {samples: 4, temperature: 0.5}
# It is passed in the config (reward_kwargs.grm_config), so it reaches every Ray reward worker.
GRM_PLUGIN_CONFIG=${GRM_PLUGIN_CONFIG:-$PWD/judge.yaml}

judge_args=()
if [[ "${JUDGE_IN_VERL:-0}" == 1 ]]; then
  # verl starts vLLM for the judge on its own resource pool and hands its router address to
  # the reward manager. enable_resource_pool=True keeps verl 0.9.1 on its streaming reward path,
  # which passes data_source, ground_truth and uid; without it the colocated path passes only
  # prompts and responses (KeyError 'data_source', no reference). custom_reward_function.path
  # must be set: otherwise verl treats an enabled reward model as a classifier and bypasses
  # reward managers. The GPUs of the judge's pool come on top of trainer.n_gpus_per_node.
  judge_args=(
    reward.reward_model.enable=True
    reward.reward_model.enable_resource_pool=True
    reward.reward_model.n_gpus_per_node=1
    reward.reward_model.nnodes=1
    reward.reward_model.model_path="${JUDGE_MODEL:?set JUDGE_MODEL}"
    reward.reward_model.rollout.name=vllm
    reward.reward_model.rollout.tensor_model_parallel_size=1
    reward.custom_reward_function.path=pkg://grm_plugin.adapters.verl
  )
fi

python -m verl.trainer.main_ppo \
  algorithm.adv_estimator=grpo \
  data.train_files="$TRAIN" data.val_files="$VAL" \
  data.train_batch_size=64 data.max_prompt_length=512 data.max_response_length=512 \
  actor_rollout_ref.model.path="$POLICY" \
  actor_rollout_ref.rollout.name=vllm actor_rollout_ref.rollout.n="$N" \
  actor_rollout_ref.actor.ppo_mini_batch_size=16 \
  reward.reward_manager.name=grm \
  reward.num_workers=1 \
  +reward.reward_kwargs.grm_config="$GRM_PLUGIN_CONFIG" \
  +reward.reward_kwargs.group_size="$N" \
  +reward.reward_kwargs.policy.scale=unit \
  "${judge_args[@]}" \
  trainer.n_gpus_per_node=1 trainer.nnodes=1 trainer.total_epochs=1 \
  "$@"
