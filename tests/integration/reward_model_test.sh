#!/usr/bin/env bash
# graphs/tiny/reward_model.pbtxt shortened (a few steps), from a fresh model (no checkpoint) and a
# byte-level tokenizer made here (so the test needs no data run), then reward.Model scoring the
# held-out pairs with the checkpoint it wrote. Checks that
#   - the preference batches reach the trainer: 400 pairs, a loss and an accuracy in [0, 1] per
#     step, eval_loss and eval_accuracy at every evaluation;
#   - the checkpoint holds the new score head beside the model's parameters;
#   - reward.Model, scoring chosen and rejected completions separately in a graph of its own,
#     ranks the held-out pairs as the trainer's last evaluation did (the same sequences, so the
#     same scores up to padding).
# usage: reward_model_test.sh WEIR SOURCE_DIR
set -euo pipefail
weir=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
run() { "$weir" run "$@" --progress none > /dev/null 2>> "$work/log" || { cat "$work/log" >&2; fail "weir run $1"; }; }
py() { /usr/bin/python3 -c "$@"; }

# Bytes are ids 0..255 (GPT-2's byte alphabet, no merges); the specials take the ids the data
# stage gives them (<|eos|> 377, the tiny model's doc_separator).
py "
import json
def printable(b): return 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255
n, vocab = 0, {}
for b in range(256):
    if printable(b):
        vocab[chr(b)] = b
    else:
        vocab[chr(256 + n)] = b
        n += 1
specials = ['<|eos|>', '<|user|>', '<|assistant|>', '<think>', '</think>', '<answer>', '</answer>']
json.dump({'version': '1.0',
           'added_tokens': [{'id': 377 + i, 'content': s, 'special': True} for i, s in enumerate(specials)],
           'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': False, 'use_regex': True},
           'model': {'type': 'BPE', 'vocab': vocab, 'merges': []}}, open('$work/tokenizer.json', 'w'))
"

g=$src/graphs/tiny
run "$g/reward_model.pbtxt" --out "$work/rm" --set tokenizer="$work/tokenizer.json" --set steps=6 \
  --set eval_every=3
ckpt=$work/rm/checkpoints/step-000006
[ -f "$ckpt/model.safetensors" ] || fail "no reward-model checkpoint"
py "
import json, struct
rows = [json.loads(l) for l in open('$work/rm/metrics.jsonl')]
train = [r for r in rows if r['node'] == 'train' and 'loss' in r]
evals = [r for r in rows if r['node'] == 'train' and 'eval_loss' in r]
pairs = [r for r in rows if r['node'] == 'pairs' and 'pairs' in r]
assert [r['step'] for r in train] == [1, 2, 3, 4, 5, 6], train
for r in train:
    assert r['loss'] > 0 and 0 <= r['accuracy'] <= 1, r
assert [r['step'] for r in evals] == [3, 6], evals
for r in evals:
    assert r['eval_loss'] > 0 and 0 <= r['eval_accuracy'] <= 1, r
assert pairs and pairs[0]['pairs'] == 400, pairs
f = open('$ckpt/model.safetensors', 'rb')
header = json.loads(f.read(struct.unpack('<Q', f.read(8))[0]))
assert header['score_head.weight']['shape'] == [1, 96], header.get('score_head.weight')
assert 'embed.weight' in header and 'head.weight' in header
json.dump(evals[-1], open('$work/last_eval.json', 'w'))
" || fail "the reward model's metrics or checkpoint are wrong"

# reward.Model in a graph of its own: the same model resource, started from that checkpoint.
cat > "$work/score.pbtxt" << EOF
import: "$g/model.pbtxt"
import: "$src/graphs/models/deepseek_v3_reward.pbtxt"
node { name: "rows" op: "io.JsonlSource" attr: "path=$src/graphs/data/tiny/r1/prefs_heldout.jsonl batch_size=64" }
node { name: "chosen" op: "reward.Model" input: "rows"
       attr: "model=model tokenizer=$work/tokenizer.json max_len=128 completion_column=chosen output=rewards/chosen" }
node { name: "rejected" op: "reward.Model" input: "chosen"
       attr: "model=model tokenizer=$work/tokenizer.json max_len=128 completion_column=rejected output=rewards/rejected" }
node { name: "write" op: "io.JsonlSink" input: "rejected"
       attr: "path=scored.jsonl columns=[id, kind, rewards/chosen, rewards/rejected]" }
EOF
run "$work/score.pbtxt" --out "$work/score" --set init_from="$ckpt"
py "
import json
rows = [json.loads(l) for l in open('$work/score/scored.jsonl')]
assert len(rows) == 200, len(rows)
wins = sum(r['rewards/chosen'] > r['rewards/rejected'] for r in rows) / len(rows)
want = json.load(open('$work/last_eval.json'))['eval_accuracy']
assert abs(wins - want) <= 0.01, (wins, want)
print('held-out accuracy after 6 steps from scratch: %.3f' % wins)
" || fail "reward.Model does not rank the held-out pairs as the trainer's evaluation did"
echo "reward model ok"
