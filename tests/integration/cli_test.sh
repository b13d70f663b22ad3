#!/usr/bin/env bash
# End-to-end tests of the weir CLI: exit codes, messages, run outputs, failure safety, Ctrl-C.
# usage: cli_test.sh WEIR_BINARY SOURCE_DIR TEST_PLUGIN_DIR
set -uo pipefail
weir=$1
src=$2
export WEIR_PLUGIN_PATH=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$src"
passed=0
failed=0

check() {  # check NAME COMMAND...: the command must succeed
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL: $name" >&2
  fi
}

# --- help and usage
check "weir --help" "$weir" --help > "$work/help"
check "help lists run" grep -q "run GRAPH" "$work/help"
for cmd in run check ops tokenize plan generate schedule; do
  check "weir $cmd --help" "$weir" $cmd --help > "$work/help_$cmd"
  check "weir $cmd --help shows usage" grep -q "usage: weir $cmd" "$work/help_$cmd"
done
"$weir" frobnicate > /dev/null 2>&1
check "unknown command exits 2" test $? -eq 2

# --- check: the exact place of an unknown op, with a suggestion, and a non-zero exit
"$weir" check tests/bad_inputs/graphs/unknown_op.pbtxt > "$work/out" 2> "$work/err"
check "check of a bad graph exits 1" test $? -eq 1
check "check prints FILE:7:COL, node, op and a suggestion" grep -qx \
  "tests/bad_inputs/graphs/unknown_op.pbtxt:7:23: node 'n' (op 'test.Recrod'): unknown op 'test.Recrod'; did you mean 'test.Record'?" \
  "$work/err"
check "check of a good graph" "$weir" check graphs/tiny/data.pbtxt
check "check with overrides" "$weir" check graphs/tiny/data.pbtxt --set sample_rate=0.5 --set seed=3
"$weir" check graphs/tiny/data.pbtxt --set sample_rate=high 2> "$work/err"
check "a mistyped override exits 1" test $? -eq 1
check "a mistyped override is explained" grep -q "param 'sample_rate' expects float, got 'high'" "$work/err"

# --- ops
check "ops --json" "$weir" ops --json > "$work/ops.json"
for op in io.JsonlSource io.JsonlSink io.TextSource io.Head io.Sample test.Count; do
  check "ops --json lists $op" grep -q "\"name\": \"$op\"" "$work/ops.json"
done
check "ops --json names plugins" grep -q '"plugin": ".*weir_io.so"' "$work/ops.json"
check "ops --json has attrs" grep -q '"attr": \[' "$work/ops.json"
check "ops --json has ports" grep -q '"output": \[' "$work/ops.json"
if command -v python3 > /dev/null; then
  check "ops --json is valid JSON" python3 -m json.tool "$work/ops.json" > /dev/null
fi
check "ops --markdown" "$weir" ops --markdown > "$work/ops.md"
check "ops --markdown has a section per op" grep -q '^### `io.Head`' "$work/ops.md"
check "ops OP" "$weir" ops io.Sample > "$work/sample.txt"
check "ops OP shows attrs with bounds" grep -q "rate: float = 0.1  \[in \[0.0, 1.0\]\]" "$work/sample.txt"
"$weir" ops io.Sampel 2> "$work/err"
check "ops of an unknown op exits 1" test $? -eq 1
check "ops suggests the op meant" grep -q "did you mean 'io.Sample'" "$work/err"

# --- run: outputs
run="$work/run1"
check "run the tiny data graph" "$weir" run graphs/tiny/data.pbtxt --out "$run" --set max_tasks=50 --progress none
for f in graph.resolved.pbtxt metrics.jsonl summary.json run.log tasks.jsonl docs.jsonl; do
  check "run wrote $f" test -s "$run/$f"
