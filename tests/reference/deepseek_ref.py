#!/usr/bin/python3
"""Float64 numpy reference ("oracle") for the DeepSeek-V2/V3 forward pass.

Written from /work/shared/spec/deepseek.md sections 1-4 only (no code copied
from any implementation).  Section references below are to that spec.

Module API
    load_hf(dir)                    -> model (config + float64 weights)
    forward(model, tokens[B,T])     -> logits [B,T,V]   (naive MLA, spec 2.1)
    decode(model, tokens, prefill)  -> logits [B,T,V]   (naive prefill, then
                                       absorbed MLA one token at a time, 2.2)
    route(logits, cfg, bias)        -> (idx [N,K], weights [N,K])  (spec 3.2)
    mtp_logits(model, tokens)       -> logits [B,T-1,V] of MTP depth 1 (spec 4;
                                       not used by forward/decode)

CLI
    deepseek_ref.py --hf DIR --tokens FILE [--prefill N] --out FILE.npy
writes float32 logits [batch, position, vocab] with np.save.

Choices where the spec allows two readings (see README.md):
  * softmax scale = qk_head_dim^-0.5 * m^2, m = 0.1*mscale_all_dim*ln(factor)+1,
    applied whenever rope_scaling is set (HF behaviour, spec 2.1 item 5), not
    only when max_position_embeddings > original_max_position_embeddings
    (model.py behaviour).  m uses rope_scaling.mscale_all_dim as HF does; when
    that key is absent it falls back to rope_scaling.mscale (default 1.0).
  * YaRN frequency correction only when max_position_embeddings >
    original_max_position_embeddings (spec 2.1, model.py).
  * cos/sin are multiplied by mscale(factor, mscale)/mscale(factor,
    mscale_all_dim) as HF does (spec 2.1: "1 for released configs").
  * group limiting is applied when n_group > 1 (spec 3.2 item 4), keyed on
    n_group and not on topk_method; the bias is used iff topk_method == noaux_tc.
  * renormalize the K weights iff norm_topk_prob, then always multiply by
    routed_scaling_factor.
"""

import argparse
import json
import math
import os
import re
import sys

import numpy as np

# ---------------------------------------------------------------------------
# dtype codecs
# ---------------------------------------------------------------------------


def _e4m3_table():
    codes = np.arange(256, dtype=np.int64)
    sign = codes >> 7
    exp = (codes >> 3) & 0xF
    man = codes & 0x7
    val = np.where(exp == 0,
                   (man / 8.0) * 2.0 ** -6,
                   (1.0 + man / 8.0) * np.power(2.0, exp - 7))
    val = np.where(sign == 1, -val, val)
    val[(codes & 0x7F) == 0x7F] = np.nan  # e4m3fn: no inf, S.1111.111 is NaN
    return val


E4M3_TABLE = _e4m3_table()          # code -> float64 value
_E4M3_POS = E4M3_TABLE[:127].copy()  # codes 0..126: 0 .. 448, increasing
E4M3_MAX = 448.0


def e4m3_to_f64(codes):
    """uint8 e4m3fn codes -> float64 (1 sign, 4 exp bits bias 7, 3 mantissa)."""
    return E4M3_TABLE[np.asarray(codes, dtype=np.uint8).astype(np.int64)]


