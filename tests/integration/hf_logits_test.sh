#!/usr/bin/env bash
# `weir logits` against the float64 numpy reference (tests/reference) on tiny Hugging Face
# DeepSeek checkpoints, the HF round trip of `weir hf import/export`, and bad inputs.
# usage: hf_logits_test.sh WEIR_BINARY SOURCE_DIR
# Measures, per fixture, max|weir - ref| / max|ref| over all logits [batch, position, vocab];
# passes at <= 1e-4. The bf16 and fp8 fixtures are compared on the same dequantized weights (both
# sides read the stored bf16/fp8 values), so the same bound applies.
set -uo pipefail
weir=$1
src=$2
py=/usr/bin/python3
if ! "$py" -c "import numpy" 2> /dev/null; then
  echo "SKIP: $py has no numpy"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ref=$src/tests/reference
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

compare() {  # compare NAME WEIR.npy REF.npy [BOUND]: relative max error within BOUND (1e-4)
  "$py" - "$1" "$2" "$3" "${4:-1e-4}" << 'EOF'
import sys
import numpy as np
name, a, b = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3])
bound = float(sys.argv[4])
if a.shape != b.shape or a.dtype != np.float32:
    print(f"{name}: weir {a.dtype}{a.shape} vs reference {b.dtype}{b.shape}")
    sys.exit(1)
err = float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))
print(f"{name}: shape {a.shape}, max|weir-ref|/max|ref| = {err:.3e}")
sys.exit(0 if err <= bound else 1)
EOF
}

# --- logits against the reference
run_case() {  # run_case NAME MAKE_FIXTURE_ARGS...
  local name=$1
  shift
  local dir=$work/$name
  "$py" "$ref/make_fixture.py" "$dir" "$@" > /dev/null || { check "$name fixture" false; return; }
  "$py" "$ref/deepseek_ref.py" --hf "$dir" --tokens "$dir/tokens.txt" --out "$dir/ref.npy" \
    > /dev/null || { check "$name reference" false; return; }
  check "$name: weir logits runs" "$weir" logits --hf "$dir" --tokens "$dir/tokens.txt" \
    --out "$dir/weir.npy"
  check "$name: logits match the reference" compare "$name" "$dir/weir.npy" "$dir/ref.npy"
  # Prefill 5 tokens, then one at a time through the latent cache (absorbed MLA).
  "$py" "$ref/deepseek_ref.py" --hf "$dir" --tokens "$dir/tokens.txt" --prefill 5 \
    --out "$dir/ref_decode.npy" > /dev/null || { check "$name reference decode" false; return; }
  check "$name: weir logits --prefill runs" "$weir" logits --hf "$dir" --tokens "$dir/tokens.txt" \
    --prefill 5 --out "$dir/weir_decode.npy"
  check "$name: decoding matches the reference's" compare "$name decode" "$dir/weir_decode.npy" \
    "$dir/ref_decode.npy"
  check "$name: decoding matches the full forward within 1e-5" compare "$name decode vs full" \
    "$dir/weir_decode.npy" "$dir/weir.npy" 1e-5
}
run_case dense_qlora_f32 --layout dense_qlora --dtype f32
run_case v3_moe_f32 --layout v3_moe --dtype f32
run_case v2_lite_f32 --layout v2_lite --dtype f32
run_case v3_moe_bf16 --layout v3_moe --dtype bf16
run_case v3_moe_fp8 --layout v3_moe --dtype fp8
run_case v3_moe_fp8_sharded --layout v3_moe --dtype fp8 --sharded
run_case v3_moe_mtp_f32 --layout v3_moe --dtype f32 --mtp
run_case v2_lite_bf16_sharded_mtp --layout v2_lite --dtype bf16 --sharded --mtp

