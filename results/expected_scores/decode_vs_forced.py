"""KL between decode-time and teacher-forced next-token distributions, 60 greedy steps."""
import sys, torch, json
from grm_plugin.config import DefaultEngineConfig
from grm_plugin.engines import make_engine
from grm_plugin import GenerativeRewardFn
from grm_plugin.engines.base import GenerationRequest
eng = make_engine(DefaultEngineConfig(quantize=sys.argv[1]))
it=json.loads(open('results/spct/data/heldout.jsonl').readline())
msgs=GenerativeRewardFn(eng).judge_messages(it['prompt'], it['responses'], [0,1])
tok=eng.tokenizer
enc=tok(eng._render(GenerationRequest(msgs)), return_tensors='pt', add_special_tokens=False)
with torch.inference_mode():
    out=eng.model.generate(**enc, max_new_tokens=60, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
L=enc['input_ids'].shape[1]; seq=out.sequences[0].tolist()
gen=[torch.log_softmax(l[0].float(),-1) for l in out.logits]
tf=eng._position_logprobs(seq[:-1], L-1)
kls=[(g.exp()*(g-t)).sum().item() for g,t in zip(gen,tf)]
agree=sum(int(g.argmax()==t.argmax()) for g,t in zip(gen,tf))
print(f"quantize={sys.argv[1]}: prompt {L} tokens, {len(kls)} steps, mean KL(decode||teacher-forced) {sum(kls)/len(kls):.4f} nats, max {max(kls):.4f}, argmax agree {agree}/{len(kls)}")
