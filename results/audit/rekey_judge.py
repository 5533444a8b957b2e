"""Re-key an audit folder's judge.txt after a config-schema change that did not change the judge.

2026-12-06: DefaultEngineConfig became a LocalModelOptions (issue 18: every transformers option
for the demo judge), so its JSON, and with it the judge fingerprint, gained fields (batch_wait,
context_window, dtype, adapter) at values that change nothing. The records were kept only after
checking (1) that judge.txt is the fingerprint the old code gives the folder's settings (run this
script with the old tree first on PYTHONPATH, `--check`), and (2) that the engine the old settings
ran, TransformersEngineConfig(model, **old, dtype="auto") as the old
DefaultEngineConfig.transformers_config built it, equals the one the new settings run.

    PYTHONPATH=/tmp/old python results/audit/rekey_judge.py --check results/audit/baseline
    python results/audit/rekey_judge.py --write results/audit/baseline
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grm_plugin.audit import judge_fingerprint
from grm_plugin.config import DefaultEngineConfig, JudgeConfig, TransformersEngineConfig
from grm_plugin.reward import GenerativeRewardFn

mode, folders = sys.argv[1], [Path(a) for a in sys.argv[2:]]
for folder in folders:
    old = json.loads((folder / "audit.json").read_text())["judge"]
    cfg = JudgeConfig.model_validate(old)
    fp = judge_fingerprint(GenerativeRewardFn.from_config(cfg))
    stored = (folder / "judge.txt").read_text().strip()
    if mode == "--check":
        print(folder, "judge.txt matches these settings:", fp == stored)
        continue
    engine_old = {k: v for k, v in old["engine"].items() if k != "type"}
    ran_before = TransformersEngineConfig(model="M", **{**engine_old, "dtype": "auto"})
    runs_now = DefaultEngineConfig(**engine_old).transformers_config("M")
    assert ran_before == runs_now, (ran_before, runs_now)
    (folder / "judge.txt").write_text(fp + "\n")
    print(folder, "same engine; judge.txt", stored[:12], "->", fp[:12])
