"""The PyTorch side of tools/bench/train_peer: the same GPT as graphs/models/gpt.pbtxt (RMSNorm,
GQA attention with interleaved RoPE, SwiGLU, untied head), AdamW (betas 0.9/0.95, wd 0.1), global
norm clipping at 1.0, random tokens. Prints the median training tokens/s over the timed steps."""
import argparse
import contextlib
import math
import statistics
import time

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(self, d, heads, kv_heads, d_ff, std):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.attn_norm = RMSNorm(d)
        self.mlp_norm = RMSNorm(d)
        self.wq = torch.nn.Linear(d, heads * self.hd, bias=False)
        self.wk = torch.nn.Linear(d, kv_heads * self.hd, bias=False)
        self.wv = torch.nn.Linear(d, kv_heads * self.hd, bias=False)
        self.wo = torch.nn.Linear(heads * self.hd, d, bias=False)
        self.w1 = torch.nn.Linear(d, d_ff, bias=False)
        self.w3 = torch.nn.Linear(d, d_ff, bias=False)
        self.w2 = torch.nn.Linear(d_ff, d, bias=False)
        for m in self.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=std)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = rope(self.wq(h).view(b, t, self.heads, self.hd), cos, sin).transpose(1, 2)
        k = rope(self.wk(h).view(b, t, self.kv_heads, self.hd), cos, sin).transpose(1, 2)
        v = self.wv(h).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        # PyTorch 1.13 (Debian 12) has no fused attention: the usual masked softmax.
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        o = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        x = x + self.wo(o.transpose(1, 2).reshape(b, t, -1))
        h = self.mlp_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, cos, sin):
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2)


class Gpt(torch.nn.Module):
    def __init__(self, vocab, layers, d, heads, kv_heads, d_ff, std=0.02):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        torch.nn.init.normal_(self.embed.weight, std=std)
        self.layers = torch.nn.ModuleList(Block(d, heads, kv_heads, d_ff, std) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        torch.nn.init.normal_(self.head.weight, std=std)
        self.hd = d // heads

    def forward(self, tokens, targets):
        t = tokens.shape[1]
        freqs = 10000.0 ** (-torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd)
        angles = torch.arange(t, dtype=torch.float32)[:, None] * freqs[None, :]
        cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos.to(x.dtype), sin.to(x.dtype))
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def train_rate(model, vocab, batch, seq, steps, warmup, bf16=False):
    """Median training tokens/s of `steps` AdamW steps on random tokens after `warmup` ones
    (the caller sets the threads, 2, before building the model)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    rates = []
    for step in range(warmup + steps):
        tokens = torch.randint(0, vocab, (batch, seq), generator=g)
        targets = torch.randint(0, vocab, (batch, seq), generator=g)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(tokens, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        elapsed = time.perf_counter() - start
        if step >= warmup:
            rates.append(batch * seq / elapsed)
        assert math.isfinite(loss.item())
    return statistics.median(rates)


def main():
    p = argparse.ArgumentParser()
    for name, default in [("vocab", 4096), ("layers", 4), ("d", 256), ("heads", 4), ("kv_heads", 4),
                          ("d_ff", 688), ("seq", 256), ("batch", 8), ("steps", 8), ("warmup", 2)]:
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = Gpt(a.vocab, a.layers, a.d, a.heads, a.kv_heads, a.d_ff)
    rate = train_rate(model, a.vocab, a.batch, a.seq, a.steps, a.warmup, a.dtype == "bf16")
    print(f"{rate:.1f}")


if __name__ == "__main__":
    main()
