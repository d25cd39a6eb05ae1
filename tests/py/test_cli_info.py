#!/usr/bin/env python3
"""`svlm info`: a GGUF file written here with struct shows its metadata, tensor table and
totals in text and JSON; malformed files and bad flags fail with a message and exit 1/2.
Needs no shared data (stories260K is checked too when ../shared is present)."""
import json
import os
import struct
import subprocess
import sys
import tempfile

binp = os.environ.get('SVLM_BIN')
if not binp or not os.path.exists(binp):
    print('SKIP: SVLM_BIN not set')
    sys.exit(77)
fails = []


def check(cond, msg):
    if not cond:
        fails.append(msg)


def gstr(s):
    b = s.encode()
    return struct.pack('<Q', len(b)) + b


def gguf(kvs, tensors, data):
    """kvs: bytes of the metadata section; tensors: (name, shape, type, offset)."""
    out = b'GGUF' + struct.pack('<IQQ', 3, len(tensors), kvs[0]) + kvs[1]
    for name, shape, ttype, off in tensors:
        out += gstr(name) + struct.pack('<I', len(shape)) + b''.join(struct.pack('<Q', d) for d in shape)
        out += struct.pack('<IQ', ttype, off)
    out += b'\0' * (-len(out) % 32)
    return out + data


kv = gstr('general.architecture') + struct.pack('<I', 8) + gstr('llama')
kv += gstr('llama.embedding_length') + struct.pack('<II', 4, 64)
kv += gstr('t.eps') + struct.pack('<If', 6, 1e-5)
tokens = ['tok%d' % i for i in range(20)]
kv += gstr('tokenizer.ggml.tokens') + struct.pack('<IIQ', 9, 8, len(tokens)) + b''.join(gstr(t) for t in tokens)
kv += gstr('t.flag') + struct.pack('<IB', 7, 1)
# f32 [8, 2] = 64 bytes at 0; q8_0 [64] = 68 bytes at 64; f16 [3] = 6 bytes at 160
tensors = [('a.weight', [8, 2], 0, 0), ('b.weight', [64], 8, 64), ('c', [3], 1, 160)]
blob = gguf((5, kv), tensors, bytes(166))

tmp = tempfile.mkdtemp(dir=os.environ.get('SVLM_TEST_TMP'))
path = os.path.join(tmp, 'small.gguf')
open(path, 'wb').write(blob)


def run(args):
    return subprocess.run([binp, 'info'] + args, capture_output=True, text=True, timeout=60)


p = run([path, '--json', '--head', '3'])
check(p.returncode == 0, 'info --json failed: ' + p.stderr)
if p.returncode == 0:
    j = json.loads(p.stdout)
    check(j['version'] == 3 and j['alignment'] == 32, 'header: %r' % {k: j[k] for k in ('version', 'alignment')})
    meta = {m['key']: m for m in j['metadata']}
    check(meta['general.architecture']['value'] == 'llama', 'string value')
    check(meta['llama.embedding_length'] == {'key': 'llama.embedding_length', 'type': 'u32', 'value': 64}, 'u32')
    check(abs(meta['t.eps']['value'] - 1e-5) < 1e-12, 'f32 value')
    check(meta['t.flag']['value'] is True, 'bool value')
    tok = meta['tokenizer.ggml.tokens']
    check(tok['elem_type'] == 'string' and tok['count'] == 20 and tok['head'] == tokens[:3], 'array head: %r' % tok)
    t = {x['name']: x for x in j['tensors']}
    check(t['a.weight'] == {'name': 'a.weight', 'type': 'f32', 'shape': [8, 2], 'offset': 0, 'bytes': 64}, 'tensor a')
    check(t['b.weight']['type'] == 'q8_0' and t['b.weight']['bytes'] == 68, 'tensor b')
    tot = j['totals']
    check(tot['parameters'] == 16 + 64 + 3 and tot['bytes'] == 64 + 68 + 6, 'totals %r' % tot)
    check(tot['by_type'] == {'f32': {'tensors': 1, 'bytes': 64}, 'f16': {'tensors': 1, 'bytes': 6},
                             'q8_0': {'tensors': 1, 'bytes': 68}}, 'by type %r' % tot['by_type'])

p = run([path])
check(p.returncode == 0 and 'a.weight' in p.stdout and 'tok0' in p.stdout and '...' in p.stdout
      and '83 parameters' in p.stdout, 'text output:\n' + p.stdout)

# Malformed: truncated, bad magic, overlapping tensors. Each exits 1 with a message naming it.
bad = {'truncated': (blob[:-1], 'past the end'),
       'magic': (b'GGUX' + blob[4:], 'not a GGUF file'),
       'overlap': (gguf((5, kv), [('a', [32], 0, 0), ('b', [8], 0, 64)], bytes(128)), 'overlap')}
for name, (content, needle) in bad.items():
    bp = os.path.join(tmp, name + '.gguf')
    open(bp, 'wb').write(content)
    p = run([bp])
    check(p.returncode == 1 and needle in p.stderr and bp in p.stderr,
          '%s: rc %d, stderr %r' % (name, p.returncode, p.stderr))
for args in (['--bogus', path], [], [path, path], [path, '--head', 'x']):
    p = run(args)
    check(p.returncode == 2 and p.stderr.strip(), 'flags %r: rc %d' % (args, p.returncode))

data = os.environ.get('SVLM_TEST_DATA', '../shared')
stories = os.path.join(data, 'models', 'stories260K.gguf')
if os.path.exists(stories):
    p = run([stories, '--json'])
    j = json.loads(p.stdout)
    check(len(j['metadata']) == 19 and len(j['tensors']) == 48, 'stories260K counts')
    emb = [x for x in j['tensors'] if x['name'] == 'token_embd.weight'][0]
    check(emb['shape'] == [64, 512] and emb['type'] == 'f32', 'stories260K token_embd %r' % emb)

for f in fails:
    print('FAIL:', f)
print('%d failures' % len(fails))
sys.exit(1 if fails else 0)