# --- HF -> weir -> HF round trip: every tensor byte-identical, no tensor lost or added
same_tensors() {  # same_tensors A_DIR B_DIR
  "$py" - "$1" "$2" "$ref" << 'EOF'
import json, os, sys
sys.path.insert(0, sys.argv[3])
sys.dont_write_bytecode = True

def tensors(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) \
        else ["model.safetensors"]
    out = {}
    for f in files:
        raw = open(os.path.join(d, f), "rb").read()
        n = int.from_bytes(raw[:8], "little")
        head = json.loads(raw[8:8 + n])
        for k, v in head.items():
            if k == "__metadata__":
                continue
            b, e = v["data_offsets"]
            out[k] = (v["dtype"], v["shape"], raw[8 + n + b:8 + n + e])
    return out

a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
bad = sorted(set(a) ^ set(b)) + sorted(k for k in set(a) & set(b) if a[k] != b[k])
print(f"round trip {os.path.basename(os.path.dirname(os.path.abspath(sys.argv[1])))}: {len(a)} tensors, {len(bad)} differ"
      + (f" (first: {bad[0]})" if bad else ""))
sys.exit(1 if bad else 0)
EOF
}
round_trip() {  # round_trip NAME DTYPE MAKE_FIXTURE_ARGS...
  local name=$1 dtype=$2
  shift 2
  local dir=$work/rt_$name
  "$py" "$ref/make_fixture.py" "$dir/hf" "$@" > /dev/null
  check "$name: hf import" "$weir" hf import "$dir/hf" --out "$dir/ckpt"
  check "$name: model.json" grep -q '"function": "DeepseekV3"' "$dir/ckpt/model.json"
  check "$name: hf export" "$weir" hf export "$dir/ckpt" --out "$dir/back" --dtype "$dtype" \
    --max-shard-bytes 200000
  check "$name: tensors identical" same_tensors "$dir/hf" "$dir/back"
}
round_trip f32_mtp f32 --layout v3_moe --dtype f32 --mtp
round_trip bf16 bf16 --layout v3_moe --dtype bf16
round_trip v2_lite_bf16_mtp bf16 --layout v2_lite --dtype bf16 --mtp
round_trip dense_f32 f32 --layout dense_qlora --dtype f32
check "export past --max-shard-bytes writes shards" test -f \
  "$work/rt_f32_mtp/back/model.safetensors.index.json"
# The exported checkpoint still gives the reference's logits; --config takes the HF config.
d=$work/rt_f32_mtp
check "exported checkpoint runs" "$weir" logits --hf "$d/back" --tokens "$d/hf/tokens.txt" \
  --out "$d/back.npy"
"$py" "$ref/deepseek_ref.py" --hf "$d/hf" --tokens "$d/hf/tokens.txt" --out "$d/ref.npy" > /dev/null
check "exported checkpoint logits" compare "exported" "$d/back.npy" "$d/ref.npy"
check "export with --config" "$weir" hf export "$d/ckpt" --config "$d/hf/config.json" \
  --out "$d/back2"
check "--config export identical" same_tensors "$d/hf" "$d/back2"

# An imported checkpoint trains from a graph: a model resource with init_from and model.json's
# attr_string; MTP parameters (the fixture has them) are trained too.
attrs=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['attr_string'])" "$d/ckpt/model.json")
cat > "$work/finetune.pbtxt" << EOF
import: "$src/graphs/models/deepseek_v3.pbtxt"
resource { name: "model" kind: "model" attr: "function=DeepseekV3 init_from=$d/ckpt"
           attr: "attrs='$attrs'" }
node { name: "data" op: "train.RandomTokens" attr: "vocab=97 seq_len=12 batch_size=2" }
node { name: "train" op: "train.Step" input: "data" attr: "model=model steps=2 checkpoint_every=2" }
EOF
check "training starts from an imported checkpoint" "$weir" run "$work/finetune.pbtxt" \
  --out "$work/finetune" --progress none
check "its checkpoint exports back to HF" "$weir" hf export \
  "$work/finetune/checkpoints/step-000002" --config "$d/hf/config.json" --out "$work/finetuned_hf"

