#!/usr/bin/python3
"""Write a tiny random DeepSeek checkpoint in the exact HF layout.

    make_fixture.py DIR --layout dense_qlora|v3_moe|v2_lite
                    [--dtype f32|bf16|fp8] [--seed S] [--sharded] [--mtp]

Produces DIR/config.json, DIR/model.safetensors (or two shards plus
model.safetensors.index.json with --sharded) and DIR/tokens.txt (2 sequences
of 12 token ids).  Tensor names follow spec section 1.2.  The main-model
tensors are drawn first from the seeded generator, so --mtp (extra layer
num_hidden_layers, spec 4) and --sharded do not change their values.
"""

import argparse
import json
import os
import re
import sys

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deepseek_ref as ref  # noqa: E402

LAYOUTS = ("dense_qlora", "v3_moe", "v2_lite")
DTYPES = ("f32", "bf16", "fp8")
SEQ_LEN = 12
N_SEQ = 2


def make_config(layout, mtp=False):
    c = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": 97,
        "hidden_size": 64,
        "intermediate_size": 160,        # > 128: two FP8 scale blocks
        "moe_intermediate_size": 32,
        "num_hidden_layers": 3,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 32,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "n_group": 4,
        "topk_group": 2,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "routed_scaling_factor": 2.5,
        "norm_topk_prob": True,
        "hidden_act": "silu",
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "yarn", "factor": 4.0,
                         "original_max_position_embeddings": 8,
                         "beta_fast": 32, "beta_slow": 1,
                         "mscale": 1.0, "mscale_all_dim": 1.0},
        "max_position_embeddings": 32,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "num_nextn_predict_layers": 1 if mtp else 0,
        "bos_token_id": 0,
        "eos_token_id": 1,
    }
    if layout == "dense_qlora":
        c.update(first_k_dense_replace=3, n_routed_experts=None,
                 n_shared_experts=None, num_experts_per_tok=None, n_group=1,
                 topk_group=1, topk_method="greedy", rope_scaling=None)
    elif layout == "v2_lite":
        c.update(architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2",
                 q_lora_rank=None, n_shared_experts=2, n_group=1, topk_group=1,
                 scoring_func="softmax", topk_method="greedy",
                 routed_scaling_factor=1.0, norm_topk_prob=False,
                 max_position_embeddings=16384,
                 rope_scaling={"type": "yarn", "factor": 40.0,
                               "original_max_position_embeddings": 4096,
                               "beta_fast": 32, "beta_slow": 1,
                               "mscale": 0.707, "mscale_all_dim": 0.707})
    elif layout != "v3_moe":
        raise ValueError(layout)
    return c


def tensor_specs(c, mtp=False):
    """Ordered list of (name, shape, kind); kind in norm|linear|embed|router|bias."""
    d, V = c["hidden_size"], c["vocab_size"]
    H = c["num_attention_heads"]
    dn, dr, dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    r, ql = c["kv_lora_rank"], c["q_lora_rank"] or 0
    E = c["n_routed_experts"] or 0

    def block(i):
        p = f"model.layers.{i}."
        s = [(p + "input_layernorm.weight", (d,), "norm")]
        a = p + "self_attn."
        if ql:
            s += [(a + "q_a_proj.weight", (ql, d), "linear"),
                  (a + "q_a_layernorm.weight", (ql,), "norm"),
                  (a + "q_b_proj.weight", (H * (dn + dr), ql), "linear")]
        else:
            s += [(a + "q_proj.weight", (H * (dn + dr), d), "linear")]
        s += [(a + "kv_a_proj_with_mqa.weight", (r + dr, d), "linear"),
              (a + "kv_a_layernorm.weight", (r,), "norm"),
              (a + "kv_b_proj.weight", (H * (dn + dv), r), "linear"),
              (a + "o_proj.weight", (d, H * dv), "linear"),
              (p + "post_attention_layernorm.weight", (d,), "norm")]
        m = p + "mlp."
        if E and i >= c["first_k_dense_replace"]:
            fi = c["moe_intermediate_size"]
            s += [(m + "gate.weight", (E, d), "router")]
            if c["topk_method"] == "noaux_tc":
                s += [(m + "gate.e_score_correction_bias", (E,), "bias")]
            for j in range(E):
                q = m + f"experts.{j}."
                s += [(q + "gate_proj.weight", (fi, d), "linear"),
                      (q + "up_proj.weight", (fi, d), "linear"),
                      (q + "down_proj.weight", (d, fi), "linear")]
            if c["n_shared_experts"]:
                fs = c["n_shared_experts"] * fi
                q = m + "shared_experts."
                s += [(q + "gate_proj.weight", (fs, d), "linear"),
                      (q + "up_proj.weight", (fs, d), "linear"),
                      (q + "down_proj.weight", (d, fs), "linear")]
        else:
            fi = c["intermediate_size"]
            s += [(m + "gate_proj.weight", (fi, d), "linear"),
                  (m + "up_proj.weight", (fi, d), "linear"),
                  (m + "down_proj.weight", (d, fi), "linear")]
        return s

    specs = [("model.embed_tokens.weight", (V, d), "embed")]
    for i in range(c["num_hidden_layers"]):
        specs += block(i)
    specs += [("model.norm.weight", (d,), "norm"),
              ("lm_head.weight", (V, d), "head")]
    if mtp:
        i = c["num_hidden_layers"]
        p = f"model.layers.{i}."
        specs += [(p + "embed_tokens.weight", (V, d), "copy:model.embed_tokens.weight"),
                  (p + "enorm.weight", (d,), "norm"),
                  (p + "hnorm.weight", (d,), "norm"),
                  (p + "eh_proj.weight", (d, 2 * d), "mtp_proj")]
        specs += block(i)
        specs += [(p + "shared_head.norm.weight", (d,), "norm"),
                  (p + "shared_head.head.weight", (V, d), "copy:lm_head.weight")]
    return specs


