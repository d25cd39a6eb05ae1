#!/usr/bin/env python3
"""Every flag of every svlm command, as its --help lists it, given a value that is missing, empty,
not a number, negative, out of any range, or not UTF-8: the command exits with status 1 or 2 and
says why on stderr, and never crashes or hangs. The model or input path is one that does not
exist, so nothing is loaded or served: a value the parser takes meets that failure next, so what
is checked is that no value crashes, hangs or fails silently, not which step refuses it. Needs no
shared data."""
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

binp = os.environ.get('SVLM_BIN')
if not binp or not os.path.exists(binp):
    print('SKIP: SVLM_BIN not set')
    sys.exit(77)

top = subprocess.run([binp, '--help'], capture_output=True, text=True)
commands = re.findall(r'^  ([a-z][a-z-]+) {2,}', top.stdout, re.M)
if len(commands) < 10:
    print(f'FAIL: svlm --help listed {len(commands)} commands: {top.stdout[:200]!r}')
    sys.exit(1)

# commands whose input is a positional path rather than -m MODEL
POSITIONAL = {'info', 'tokenize', 'logits', 'quantize', 'memory', 'probe', 'frames', 'replay', 'bench-vision'}
VALUES = [None, '', 'abc', '-1', '1e999', '99999999999999999999', '\udcff']

cases = []
for c in commands:
    h = subprocess.run([binp, c, '--help'], capture_output=True, text=True, errors='replace')
    if 'not built with' in h.stderr:  # (a command left out of this build, e.g. serve without its libraries)
        print(f'svlm {c}: {h.stderr.strip()}')
        continue
    flags = sorted(set(re.findall(r'(?<![\w-])(--?[a-zA-Z][\w-]*)', h.stdout + h.stderr)) - {'--help', '-h'})
    if not flags:
        print(f'FAIL: svlm {c} --help lists no flags')
        sys.exit(1)
    for f in flags:
        for v in VALUES:
            tail = [] if v is None else [os.fsencode(v)]
            if c in POSITIONAL:  # (the input first: a flag with no value comes last)
                cases.append((c, f, v, [binp, c, '/nonexistent/input', f] + tail))
            else:
                cases.append((c, f, v, [binp, c, '-m', '/nonexistent/model.gguf', f] + tail))

tmp = tempfile.mkdtemp(dir=os.environ.get('SVLM_TEST_TMP') or None)


def run(case):
    c, f, v, argv = case
    try:
        r = subprocess.run(argv, capture_output=True, timeout=60, cwd=tmp)
    except subprocess.TimeoutExpired:
        return f'svlm {c} {f} {v!r}: still running after 60 s'
    err = r.stderr.decode(errors='replace').strip()
    if r.returncode < 0:
        return f'svlm {c} {f} {v!r}: killed by signal {-r.returncode}: {err[-300:]}'
    if r.returncode not in (1, 2):
        return f'svlm {c} {f} {v!r}: exit status {r.returncode}, expected 1 or 2: {err[-300:]}'
    if not err.startswith('svlm') and 'usage:' not in err:
        return f'svlm {c} {f} {v!r}: no message saying why on stderr: {err[-300:]!r}'
    return None


with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    fails = [m for m in pool.map(run, cases) if m]
leftovers = os.listdir(tmp)
if leftovers:
    fails.append(f'refused commands left files behind: {leftovers[:5]}')
for m in fails[:20]:
    print('FAIL:', m)
print(f'{len(cases)} command lines over {len(commands)} commands: {len(fails)} failures')
sys.exit(1 if fails else 0)