done
check "the head bounds the sample" test "$(wc -l < "$run/tasks.jsonl")" -eq 50
check "summary says ok" grep -q '"status": "ok"' "$run/summary.json"
check "summary has per-node counters" grep -q '"name": "capped", "op": "io.Head", "items_in": [0-9]*' "$run/summary.json"
check "metrics lines have node and step" grep -q '^{"node":"write_tasks","step":0,"rows_written":50}$' "$run/metrics.jsonl"
check "resolved graph has the override" grep -q 'param: "max_tasks=50"' "$run/graph.resolved.pbtxt"
check "resolved graph has defaults" grep -q 'attr: "limit=0"' "$run/graph.resolved.pbtxt"
check "the resolved graph runs again" "$weir" run "$run/graph.resolved.pbtxt" --out "$work/rerun" --progress none
check "rerun gives the same tasks" cmp -s "$run/tasks.jsonl" "$work/rerun/tasks.jsonl"
"$weir" run graphs/tiny/data.pbtxt --out "$run" --progress none 2> "$work/err"
check "an earlier run is not overwritten" test $? -eq 1
check "... and the refusal says why" grep -q "holds an earlier run" "$work/err"
check "--overwrite allows it" "$weir" run graphs/tiny/data.pbtxt --out "$run" --overwrite --progress none

# --- a failed run leaves earlier outputs intact
out="$work/fail"
check "a good run writes out.jsonl" "$weir" run tests/graphs/good/write_then_fail.pbtxt --out "$out" --progress none
cp "$out/out.jsonl" "$work/out.before"
"$weir" run tests/graphs/good/write_then_fail.pbtxt --out "$out" --overwrite --set at=3 --progress none 2> "$work/err"
check "a failing run exits 1" test $? -eq 1
check "the failure names the node" grep -q "node 'gate' (op 'test.Fail'): test.Fail failed at item 3" "$work/err"
check "the earlier output is intact" cmp -s "$out/out.jsonl" "$work/out.before"
check "no temporary file is left" test -z "$(ls "$out" | grep tmp)"
check "summary says failed" grep -q '"status": "failed"' "$out/summary.json"

# --- progress lines when not on a terminal
timeout 5 "$weir" run tests/graphs/good/forever.pbtxt --out "$work/prog" --progress lines --progress-interval 1 2> "$work/err" &
sleep 2.5
kill -INT $! 2> /dev/null
wait $!
check "periodic progress lines" grep -qE '^\[[0-9.]+s\] src [0-9]+ sink [0-9]+ rows$' "$work/err"

# --- training from a graph, then resuming from its checkpoint
tr="$work/train"
check "a short pretraining run" "$weir" run graphs/tiny/pretrain_dense.pbtxt --out "$tr" --set steps=4 --set batch_size=4 --set seq_len=32 --progress none
check "it logs a loss per step" test "$(grep -c '"loss"' "$tr/metrics.jsonl")" -eq 4
check "it checkpoints when it finishes" test -s "$tr/checkpoints/step-000004/model.safetensors"
check "the checkpoint records the step" grep -q '"step": 4' "$tr/checkpoints/step-000004/trainer_state.json"
check "resuming continues at step 5" "$weir" run graphs/tiny/pretrain_dense.pbtxt --out "$work/train2" --set steps=6 --set batch_size=4 --set seq_len=32 --resume "$tr/checkpoints/step-000004" --progress none
check "the resumed run trains steps 5 and 6 only" test "$(grep -c '"loss"' "$work/train2/metrics.jsonl")" -eq 2
check "the resumed run starts at step 5" grep -q '"node":"train","step":5,"loss"' "$work/train2/metrics.jsonl"
"$weir" run graphs/tiny/pretrain_dense.pbtxt --out "$work/train3" --resume "$work/nothing" 2> "$work/err"
check "resuming from a missing folder is refused" grep -q "is not a checkpoint folder or a run's output folder" "$work/err"

