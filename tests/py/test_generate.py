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
for c in cases:
    p = run(['generate', '-m', model, '-p', c['prompt'], '-n', str(c['n_predict']), '--temp', '0', '--json'])
    if p.returncode != 0:
        fails.append('generate %r failed: %s' % (c['prompt'], p.stderr[-300:]))
        continue
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if out['prompt_ids'] != c['prompt_tokens']:
        fails.append('prompt tokens differ for %r' % c['prompt'])
    if out['tokens'] != c['generated_tokens']:
        first = next(i for i, (a, b) in enumerate(zip(out['tokens'] + [None] * 64, c['generated_tokens'])) if a != b)
        fails.append('greedy %r differs at generated token %d' % (c['prompt'], first))
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

for f in fails:
    print('FAIL', f)
print('%d passed, %d failed' % (len(cases) + 5 - len(fails), len(fails)))
sys.exit(1 if fails else 0)
