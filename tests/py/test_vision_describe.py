#!/usr/bin/env python3
"""`svlm describe` against llama.cpp's vision-tiny fixture, F32 and F16:
prompt layout (token ids with -1 at image rows) equals result.json's sequence, in --raw mode and
in the built-in chat format; dumped pixels (2e-2), per-tile embeddings (1e-3 F32 / 4e-3 F16) and
the logits after the prompt (1e-2 / 6e-2) match; bad inputs give clear errors and exit 1."""
import json, os, struct, subprocess, sys, tempfile
import numpy as np

BIN = os.environ.get('SVLM_BIN')
DATA = os.environ.get('SVLM_TEST_DATA', '')
H = os.path.join(DATA, 'fixtures', 'vision-tiny')
if not BIN or not os.path.isdir(H):
    print('SKIP: needs SVLM_BIN and fixtures/vision-tiny'); sys.exit(77)

PROMPT = '<|im_start|>User:<__media__>What animal is this?<end_of_utterance>\nAssistant:'
fails = []

def check(cond, msg):
    if not cond: fails.append(msg); print('FAIL', msg)

def describe(args, timeout=300):
    return subprocess.run([BIN, 'describe'] + args, capture_output=True, text=True, timeout=timeout)

def model(dt, kind): return os.path.join(H, 'models', 'tiny-smolvlm-%s-%s.gguf' % (kind, dt))

for dt, tol_e, tol_l in (('f32', 1e-3, 1e-2), ('f16', 4e-3, 6e-2)):
    ref = os.path.join(H, 'out-' + dt)
    res = json.load(open(os.path.join(ref, 'result.json')))
    images = [c for c in res['chunks'] if c['type'] == 'image']
    with tempfile.TemporaryDirectory() as d:
        p = describe(['-m', model(dt, 'text'), '--mmproj', model(dt, 'mmproj'), '--image', os.path.join(H, 'input.png'),
                      '-p', PROMPT, '--raw', '-n', '3', '--temp', '0', '--threads', '2', '--json', '--dump-dir', d])
        check(p.returncode == 0, '%s describe exit %d: %s' % (dt, p.returncode, p.stderr[-300:]))
        if p.returncode: continue
        out = json.loads(p.stdout)
        check(out['prompt_ids'] == res['sequence_token_ids_with_image_as_-1'], '%s --raw prompt layout differs' % dt)
        check(out['image']['tiles'] == len(images) and out['image']['rows'] == 2 and out['image']['cols'] == 2,
              '%s tile grid %s' % (dt, out['image']))
        check(out['tokens'][:1] == res['greedy']['tokens'][:1], '%s greedy first token %s vs %s' % (dt, out['tokens'][:1], res['greedy']['tokens'][:1]))
        worst = {'pixels': 0.0, 'embd': 0.0}
        for k, c in enumerate(images):
            for kind, name in (('pixels', c['pixels_file']), ('embd', c['embd_file'])):
                mine = np.fromfile(os.path.join(d, '%s_%d.f32' % (kind, k)), dtype=np.float32)
                theirs = np.fromfile(os.path.join(ref, name), dtype=np.float32)
                check(mine.shape == theirs.shape, '%s %s_%d size %d vs %d' % (dt, kind, k, mine.size, theirs.size))
                if mine.shape == theirs.shape: worst[kind] = max(worst[kind], float(np.abs(mine - theirs).max()))
        lg = np.fromfile(os.path.join(d, 'logits.f32'), dtype=np.float32)
        wl = float(np.abs(lg - np.fromfile(os.path.join(ref, 'prompt_last_logits.f32'), dtype=np.float32)).max())
        check(worst['pixels'] <= 2e-2, '%s pixels max|d| %.2e' % (dt, worst['pixels']))
        check(worst['embd'] <= tol_e, '%s embeddings max|d| %.2e > %.0e' % (dt, worst['embd'], tol_e))
        check(wl <= tol_l, '%s prompt logits max|d| %.2e > %.0e' % (dt, wl, tol_l))
        print('%s: pixels %.1e, embd %.1e, logits %.1e' % (dt, worst['pixels'], worst['embd'], wl))
    # The chat format around the question gives the same sequence as the raw fixture prompt.
    p = describe(['-m', model(dt, 'text'), '--mmproj', model(dt, 'mmproj'), '--image', os.path.join(H, 'input.png'),
                  '-p', 'What animal is this?', '-n', '0', '--threads', '2', '--json'])
    check(p.returncode == 0 and json.loads(p.stdout)['prompt_ids'] == res['sequence_token_ids_with_image_as_-1'],
          '%s chat-format layout differs: %s' % (dt, p.stderr[-200:]))

# Bad input: each must fail with exit 1 and a message naming the problem.
with tempfile.TemporaryDirectory() as d:
    text32, mm32, img = model('f32', 'text'), model('f32', 'mmproj'), os.path.join(H, 'input.png')
    trunc = os.path.join(d, 'trunc.png'); open(trunc, 'wb').write(open(img, 'rb').read()[:5000])
    bogus = os.path.join(d, 'bogus.gif'); open(bogus, 'wb').write(b'GIF89a not really')
    other = os.path.join(d, 'other-mmproj.gguf')
    open(other, 'wb').write(open(mm32, 'rb').read().replace(b'idefics3', b'idefics9', 1))
    # a tile of millions of patches (4096-px tiles of 1-px patches): refused before any allocation
    huge = os.path.join(d, 'huge-mmproj.gguf')
    raw = bytearray(open(mm32, 'rb').read())
    for key, value in ((b'clip.vision.image_size', 4096), (b'clip.vision.patch_size', 1)):
        at = raw.index(key) + len(key)
        assert struct.unpack_from('<I', raw, at)[0] == 4, key  # a u32
        struct.pack_into('<I', raw, at + 4, value)
    open(huge, 'wb').write(raw)
    cases = [
        (['-m', text32, '--mmproj', mm32, '--image', os.path.join(d, 'nope.png'), '-p', 'x'], 'cannot open image'),
        (['-m', text32, '--mmproj', mm32, '--image', trunc, '-p', 'x'], 'truncated'),
        (['-m', text32, '--mmproj', mm32, '--image', bogus, '-p', 'x'], 'image'),
        (['-m', text32, '--mmproj', other, '--image', img, '-p', 'x'], "projector type 'idefics9' is not supported"),
        (['-m', text32, '--mmproj', huge, '--image', img, '-p', 'x'], 'patch grid'),
        # the two files swapped: each error says which flag the file belongs to
        (['-m', text32, '--mmproj', text32, '--image', img, '-p', 'x'], 'this one goes with -m'),
        (['-m', mm32, '--mmproj', mm32, '--image', img, '-p', 'x'], 'this file goes with --mmproj'),
        (['-m', text32, '--mmproj', mm32, '--image', img, '-p', 'no marker', '--raw'], '<__media__>'),
        (['-m', text32, '--mmproj', mm32, '--image', img], 'required'),
    ]
    stories = os.path.join(DATA, 'models', 'stories260K.gguf')
    if os.path.exists(stories):
        cases.append((['-m', stories, '--mmproj', mm32, '--image', img, '-p', 'x'], 'does not match the text model'))
    for args, needle in cases:
        p = describe(args, timeout=60)
        check(p.returncode in (1, 2) and needle in p.stderr, 'bad input %s: exit %d, stderr %r' % (args[-3:], p.returncode, p.stderr[-300:]))

print('%d failures' % len(fails))
sys.exit(1 if fails else 0)
