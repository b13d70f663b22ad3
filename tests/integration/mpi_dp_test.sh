#!/usr/bin/env bash
# Data parallelism across processes: `mpirun -np 2 weir run` with data_parallel=2 trains, bit for
# bit, like two virtual ranks in one process (the same shards, the same rank-ordered all-reduce),
# with and without ZeRO-1; each rank writes its own run folder (rank 1: OUT/rank-1) with the
# same complete checkpoint. Pipeline parallelism the same way: `mpirun -np P` with
# pipeline_parallel=P runs each rank's instruction list in its own process and ends with the
# virtual ranks' checkpoint bit for bit, and so does expert parallelism (dp=ep=2).
#   mpi_dp_test.sh MPIRUN WEIR SOURCE_DIR      (MPIRUN empty or missing: skipped, exit 77)
set -euo pipefail
mpirun=${1:-}
weir=$2
src=$(cd "$3" && pwd)
if [ -z "$mpirun" ] || ! command -v "$mpirun" > /dev/null; then
  echo "mpi_dp_test: SKIPPED: mpirun not found (tools/setup installs openmpi-bin)"
  exit 77
fi
# One GEMM thread on both sides: mpirun binds each rank to a core (so oneDNN runs one thread
# there), and on CPUs without AVX-512 oneDNN's f32 kernels split a product's sum by the thread
# count, so the virtual ranks must run under the same count to match bit for bit.
export OMP_NUM_THREADS=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
graph=$src/tests/graphs/good/train_dp.pbtxt
ckpt=checkpoints/step-000004
for zero in 0 1; do
  "$weir" run "$graph" --progress none --set dp=2 --set zero=$zero --out "$work/virtual$zero" \
    > "$work/log" 2>&1 || { cat "$work/log" >&2; fail "virtual ranks, zero=$zero"; }
  # The flags as in mpi_test.sh: root in containers, more ranks than cores, shared memory only.
  "$mpirun" -np 2 --allow-run-as-root --oversubscribe --mca btl self,vader \
    --mca btl_vader_single_copy_mechanism none \
    "$weir" run "$graph" --progress none --set dp=2 --set zero=$zero --out "$work/mpi$zero" \
    > "$work/log" 2>&1 || { cat "$work/log" >&2; fail "mpirun -np 2, zero=$zero"; }
  for rank_dir in "$work/mpi$zero" "$work/mpi$zero/rank-1"; do
    for f in model.safetensors optimizer.safetensors; do
      cmp "$work/virtual$zero/$ckpt/$f" "$rank_dir/$ckpt/$f" ||
        fail "zero=$zero: $rank_dir/$ckpt/$f differs from the virtual ranks' run"
    done
  done
  grep '"node":"train","step":[0-9]*,"loss"' "$work/virtual$zero/metrics.jsonl" |
    sed 's/"tokens_per_s":[^,]*,"step_time_s":[^,}]*//' > "$work/v.txt"
  grep '"node":"train","step":[0-9]*,"loss"' "$work/mpi$zero/metrics.jsonl" |
    sed 's/"tokens_per_s":[^,]*,"step_time_s":[^,}]*//' > "$work/m.txt"
  [ "$(wc -l < "$work/v.txt")" -eq 4 ] || fail "expected 4 training rows"
  cmp -s "$work/v.txt" "$work/m.txt" || fail "zero=$zero: the logged losses differ"
done
cmp "$work/virtual0/$ckpt/optimizer.safetensors" "$work/mpi1/$ckpt/optimizer.safetensors" ||
  fail "ZeRO-1's gathered optimizer state differs from plain data parallelism's"
pp_graph=$src/tests/graphs/good/train_pp.pbtxt
# Expert parallelism too: the experts sharded over two processes, tokens exchanged by MPI.
for run in "2 zb1p" "4 dualpipe" "2 ep"; do
  read -r ranks schedule <<< "$run"
  sets=(--set pp="$ranks" --set schedule="$schedule")
  [ "$schedule" != ep ] || sets=(--set dp="$ranks" --set ep="$ranks")
  "$weir" run "$pp_graph" --progress none "${sets[@]}" \
    --out "$work/pp_virtual_$schedule" > "$work/log" 2>&1 ||
    { cat "$work/log" >&2; fail "pipeline, virtual ranks, $schedule"; }
  "$mpirun" -np "$ranks" --allow-run-as-root --oversubscribe --mca btl self,vader \
    --mca btl_vader_single_copy_mechanism none \
    "$weir" run "$pp_graph" --progress none "${sets[@]}" \
    --out "$work/pp_mpi_$schedule" > "$work/log" 2>&1 ||
    { cat "$work/log" >&2; fail "pipeline, mpirun -np $ranks, $schedule"; }
  for rank_dir in "$work/pp_mpi_$schedule" "$work/pp_mpi_$schedule/rank-$((ranks - 1))"; do
    cmp "$work/pp_virtual_$schedule/checkpoints/step-000003/model.safetensors" \
      "$rank_dir/checkpoints/step-000003/model.safetensors" ||
      fail "$schedule: $rank_dir's checkpoint differs from the virtual ranks' run"
  done
done
echo "mpi_dp_test: passed"
