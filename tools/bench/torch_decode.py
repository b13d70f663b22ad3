"""The PyTorch side of tools/bench/decode: batch-1 prefill and greedy decoding with a KV cache of
the GPT of torch_gpt.py (config M) and the DeepSeek-V3-style model of torch_deepseek.py (the tiny
model), written the usual way: each layer keeps its rotated keys and values, a step feeds one
token and attends to everything cached. f32 or (--dtype bf16) the model cast to bf16, the usual
PyTorch way of decoding in bf16; torch.no_grad, 2 threads, random (seeded) weights. Prints
"prefill_tokens_per_s decode_tokens_per_s" (best of --repeats runs)."""
import argparse
import time

import torch

import torch_deepseek
import torch_gpt
from torch_gpt import rope


def angles(start, t, dim, dtype):
    """Computed in f32, applied in the model's dtype (bf16 activations stay bf16)."""
    freqs = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    ang = torch.arange(start, start + t, dtype=torch.float32)[:, None] * freqs[None, :]
    return ang.cos()[None, :, None, :].to(dtype), ang.sin()[None, :, None, :].to(dtype)


def attend(q, k, v, scale):
    """q [b, h, t, d] over k, v [b, h, past + t, d]: query i sees keys up to past + i."""
    t, n = q.shape[2], k.shape[2]
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(torch.ones(t, n, dtype=torch.bool).triu(n - t + 1), float("-inf"))
    return s.softmax(-1) @ v


def cached(cache, k, v):
    """Appends k, v [b, t, h, d] to the layer's cache; returns all of them as [b, h, n, d]. The
    cache is kept contiguous in time-major order (PyTorch 1.13's cat of transposed views is
    slow)."""
    if cache:
        k, v = torch.cat([cache[0], k], 1), torch.cat([cache[1], v.contiguous()], 1)
    cache[:] = [k.contiguous(), v.contiguous()]
    return cache[0].transpose(1, 2), cache[1].transpose(1, 2)


def gpt_block(layer, x, start, cache):
    b, t, _ = x.shape
    cos, sin = angles(start, t, layer.hd, x.dtype)
    h = layer.attn_norm(x)
    q = rope(layer.wq(h).view(b, t, layer.heads, layer.hd), cos, sin).transpose(1, 2)
    k = rope(layer.wk(h).view(b, t, layer.kv_heads, layer.hd), cos, sin)
    v = layer.wv(h).view(b, t, layer.kv_heads, layer.hd)
    k, v = cached(cache, k, v)
    if layer.kv_heads != layer.heads:
        k = k.repeat_interleave(layer.heads // layer.kv_heads, dim=1)
        v = v.repeat_interleave(layer.heads // layer.kv_heads, dim=1)
    o = attend(q, k, v, layer.hd ** -0.5)
    x = x + layer.wo(o.transpose(1, 2).reshape(b, t, -1))
    h = layer.mlp_norm(x)
    return x + layer.w2(torch.nn.functional.silu(layer.w1(h)) * layer.w3(h))


def gpt_step(model, tokens, start, caches):
    x = model.embed(tokens)
    for layer, cache in zip(model.layers, caches):
        x = gpt_block(layer, x, start, cache)
    return model.head(model.norm(x))


def mla(attn, x, start, cache):
    a = attn.a
    b, t, _ = x.shape
    cos, sin = angles(start, t, a.rope, x.dtype)
    q = attn.wq_b(attn.q_norm(attn.wq_a(x))).view(b, t, a.heads, a.nope + a.rope)
    q = torch.cat([q[..., :a.nope], rope(q[..., a.nope:], cos, sin)], -1)
    c, k_pe = attn.wkv_a(x).split([a.kv_lora, a.rope], -1)
    k_pe = rope(k_pe.view(b, t, 1, a.rope), cos, sin)
    kv = attn.wkv_b(attn.kv_norm(c)).view(b, t, a.heads, a.nope + a.v)
    k = torch.cat([kv[..., :a.nope], k_pe.expand(b, t, a.heads, a.rope)], -1)
    k, v = cached(cache, k, kv[..., a.nope:])
    o = attend(q.transpose(1, 2), k, v, (a.nope + a.rope) ** -0.5)
    return attn.wo(o.transpose(1, 2).reshape(b, t, -1))


def deepseek_step(model, tokens, start, caches):
    x = model.embed(tokens)
    for layer, cache in zip(model.layers, caches):
        x = x + mla(layer.attn, layer.attn_norm(x), start, cache)
        x = x + layer.ffn(layer.ffn_norm(x))
    return model.head(model.norm(x))


def rates(step, layers, vocab, prompt_len, new, repeats):
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=g)
    best_prefill = best_decode = 0.0
    for _ in range(repeats):
        caches = [[] for _ in range(layers)]
        start = time.perf_counter()
        logits = step(prompt, 0, caches)
        prefill = time.perf_counter() - start
        token = logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for i in range(new):
            token = step(token, prompt_len + i, caches)[:, -1].argmax(-1, keepdim=True)
        decode = time.perf_counter() - start
        best_prefill = max(best_prefill, prompt_len / prefill)
        best_decode = max(best_decode, new / decode)
    return best_prefill, best_decode


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=["gpt", "deepseek"])
    for name, default in [("vocab", 8192), ("layers", 8), ("d", 512), ("heads", 8), ("kv_heads", 8),
                          ("d_ff", 1376), ("dense", 1), ("q_lora", 48), ("kv_lora", 32),
                          ("nope", 16), ("rope", 8), ("v", 16), ("inter", 256), ("moe_inter", 64),
                          ("experts", 8), ("k", 2), ("groups", 4), ("topk_groups", 2),
                          ("prompt", 64), ("new", 64), ("repeats", 3)]:
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    if a.model == "gpt":
        model = torch_gpt.Gpt(a.vocab, a.layers, a.d, a.heads, a.kv_heads, a.d_ff).eval().to(dtype)
        step = lambda tokens, start, caches: gpt_step(model, tokens, start, caches)
    else:
        model = torch_deepseek.Model(a).eval().to(dtype)
        step = lambda tokens, start, caches: deepseek_step(model, tokens, start, caches)
    with torch.no_grad():
        prefill, decode = rates(step, a.layers, a.vocab, a.prompt, a.new, a.repeats)
    print(f"{prefill:.1f} {decode:.1f}")


if __name__ == "__main__":
    main()
