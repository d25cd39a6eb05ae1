#!/usr/bin/env python3
"""svlm generate against llama.cpp's greedy continuations for stories260K, and CLI errors."""
import json, os, subprocess, sys

data = os.environ.get('SVLM_TEST_DATA', '../shared')
binp = os.environ['SVLM_BIN']
if not os.path.isdir(data):
    print('SKIP: test data folder not found (set SVLM_TEST_DATA)')
    sys.exit(77)
model = os.path.join(data, 'models', 'stories260K.gguf')
fails = []

def run(args):
    return subprocess.run([binp] + args, capture_output=True, text=True, timeout=120)

cases = json.load(open(os.path.join(data, 'fixtures/stories260K/greedy.json')))['cases']
# llama.cpp's greedy tokens with either cache type (an F16 cache: the decode's few-row forms read
# its rows directly, the prompt's attention widens them)
for c, kv in [(c, kv) for kv in ('f32', 'f16') for c in cases]:
    p = run(['generate', '-m', model, '-p', c['prompt'], '-n', str(c['n_predict']), '--temp', '0', '--json', '--kv', kv])
    if p.returncode != 0:
        fails.append('generate %r (--kv %s) failed: %s' % (c['prompt'], kv, p.stderr[-300:]))
        continue
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if out['prompt_ids'] != c['prompt_tokens']:
        fails.append('prompt tokens differ for %r' % c['prompt'])
    if out['tokens'] != c['generated_tokens']:
        first = next(i for i, (a, b) in enumerate(zip(out['tokens'] + [None] * 64, c['generated_tokens'])) if a != b)
        fails.append('greedy %r (--kv %s) differs at generated token %d' % (c['prompt'], kv, first))
    if not out['text'] or out['text'] != c.get('generated_text', out['text']):
        fails.append('text differs for %r: %r' % (c['prompt'], out['text'][:60]))

# the same seed gives the same sampled text; bad flags give clear errors and exit code 2
a = run(['generate', '-m', model, '-p', 'The cat', '-n', '24', '--temp', '0.8', '--seed', '7', '--json'])
b = run(['generate', '-m', model, '-p', 'The cat', '-n', '24', '--temp', '0.8', '--seed', '7', '--json'])
if a.returncode or json.loads(a.stdout)['tokens'] != json.loads(b.stdout)['tokens']:
    fails.append('sampling with a fixed seed is not reproducible')
for args, needle in ((['generate', '-m', model, '-p', 'x', '-n', 'abc'], '-n expects'),
                     (['generate', '-m', '/nonexistent.gguf', '-p', 'x'], 'cannot load model'),
                     (['generate', '-p', 'x'], 'required'),
                     (['generate', '-m', model, '-p', 'x', '--temp', '-1'], '--temp expects')):
    p = run(args)
    if p.returncode == 0 or needle not in p.stderr:
        fails.append('%s: expected an error mentioning %r, got rc %d %r' % (args, needle, p.returncode, p.stderr[-200:]))


def with_token_text(src, dst, token, text):
    """A copy of the GGUF file src whose token `token` reads `text` (the data section moves along)."""
    import struct
    b = open(src, 'rb').read()
    pos = 24
    n_tensors, n_kv = struct.unpack_from('<QQ', b, 8)
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_str(p):
        return p + 8 + struct.unpack_from('<Q', b, p)[0]

    def skip_val(t, p):
        if t == 8:
            return skip_str(p)
        if t == 9:
            et, n = struct.unpack_from('<IQ', b, p)
            p += 12
            for _ in range(n):
                p = skip_val(et, p)
            return p
        return p + sizes[t]
    out = bytearray(b[:24])
    for _ in range(n_kv):
        k_end = skip_str(pos)
        key = b[pos + 8:k_end]
        t = struct.unpack_from('<I', b, k_end)[0]
        end = skip_val(t, k_end + 4)
        if key == b'tokenizer.ggml.tokens':
            et, n = struct.unpack_from('<IQ', b, k_end + 4)
            p, toks = k_end + 16, []
            for _ in range(n):
                q = skip_str(p)
                toks.append(b[p + 8:q])
                p = q
            toks[token] = text
            out += b[pos:k_end + 16] + b''.join(struct.pack('<Q', len(x)) + x for x in toks)
        else:
            out += b[pos:end]
        pos = end
    for _ in range(n_tensors):
        p = skip_str(pos)
        n_dims = struct.unpack_from('<I', b, p)[0]
        end = p + 4 + 8 * n_dims + 12
        out += b[pos:end]
        pos = end
    out += b'\0' * (-len(out) % 32)
    open(dst, 'wb').write(bytes(out) + b[pos + (-pos % 32):])