def f64_to_e4m3(x):
    """float -> e4m3fn codes, round to nearest even, saturating at +-448."""
    x = np.asarray(x, dtype=np.float64)
    nan = np.isnan(x)
    sign = np.signbit(x).astype(np.int64)
    a = np.minimum(np.abs(np.where(nan, 0.0, x)), E4M3_MAX)
    i = np.clip(np.searchsorted(_E4M3_POS, a, side="left"), 1, 126)
    lo, hi = i - 1, i
    dlo = a - _E4M3_POS[lo]
    dhi = _E4M3_POS[hi] - a
    pick_hi = (dhi < dlo) | ((dhi == dlo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo) | (sign << 7)
    code = np.where(nan, 0x7F, code)
    return code.astype(np.uint8)


def bf16_to_f64(bits):
    b = np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16
    return b.view(np.float32).astype(np.float64)


def f64_to_bf16(x):
    """float -> bf16 bits (uint16), round to nearest even via float32."""
    f = np.asarray(x, dtype=np.float64).astype(np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = np.where(np.isnan(f), 0x7FC0, r)
    return r.astype(np.uint16)


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------

_ST_NP = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "F8_E4M3": "u1",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1",
    "BOOL": "u1",
}


def read_safetensors(path):
    """-> {name: (dtype_str, storage ndarray)}; BF16 as uint16, F8 as uint8."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = np.frombuffer(data[:8], dtype="<u8")
    header = json.loads(data[8:8 + int(n)].decode("utf-8"))
    buf = memoryview(data)[8 + int(n):]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_NP:
            raise ValueError(f"{path}: {name}: unsupported dtype {dt}")
        shape = tuple(int(s) for s in info["shape"])
        b, e = info["data_offsets"]
        npdt = np.dtype(_ST_NP[dt])
        count = int(np.prod(shape)) if shape else 1
        if e - b != count * npdt.itemsize:
            raise ValueError(f"{path}: {name}: byte size mismatch")
        arr = np.frombuffer(buf[b:e], dtype=npdt).reshape(shape)
        out[name] = (dt, arr)
    return out


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: (dtype_str, storage ndarray)} written in dict order."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    off = 0
    for name, (dt, arr) in tensors.items():
        raw = np.ascontiguousarray(arr, dtype=np.dtype(_ST_NP[dt])).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(np.array([len(h)], dtype="<u8").tobytes())
        f.write(h)
        for raw in blobs:
            f.write(raw)


def to_f64(dt, arr):
    if dt == "BF16":
        return bf16_to_f64(arr)
    if dt == "F8_E4M3":
        return e4m3_to_f64(arr)
    return arr.astype(np.float64)


def dequant_blocks(w, scale, block=(128, 128)):
    """W = W_fp8 * scale of its [128,128] block (spec 1.2 / 6); scale shape
    [ceil(out/128), ceil(in/128)]."""
    bo, bi = block
    out_dim, in_dim = w.shape
    want = (-(-out_dim // bo), -(-in_dim // bi))
    if tuple(scale.shape) != want:
        raise ValueError(f"scale shape {scale.shape} != {want} for {w.shape}")
    full = np.repeat(np.repeat(scale, bo, axis=0), bi, axis=1)
    return w * full[:out_dim, :in_dim]


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def _norm_config(c):
    g = c.get
    q_lora = g("q_lora_rank") or 0
    rs = g("rope_scaling")
    if rs is not None:
        typ = rs.get("type", rs.get("rope_type"))
        if typ != "yarn":
            raise NotImplementedError(f"rope_scaling type {typ!r}")
    cfg = dict(
        vocab_size=int(c["vocab_size"]),
        hidden_size=int(c["hidden_size"]),
        intermediate_size=int(g("intermediate_size") or 0),
        moe_intermediate_size=int(g("moe_intermediate_size") or 0),
        num_hidden_layers=int(c["num_hidden_layers"]),
        first_k_dense_replace=int(g("first_k_dense_replace") or 0),
        moe_layer_freq=int(g("moe_layer_freq") or 1),
        num_attention_heads=int(c["num_attention_heads"]),
        q_lora_rank=int(q_lora),
        kv_lora_rank=int(c["kv_lora_rank"]),
        qk_nope_head_dim=int(c["qk_nope_head_dim"]),
        qk_rope_head_dim=int(c["qk_rope_head_dim"]),
        v_head_dim=int(c["v_head_dim"]),
        n_routed_experts=int(g("n_routed_experts") or 0),
        n_shared_experts=int(g("n_shared_experts") or 0),
        num_experts_per_tok=int(g("num_experts_per_tok") or 0),
        n_group=int(g("n_group") or 1),
        topk_group=int(g("topk_group") or 1),
        scoring_func=g("scoring_func") or "softmax",
        routed_scaling_factor=float(g("routed_scaling_factor") or 1.0),
        norm_topk_prob=bool(g("norm_topk_prob") or False),
        topk_method=g("topk_method") or "greedy",
        rope_theta=float(g("rope_theta") or 10000.0),
        rope_scaling=rs,
        max_position_embeddings=int(g("max_position_embeddings") or 0),
        rms_norm_eps=float(g("rms_norm_eps") or 1e-6),
        num_nextn_predict_layers=int(g("num_nextn_predict_layers") or 0),
    )
    act = g("hidden_act") or "silu"
    if act != "silu":
        raise NotImplementedError(f"hidden_act {act!r}")
    return cfg


def _load_raw(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    raw = {}
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        for fn in sorted(set(wm.values())):
            part = read_safetensors(os.path.join(d, fn))
            for k, v in part.items():
                if k in raw:
                    raise ValueError(f"tensor {k} in two shards")
                raw[k] = v
        missing = set(wm) - set(raw)
        if missing:
            raise ValueError(f"weight_map names not found: {sorted(missing)[:5]}")
    else:
        raw = read_safetensors(os.path.join(d, "model.safetensors"))
    return raw


def load_hf(d):
    """Read config.json and the safetensors weights of an HF DeepSeek dir.

    Returns {"cfg": normalized config, "w": {name: float64}, "mtp": {...}}.
    FP8 weights are dequantized with their weight_scale_inv blocks.  Tensors
    of layers >= num_hidden_layers (MTP, spec 4) go to model["mtp"]."""
    with open(os.path.join(d, "config.json")) as f:
        raw_cfg = json.load(f)
    cfg = _norm_config(raw_cfg)
    qc = raw_cfg.get("quantization_config") or {}
    block = tuple(qc.get("weight_block_size") or (128, 128))
    raw = _load_raw(d)
    w, mtp = {}, {}
    nl = cfg["num_hidden_layers"]
    for name, (dt, arr) in raw.items():
        if name.endswith("_scale_inv"):
            if name[:-len("_scale_inv")] not in raw:
                raise ValueError(f"orphan scale {name}")
            continue
        val = to_f64(dt, arr)
        if dt == "F8_E4M3":
            sname = name + "_scale_inv"
            if sname not in raw:
                raise ValueError(f"FP8 tensor {name} has no {sname}")
            val = dequant_blocks(val, to_f64(*raw[sname]), block)
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m and int(m.group(1)) >= nl:
            mtp[name] = val
        else:
            w[name] = val
    return {"cfg": cfg, "w": w, "mtp": mtp}


# ---------------------------------------------------------------------------
# math pieces
# ---------------------------------------------------------------------------


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def linear(x, w):
    return x @ w.T  # [out,in] layout, y = x W^T


def silu(x):
    return x / (1.0 + np.exp(-x))


def swiglu(x, w1, w3, w2):
    """w2(silu(w1 x) * w3 x) with w1=gate_proj, w3=up_proj, w2=down_proj."""
    return linear(silu(linear(x, w1)) * linear(x, w3), w2)


def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def yarn_mscale(factor, mscale):
    """0.1*mscale*ln(s)+1 (1 for s<=1)."""
    if factor <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def yarn_bounds(dim, theta, orig, beta_fast, beta_slow):
    """low/high ramp bounds, c(r) = dim*ln(orig/(2 pi r)) / (2 ln theta)."""
    def c(r):
        return dim * math.log(orig / (2.0 * math.pi * r)) / (2.0 * math.log(theta))
    low = max(math.floor(c(beta_fast)), 0)
    high = min(math.ceil(c(beta_slow)), dim - 1)
    return low, high


def rope_inv_freq(cfg):
    """Per-pair frequencies f_i' (spec 2.1 RoPE/YaRN), i = 0..dr/2-1."""
    dr = cfg["qk_rope_head_dim"]
    theta = cfg["rope_theta"]
    f = theta ** (-np.arange(0, dr, 2, dtype=np.float64) / dr)
    rs = cfg["rope_scaling"]
    if rs is not None:
        orig = rs["original_max_position_embeddings"]
        if cfg["max_position_embeddings"] > orig:
            s = float(rs["factor"])
            low, high = yarn_bounds(dr, theta, orig, rs.get("beta_fast", 32),
                                    rs.get("beta_slow", 1))
            if low == high:
                high += 0.001
            ramp = np.clip((np.arange(dr // 2) - low) / (high - low), 0.0, 1.0)
            f = f * (1.0 - ramp) + (f / s) * ramp
    return f


def _mscales(cfg):
    """(softmax-scale m, cos/sin multiplier)."""
    rs = cfg["rope_scaling"]
    if rs is None:
        return 1.0, 1.0
    s = float(rs["factor"])
    ms = float(rs.get("mscale", 1.0) or 1.0)
    ms_all = rs.get("mscale_all_dim")
    ms_all = float(ms) if ms_all is None else float(ms_all)
    return yarn_mscale(s, ms_all), yarn_mscale(s, ms) / yarn_mscale(s, ms_all)


def softmax_scale(cfg):
    """qk_head_dim^-0.5 * m^2; m as in HF (whenever rope_scaling is set).
    Spec 2.1 item 5: model.py would apply m^2 only when
    max_position_embeddings > original; we follow HF."""
    dqk = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    m, _ = _mscales(cfg)
    return dqk ** -0.5 * m * m


def rope_cos_sin(cfg, pos):
    ang = np.asarray(pos, dtype=np.float64)[:, None] * rope_inv_freq(cfg)[None, :]
    _, mul = _mscales(cfg)
    return np.cos(ang) * mul, np.sin(ang) * mul


def apply_rope(x, cos, sin):
    """Rotate adjacent pairs (x[2i], x[2i+1]) as complex numbers by angle i.
    cos/sin must broadcast against x[..., 0::2]."""
    a = x[..., 0::2]
    b = x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


# ---------------------------------------------------------------------------
# MLA (spec 2)
# ---------------------------------------------------------------------------


def _q(cfg, W, p, x, cos, sin):
    """x [..., T, d] -> q_nope [..., T, H, dn], q_pe [..., T, H, dr] (roped).
    cos/sin [T, dr/2]."""
    H, dn, dr = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"]
    eps = cfg["rms_norm_eps"]
    if cfg["q_lora_rank"]:
        cq = rms_norm(linear(x, W[p + "q_a_proj.weight"]), W[p + "q_a_layernorm.weight"], eps)
        q = linear(cq, W[p + "q_b_proj.weight"])
    else:
        q = linear(x, W[p + "q_proj.weight"])
    q = q.reshape(q.shape[:-1] + (H, dn + dr))
    q_pe = apply_rope(q[..., dn:], cos[:, None, :], sin[:, None, :])
    return q[..., :dn], q_pe


def _kv_latent(cfg, W, p, x, cos, sin):
    """x [..., T, d] -> c_KV [..., T, r] (normalized), k_pe [..., T, dr] (roped)."""
    r = cfg["kv_lora_rank"]
    a = linear(x, W[p + "kv_a_proj_with_mqa.weight"])
    c = rms_norm(a[..., :r], W[p + "kv_a_layernorm.weight"], cfg["rms_norm_eps"])
    k_pe = apply_rope(a[..., r:], cos, sin)
    return c, k_pe


def mla_naive(cfg, W, p, x, pos):
    """Decompressed MLA over a whole sequence, causal. x [B,T,d].
    Returns (out [B,T,d], c_KV [B,T,r], k_pe [B,T,dr])."""
    B, T, _ = x.shape
    H, dn, dv = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    cos, sin = rope_cos_sin(cfg, pos)
    q_nope, q_pe = _q(cfg, W, p, x, cos, sin)
    c, k_pe = _kv_latent(cfg, W, p, x, cos, sin)
    kv = linear(c, W[p + "kv_b_proj.weight"]).reshape(B, T, H, dn + dv)
    k_nope, v = kv[..., :dn], kv[..., dn:]
    q = np.concatenate([q_nope, q_pe], axis=-1)
    k = np.concatenate([k_nope, np.broadcast_to(k_pe[:, :, None, :], (B, T, H, k_pe.shape[-1]))], axis=-1)
    s = np.einsum("bthd,bshd->bhts", q, k) * softmax_scale(cfg)
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)
    s = np.where(mask[None, None], -np.inf, s)
    pr = softmax(s, axis=-1)
    o = np.einsum("bhts,bshd->bthd", pr, v).reshape(B, T, H * dv)
    return linear(o, W[p + "o_proj.weight"]), c, k_pe


def mla_absorbed_step(cfg, W, p, x, pos, cache_c, cache_pe):
    """One new token per sequence, absorbed form (spec 2.2).
    x [B,d]; cache_c [B,n,r], cache_pe [B,n,dr] already hold positions 0..n-2;
    the new token's c_KV / k_pe are appended.  Returns (out [B,d], c, pe)."""
    B = x.shape[0]
    H, dn, dv = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    r = cfg["kv_lora_rank"]
    cos, sin = rope_cos_sin(cfg, [pos])
    q_nope, q_pe = _q(cfg, W, p, x[:, None, :], cos, sin)     # [B,1,H,*]
    c_new, pe_new = _kv_latent(cfg, W, p, x[:, None, :], cos, sin)  # [B,1,*]
    cache_c = np.concatenate([cache_c, c_new], axis=1)
    cache_pe = np.concatenate([cache_pe, pe_new], axis=1)
    wkv_b = W[p + "kv_b_proj.weight"].reshape(H, dn + dv, r)
    w_uk, w_uv = wkv_b[:, :dn, :], wkv_b[:, dn:, :]
    q_lat = np.einsum("bhd,hdr->bhr", q_nope[:, 0], w_uk)          # W_UK absorbed
    s = (np.einsum("bhr,bnr->bhn", q_lat, cache_c)
         + np.einsum("bhd,bnd->bhn", q_pe[:, 0], cache_pe)) * softmax_scale(cfg)
    pr = softmax(s, axis=-1)
    o_lat = np.einsum("bhn,bnr->bhr", pr, cache_c)                 # MQA value = c_KV
    o = np.einsum("bhr,hdr->bhd", o_lat, w_uv).reshape(B, H * dv)  # W_UV after
    return linear(o, W[p + "o_proj.weight"]), cache_c, cache_pe


# ---------------------------------------------------------------------------
# MoE (spec 3)
# ---------------------------------------------------------------------------


def _topk_idx(x, k):
    return np.argsort(-x, axis=-1, kind="stable")[..., :k]


def route(logits, cfg, bias=None):
    """Gating exactly per spec 3.2.  logits [N,E] = u W_g^T.
    Returns (idx [N,K], w [N,K])."""
    E = logits.shape[-1]
    K = cfg["num_experts_per_tok"]
    if cfg["scoring_func"] == "softmax":
        s = softmax(logits, axis=-1)
    elif cfg["scoring_func"] == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-logits))
    else:
        raise NotImplementedError(cfg["scoring_func"])
    s_orig = s
    s_sel = s + bias[None, :] if bias is not None else s.copy()
    G = cfg["n_group"]
    if G > 1:
        g = s_sel.reshape(-1, G, E // G)
        if bias is None:
            gs = g.max(axis=-1)                                  # V2: group max
        else:
            gs = -np.sort(-g, axis=-1)[..., :2].sum(axis=-1)     # V3: top-2 sum
        keep = _topk_idx(gs, cfg["topk_group"])
        gmask = np.zeros(gs.shape, dtype=bool)
        np.put_along_axis(gmask, keep, True, axis=-1)
        s_sel = np.where(np.repeat(gmask, E // G, axis=-1), s_sel, -np.inf)
    idx = _topk_idx(s_sel, K)
    w = np.take_along_axis(s_orig, idx, axis=-1)   # weights without the bias
    if cfg["norm_topk_prob"]:
        w = w / np.sum(w, axis=-1, keepdims=True)
    w = w * cfg["routed_scaling_factor"]
    return idx, w


def moe(cfg, W, p, u):
    """u [N,d] -> routed + shared expert output [N,d]."""
    bias = None
    if cfg["topk_method"] == "noaux_tc":
        bias = W[p + "gate.e_score_correction_bias"]
    idx, w = route(linear(u, W[p + "gate.weight"]), cfg, bias)
    y = np.zeros_like(u)
    for e in range(cfg["n_routed_experts"]):
        rows, slot = np.nonzero(idx == e)
        if rows.size == 0:
            continue
        q = p + f"experts.{e}."
        out = swiglu(u[rows], W[q + "gate_proj.weight"], W[q + "up_proj.weight"],
                     W[q + "down_proj.weight"])
        y[rows] += w[rows, slot][:, None] * out
    if cfg["n_shared_experts"]:
        q = p + "shared_experts."
        y = y + swiglu(u, W[q + "gate_proj.weight"], W[q + "up_proj.weight"],
                       W[q + "down_proj.weight"])
    return y


def is_moe_layer(cfg, i):
    return (cfg["n_routed_experts"] > 0 and i >= cfg["first_k_dense_replace"]
            and i % cfg["moe_layer_freq"] == 0)


def ffn(cfg, W, i, x):
    p = f"model.layers.{i}.mlp."
    if is_moe_layer(cfg, i):
        shp = x.shape
        return moe(cfg, W, p, x.reshape(-1, shp[-1])).reshape(shp)
    return swiglu(x, W[p + "gate_proj.weight"], W[p + "up_proj.weight"],
                  W[p + "down_proj.weight"])


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------


def _block_naive(cfg, W, i, h, pos):
    p = f"model.layers.{i}."
    eps = cfg["rms_norm_eps"]
    a, c, pe = mla_naive(cfg, W, p + "self_attn.", rms_norm(h, W[p + "input_layernorm.weight"], eps), pos)
    h = h + a
    h = h + ffn(cfg, W, i, rms_norm(h, W[p + "post_attention_layernorm.weight"], eps))
    return h, c, pe


def _head(cfg, W, h):
    return linear(rms_norm(h, W["model.norm.weight"], cfg["rms_norm_eps"]), W["lm_head.weight"])


def forward(model, tokens, return_hidden=False):
    """tokens [B,T] ints -> logits [B,T,V] (float64), naive MLA.
    With return_hidden also returns the post-final-norm hidden [B,T,d]."""
    cfg, W = model["cfg"], model["w"]
    tokens = np.asarray(tokens, dtype=np.int64)
    T = tokens.shape[1]
    h = W["model.embed_tokens.weight"][tokens]
    pos = np.arange(T)
    for i in range(cfg["num_hidden_layers"]):
        h, _, _ = _block_naive(cfg, W, i, h, pos)
    hn = rms_norm(h, W["model.norm.weight"], cfg["rms_norm_eps"])
    logits = linear(hn, W["lm_head.weight"])
    return (logits, hn) if return_hidden else logits


def decode(model, tokens, prefill):
    """Naive prefill of the first `prefill` tokens (building a per-layer cache
    of c_KV and roped k_pe only), then one token at a time with absorbed MLA.
    Returns logits for every position [B,T,V]."""
    cfg, W = model["cfg"], model["w"]
    tokens = np.asarray(tokens, dtype=np.int64)
    B, T = tokens.shape
    N = int(prefill)
    if not 0 <= N <= T:
        raise ValueError(f"prefill {N} not in [0, {T}]")
    nl, eps = cfg["num_hidden_layers"], cfg["rms_norm_eps"]
    r, dr = cfg["kv_lora_rank"], cfg["qk_rope_head_dim"]
    cache = [(np.zeros((B, 0, r)), np.zeros((B, 0, dr))) for _ in range(nl)]
    out = []
    if N > 0:
        h = W["model.embed_tokens.weight"][tokens[:, :N]]
        pos = np.arange(N)
        for i in range(nl):
            h, c, pe = _block_naive(cfg, W, i, h, pos)
            cache[i] = (c, pe)
        out.append(_head(cfg, W, h))
    for t in range(N, T):
        h = W["model.embed_tokens.weight"][tokens[:, t]]
        for i in range(nl):
            p = f"model.layers.{i}."
            a, c, pe = mla_absorbed_step(cfg, W, p + "self_attn.",
                                         rms_norm(h, W[p + "input_layernorm.weight"], eps),
                                         t, *cache[i])
            cache[i] = (c, pe)
            h = h + a
            h = h + ffn(cfg, W, i, rms_norm(h, W[p + "post_attention_layernorm.weight"], eps))
        out.append(_head(cfg, W, h)[:, None, :])
    return np.concatenate(out, axis=1)


def mtp_logits(model, tokens, h0="post_norm"):
    """MTP depth 1 (spec 4), NOT used by forward/decode.  Row i (0..T-2)
    is the distribution for token i+2.  h'_i = eh_proj [enorm(Emb(t_{i+1}));
    hnorm(h_i)] (embedding half first), one block at positions 0..T-2,
    shared_head.norm, shared_head.head.  h0 selects the main hidden fed in:
    "post_norm" (after model.norm, as vLLM does) or "pre_norm"."""
    cfg, M = model["cfg"], model["mtp"]
    i = cfg["num_hidden_layers"]
    p = f"model.layers.{i}."
    if p + "eh_proj.weight" not in M:
        raise ValueError("checkpoint has no MTP layer")
    tokens = np.asarray(tokens, dtype=np.int64)
    T = tokens.shape[1]
    if h0 == "post_norm":
        _, h = forward(model, tokens, return_hidden=True)
    elif h0 == "pre_norm":
        h = model["w"]["model.embed_tokens.weight"][tokens]
        for j in range(cfg["num_hidden_layers"]):
            h, _, _ = _block_naive(cfg, model["w"], j, h, np.arange(T))
    else:
        raise ValueError(f"h0 must be post_norm or pre_norm, not {h0!r}")
    W2 = dict(model["w"])
    W2.update(M)
    eps = cfg["rms_norm_eps"]
    emb = W2.get(p + "embed_tokens.weight", W2["model.embed_tokens.weight"])
    e = rms_norm(emb[tokens[:, 1:]], W2[p + "enorm.weight"], eps)
    hh = rms_norm(h[:, :-1], W2[p + "hnorm.weight"], eps)
    x = linear(np.concatenate([e, hh], axis=-1), W2[p + "eh_proj.weight"])
    x, _, _ = _block_naive(cfg, W2, i, x, np.arange(T - 1))
    x = rms_norm(x, W2[p + "shared_head.norm.weight"], eps)
    head = W2.get(p + "shared_head.head.weight", W2["lm_head.weight"])
    return linear(x, head)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def read_tokens(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append([int(t) for t in line.split()])
    if not rows:
        raise ValueError(f"{path}: no sequences")
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"{path}: sequences have different lengths")
    return np.array(rows, dtype=np.int64)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf", required=True, help="HF checkpoint directory")
    ap.add_argument("--tokens", required=True, help="one sequence per line")
    ap.add_argument("--prefill", type=int, default=None,
                    help="naive prefill length, then absorbed decode")
    ap.add_argument("--out", required=True, help="output .npy (float32 [B,T,V])")
    a = ap.parse_args(argv)
    model = load_hf(a.hf)
    toks = read_tokens(a.tokens)
    if toks.min() < 0 or toks.max() >= model["cfg"]["vocab_size"]:
        ap.error("token id out of range")
    if a.prefill is not None and not 0 <= a.prefill <= toks.shape[1]:
        ap.error(f"--prefill must be in [0, {toks.shape[1]}]")
    if a.prefill is None:
        logits = forward(model, toks)
    else:
        logits = decode(model, toks, a.prefill)
    np.save(a.out, logits.astype(np.float32))
    print(f"wrote {a.out} shape {tuple(logits.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
