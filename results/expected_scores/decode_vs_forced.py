"""KL between the embedded judge's decode-time and teacher-forced next-token distributions over
60 greedy tokens of one judgment (why expected scores are refused on int8 engines).

Usage: python results/expected_scores/decode_vs_forced.py int8|none
"""

import json
import sys

import torch

from grm_plugin import GenerativeRewardFn
from grm_plugin.config import DefaultEngineConfig
from grm_plugin.engines import make_engine
from grm_plugin.engines.base import GenerationRequest

quantize = sys.argv[1]
eng = make_engine(DefaultEngineConfig(quantize=quantize))
with open("results/spct/data/heldout.jsonl") as f:
    item = json.loads(f.readline())
msgs = GenerativeRewardFn(eng).judge_messages(item["prompt"], item["responses"], [0, 1])
tok = eng.tokenizer
enc = tok(eng._render(GenerationRequest(msgs)), return_tensors="pt", add_special_tokens=False)
with torch.inference_mode():
    out = eng.model.generate(
        **enc,
        max_new_tokens=60,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
    )
prompt_len = enc["input_ids"].shape[1]
seq = out.sequences[0].tolist()
decoded = [torch.log_softmax(step[0].float(), -1) for step in out.logits]
forced = eng._position_logprobs(seq[:-1], prompt_len - 1)
kls = [(d.exp() * (d - f)).sum().item() for d, f in zip(decoded, forced, strict=False)]
agree = sum(int(d.argmax() == f.argmax()) for d, f in zip(decoded, forced, strict=False))
print(
    f"quantize={quantize}: prompt {prompt_len} tokens, {len(kls)} steps, mean KL(decode||"
    f"teacher-forced) {sum(kls) / len(kls):.4f} nats, max {max(kls):.4f}, "
    f"argmax agree {agree}/{len(kls)}"
)
