"""An independent numpy (float64) reference of a small Llama decoder under streaming KV caches.

Reads an all-F32 GGUF (stories260K) and computes the logits a model produces when fed a token
stream one token at a time through a bounded cache, for the modes of `svlm perplexity`:
  dense      every earlier token, absolute positions
  window     the first S tokens (sinks) plus the most recent W-S, positions = index in the cache
  noreassign the same tokens, but keys and queries keep their positions in the stream
  recompute  the last W tokens evaluated from scratch for every token (positions 0..W-1)

Trick that keeps it vectorised: a token's K and V (before RoPE) depend only on its own hidden
state, so layer l can be computed for all tokens at once. With positions re-assigned, a window
key j seen by query t sits at relative distance t - j, as with absolute positions; only the sinks
differ (the query sits at min(t, W-1)). So each layer is one banded attention.
"""
import struct

import numpy as np

GGUF_SCALARS = {0: '<B', 1: '<b', 2: '<H', 3: '<h', 4: '<I', 5: '<i', 6: '<f', 7: '<?', 10: '<Q', 11: '<q', 12: '<d'}


def read_gguf(path):
    """Returns (metadata dict, {name: float64 array in numpy order}) for an all-F32 GGUF file."""
    buf = open(path, 'rb').read()
    off = 0

    def take(fmt):
        nonlocal off
        v = struct.unpack_from(fmt, buf, off)[0]
        off += struct.calcsize(fmt)
        return v

    def string():
        nonlocal off
        n = take('<Q')
        s = buf[off:off + n].decode('utf-8', 'replace')
        off += n
        return s

    def value(t):
        if t in GGUF_SCALARS:
            return take(GGUF_SCALARS[t])
        if t == 8:
            return string()
        if t == 9:
            et, n = take('<I'), take('<Q')
            return [value(et) for _ in range(n)]
        raise ValueError('unknown GGUF value type %d' % t)

    if buf[:4] != b'GGUF':
        raise ValueError('not a GGUF file')
    off = 4
    take('<I')
    n_tensors, n_kv = take('<Q'), take('<Q')
    meta = {}
    for _ in range(n_kv):
        k = string()
        meta[k] = value(take('<I'))
    infos = []
    for _ in range(n_tensors):
        name = string()
        nd = take('<I')
        ne = [take('<Q') for _ in range(nd)]
        typ, toff = take('<I'), take('<Q')
        infos.append((name, ne, typ, toff))
    align = meta.get('general.alignment', 32)
    base = (off + align - 1) // align * align
    tensors = {}
    for name, ne, typ, toff in infos:
        if typ != 0:
            raise ValueError('%s: only F32 tensors are supported here' % name)
        count = int(np.prod(ne))
        a = np.frombuffer(buf, dtype='<f4', count=count, offset=base + toff)
        tensors[name] = a.reshape(list(reversed(ne))).astype(np.float64)
    return meta, tensors