_FP8_RE = re.compile(
    r"\.(self_attn\.(q_a_proj|q_b_proj|q_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.(experts\.\d+\.|shared_experts\.)?(gate_proj|up_proj|down_proj))\.weight$")


def is_fp8_weight(name):
    """Projection weights stored FP8 in the released checkpoint (spec 1.2):
    not the embedding, head, router, norms, bias or MTP eh_proj."""
    return bool(_FP8_RE.search(name))


def draw(rng, shape, kind):
    if kind == "norm":
        return 1.0 + 0.05 * rng.standard_normal(shape)
    if kind == "embed":
        return rng.standard_normal(shape)
    if kind == "bias":
        return rng.uniform(-0.15, 0.15, shape)
    if kind == "router":
        return 0.15 * rng.standard_normal(shape)
    # linear, head, mtp_proj
    return 0.12 * rng.standard_normal(shape)


def quant_fp8(w, block=128):
    """Blockwise e4m3: scale = amax/448 per 128x128 block, code = enc(w/scale).
    Returns (codes uint8, scale_inv float32 [ceil(o/128), ceil(i/128)])."""
    o, i = w.shape
    nb_o, nb_i = -(-o // block), -(-i // block)
    scale = np.zeros((nb_o, nb_i), dtype=np.float32)
    codes = np.zeros(w.shape, dtype=np.uint8)
    for bo in range(nb_o):
        for bi in range(nb_i):
            sl = (slice(bo * block, (bo + 1) * block), slice(bi * block, (bi + 1) * block))
            s = np.float32(max(np.max(np.abs(w[sl])), 1e-4) / ref.E4M3_MAX)
            scale[bo, bi] = s
            codes[sl] = ref.f64_to_e4m3(w[sl] / np.float64(s))
    return codes, scale


def encode(name, val, dtype):
    """-> list of (name, (st_dtype, storage array))."""
    if name.endswith("e_score_correction_bias"):
        return [(name, ("F32", val.astype(np.float32)))]
    if dtype == "f32":
        return [(name, ("F32", val.astype(np.float32)))]
    if dtype == "fp8" and is_fp8_weight(name):
        codes, scale = quant_fp8(val)
        return [(name, ("F8_E4M3", codes)), (name + "_scale_inv", ("F32", scale))]
    return [(name, ("BF16", ref.f64_to_bf16(val)))]


def build(out_dir, layout, dtype="f32", seed=0, sharded=False, mtp=False):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}")
    os.makedirs(out_dir, exist_ok=True)
    cfg = make_config(layout, mtp)
    if dtype == "fp8":
        cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                      "activation_scheme": "dynamic",
                                      "weight_block_size": [128, 128]}
        cfg["torch_dtype"] = "bfloat16"
    else:
        cfg["torch_dtype"] = {"f32": "float32", "bf16": "bfloat16"}[dtype]
    rng = np.random.default_rng(seed)
    vals = {}
    tensors = {}
    for name, shape, kind in tensor_specs(cfg, mtp):
        if kind.startswith("copy:"):
            src = kind[5:]
            for n, t in encode(src, vals[src], dtype):
                tensors[name + n[len(src):]] = t
            continue
        vals[name] = draw(rng, shape, kind)
        for n, t in encode(name, vals[name], dtype):
            tensors[n] = t
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if sharded:
        names = list(tensors)
        files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        parts = [{}, {}]
        for k, n in enumerate(names):   # alternate: scales land apart from weights
            parts[k % 2][n] = tensors[n]
        wm = {}
        for fn, part in zip(files, parts):
            ref.write_safetensors(os.path.join(out_dir, fn), part, {"format": "pt"})
            wm.update({n: fn for n in part})
        total = sum(a.nbytes for _, a in tensors.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
    else:
        ref.write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, {"format": "pt"})
    trng = np.random.default_rng(seed + 1000003)
    toks = trng.integers(0, cfg["vocab_size"], size=(N_SEQ, SEQ_LEN))
    with open(os.path.join(out_dir, "tokens.txt"), "w") as f:
        for row in toks:
            f.write(" ".join(str(int(t)) for t in row) + "\n")
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description="tiny random DeepSeek HF checkpoint")
    ap.add_argument("dir")
    ap.add_argument("--layout", required=True, choices=LAYOUTS)
    ap.add_argument("--dtype", default="f32", choices=DTYPES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sharded", action="store_true")
    ap.add_argument("--mtp", action="store_true", help="add an MTP layer (ignored by forward)")
    a = ap.parse_args(argv)
    build(a.dir, a.layout, a.dtype, a.seed, a.sharded, a.mtp)
    print(f"wrote {a.layout}/{a.dtype} fixture to {a.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
