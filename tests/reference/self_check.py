#!/usr/bin/python3
"""Self-check of the float64 DeepSeek reference (deepseek_ref.py).

    /usr/bin/python3 tests/reference/self_check.py

Prints one line per check and exits 1 if any check fails.
"""

import math
import os
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import deepseek_ref as ref  # noqa: E402
import make_fixture as fx  # noqa: E402

FAILS = []


def check(name, ok, detail=""):
    line = f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  [{detail}]" if detail else "")
    print(line, flush=True)
    if not ok:
        FAILS.append(line)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def run(name, fn):
    try:
        fn()
    except Exception as e:  # a crash is a failed check, keep going
        import traceback
        traceback.print_exc()
        check(name, False, f"exception {type(e).__name__}: {e}")


# ---------------------------------------------------------------------------
# (a) absorbed decode == naive forward, per layout and dtype
# ---------------------------------------------------------------------------

def check_decode(tmp):
    ref_logits = {}
    for layout in fx.LAYOUTS:
        for dtype in fx.DTYPES:
            d = os.path.join(tmp, f"{layout}-{dtype}")
            fx.build(d, layout, dtype, seed=1)
            m = ref.load_hf(d)
            toks = ref.read_tokens(os.path.join(d, "tokens.txt"))
            full = ref.forward(m, toks)
            ok = full.shape == (2, 12, 97) and bool(np.all(np.isfinite(full)))
            amax = float(np.max(np.abs(full)))
            ok = ok and 0.1 < amax < 50.0
            worst = 0.0
            prefills = (0, 1, 5, 11, 12) if dtype == "f32" else (5,)
            for n in prefills:
                worst = max(worst, rel(ref.decode(m, toks, n), full))
            check(f"(a) decode==forward {layout:<11} {dtype:<4}",
                  ok and worst <= 1e-9,
                  f"prefill {','.join(map(str, prefills))}: max rel {worst:.1e}; |logit|max {amax:.2f}")
            ref_logits[(layout, dtype)] = full
    # the low-precision loaders decode to the same weights as f32 up to the
    # storage precision (logits themselves may move a lot once a quantized
    # router flips an expert choice, so they are only reported)
    for layout in fx.LAYOUTS:
        w32 = ref.load_hf(os.path.join(tmp, f"{layout}-f32"))["w"]
        w16 = ref.load_hf(os.path.join(tmp, f"{layout}-bf16"))["w"]
        w8 = ref.load_hf(os.path.join(tmp, f"{layout}-fp8"))["w"]
        ok = set(w32) == set(w16) == set(w8)
        e16 = e8 = 0.0
        for k, a in w32.items():
            e16 = max(e16, float(np.max(np.abs(w16[k] - a) / np.maximum(np.abs(a), 1e-30))))
            if fx.is_fp8_weight(k):
                tol = 2 ** -4 * np.abs(a) + np.max(np.abs(a)) / 448 * 2 ** -10 * 1.0001
                ok = ok and bool(np.all(np.abs(w8[k] - a) <= tol))
                e8 = max(e8, float(np.max(np.abs(w8[k] - a)) / np.max(np.abs(a))))
            elif k.endswith("e_score_correction_bias"):   # fp32 in every file
                ok = ok and np.array_equal(w8[k], a) and np.array_equal(w16[k], a)
            else:
                ok = ok and np.array_equal(w8[k], w16[k])
        r16 = rel(ref_logits[(layout, "bf16")], ref_logits[(layout, "f32")])
        r8 = rel(ref_logits[(layout, "fp8")], ref_logits[(layout, "f32")])
        check(f"(a) bf16/fp8 loads match f32 weights {layout:<11}", ok and e16 <= 2 ** -8,
              f"weight rel err bf16 {e16:.1e} fp8 {e8:.1e}; logits rel bf16 {r16:.1e} fp8 {r8:.1e}")


