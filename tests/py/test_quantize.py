#!/usr/bin/env python3
"""Quantized copies of stories260K (svlm quantize) against llama.cpp's F32 logits.

Tolerances are what each type's rounding allows on this model (logits span about 20):
max |d logit| over the 44-token prompt (measured: f16 0.011, bf16 0.115, q8_0 0.238, q5_1 1.80,
q4_0 4.49 — this 260K-parameter model is very sensitive to 4- and 5-bit rounding), and the share of
positions whose argmax agrees (measured 44/44 for every type)."""
import array, json, os, shutil, struct, subprocess, sys, tempfile

data = os.environ.get('SVLM_TEST_DATA', '../shared')
binp = os.environ['SVLM_BIN']
if not os.path.isdir(data):
    print('SKIP: test data folder not found (set SVLM_TEST_DATA)')
    sys.exit(77)
model = os.path.join(data, 'models', 'stories260K.gguf')
meta = json.load(open(os.path.join(data, 'fixtures/stories260K/logits_prompt.json')))
ref = array.array('f')
ref.frombytes(open(os.path.join(data, 'fixtures/stories260K/logits_prompt.f32'), 'rb').read())
V, N = 512, len(meta['tokens'])
# type: (max |d logit|, positions whose argmax must agree)
cases = {'f16': (0.03, 44), 'bf16': (0.2, 44), 'q8_0': (0.5, 44), 'q5_1': (2.5, 40), 'q4_0': (6.0, 40)}
fails, passed = [], 0

def argmax(a, i):
    row = a[i * V:(i + 1) * V]
    return max(range(V), key=row.__getitem__)

with tempfile.TemporaryDirectory() as d:
    for t, (tol, min_agree) in cases.items():
        q, out = os.path.join(d, t + '.gguf'), os.path.join(d, t + '.f32')
        p = subprocess.run([binp, 'quantize', model, q, '--type', t], capture_output=True, text=True)
        if p.returncode:
            fails.append('quantize %s: %s' % (t, p.stderr[-200:]))
            continue
        # into a log (not a terminal) progress is a few whole lines, not one redrawn with \r
        lines = p.stderr.splitlines()
        if '\r' in p.stderr or not 2 <= len(lines) <= 6 or not lines[-1].startswith('svlm quantize: wrote'):
            fails.append('quantize %s: progress into a pipe %r' % (t, p.stderr[-300:]))
        p = subprocess.run([binp, 'logits', '-m', q, '--tokens', ','.join(map(str, meta['tokens'])), '--out', out],
                           capture_output=True, text=True)
        if p.returncode:
            fails.append('logits %s: %s' % (t, p.stderr[-200:]))
            continue
        got = array.array('f')
        got.frombytes(open(out, 'rb').read())
        if len(got) != len(ref):  # zip() below would otherwise compare only a prefix
            fails.append('%s: %d logits, expected %d' % (t, len(got), len(ref)))
            continue
        m = max(abs(a - b) for a, b in zip(got, ref))
        agree = sum(argmax(got, i) == argmax(ref, i) for i in range(N))
        print('%-5s max |d logit| %.4f (tolerance %g), argmax agrees at %d/%d positions' % (t, m, tol, agree, N))
        if not m <= tol:
            fails.append('%s: max |d| %.4f > %g' % (t, m, tol))
        elif agree < min_agree:
            fails.append('%s: argmax agrees at only %d/%d positions' % (t, agree, N))
        else:
            passed += 1
    # OUT naming IN (here through a link): refused, the model kept (it was replaced by its copy)
    own = os.path.join(d, 'own.gguf')
    shutil.copyfile(model, own)
    os.symlink(own, os.path.join(d, 'own-link.gguf'))
    p = subprocess.run([binp, 'quantize', own, os.path.join(d, 'own-link.gguf'), '--type', 'q8_0'],
                       capture_output=True, text=True)
    if p.returncode != 2 or 'is the input' not in p.stderr or open(own, 'rb').read() != open(model, 'rb').read():
        fails.append('quantize onto its input: rc %d, %r' % (p.returncode, p.stderr[-200:]))
    for args, needle in ((['quantize', model, os.path.join(d, 'x.gguf'), '--type', 'q9'], 'not one svlm writes'),
                         (['quantize', '/nonexistent.gguf', os.path.join(d, 'x.gguf'), '--type', 'q8_0'], 'nonexistent'),
                         (['quantize', model], 'required')):
        p = subprocess.run([binp] + args, capture_output=True, text=True)
        if p.returncode == 0 or needle not in p.stderr:
            fails.append('%s: expected an error mentioning %r, got %r' % (args[1:], needle, p.stderr[-200:]))
        else:
            passed += 1
        if os.path.exists(os.path.join(d, 'x.gguf')):
            fails.append('a failed quantize left its output behind')

    # Metadata is copied byte for byte: GGUF strings may hold NUL bytes (a token's text), and a
    # copy that cut them at the first NUL renamed tokens, even merging two into one. Only what
    # describes the tensors' type is the new type's: general.file_type (1 for F16, llama.cpp's
    # numbering; it kept the input's) and general.quantization_version.
    def gstr(b):
        return struct.pack('<Q', len(b)) + b
    strs = [b'a\0b', b'c', b'\0', b'a']
    head = b'GGUF' + struct.pack('<IQQ', 3, 1, 2)
    head += gstr(b't.arr') + struct.pack('<IIQ', 9, 8, len(strs)) + b''.join(gstr(x) for x in strs)
    head += gstr(b't.str') + struct.pack('<I', 8) + gstr(b'x\0y')
    head += gstr(b'x.weight') + struct.pack('<IQQIQ', 2, 32, 2, 0, 0)
    head += b'\0' * (-len(head) % 32)
    src, dst = os.path.join(d, 'nul.gguf'), os.path.join(d, 'nul-f16.gguf')
    open(src, 'wb').write(head + struct.pack('<64f', *range(64)))
    p = subprocess.run([binp, 'quantize', src, dst, '--type', 'f16'], capture_output=True, text=True)
    if p.returncode:
        fails.append('quantize of a file with NUL bytes in strings: %s' % p.stderr[-200:])
    else:
        metas = []
        for path in (src, dst):
            p = subprocess.run([binp, 'info', path, '--json'], capture_output=True, text=True)
            metas.append(json.loads(p.stdout)['metadata'] if p.returncode == 0 else p.stderr)
        typed = ('general.file_type', 'general.quantization_version')
        kept = [m for m in metas[1] if m['key'] not in typed] if isinstance(metas[1], list) else metas[1]
        types = {m['key']: m.get('value') for m in metas[1] if m['key'] in typed} if isinstance(metas[1], list) else {}
        if metas[0] != kept:
            fails.append('quantize changed the metadata: %r became %r' % (metas[0], metas[1]))
        elif types != {'general.file_type': 1, 'general.quantization_version': 2}:
            fails.append('quantize to f16 wrote the type keys %r' % types)
        else:
            passed += 1

for f in fails:
    print('FAIL', f)
print('%d passed, %d failed' % (passed, len(fails)))
sys.exit(1 if fails else 0)