# --- bad inputs: messages name the file and the tensor or line
expect_error() {  # expect_error NAME PATTERN COMMAND...: exit 1 and PATTERN in stderr
  local name=$1 pattern=$2
  shift 2
  "$@" > /dev/null 2> "$work/err"
  local code=$?
  if [ $code -eq 1 ] && grep -qF -- "$pattern" "$work/err"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL: $name (exit $code, wanted '$pattern'):" >&2
    cat "$work/err" >&2
  fi
}
bad=$work/bad
"$py" "$ref/make_fixture.py" "$bad" --layout v3_moe --dtype f32 > /dev/null
"$py" - "$bad" "$ref" << 'EOF'
import os, sys
sys.path.insert(0, sys.argv[2])
sys.dont_write_bytecode = True
import numpy as np
import deepseek_ref as ref
d = sys.argv[1]
w = {}
raw = open(os.path.join(d, "model.safetensors"), "rb").read()
import json
n = int.from_bytes(raw[:8], "little")
head = json.loads(raw[8:8 + n])
for k, v in head.items():
    if k == "__metadata__":
        continue
    b, e = v["data_offsets"]
    w[k] = ("F32", np.frombuffer(raw[8 + n + b:8 + n + e], np.float32).reshape(v["shape"]))
for case in ("missing", "shape", "extra"):
    os.makedirs(os.path.join(d, case), exist_ok=True)
    t = dict(w)
    if case == "missing":
        del t["model.layers.1.mlp.experts.3.up_proj.weight"]
    elif case == "shape":
        t["model.layers.0.self_attn.kv_b_proj.weight"] = ("F32", np.zeros((3, 5), np.float32))
    else:
        t["model.layers.0.mlp.bogus.weight"] = ("F32", np.zeros((2,), np.float32))
    ref.write_safetensors(os.path.join(d, case, "model.safetensors"), t, {"format": "pt"})
    os.link(os.path.join(d, "config.json"), os.path.join(d, case, "config.json"))
EOF
expect_error "missing tensor" \
  "$bad/missing/model.safetensors: missing tensor 'model.layers.1.mlp.experts.3.up_proj.weight'" \
  "$weir" logits --hf "$bad/missing" --tokens "$bad/tokens.txt" --out "$work/x.npy"
expect_error "wrong shape" \
  "$bad/shape/model.safetensors: tensor 'model.layers.0.self_attn.kv_b_proj.weight' has shape [3, 5]" \
  "$weir" hf import "$bad/shape" --out "$work/x"
expect_error "unexpected tensor" \
  "$bad/extra/model.safetensors: unexpected tensor 'model.layers.0.mlp.bogus.weight'" \
  "$weir" logits --hf "$bad/extra" --tokens "$bad/tokens.txt" --out "$work/x.npy"
printf '1 2 3\n4 5\n' > "$work/uneven.txt"
expect_error "uneven tokens line" "$work/uneven.txt:2: has 2 tokens, line 1 has 3" \
  "$weir" logits --hf "$bad" --tokens "$work/uneven.txt" --out "$work/x.npy"
printf '1 2 x3\n' > "$work/word.txt"
expect_error "bad token" "$work/word.txt:1: 'x3' is not a token id" \
  "$weir" logits --hf "$bad" --tokens "$work/word.txt" --out "$work/x.npy"
printf '1 2 97\n' > "$work/big.txt"
expect_error "token outside the vocabulary" "$work/big.txt:1: token 97 is outside the vocabulary" \
  "$weir" logits --hf "$bad" --tokens "$work/big.txt" --out "$work/x.npy"
mkdir -p "$work/badcfg"
sed 's/"scoring_func": "sigmoid"/"scoring_func": "relu"/' "$bad/config.json" > "$work/badcfg/config.json"
cp "$bad/model.safetensors" "$work/badcfg/"
expect_error "unsupported scoring_func" "$work/badcfg/config.json: field 'scoring_func' is 'relu'" \
  "$weir" logits --hf "$work/badcfg" --tokens "$bad/tokens.txt" --out "$work/x.npy"

echo "hf_logits_test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