def check_routing_nontrivial(tmp):
    """In the v3_moe fixture the bias and the group limit change choices."""
    d = os.path.join(tmp, "v3_moe-f32")
    m = ref.load_hf(d)
    toks = ref.read_tokens(os.path.join(d, "tokens.txt"))
    calls = []
    orig = ref.route

    def spy(logits, cfg, bias=None):
        calls.append((logits, bias))
        return orig(logits, cfg, bias)

    ref.route = spy
    try:
        ref.forward(m, toks)
    finally:
        ref.route = orig
    cfg = m["cfg"]
    nogroup = dict(cfg, n_group=1, topk_group=1)
    n = by_bias = by_group = 0
    used = set()
    for logits, bias in calls:
        idx, _ = ref.route(logits, cfg, bias)
        i0, _ = ref.route(logits, cfg, None)
        i1, _ = ref.route(logits, nogroup, bias)
        s = lambda a: [tuple(sorted(r)) for r in a]  # noqa: E731
        n += len(idx)
        by_bias += sum(a != b for a, b in zip(s(idx), s(i0)))
        by_group += sum(a != b for a, b in zip(s(idx), s(i1)))
        used |= set(idx.ravel().tolist())
    check("(b) v3_moe fixture routing non-degenerate", by_bias > 0 and by_group > 0 and len(used) >= 6,
          f"{n} token-layers: bias changes {by_bias}, group limit changes {by_group}, {len(used)}/8 experts used")


# ---------------------------------------------------------------------------
# (b) hand-computed gating cases (spec 3.2)
# ---------------------------------------------------------------------------

def _logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p / (1 - p))


def _as_map(idx, w):
    return {int(i): float(x) for i, x in zip(idx[0], w[0])}


def _same(got, want, tol=1e-12):
    return set(got) == set(want) and all(abs(got[k] - want[k]) <= tol for k in want)


def check_gating():
    v3 = dict(num_experts_per_tok=2, scoring_func="sigmoid", n_group=1, topk_group=1,
              norm_topk_prob=True, routed_scaling_factor=2.5)
    # 1. bias changes the selection, not the weights
    lg = _logit([[0.9, 0.8, 0.7, 0.1]])
    got0 = _as_map(*ref.route(lg, v3, None))
    got1 = _as_map(*ref.route(lg, v3, np.array([0.0, 0.0, 0.15, 0.0])))
    want0 = {0: 0.9 / 1.7 * 2.5, 1: 0.8 / 1.7 * 2.5}
    want1 = {0: 1.40625, 2: 1.09375}          # 0.9/1.6*2.5, 0.7/1.6*2.5
    check("(b) gating: bias flips expert 1->2, weights from unbiased s", _same(got0, want0) and _same(got1, want1),
          f"no bias {got0}, bias {got1}")
    # 2. group limit (V3: group score = sum of top-2 biased scores)
    s = [[0.9, 0.1, 0.8, 0.75, 0.85, 0.05, 0.2, 0.3]]
    cfg = dict(v3, n_group=4, topk_group=2)
    zero = np.zeros(8)
    got = _as_map(*ref.route(_logit(s), cfg, zero))
    flat = _as_map(*ref.route(_logit(s), dict(cfg, n_group=1, topk_group=1), zero))
    want = {0: 0.9 / 1.7 * 2.5, 2: 0.8 / 1.7 * 2.5}   # groups {1 (1.55), 0 (1.0)}
    wflat = {0: 0.9 / 1.75 * 2.5, 4: 0.85 / 1.75 * 2.5}
    check("(b) gating: group limit (top-2 sum) replaces expert 4 by 2", _same(got, want) and _same(flat, wflat),
          f"grouped {got}, ungrouped {flat}")
    # 3. bias moves a group into the top groups; weights still unbiased
    b = np.array([0, 0, 0, 0, 0.3, 0.3, 0, 0], dtype=np.float64)
    got = _as_map(*ref.route(_logit(s), cfg, b))
    want = {4: 0.85 / 1.65 * 2.5, 2: 0.8 / 1.65 * 2.5}  # groups {1 (1.55), 2 (1.5)}
    check("(b) gating: biased group score selects group 2", _same(got, want), f"{got}")
    # 4. V2 softmax, group score = group max (no bias), no renorm, scale 16
    p = np.array([[0.30, 0.01, 0.20, 0.19, 0.25, 0.01, 0.02, 0.02]])
    v2 = dict(num_experts_per_tok=2, scoring_func="softmax", n_group=4, topk_group=2,
              norm_topk_prob=False, routed_scaling_factor=16.0)
    got = _as_map(*ref.route(np.log(p), v2, None))
    want = {0: 4.8, 4: 4.0}   # group max picks groups 0 and 2 (a top-2 sum would pick 1 and 0)
    check("(b) gating: V2 softmax group max, x16, no renorm", _same(got, want, 1e-12), f"{got}")