# --- the tiny pipeline of tools/run-demo: data (filters, dedup, tokenizer, shards), pretraining
pipe="$work/pipeline"
check "pipeline: data stage" "$weir" run graphs/tiny/data.pbtxt --out "$pipe/data" --progress none
check "pipeline: the data stage trains a tokenizer" test -s "$pipe/data/tokenizer.json"
check "pipeline: it removes duplicate stories" grep -q '"removed_exact": 12' "$pipe/data/dedup_stats.json"
check "pipeline: the filters say why" grep -q '"reason":"gopher_short_doc"' "$pipe/data/excluded_quality.jsonl"
check "pipeline: train and val shards" test -s "$pipe/data/shards/train-00000.tok" -a -s "$pipe/data/shards/val-00000.tok"
check "pipeline: pretraining on the shards" "$weir" run graphs/tiny/pretrain_shards.pbtxt \
  --out "$pipe/pretrain" --set shards="$pipe/data/shards" --set steps=3 --progress none
check "pipeline: three losses" test "$(grep -c '"loss"' "$pipe/pretrain/metrics.jsonl")" -eq 3
check "pipeline: the DeepSeek-V3-style model" "$weir" run graphs/tiny/pretrain.pbtxt \
  --out "$pipe/v3" --set shards="$pipe/data/shards" --set steps=3 --progress none
check "pipeline: MTP loss, acceptance and expert load logged" grep -q \
  '"mtp_acceptance":.*"moe_layers.1.ffn.router.load_max_over_mean"' "$pipe/v3/metrics.jsonl"
check "pipeline: a load histogram per step and router" \
  test "$(grep -c '"mtp.0.block.ffn.router.load": \[' "$pipe/v3/statistics.jsonl")" -eq 3
# A device this build cannot run on fails the run at once, naming it (docs/cuda.md).
"$weir" run graphs/tiny/pretrain.pbtxt --out "$work/tpu" --set shards="$pipe/data/shards" \
  --set steps=1 --set device=tpu:0 --progress none 2> "$work/err"
check "an unknown device fails the run" test $? -eq 1
check "... naming it" grep -q "device 'tpu:0': this build of weir runs on cpu" "$work/err"
# Greedy generation from its checkpoint, plain and with MTP drafts: the same tokens.
printf '5 17 42 9\n300 2 7 11\n' > "$work/prompts.txt"
check "generate" "$weir" generate graphs/tiny/pretrain.pbtxt --checkpoint \
  "$pipe/v3/checkpoints/step-000003" --tokens "$work/prompts.txt" --max-new 12 > "$work/greedy.txt"
check "generate --speculative" "$weir" generate graphs/tiny/pretrain.pbtxt --checkpoint \
  "$pipe/v3/checkpoints/step-000003" --tokens "$work/prompts.txt" --max-new 12 --speculative \
  > "$work/drafted.txt" 2> "$work/err"
check "two lines of 12 ids" test "$(grep -cE '^[0-9]+( [0-9]+){11}$' "$work/greedy.txt")" -eq 2
check "speculative decoding gives the greedy tokens" cmp -s "$work/greedy.txt" "$work/drafted.txt"
check "speculative decoding reports the acceptance" grep -q "MTP drafts accepted" "$work/err"
# bf16 decoding over weights converted once: 12 ids a prompt, most of them f32's (a 3-step model's
# logits are close, so a rounding can flip a greedy choice; the bench measures agreement).
check "generate --dtype bf16" "$weir" generate graphs/tiny/pretrain.pbtxt --checkpoint \
  "$pipe/v3/checkpoints/step-000003" --tokens "$work/prompts.txt" --max-new 12 --dtype bf16 \
  > "$work/bf16.txt"
check "bf16: two lines of 12 ids" test "$(grep -cE '^[0-9]+( [0-9]+){11}$' "$work/bf16.txt")" -eq 2
check "bf16: the first greedy tokens are f32's" \
  test "$(cut -d' ' -f1 "$work/bf16.txt")" = "$(cut -d' ' -f1 "$work/greedy.txt")"
