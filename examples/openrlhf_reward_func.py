"""OpenRLHF reward target: ``--reward.remote_url /path/to/openrlhf_reward_func.py``.

OpenRLHF loads this file by path and calls ``reward_func(queries, prompts, labels)`` in a worker
thread of each rollout actor, one sample per call. The judge is configured by the file named in
$GRM_PLUGIN_CONFIG (a JudgeConfig, or sections judge/openrlhf/server; see the README), built
once per actor on the first call. Samples of one prompt that arrive within the server section's
``group_window`` (0.5 s) are judged together, up to ``group_size`` (8).

    export GRM_PLUGIN_CONFIG=/path/to/grm.yaml
    python -m openrlhf.cli.train_ppo_ray ... --reward.remote_url examples/openrlhf_reward_func.py

The HTTP server (``grm-plugin serve``) is usually the better choice: one judge for all actors
instead of one per actor.
"""

from grm_plugin.adapters.openrlhf import reward_func

__all__ = ["reward_func"]