# ---------------------------------------------------------------------------
# (c) YaRN / RoPE (spec 2.1)
# ---------------------------------------------------------------------------

def check_yarn():
    lo, hi = ref.yarn_bounds(64, 10000.0, 4096, 32, 1)
    check("(c) YaRN ramp bounds d=64 theta=1e4 orig=4096", (lo, hi) == (10, 23), f"low {lo} high {hi}")
    base = dict(qk_nope_head_dim=128, qk_rope_head_dim=64, rope_theta=10000.0,
                max_position_embeddings=163840,
                rope_scaling={"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                              "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})
    sc3 = ref.softmax_scale(base)
    v2 = dict(base, rope_scaling=dict(base["rope_scaling"], mscale=0.707, mscale_all_dim=0.707))
    sc2 = ref.softmax_scale(v2)
    check("(c) softmax scale V3 (mscale 1, s 40, dqk 192)", round(sc3, 6) == 0.135234, f"{sc3:.7f}")
    check("(c) softmax scale V2 (mscale 0.707)", round(sc2, 6) == 0.114721, f"{sc2:.7f}")
    f0 = 10000.0 ** (-np.arange(0, 64, 2) / 64)
    f = ref.rope_inv_freq(base)
    i = np.arange(32)
    ramp = np.clip((i - 10) / 13, 0, 1)
    ok = (np.allclose(f[:11], f0[:11], rtol=0, atol=0) and np.allclose(f[23:], f0[23:] / 40, rtol=1e-15)
          and np.allclose(f, f0 * (1 - ramp) + f0 / 40 * ramp, rtol=1e-15))
    check("(c) YaRN frequencies: i<=10 kept, i>=23 divided by 40, linear between", ok)
    short = dict(base, max_position_embeddings=4096)
    ok = np.array_equal(ref.rope_inv_freq(short), f0) and ref.softmax_scale(short) == sc3
    check("(c) max_pos<=original: no frequency correction, m^2 still applied (HF)", ok)
    check("(c) no rope_scaling: scale = 192^-0.5", ref.softmax_scale(dict(base, rope_scaling=None)) == 192 ** -0.5)
    # fixture ramps: v2_lite has a fractional ramp, v3_moe a step at i=1
    b2 = ref.yarn_bounds(8, 10000.0, 4096, 32, 1)
    b3 = ref.yarn_bounds(8, 10000.0, 8, 32, 1)
    check("(c) fixture ramps v2_lite (1,3), v3_moe (0,1)", b2 == (1, 3) and b3 == (0, 1), f"{b2} {b3}")
    # interleaved pairs: (x0,x1) rotated by angle 0, (x2,x3) by angle 1
    a = np.array([0.3, 1.1])
    y = ref.apply_rope(np.array([1.0, 0.0, 0.0, 1.0]), np.cos(a), np.sin(a))
    want = np.array([math.cos(0.3), math.sin(0.3), -math.sin(1.1), math.cos(1.1)])
    ok = np.allclose(y, want, rtol=0, atol=1e-15)
    # RoPE scores depend on relative position only
    cfg = dict(base, qk_rope_head_dim=8, max_position_embeddings=16384,
               rope_scaling=dict(base["rope_scaling"], mscale=0.707, mscale_all_dim=0.707))
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(8), rng.standard_normal(8)

    def score(m, n):
        cm, sm = ref.rope_cos_sin(cfg, [m])
        cn, sn = ref.rope_cos_sin(cfg, [n])
        return ref.apply_rope(q, cm[0], sm[0]) @ ref.apply_rope(k, cn[0], sn[0])
    ok = ok and abs(score(7, 2) - score(12, 7)) < 1e-12 and abs(score(7, 2) - score(7, 3)) > 1e-6
    check("(c) RoPE on adjacent pairs, relative-position invariant", ok)