"$weir" generate graphs/tiny/pretrain.pbtxt --checkpoint "$pipe/v3/checkpoints/step-000003" \
  --tokens "$work/prompts.txt" --dtype f16 > /dev/null 2> "$work/err"
check "--dtype takes f32 or bf16" grep -q "dtype takes f32 or bf16, got 'f16'" "$work/err"
for run in 1 2; do
  "$weir" generate graphs/tiny/pretrain.pbtxt --checkpoint "$pipe/v3/checkpoints/step-000003" \
    --tokens "$work/prompts.txt" --max-new 12 --temperature 1.0 --top-k 50 --top-p 0.9 --seed 3 \
    > "$work/sampled_$run.txt" 2> "$work/err"
done
check "sampling repeats with its seed" cmp -s "$work/sampled_1.txt" "$work/sampled_2.txt"
check "generate reports prefill and decode speed" grep -q "prefill 8 tokens in .* decode 24 tokens" "$work/err"
stop=$(cut -d' ' -f3 "$work/greedy.txt" | head -1)
"$weir" generate graphs/tiny/pretrain.pbtxt --checkpoint "$pipe/v3/checkpoints/step-000003" \
  --tokens "$work/prompts.txt" --max-new 12 --stop "$stop" > "$work/stopped.txt" 2> /dev/null
check "a stop token ends the prompt, kept last" test "$(head -1 "$work/stopped.txt" | awk '{print $NF}')" = "$stop"
"$weir" generate graphs/tiny/pretrain_shards.pbtxt --checkpoint "$pipe/pretrain/checkpoints/step-000003" \
  --tokens "$work/prompts.txt" > /dev/null 2> "$work/err"
check "generate refuses a model that is not DeepseekV3" grep -q "decodes DeepseekV3 models" "$work/err"

# --- a data job stopped early resumes where it stopped: rows 0-29, then 30-1999, each once
"$weir" run graphs/tiny/data.pbtxt --out "$work/part1" --set max_tasks=100000 --set sample_rate=1.0 \
  --progress none 2> /dev/null
check "a source saves its read position" grep -q '"rows_read": 2000' "$work/part1/state/tasks.json"
printf '{"rows_read": 30}\n' > "$work/part1/state/tasks.json"  # as if stopped after 30 rows
check "resuming a data run" "$weir" run graphs/tiny/data.pbtxt --out "$work/part2" \
  --set max_tasks=100000 --set sample_rate=1.0 --resume "$work/part1" --progress none
check "the resumed run reads the rest" test "$(wc -l < "$work/part2/tasks.jsonl")" -eq 1970
check "starting at row 30" grep -q '^{"id":30,' "$work/part2/tasks.jsonl"

# --- weir tokenize with the tokenizer the pipeline trained
tok="$pipe/data/tokenizer.json"
printf 'A small bird finds the sea.\n中文 and 12345!\n' > "$work/text.txt"
"$weir" tokenize --tokenizer "$tok" < "$work/text.txt" > "$work/ids.txt"
check "tokenize prints ids" grep -qE '^[0-9]+( [0-9]+)+$' "$work/ids.txt"
"$weir" tokenize --tokenizer "$tok" --decode < "$work/ids.txt" > "$work/back.txt"
check "tokenize --decode gives the text back" cmp -s "$work/text.txt" "$work/back.txt"
if echo "5 999999" | "$weir" tokenize --tokenizer "$tok" --decode 2> "$work/err"; then
  check "an unknown id is refused" false
fi
check "an unknown id is named" grep -q "token id 999999 is outside the vocabulary \[0, 384)" "$work/err"

# --- Ctrl-C stops cleanly
sig="$work/sigint"
"$weir" run tests/graphs/good/forever.pbtxt --out "$sig" --progress none 2> "$work/err" &
pid=$!
for _ in $(seq 100); do
  [ -s "$sig/metrics.jsonl" ] && break
  sleep 0.1
