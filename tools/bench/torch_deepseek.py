"""The PyTorch peer of tools/bench/moe_peer: the DeepSeek-V3-style model of
graphs/models/deepseek_v3.pbtxt (MLA, dense then MoE layers with a shared expert and sigmoid
group-limited routing with a selection bias, MTP depth 1) written the plain PyTorch way (experts
run by a loop over the experts with index_add), trained with AdamW on random tokens. Prints the
median tokens/s of the timed steps. Written from ../shared/spec/deepseek.md, as weir's model is."""
import argparse

import torch
import torch.nn.functional as F

from torch_gpt import RMSNorm, rope, train_rate  # the GPT peer beside this file


def linear(i, o, std=0.02):
    m = torch.nn.Linear(i, o, bias=False)
    torch.nn.init.normal_(m.weight, std=std)
    return m


class MLA(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a
        h, dn, dr, dv = a.heads, a.nope, a.rope, a.v
        self.wq_a, self.q_norm, self.wq_b = linear(a.d, a.q_lora), RMSNorm(a.q_lora), linear(a.q_lora, h * (dn + dr))
        self.wkv_a, self.kv_norm = linear(a.d, a.kv_lora + dr), RMSNorm(a.kv_lora)
        self.wkv_b, self.wo = linear(a.kv_lora, h * (dn + dv)), linear(h * dv, a.d)

    def forward(self, x, cos, sin):
        a = self.a
        b, t, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))).view(b, t, a.heads, a.nope + a.rope)
        q = torch.cat([q[..., :a.nope], rope(q[..., a.nope:], cos, sin)], -1)
        c, k_pe = self.wkv_a(x).split([a.kv_lora, a.rope], -1)
        k_pe = rope(k_pe.view(b, t, 1, a.rope), cos, sin)
        kv = self.wkv_b(self.kv_norm(c)).view(b, t, a.heads, a.nope + a.v)
        k = torch.cat([kv[..., :a.nope], k_pe.expand(b, t, a.heads, a.rope)], -1)
        # Debian's PyTorch 1.13 has no fused attention: scores, causal mask, softmax, values.
        s = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) * (a.nope + a.rope) ** -0.5
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        o = s.softmax(-1) @ kv[..., a.nope:].transpose(1, 2)
        return self.wo(o.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(torch.nn.Module):
    def __init__(self, d, inter):
        super().__init__()
        self.w1, self.w3, self.w2 = linear(d, inter), linear(d, inter), linear(inter, d)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoE(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a
        self.gate = linear(a.d, a.experts)
        self.register_buffer("bias", torch.zeros(a.experts))
        self.experts = torch.nn.ModuleList(SwiGLU(a.d, a.moe_inter) for _ in range(a.experts))
        self.shared = SwiGLU(a.d, a.moe_inter)

    def forward(self, x):
        a = self.a
        shape = x.shape
        x = x.reshape(-1, a.d)
        s = torch.sigmoid(self.gate(x).float())
        sel = (s + self.bias).view(-1, a.groups, a.experts // a.groups)
        group = sel.topk(2, -1).values.sum(-1)
        keep = torch.zeros_like(group).scatter_(1, group.topk(a.topk_groups, -1).indices, 1.0)
        sel = sel.masked_fill(keep.unsqueeze(-1) == 0, float("-inf")).flatten(1)
        idx = sel.topk(a.k, -1).indices
        w = s.gather(1, idx)
        w = (w / w.sum(-1, keepdim=True) * 2.5).to(x.dtype)
        y = torch.zeros_like(x)
        for e in range(a.experts):
            token, slot = torch.where(idx == e)
            if token.numel():
                y.index_add_(0, token, self.experts[e](x[token]) * w[token, slot, None])
        return (y + self.shared(x)).view(shape)


class Block(torch.nn.Module):
    def __init__(self, a, moe):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(a.d), MLA(a)
        self.ffn_norm, self.ffn = RMSNorm(a.d), (MoE(a) if moe else SwiGLU(a.d, a.inter))

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class Model(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a
        self.embed = torch.nn.Embedding(a.vocab, a.d)
        torch.nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = torch.nn.ModuleList(Block(a, i >= a.dense) for i in range(a.layers))
        self.norm = RMSNorm(a.d)
        self.head = linear(a.d, a.vocab)
        self.enorm, self.hnorm, self.eh_proj = RMSNorm(a.d), RMSNorm(a.d), linear(2 * a.d, a.d)
        self.mtp_block, self.mtp_norm = Block(a, True), RMSNorm(a.d)

    def forward(self, tokens, targets):
        a = self.a
        t = tokens.shape[1]
        freqs = 10000.0 ** (-torch.arange(0, a.rope, 2, dtype=torch.float32) / a.rope)
        ang = torch.arange(t, dtype=torch.float32)[:, None] * freqs[None, :]
        cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
        e = self.embed(tokens)
        x = e
        for layer in self.layers:
            x = layer(x, cos, sin)
        h = self.norm(x)
        loss = F.cross_entropy(self.head(h).float().flatten(0, 1), targets.flatten())
        nxt = torch.cat([e[:, 1:], e[:, -1:]], 1)
        m = self.mtp_block(self.eh_proj(torch.cat([self.enorm(nxt), self.hnorm(h)], -1)), cos, sin)
        mtp = self.head(self.mtp_norm(m))[:, :-1].float()
        return loss + 0.3 * F.cross_entropy(mtp.flatten(0, 1), targets[:, 1:].flatten())


def main():
    p = argparse.ArgumentParser()
    for name, default in [("vocab", 4096), ("d", 256), ("layers", 4), ("dense", 1), ("heads", 4),
                          ("q_lora", 128), ("kv_lora", 64), ("nope", 32), ("rope", 16), ("v", 32),
                          ("inter", 688), ("moe_inter", 128), ("experts", 16), ("k", 2),
                          ("groups", 4), ("topk_groups", 2), ("seq", 256), ("batch", 8),
                          ("steps", 6), ("warmup", 2)]:
        p.add_argument("--" + name, type=int, default=default)
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"{train_rate(Model(a), a.vocab, a.batch, a.seq, a.steps, a.warmup):.1f}")


if __name__ == "__main__":
    main()
