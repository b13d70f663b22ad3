#!/usr/bin/env bash
# Crash-safe training: kills a training run with SIGKILL again and again, at random moments and
# while a checkpoint is being written, resumes it in place with `--resume` each time, and checks
#   - that it ends with parameters and optimizer state equal, bit for bit, to an uninterrupted
#     run's, and with the same loss logged for every step, each step once;
#   - that no attempt repeated more than one checkpoint interval of work;
#   - that a damaged newest checkpoint is skipped for the one before it, and that naming a
#     damaged checkpoint directly is an error naming the file.
# usage: kill_resume_test.sh WEIR SOURCE_DIR
set -euo pipefail
weir=$1
src=$2
graph=$src/tests/graphs/good/train_kill.pbtxt
every=4
steps=40
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -9 $pid 2> /dev/null; rm -rf "$work"' EXIT

common=(--threads 2 --progress none --set steps=$steps --set checkpoint_every=$every)
run() { "$weir" run "$graph" "${common[@]}" "$@"; }

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

t0=$(date +%s.%N)
run --out "$work/ref" > /dev/null 2>&1 || fail "the uninterrupted run failed"
ref_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
final=$(printf 'step-%06d' $steps)
[ -f "$work/ref/checkpoints/$final/model.safetensors" ] || fail "no final checkpoint $final"

# Highest step in a metrics file (0 when none).
last_step() {
  [ -f "$1" ] || { echo 0; return; }
  /usr/bin/python3 -c '
import json, sys
steps = [0]
for line in open(sys.argv[1]):
    try: steps.append(json.loads(line)["step"])
    except Exception: pass
print(max(steps))' "$1"
}

out=$work/killed
kills=0
in_checkpoint=0
done_ok=0
# Newest step logged (0 when none), cheap enough to poll between steps of a few milliseconds.
logged_step() {
  local line
  line=$(tail -n 1 "$1" 2> /dev/null) || true
  line=${line#*\"step\":}
  line=${line%%[!0-9]*}
  echo "${line:-0}"
}

# Attempts 1, 3 and 5 are killed inside a checkpoint write (5 only while fewer than two kills
# landed in one: a loaded machine can let the polling miss a short write), the others once they
# logged a random step 1-6 past the previous attempt's last (time shares of the uninterrupted run
# let a fast machine finish before the kill: its first run pays for loading the plugins); attempt
# 8 (or an earlier one that finishes first) completes the run.
for attempt in 1 2 3 4 5 6 7 8; do
  resume=()
  [ -d "$out/checkpoints" ] && resume=(--resume "$out")
  before=$(last_step "$out/metrics.jsonl")
  resumes_before=$(grep -c "resuming from" "$out/run.log" 2> /dev/null || true)
  # Started directly (not through a function's subshell) so that $! is weir itself.
  "$weir" run "$graph" "${common[@]}" --out "$out" "${resume[@]}" > "$work/attempt.log" 2>&1 &
  pid=$!
  if [ $attempt = 1 ] || [ $attempt = 3 ] || { [ $attempt = 5 ] && [ $in_checkpoint -lt 2 ]; }; then
    # The write of checkpoint 4, 8 or 12; past those (a busy machine may let the loop miss a
    # short write) the kill lands wherever the run is.
    until compgen -G "$out/checkpoints/step-0000[01][248].tmp-*" > /dev/null ||
      [ -d "$out/checkpoints/step-000016" ] || ! kill -0 $pid 2> /dev/null; do
      :
    done
  elif [ $attempt -lt 8 ]; then
    # At most steps - 2 * every: the last checkpoints and the exit leave time for the kill.
    target=$((before + 1 + RANDOM % 6))
    [ $target -le $((steps - 2 * every)) ] || target=$((steps - 2 * every))
    until [ "$(logged_step "$out/metrics.jsonl")" -ge $target ] || ! kill -0 $pid 2> /dev/null; do
      :
    done
  fi
  if [ $attempt -lt 8 ] && kill -9 $pid 2> /dev/null; then
    wait $pid 2> /dev/null || true
    kills=$((kills + 1))
    compgen -G "$out/checkpoints/step-*.tmp-*" > /dev/null && in_checkpoint=$((in_checkpoint + 1))
  else
    wait $pid || { cat "$work/attempt.log" >&2; fail "attempt $attempt failed"; }
    done_ok=1
  fi
  pid=
  # The attempt may only have redone the steps after the checkpoint it resumed from (when it
  # lived long enough to resume at all).
  if [ ${#resume[@]} -gt 0 ] &&
    [ "$(grep -c "resuming from" "$out/run.log" || true)" -gt "${resumes_before:-0}" ]; then
    line=$(grep "resuming from" "$out/run.log" | tail -1)
    # Killed before its first checkpoint, a run resumes from the start.
    from=$(echo "$line" | sed -n 's/.*step-0*\([0-9][0-9]*\).*/\1/p')
    from=${from:-0}
    [ $((before - from)) -le $every ] ||
      fail "attempt $attempt resumed at step $from after step $before was done: more than one interval ($every) lost"
  fi
  [ $done_ok -eq 1 ] && break
done
[ $done_ok -eq 1 ] || fail "the run did not finish"
[ $kills -ge 3 ] || fail "only $kills kills landed; the test needs at least 3"
[ $in_checkpoint -ge 1 ] || fail "no kill landed during a checkpoint write"
echo "killed $kills times ($in_checkpoint during a checkpoint write) in $attempt attempts; an uninterrupted run takes $ref_s s"

for f in model.safetensors optimizer.safetensors trainer_state.json; do
  cmp "$work/ref/checkpoints/$final/$f" "$out/checkpoints/$final/$f" ||
    fail "$f differs from the uninterrupted run's"
done
/usr/bin/python3 - "$work/ref/metrics.jsonl" "$out/metrics.jsonl" << 'PYEOF'
import json, sys
def losses(path):
    rows = [json.loads(l) for l in open(path)]
    return [(r["step"], r["loss"]) for r in rows if r.get("node") == "train" and "loss" in r]
ref, got = losses(sys.argv[1]), losses(sys.argv[2])
assert got == ref, f"logged losses differ:\n{ref}\n{got}"
print(f"{len(ref)} logged losses equal the uninterrupted run's, each step once")
PYEOF

# A damaged newest checkpoint: resuming the run folder falls back to the one before it.
damaged=$work/damaged
cp -r "$work/ref" "$damaged"
rm -f "$damaged/summary.json"
newest=$(ls -d "$damaged"/checkpoints/step-* | sort | tail -1)
printf '\x55' | dd of="$newest/model.safetensors" bs=1 seek=200 conv=notrunc status=none
if run --out "$work/direct" --resume "$newest" > "$work/direct.log" 2>&1; then
  fail "resuming from a damaged checkpoint succeeded"
fi
grep -q "model.safetensors is damaged: its CRC-32 is" "$work/direct.log" ||
  { cat "$work/direct.log" >&2; fail "the error does not name the damaged file"; }
run --out "$damaged" --resume "$damaged" --set steps=$((steps + 4)) > "$work/fallback.log" 2>&1 ||
  { cat "$work/fallback.log" >&2; fail "resuming past a damaged checkpoint failed"; }
grep -q "skipping a damaged checkpoint" "$work/fallback.log" || fail "the damaged checkpoint was not reported"
grep -q "resuming from .*step-0000$((steps - every))" "$damaged/run.log" ||
  fail "did not resume from the checkpoint before the damaged one"
echo "PASS"