done
kill -INT $pid
wait $pid
check "SIGINT exits 130" test $? -eq 130
check "summary says interrupted" grep -q '"status": "interrupted"' "$sig/summary.json"
check "the sink was finished" grep -q '"finished":1' "$sig/metrics.jsonl"
check "the user is told" grep -q "interrupted" "$work/err"

# --- plan: the DeepSeek presets' parameters, activated parameters and KV cache (spec §1.1, §2.3)
check "plan 671B" "$weir" plan graphs/models/deepseek_v3_671b.pbtxt > "$work/plan_v3"
check "671B: 671.03B parameters, 37.55B per token" grep -q \
  "parameters (671,026,419,200 total, 37,552,297,472 activated per token at inference)" "$work/plan_v3"
check "671B: the MTP module (11.6B) is training-only" grep -Eq "^ +mtp +11.61B +- +-" "$work/plan_v3"
check "671B: KV cache 70,272 bytes per token in bf16" grep -q \
  "KV cache per token: 35,136 elements = 70,272 bytes in bf16" "$work/plan_v3"
check "plan V2-Lite" "$weir" plan graphs/models/deepseek_v2_lite.pbtxt > "$work/plan_lite"
check "V2-Lite: 15.7B parameters, 2.66B per token, 31,104 cache bytes" grep -q \
  "parameters (15,706,484,224 total, 2,661,150,208 activated per token at inference)" "$work/plan_lite"
check "V2-Lite: KV cache" grep -q "= 31,104 bytes in bf16" "$work/plan_lite"
"$weir" plan graphs/tiny/data.pbtxt > /dev/null 2> "$work/err"
check "plan of a graph without a model exits 1" test $? -eq 1
check "plan says there is no model" grep -q "no model resource to plan" "$work/err"

# --- schedule: DualPipe's instruction lists as JSON, and a combination it cannot run
check "schedule --format json" "$weir" schedule --kind dualpipe --ranks 4 --micro-batches 8 \
  --format json > "$work/schedule.json"
if command -v python3 > /dev/null; then
  check "the schedule JSON has 4 ranks and bubble 2" python3 -c \
    "import json, sys; d = json.load(open(sys.argv[1])); sys.exit(len(d['ranks']) != 4 or d['max_bubble'] != 2)" \
    "$work/schedule.json"
fi
"$weir" schedule --kind dualpipe --ranks 4 --micro-batches 6 2> "$work/err"
check "a bad schedule combination exits 1" test $? -eq 1
check "the bad combination is explained" grep -q \
  "dualpipe needs at least 2 x ranks = 8 micro-batches, got 6" "$work/err"

# --- run --trace: Chrome trace events for every kernel call and every tensor-program node
check "run --trace" "$weir" run graphs/tiny/pretrain_dense.pbtxt --set steps=2 --out "$work/traced" \
  --trace --progress none
check "the trace is Chrome trace-event JSON with stream calls and F/B/W tensor nodes" \
  /usr/bin/python3 -c "
import json, sys
t = json.load(open(sys.argv[1]))
x = [e for e in t['traceEvents'] if e['ph'] == 'X']
assert all({'name', 'cat', 'pid', 'tid', 'ts', 'dur'} <= e.keys() and e['dur'] >= 0 for e in x)
details = {e['args']['detail'] for e in x}
assert {'produce', 'process', 'finish', 'F', 'B', 'W'} <= details, details
assert 'train' in {e['name'] for e in x}
# Tensor nodes run inside the trainer's calls: each lies within a 'process' event of 'train'.
calls = [e for e in x if e['name'] == 'train' and e['args']['detail'] == 'process']
inner = [e for e in x if e['cat'] == 'nn.MatMul']
assert inner and all(any(c['ts'] <= e['ts'] and e['ts'] + e['dur'] <= c['ts'] + c['dur'] + 1
                         for c in calls) for e in inner)
" "$work/traced/trace.json"

echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