# ---------------------------------------------------------------------------
# (d) dtype codecs
# ---------------------------------------------------------------------------

def check_codecs(tmp):
    vals = [1.0, -2.0, 3.140625, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, 0.0, 65280.0]
    want = [0x3F80, 0xC000, 0x4049, 0x3F80, 0x3F82, 0x3F81, 0x0000, 0x477F]
    bits = ref.f64_to_bf16(vals)
    back = ref.bf16_to_f64(bits)
    wantv = [1.0, -2.0, 3.140625, 1.0, 1 + 2 ** -6, 1 + 2 ** -7, 0.0, 65280.0]
    check("(d) bf16 RNE encode/decode known values", bits.tolist() == want and back.tolist() == wantv,
          " ".join(f"{b:04X}" for b in bits.tolist()))
    codes = [0x00, 0x01, 0x07, 0x08, 0x38, 0x7E, 0xFE, 0xC0, 0x2A, 0x5A]
    dec = ref.e4m3_to_f64(codes).tolist()
    wdec = [0.0, 2 ** -9, 7 * 2 ** -9, 2 ** -6, 1.0, 448.0, -448.0, -2.0, 0.3125, 20.0]
    nan = np.isnan(ref.e4m3_to_f64([0x7F, 0xFF])).all()
    check("(d) e4m3fn decode known codes (subnormal, max 448, NaN)", dec == wdec and nan and
          bool(np.signbit(ref.e4m3_to_f64([0x80]))[0]))
    xs = [0.3, 500.0, -500.0, 17.0, 19.0, 2 ** -10, 3 * 2 ** -10, 1.0, 448.0, -0.0, float("nan")]
    wenc = [0x2A, 0x7E, 0xFE, 0x58, 0x5A, 0x00, 0x02, 0x38, 0x7E, 0x80, 0x7F]
    enc = ref.f64_to_e4m3(xs).tolist()
    allc = np.array([c for c in range(256) if (c & 0x7F) != 0x7F], dtype=np.uint8)
    rt = np.array_equal(ref.f64_to_e4m3(ref.e4m3_to_f64(allc)), allc)
    check("(d) e4m3fn RNE encode (ties even, saturate), 254-code round trip", enc == wenc and rt,
          " ".join(f"{c:02X}" for c in enc))
    # block dequant: 130x200 of 1.0 with a 2x2 scale grid
    w = ref.e4m3_to_f64(np.full((130, 200), 0x38, dtype=np.uint8))
    W = ref.dequant_blocks(w, np.array([[2.0, 3.0], [5.0, 7.0]]))
    ok = (W[:128, :128] == 2).all() and (W[:128, 128:] == 3).all() and (W[128:, :128] == 5).all() \
        and (W[128:, 128:] == 7).all()
    rng = np.random.default_rng(3)
    x = 0.1 * rng.standard_normal((160, 64))
    c8, sc = fx.quant_fp8(x)
    xq = ref.dequant_blocks(ref.e4m3_to_f64(c8), sc.astype(np.float64))
    err_ok = np.all(np.abs(xq - x) <= np.maximum(2 ** -4 * np.abs(x), sc.max() * 2 ** -10) + 1e-18)
    check("(d) fp8 128x128 block dequant (partial edge blocks) and quantize round trip",
          bool(ok) and sc.shape == (2, 1) and bool(err_ok), f"scale grid {sc.shape}")
    # safetensors write/read, incl. the fp8 fixture's stored dtypes
    p = os.path.join(tmp, "t.safetensors")
    t = {"a": ("F32", np.arange(6, dtype=np.float32).reshape(2, 3)),
         "b": ("BF16", ref.f64_to_bf16([1.5, -0.25, 3.0])),
         "c": ("F8_E4M3", np.array([[0x38, 0xC0]], dtype=np.uint8))}
    ref.write_safetensors(p, t, {"format": "pt"})
    r = ref.read_safetensors(p)
    with open(p, "rb") as f:
        hlen = int(np.frombuffer(f.read(8), "<u8")[0])
    ok = all(r[k][0] == t[k][0] and np.array_equal(r[k][1], t[k][1]) for k in t) and hlen % 8 == 0
    ok = ok and ref.to_f64(*r["b"]).tolist() == [1.5, -0.25, 3.0] and ref.to_f64(*r["c"]).tolist() == [[1.0, -2.0]]
    st = ref.read_safetensors(os.path.join(tmp, "dense_qlora-fp8", "model.safetensors"))
    ok = ok and st["model.layers.0.mlp.gate_proj.weight"][0] == "F8_E4M3" \
        and st["model.layers.0.mlp.gate_proj.weight_scale_inv"][1].shape == (2, 1) \
        and st["model.layers.0.mlp.down_proj.weight_scale_inv"][1].shape == (1, 2) \
        and st["lm_head.weight"][0] == "BF16" and st["model.norm.weight"][0] == "BF16"
    st = ref.read_safetensors(os.path.join(tmp, "v3_moe-fp8", "model.safetensors"))
    ok = ok and st["model.layers.1.mlp.gate.weight"][0] == "BF16" \
        and st["model.layers.1.mlp.gate.e_score_correction_bias"][0] == "F32" \
        and st["model.layers.1.mlp.experts.7.down_proj.weight"][0] == "F8_E4M3"
    check("(d) safetensors round trip; fp8 fixture dtypes/scale shapes", bool(ok))