# a token's whole text is printed however long it is (pieces were cut at 256 bytes)
import tempfile
with tempfile.TemporaryDirectory() as d:
    c = cases[0]
    long_text = b',' + b'x' * 299
    m2 = os.path.join(d, 'long-token.gguf')
    with_token_text(model, m2, c['generated_tokens'][0], long_text)
    p = run(['generate', '-m', m2, '-p', c['prompt'], '-n', '3', '--temp', '0'])
    if p.returncode or c['prompt'] + long_text.decode() not in p.stdout:
        fails.append('a 300-byte token was printed as %r (rc %d, %s)' % (p.stdout[:40] + '...' + p.stdout[-40:],
                                                                         p.returncode, p.stderr[-200:]))

# a file whose block_count lost a layer (5 -> 4) is refused: it ran the first 4 layers, a wrong
# model without a word
import struct
with tempfile.TemporaryDirectory() as d:
    raw = bytearray(open(model, 'rb').read())
    key = b'llama.block_count'
    at = raw.find(struct.pack('<Q', len(key)) + key) + 8 + len(key)
    vtype, layers = struct.unpack_from('<II', raw, at)
    if vtype == 4 and layers > 1:  # (GGUF_TYPE_UINT32)
        struct.pack_into('<I', raw, at + 4, layers - 1)
        short = os.path.join(d, 'short.gguf')
        open(short, 'wb').write(raw)
        p = run(['generate', '-m', short, '-p', 'Once', '-n', '2'])
        if p.returncode != 1 or 'block_count says %d layers' % (layers - 1) not in p.stderr:
            fails.append('block_count %d of %d layers: rc %d %r' % (layers - 1, layers, p.returncode, p.stderr[-200:]))
    else:
        fails.append('llama.block_count not found as a u32 in %s' % model)

# logits that are not numbers (NaN weights) stop it with an error: they were sampled as token 0
# again and again, printed as text with exit status 0
try:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import numpy as np
    from stream_ref import read_gguf
except ImportError:
    np = None
if np is not None:
    with tempfile.TemporaryDirectory() as d:
        raw = bytearray(open(model, 'rb').read())
        norm = read_gguf(model)[1]['output_norm.weight'].astype('<f4').tobytes()
        at = raw.find(norm)
        raw[at:at + len(norm)] = np.full(len(norm) // 4, np.nan, dtype='<f4').tobytes()
        bad = os.path.join(d, 'nan.gguf')
        open(bad, 'wb').write(raw)
        p = run(['generate', '-m', bad, '-p', 'Once', '-n', '4', '--temp', '0'])
        if p.returncode != 1 or 'not finite' not in p.stderr:
            fails.append('NaN logits: rc %d, %r %r' % (p.returncode, p.stdout[-80:], p.stderr[-200:]))

# beyond the trained context (2048 for stories260K) it still runs, with a warning
p = run(['generate', '-m', model, '-p', 'Once', '-n', '2100', '--temp', '0', '--json'])
if p.returncode or 'trained on' not in p.stderr or len(json.loads(p.stdout)['tokens']) + 2 <= 2048:
    fails.append('2100 tokens past a 2048-token context: rc %d, %r' % (p.returncode, p.stderr[-200:]))
p = run(['generate', '-m', model, '-p', 'Once', '-n', '16', '--temp', '0'])
if p.returncode or 'warning' in p.stderr:
    fails.append('a short run warned or failed: rc %d, %r' % (p.returncode, p.stderr[-200:]))

for f in fails:
    print('FAIL', f)
print('%d passed, %d failed' % (len(cases) + 8 - len(fails), len(fails)))
sys.exit(1 if fails else 0)
