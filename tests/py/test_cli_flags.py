#!/usr/bin/env python3
"""Every flag of every svlm command, as its --help lists it, given a value that is missing, empty,
not a number, negative, out of any range, or not UTF-8: the command exits with status 1 or 2 and
says why on stderr, and never crashes or hangs. The model or input path is one that does not
exist, so nothing is loaded or served: a value the parser takes meets that failure next, so what
is checked is that no value crashes, hangs or fails silently, not which step refuses it. Then
particular lines (stray words, a trailing comma, an -o prefix that is a folder, over-long tokens and
source URIs, ws:// URLs without a host or a valid port) must be refused with their own one-line
message and status. Needs no shared data."""
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

# Particular lines, each refused with its own one-line message: (argv, environment additions,
# expected exit status, text the message holds). Files they need live in their own folder, so the
# working folder stays empty.
aux = tempfile.mkdtemp(dir=os.environ.get('SVLM_TEST_TMP') or None)
long_token = os.path.join(aux, 'long-token')
with open(long_token, 'w') as f:
    f.write('t' * 300 + '\n')
NOMODEL = '/nonexistent/model.gguf'
SPECIFIC = [
    # a stray word is not a flag that lost its value
    (['generate', '-m', NOMODEL, '-p', 'x', 'extra'], {}, 2, "unexpected argument 'extra'"),
    (['generate', 'extra', '-m', NOMODEL, '-p', 'x'], {}, 2, "unexpected argument 'extra'"),
    (['replay', 'video.mp4', '-m', NOMODEL, '--mmproj', NOMODEL, 'extra'], {}, 2, "unexpected argument"),
    (['logits', '-m', NOMODEL, '--tokens', '1,2,', '--out', 'x.f32'], {}, 2, 'ends with a comma'),
    # "" or a folder as the prefix wrote a hidden ".gguf"
    (['mkmodel', '--arch', 'llama', '--quiet', '-o', ''], {}, 2, 'file name prefix'),
    (['mkmodel', '--arch', 'llama', '--quiet', '-o', './'], {}, 2, 'file name prefix'),
    (['mkmodel', '--arch', 'llama', '--quiet', '-o', '.'], {}, 2, 'file name prefix'),
    (['mkmodel', '--arch', 'llama', '--quiet', '-o', 'sub/..'], {}, 2, 'file name prefix'),
    # a token longer than the server keeps was cut short, silently; a folder read as no token
    (['serve', '-m', NOMODEL, '--mmproj', NOMODEL, '--token-file', long_token], {}, 2, 'longer than'),
    (['serve', '-m', NOMODEL, '--mmproj', NOMODEL, '--token-file', aux], {}, 2, 'cannot read'),
    (['serve', '-m', NOMODEL, '--mmproj', NOMODEL, '--listen', '127.0.0.1:99999'], {}, 2, '--listen'),
    (['serve', '-m', NOMODEL, '--mmproj', NOMODEL, '--source', '=x'], {}, 2, 'NAME'),
    (['serve', '-m', NOMODEL, '--mmproj', NOMODEL, '--source', 'a=' + 'u' * 2000], {}, 2, 'URI of 1 to'),
    # ports out of range or with garbage, no host: refused as usage, not tried
    (['ask', 'ws://127.0.0.1:99999', 's', 'q'], {}, 2, 'PORT from 1 to 65535'),
    (['ask', 'ws://127.0.0.1:0', 's', 'q'], {}, 2, 'PORT from 1 to 65535'),
    (['ask', 'ws://127.0.0.1:80x', 's', 'q'], {}, 2, 'PORT from 1 to 65535'),
    (['ask', 'ws://:80', 's', 'q'], {}, 2, 'PORT from 1 to 65535'),
    (['ask', 'ws://', 's', 'q'], {}, 2, 'PORT from 1 to 65535'),
    (['ask', 'ws://bob:secret@127.0.0.1:9', 's', 'q'], {}, 2, 'carries a user or password'),
    (['ask', 'ftp://127.0.0.1:9', 's', 'q'], {}, 2, 'URL must look like ws://HOST:PORT'),
    (['bench', '-m', NOMODEL, '--pp', '0', '--tg', '0'], {}, 2, 'leave nothing to measure'),
    # an output naming an input (by any path): refused before anything is written over it
    (['logits', '-m', long_token, '--tokens', '1', '--out', aux + '/./long-token'], {}, 2, 'is the input'),
    (['perplexity', '-m', NOMODEL, '-f', long_token, '--tokens-out', long_token], {}, 2, 'is the input'),
    (['quantize', long_token, long_token, '--type', 'q8_0'], {}, 2, 'is the input'),
    (['ask', '--token-file', aux, 'ws://127.0.0.1:9', 's', 'q'], {}, 2, 'cannot read'),
    (['ask', 'ws://127.0.0.1:9', 's', 'q'], {'SVLM_TOKEN': 't' * 400}, 2, 'longer than'),
]


def run_specific(case):
    argv, env, want_rc, want_msg = case
    name = f"svlm {' '.join(a[:40] for a in argv)}"
    h = subprocess.run([binp, argv[0], '--help'], capture_output=True, text=True, errors='replace')
    if 'not built with' in h.stderr:
        return None
    try:
        r = subprocess.run([binp] + argv, capture_output=True, timeout=60, cwd=tmp, env={**os.environ, **env})
    except subprocess.TimeoutExpired:
        return f'{name}: still running after 60 s'
    err = r.stderr.decode(errors='replace').strip()
    if r.returncode != want_rc or want_msg not in err or '\n' in err:
        return f'{name}: exit status {r.returncode}, expected {want_rc} and one line with {want_msg!r}: {err[-300:]!r}'
    return None


with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    fails += [m for m in pool.map(run_specific, SPECIFIC) if m]
leftovers = os.listdir(tmp)
if leftovers:
    fails.append(f'refused commands left files behind: {leftovers[:5]}')
for m in fails[:20]:
    print('FAIL:', m)
print(f'{len(cases) + len(SPECIFIC)} command lines over {len(commands)} commands: {len(fails)} failures')
sys.exit(1 if fails else 0)