# ---------------------------------------------------------------------------
# (e) sharded == single file, MTP layer ignored, CLI
# ---------------------------------------------------------------------------

def check_loads(tmp):
    for layout in fx.LAYOUTS:
        single = os.path.join(tmp, f"{layout}-fp8")
        out = {}
        for tag, kw in (("sharded", dict(sharded=True)), ("mtp", dict(mtp=True)),
                        ("sharded+mtp", dict(sharded=True, mtp=True))):
            d = os.path.join(tmp, f"{layout}-fp8-{tag}")
            fx.build(d, layout, "fp8", seed=1, **kw)
            out[tag] = ref.load_hf(d)
        m = ref.load_hf(single)
        toks = ref.read_tokens(os.path.join(single, "tokens.txt"))
        a = ref.forward(m, toks)
        same = all(np.array_equal(a, ref.forward(out[t], toks)) for t in out)
        wsame = all(set(out[t]["w"]) == set(m["w"]) for t in out)
        nm = len(out["mtp"]["mtp"])
        mtp_ok = nm > 0 and ref.mtp_logits(out["sharded+mtp"], toks).shape == (2, 11, 97)
        check(f"(e) sharded / +MTP loads give identical logits {layout:<11}", same and wsame and mtp_ok,
              f"{nm} MTP tensors set aside")
    d = os.path.join(tmp, "v3_moe-fp8-sharded")
    o = os.path.join(tmp, "cli.npy")
    proc = subprocess.run([sys.executable, "-B", os.path.join(HERE, "deepseek_ref.py"), "--hf", d,
                           "--tokens", os.path.join(d, "tokens.txt"), "--prefill", "4", "--out", o],
                          capture_output=True, text=True)
    ok = proc.returncode == 0
    if ok:
        got = np.load(o)
        m = ref.load_hf(d)
        want = ref.forward(m, ref.read_tokens(os.path.join(d, "tokens.txt"))).astype(np.float32)
        ok = got.dtype == np.float32 and got.shape == (2, 12, 97) and rel(got, want) < 1e-6
    check("(e) CLI --prefill writes float32 [B,T,V] matching forward", ok, proc.stderr.strip()[-200:])


def main():
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="weir_ref_") as tmp:
        run("(a) decode", lambda: check_decode(tmp))
        run("(b) fixture routing", lambda: check_routing_nontrivial(tmp))
        run("(b) gating", check_gating)
        run("(c) yarn", check_yarn)
        run("(d) codecs", lambda: check_codecs(tmp))
        run("(e) loads", lambda: check_loads(tmp))
    dt = time.time() - t0
    if FAILS:
        print(f"self_check: {len(FAILS)} check(s) FAILED in {dt:.1f} s:", file=sys.stderr)
        for f in FAILS:
            print("  " + f, file=sys.stderr)
        return 1
    print(f"self_check: all checks passed in {dt:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
