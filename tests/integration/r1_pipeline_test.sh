#!/usr/bin/env bash
# The tiny R1 pipeline, shortened (a few steps per stage), from the graph files: data, pretrain,
# cold-start SFT, GRPO, held-out evaluation. Checks that each stage hands the next what it needs
# and that GRPO really trains:
#   - SFT batches score completion tokens only, and its eval loss falls;
#   - GRPO emits whole groups of num_generations completions per prompt, logs TRL's metrics,
#     on-policy (one generation batch in flight: clip_ratio is 0 at μ = 1; the KL to the
#     reference starts at 0), and its
#     checkpoint differs from the SFT one it started from;
#   - the same GRPO run twice gives the same completions and parameters (seeded sampling);
#   - eval.json holds accuracy and format rate in [0, 1];
#   - LoRA SFT saves adapters alone, leaves the base as it was, and its adapters decode the same
#     kept separate, merged by the model resource, or merged by weir generate --adapter;
#   - rl.Generate with speculative=true (MTP drafts) gives the greedy completions and logs
#     mtp_acceptance.
# usage: r1_pipeline_test.sh WEIR SOURCE_DIR
set -euo pipefail
weir=$1
src=$(cd "$2" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
run() { "$weir" run "$@" --progress none > /dev/null 2>> "$work/log" || { cat "$work/log" >&2; fail "weir run $1"; }; }
py() { /usr/bin/python3 -c "$@"; }

g=$src/graphs/tiny
run "$g/data.pbtxt" --out "$work/data"
tok=$work/data/tokenizer.json
run "$g/pretrain.pbtxt" --out "$work/pre" --set shards="$work/data/shards" --set steps=4
run "$g/sft.pbtxt" --out "$work/sft" --set tokenizer="$tok" --set steps=6 --set epochs=2 \
  --set init_from="$work/pre/checkpoints/step-000004"
sft=$work/sft/checkpoints/step-000006
[ -f "$sft/model.safetensors" ] || fail "no SFT checkpoint"
py "
import json
rows = [json.loads(l) for l in open('$work/sft/metrics.jsonl')]
ev = [r['eval_lm_loss'] for r in rows if 'eval_lm_loss' in r]
assert len(ev) >= 1, rows
" || fail "SFT logged no evaluation loss"

grpo=(--set tokenizer="$tok" --set init_from="$sft" --set steps=3 --set prompts_per_step=2
  --set num_generations=4 --set max_new_tokens=16)
run "$g/grpo.pbtxt" --out "$work/grpo" "${grpo[@]}"
run "$g/grpo.pbtxt" --out "$work/grpo2" "${grpo[@]}"
cmp -s "$work/grpo/completions.jsonl" "$work/grpo2/completions.jsonl" ||
  fail "two GRPO runs with one seed sampled different completions"
cmp -s "$work/grpo/checkpoints/step-000003/model.safetensors" \
  "$work/grpo2/checkpoints/step-000003/model.safetensors" ||
  fail "two GRPO runs with one seed ended with different parameters"
cmp -s "$sft/model.safetensors" "$work/grpo/checkpoints/step-000003/model.safetensors" &&
  fail "GRPO did not change the parameters"
py "
import json
rows = [json.loads(l) for l in open('$work/grpo/completions.jsonl', errors='surrogateescape')]
assert len(rows) == 3 * 2 * 4, len(rows)
for i in range(0, len(rows), 4):
    assert len({r['group'] for r in rows[i:i + 4]}) == 1, rows[i:i + 4]
    assert len({r['prompt'] for r in rows[i:i + 4]}) == 1
metrics = [json.loads(l) for l in open('$work/grpo/metrics.jsonl')]
batch = [m for m in metrics if m['node'] == 'batch']
train = [m for m in metrics if m['node'] == 'train' and 'loss' in m]
assert len(batch) == 3 and len(train) == 3, (batch, train)
for m in batch:
    for k in ('reward', 'reward_std', 'frac_reward_zero_std', 'rewards/accuracy/mean',
              'rewards/format/mean', 'completions/clipped_ratio'):
        assert k in m, (k, m)
for m in train:
    assert m['clip_ratio'] == 0 and m['kl'] >= 0, m  # on-policy at iterations=1; k3 >= 0
# The policy starts as the reference (both from the SFT checkpoint): no divergence yet.
assert abs(train[0]['kl']) < 1e-6, train[0]
" || fail "GRPO's completions or metrics are wrong"

run "$g/eval.pbtxt" --out "$work/eval" --set tokenizer="$tok" \
  --set init_from="$work/grpo/checkpoints/step-000003" --set max_new_tokens=16
py "
import json
e = json.load(open('$work/eval/eval.json'))
assert e['rows'] == 200, e
for k in ('accuracy', 'format_rate'):
    assert 0 <= e[k] <= 1, e
" || fail "eval.json is wrong"

# LoRA SFT from the pretrained model: adapters alone in the checkpoint; separate or merged, the
# same greedy completions, and not the base model's.
run "$g/sft.pbtxt" --out "$work/lora" --set tokenizer="$tok" --set steps=4 --set epochs=2 \
  --set init_from="$work/pre/checkpoints/step-000004" --set lr=1e-2 \
  --set 'lora_targets=[attn.q.wq_b, attn.wo, ffn.w2]' --set lora_rank=4
lora=$work/lora/checkpoints/step-000004
[ -f "$lora/adapter.safetensors" ] && [ -f "$lora/adapter_config.json" ] || fail "no LoRA adapter"
[ -f "$lora/model.safetensors" ] && fail "a LoRA checkpoint holds the base weights"
for how in base separate merged speculative; do
  extra=()
  [ $how = separate ] || [ $how = merged ] && extra=(--set lora_from="$lora")
  [ $how = merged ] && extra+=(--set lora_merge=true)
  [ $how = speculative ] && extra=(--set speculative=true)
  run "$g/eval.pbtxt" --out "$work/eval_$how" --set tokenizer="$tok" --set max_new_tokens=8 \
    --set init_from="$work/pre/checkpoints/step-000004" --set tasks="$src/graphs/data/tiny/r1/sft_val.jsonl" \
    "${extra[@]}"
done
cmp -s "$work/eval_separate/completions.jsonl" "$work/eval_merged/completions.jsonl" ||
  fail "LoRA adapters kept separate and merged generate differently"
cmp -s "$work/eval_base/completions.jsonl" "$work/eval_separate/completions.jsonl" &&
  fail "the LoRA adapters did not change the model"
# rl.Generate with MTP drafts: the same greedy completions, and the share of drafts accepted.
cmp -s "$work/eval_base/completions.jsonl" "$work/eval_speculative/completions.jsonl" ||
  fail "speculative decoding changed the greedy completions"
grep -q '"mtp_acceptance":' "$work/eval_speculative/metrics.jsonl" || fail "no mtp_acceptance logged"
# The checkpoint alone (its model.json holds the attrs), no graph.
"$weir" generate --model "$work/pre/checkpoints/step-000004" \
  --adapter "$lora" --tokenizer "$tok" --prompts "$src/graphs/data/tiny/r1/sft_val.jsonl" \
  --max-new 8 > "$work/lora_generated.jsonl" 2> "$work/generate.log" ||
  { cat "$work/generate.log" >&2; fail "weir generate --adapter"; }
py "
import json
cli = [json.loads(l)['completion'] for l in open('$work/lora_generated.jsonl', errors='surrogateescape')]
graph = [json.loads(l)['completion'] for l in open('$work/eval_separate/completions.jsonl', errors='surrogateescape')]
assert cli == graph, (cli[:3], graph[:3])
" || fail "weir generate --adapter differs from the LoRA model's generations"

# weir generate with text prompts: one JSON line per prompt, in order, ended by <|eos|> or the cap.
printf '{"prompt": "What is 1 + 2 + 3?"}\n{"prompt": "What is 9 + 9 + 9 + 9?"}\n' > "$work/prompts.jsonl"
"$weir" generate "$g/model.pbtxt" --checkpoint "$work/grpo/checkpoints/step-000003" \
  --tokenizer "$tok" --prompt "What is 4 + 4?" --prompts "$work/prompts.jsonl" --max-new 12 \
  > "$work/generated.jsonl" 2> "$work/generate.log" || { cat "$work/generate.log" >&2; fail "weir generate"; }
py "
import json
rows = [json.loads(l) for l in open('$work/generated.jsonl', errors='surrogateescape')]
assert [r['prompt'] for r in rows] == ['What is 4 + 4?', 'What is 1 + 2 + 3?', 'What is 9 + 9 + 9 + 9?'], rows
for r in rows:
    assert 1 <= r['tokens'] <= 12 and isinstance(r['completion'], str), r
    # A completion shorter than the cap ended at <|eos|>; one at the cap may not have.
    assert r['tokens'] == 12 or not r['truncated'], r
" || fail "weir generate's text output is wrong"
grep -q "tokens/s" "$work/generate.log" || fail "weir generate printed no tokens/s"
echo "r1 pipeline ok"