class Model:
    def __init__(self, path):
        meta, t = read_gguf(path)
        self.n_layer = meta['llama.block_count']
        self.n_head = meta['llama.attention.head_count']
        self.n_kv = meta['llama.attention.head_count_kv']
        self.eps = meta.get('llama.attention.layer_norm_rms_epsilon', 1e-5)
        self.base = meta.get('llama.rope.freq_base', 10000.0)
        self.t = t
        self.E = t['token_embd.weight'].shape[1]
        self.hd = self.E // self.n_head
        self.n_rot = meta.get('llama.rope.dimension_count', self.hd)

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):
        """x [..., T, heads, hd] rotated in adjacent pairs; pos broadcastable to [..., T]."""
        half = self.n_rot // 2
        theta = np.asarray(pos, dtype=np.float64)[..., None] * self.base ** (-2.0 * np.arange(half) / self.n_rot)
        c, s = np.cos(theta)[..., None, :], np.sin(theta)[..., None, :]
        y = x.copy()
        a, b = x[..., 0:self.n_rot:2], x[..., 1:self.n_rot:2]
        y[..., 0:self.n_rot:2] = a * c - b * s
        y[..., 1:self.n_rot:2] = a * s + b * c
        return y

    def layer_qkv(self, l, x):
        t = self.t
        h = self.rms(x, t['blk.%d.attn_norm.weight' % l])
        sh = x.shape[:-1]
        q = (h @ t['blk.%d.attn_q.weight' % l].T).reshape(*sh, self.n_head, self.hd)
        k = (h @ t['blk.%d.attn_k.weight' % l].T).reshape(*sh, self.n_kv, self.hd)
        v = (h @ t['blk.%d.attn_v.weight' % l].T).reshape(*sh, self.n_kv, self.hd)
        return q, k, v

    def layer_out(self, l, x, att):
        t = self.t
        x = x + att.reshape(*x.shape[:-1], self.E) @ t['blk.%d.attn_output.weight' % l].T
        h = self.rms(x, t['blk.%d.ffn_norm.weight' % l])
        g = h @ t['blk.%d.ffn_gate.weight' % l].T
        u = h @ t['blk.%d.ffn_up.weight' % l].T
        return x + (g / (1 + np.exp(-g)) * u) @ t['blk.%d.ffn_down.weight' % l].T

    def logits(self, x):
        return self.rms(x, self.t['output_norm.weight']) @ self.t['output.weight'].T

    def stream_logits(self, ids, sinks, window, reassign=True, block=128):
        """Logits after each token of a stream through a sink + window cache of `window` tokens
        (window >= len(ids) is dense attention with absolute positions)."""
        ids = np.asarray(ids)
        T, S, W = len(ids), sinks, window
        rep = self.n_head // self.n_kv
        tpos = np.arange(T)
        sink_qpos = np.minimum(tpos, W - 1) if reassign else tpos
        x = self.t['token_embd.weight'][ids]
        for l in range(self.n_layer):
            q, k, v = self.layer_qkv(l, x)
            qa, ka = self.rope(q, tpos), self.rope(k, tpos)
            qs = self.rope(q, sink_qpos)
            ka = np.repeat(ka, rep, axis=1).transpose(1, 2, 0)  # [h, d, T]
            vr = np.repeat(v, rep, axis=1).transpose(1, 0, 2)   # [h, T, d]
            qa, qs = qa.transpose(1, 0, 2), qs.transpose(1, 0, 2)  # [h, T, d]
            att = np.empty_like(q)
            scale = 1.0 / np.sqrt(self.hd)
            for t0 in range(0, T, block):
                t1 = min(T, t0 + block)
                k0 = max(S, t0 - (W - S) + 1)
                tq = tpos[t0:t1, None]
                kj = np.arange(k0, t1)[None, :]
                ok = (kj <= tq) & (kj >= np.maximum(S, tq - (W - S) + 1))
                sc = (qa[:, t0:t1] @ ka[:, :, k0:t1]) * scale
                sc = np.where(ok[None], sc, -np.inf)
                vals = vr[:, k0:t1]
                if S:
                    sj = np.arange(S)[None, :]
                    ss = (qs[:, t0:t1] @ ka[:, :, :S]) * scale
                    ss = np.where((sj <= tq)[None], ss, -np.inf)
                    sc = np.concatenate([ss, sc], axis=2)
                    vals = np.concatenate([vr[:, :S], vals], axis=1)
                sc -= sc.max(axis=2, keepdims=True)
                np.exp(sc, out=sc)
                sc /= sc.sum(axis=2, keepdims=True)
                att[t0:t1] = (sc @ vals).transpose(1, 0, 2)
            x = self.layer_out(l, x, att)
        return self.logits(x)

    def recompute_logits(self, ids, window, rows, batch=64):
        """Logits at each row i of `rows`, from tokens max(0, i-W+1)..i evaluated from scratch."""
        ids = np.asarray(ids)
        W = window
        rep = self.n_head // self.n_kv
        out = np.empty((len(rows), self.t['output.weight'].shape[0]))
        short = [r for r in rows if r < W - 1]
        if short:
            dense = self.stream_logits(ids[:W], 0, W + 1)
            for n, r in enumerate(rows):
                if r < W - 1:
                    out[n] = dense[r]
        long_idx = [n for n, r in enumerate(rows) if r >= W - 1]
        pos = np.arange(W)
        mask = np.tril(np.ones((W, W), dtype=bool))
        for b0 in range(0, len(long_idx), batch):
            sel = long_idx[b0:b0 + batch]
            starts = np.array([rows[n] - W + 1 for n in sel])
            x = self.t['token_embd.weight'][ids[starts[:, None] + pos[None, :]]]
            for l in range(self.n_layer):
                q, k, v = self.layer_qkv(l, x)
                q, k = self.rope(q, pos), self.rope(k, pos)
                k = np.repeat(k, rep, axis=2).transpose(0, 2, 3, 1)  # [b, h, d, k]
                v = np.repeat(v, rep, axis=2).transpose(0, 2, 1, 3)  # [b, h, k, d]
                sc = (q.transpose(0, 2, 1, 3) @ k) / np.sqrt(self.hd)
                sc = np.where(mask, sc, -np.inf)
                sc = np.exp(sc - sc.max(axis=3, keepdims=True))
                sc /= sc.sum(axis=3, keepdims=True)
                x = self.layer_out(l, x, (sc @ v).transpose(0, 2, 1, 3))
            out[[n for n in sel]] = self.logits(x[:, -1])
        return out


def mean_nll(logits_rows, targets):
    """Mean negative log-likelihood of targets[i] under logits_rows[i]."""
    m = logits_rows.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(logits_rows - m).sum(axis=1)))
    return float(np.mean(lse - logits_rows[np.arange(len(targets)), targets]))
