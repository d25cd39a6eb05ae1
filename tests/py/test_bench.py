#!/usr/bin/env python3
"""svlm bench on stories260K and the tiny fixture mmproj: every figure present and positive in the
JSON and text reports (prompt, generation, answers decoding together, encoder), the backend named,
and bad options refused with exit code 2. Speeds themselves are benchmarks, not checked here."""
import json, os, subprocess, sys

data = os.environ.get('SVLM_TEST_DATA', '../shared')
binp = os.environ['SVLM_BIN']
model = os.path.join(data, 'models', 'stories260K.gguf')
mmproj = os.path.join(data, 'fixtures', 'vision-tiny', 'models', 'tiny-smolvlm-mmproj-f32.gguf')
if not os.path.isfile(model):
    print('SKIP: %s not found (set SVLM_TEST_DATA)' % model)
    sys.exit(77)
fails = []


def run(args):
    env = dict(os.environ)
    env.pop('OPENBLAS_CORETYPE', None)
    return subprocess.run([binp, 'bench'] + args, capture_output=True, text=True, timeout=300, env=env)


p = run(['-m', model, '--pp', '32', '--tg', '16', '--decode-batch', '3', '--reps', '1', '--threads', '2', '--json'])
if p.returncode != 0:
    fails.append('bench --json failed: %s' % p.stderr[-300:])
else:
    r = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ('pp_tps', 'tg_tps', 'decode_batch_tps', 'weight_bytes_per_token'):
        if not r.get(key, 0) > 0:
            fails.append('%s missing or not positive: %s' % (key, r))
    if r.get('decode_batch') != 3 or r.get('gpu') is not False or not r.get('backend', '').startswith('cpu'):
        fails.append('report: %s' % r)

p = run(['-m', model, '--pp', '0', '--tg', '8', '--decode-batch', '2', '--reps', '1', '--threads', '1'])
lines = p.stdout.splitlines()
if p.returncode != 0 or not any(l.startswith('tg8 ') for l in lines) or not any(l.startswith('tg8 x2') for l in lines) \
        or any(l.startswith('pp') for l in lines) or not any(l.startswith('backend') for l in lines):
    fails.append('text report: rc %d %r %s' % (p.returncode, p.stdout, p.stderr[-200:]))

# generation after a filled window: the depth is reported (stories260K's 2048 trained
# positions hold depth + tg)
p = run(['-m', model, '--pp', '0', '--tg', '8', '--depth', '400', '--reps', '1', '--threads', '2', '--json'])
r = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {}
if r.get('depth') != 400 or not r.get('tg_tps', 0) > 0:
    fails.append('bench --depth 400: rc %d %r %s' % (p.returncode, p.stdout, p.stderr[-200:]))
# prompt processing only: no "generation reaches 0%" of a bound nothing was generated against
p = run(['-m', model, '--pp', '16', '--tg', '0', '--reps', '1', '--threads', '1'])
if p.returncode != 0 or not any(l.startswith('pp16 ') for l in p.stdout.splitlines()) or 'reaches' in p.stdout:
    fails.append('bench --tg 0: rc %d %r %s' % (p.returncode, p.stdout, p.stderr[-200:]))
p = run(['-m', model, '--pp', '0', '--tg', '8', '--depth', '100', '--reps', '1', '--threads', '1', '--kv', 'f16'])
if p.returncode != 0 or not any(l.startswith('tg8@d100 ') for l in p.stdout.splitlines()):
    fails.append('bench --depth text report: rc %d %r %s' % (p.returncode, p.stdout, p.stderr[-200:]))

if os.path.isfile(mmproj):
    p = run(['--mmproj', mmproj, '--batch', '2', '--reps', '1', '--threads', '1', '--json'])
    if p.returncode != 0:
        fails.append('bench --mmproj failed: %s' % p.stderr[-300:])
    else:
        r = json.loads(p.stdout.strip().splitlines()[-1])
        if not (r.get('tiles_per_s_b1', 0) > 0 and r.get('tiles_per_s_batched', 0) > 0 and r.get('batch') == 2):
            fails.append('vision report: %s' % r)

for bad in (['-m', model, '--decode-batch', '0'], ['-m', model, '--tg', 'x'], ['-m', model, '--backend', 'tpu'],
            ['--pp', '8'], ['-m', model, '--bogus', '1'], ['-m', model, '--depth', '-1']):
    p = run(bad)
    if p.returncode != 2 or not p.stderr.strip():
        fails.append('%s: exit %d, stderr %r (want 2 and a message)' % (bad, p.returncode, p.stderr[-200:]))

p = run(['-m', os.path.join(data, 'no-such-model.gguf'), '--tg', '4'])
if p.returncode != 1 or 'no-such-model' not in p.stderr:
    fails.append('missing model: exit %d, %r' % (p.returncode, p.stderr[-200:]))

for f in fails:
    print('FAIL', f)
print('bench reports: %d failures' % len(fails))
sys.exit(1 if fails else 0)
