#!/usr/bin/env python3
"""svlm replay on a recording with the tiny SmolVLM fixture models: answers at the given video
times, the same answers on a second run (greedy, forks pinned to frames), counters, token
compression on (the default) and off through the stream, and errors."""
import json, os, subprocess, sys

data = os.environ.get('SVLM_TEST_DATA', '../shared')
binp = os.environ['SVLM_BIN']
if not os.path.isdir(data):
    print('SKIP: test data folder not found (set SVLM_TEST_DATA)')
    sys.exit(77)
models = os.path.join(data, 'fixtures/vision-tiny/models')
video = os.path.join(data, 'media/bottles_hands_tabletop.mp4')
base = [binp, 'replay', video, '-m', os.path.join(models, 'tiny-smolvlm-text-f32.gguf'), '--mmproj',
        os.path.join(models, 'tiny-smolvlm-mmproj-f32.gguf'), '--fps', '2', '--speed', 'max',
        '--frames-window', '4', '--max-tokens', '12']
asks = ['--ask', '2:What is on the table?', '--ask', '6.5:What do the hands do?', '--ask', '1000:Anything else?']
fails = []

if not os.path.isfile(video):
    print('SKIP: %s not found' % video)
    sys.exit(77)
probe = subprocess.run([binp, 'replay', '--help'], capture_output=True, text=True)
if probe.returncode != 0:
    print('SKIP: svlm replay is not available')
    sys.exit(77)


def replay(extra):
    p = subprocess.run(base + extra + ['--json'], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        if 'built without' in p.stderr:  # only a missing video library skips; any other failure fails
            print('SKIP: no video backend: %s' % p.stderr[-200:])
            sys.exit(77)
        fails.append('replay failed (rc %d): %s' % (p.returncode, p.stderr[-300:]))
        return [], {}
    lines = [json.loads(l) for l in p.stdout.strip().splitlines()]
    return lines[:-1], lines[-1]


answers, counters = replay(asks)
again, counters2 = replay(asks + ['--backend', 'cpu'])  # the default backend, named
if len(answers) != 3:
    fails.append('expected 3 answers, got %d' % len(answers))
for a in answers:
    for key in ('t', 'question', 'answer', 'tokens', 'ttft_ms'):
        if key not in a:
            fails.append('answer line without %r: %s' % (key, a))
    if not (0 < a.get('tokens', 0) <= 12) and a.get('answer'):
        fails.append('answer with %s tokens' % a.get('tokens'))
if [a['t'] for a in answers] != [2.0, 6.5, 1000.0]:
    fails.append('answers out of order: %s' % [a.get('t') for a in answers])
strip = lambda xs: [(a['t'], a['question'], a['answer'], a['tokens']) for a in xs]
if strip(answers) != strip(again):
    fails.append('a second replay gave other answers')
for key in ('frames', 'drops', 'tokens', 'evicted_spans', 'kv_bytes'):
    if key not in counters:
        fails.append('counters without %r' % key)
if counters:
    if not counters['frames'] >= 10 or counters['frames'] != counters2.get('frames'):
        fails.append('frames: %s then %s' % (counters['frames'], counters2.get('frames')))
    if counters['evicted_spans'] <= 0 or counters['kv_bytes'] <= 0:
        fails.append('no evictions or no KV bytes: %s' % counters)
    if counters['tokens']['text'] <= 0:
        fails.append('the answered turns did not join the dialogue window')

# the same questions with their times as M:SS and H:MM:SS: the same answers at the same times
clock, _ = replay(['--ask', '0:02:What is on the table?', '--ask', '0:00:06.5:What do the hands do?', '--ask',
                   '16:40:Anything else?'])
if strip(clock) != strip(answers):
    fails.append('times as M:SS gave other answers or times:\n%s\n%s' % (strip(clock), strip(answers)))

# a question between two sampled frames (2 per second here: at 2.011 and 2.514 s) sees the frames
# up to its time: at 2.5 s it is answered as at 2.05 s (it was answered from the frame at 2.514)
sampled = lambda xs: [(a['answer'], a['tokens']) for a in xs]
at_205, _ = replay(['--ask', '2.05:What is on the table?'])
at_25, _ = replay(['--ask', '2.5:What is on the table?'])
at_26, _ = replay(['--ask', '2.6:What is on the table?'])
if sampled(at_25) != sampled(at_205) or len(at_205) != 1:
    fails.append('a question at 2.5 s was not answered from the frames up to 2.011 s: %s (2.05 s: %s, 2.6 s: %s)'
                 % (sampled(at_25), sampled(at_205), sampled(at_26)))
print('between frames: 2.05 s %r, 2.5 s %r, 2.6 s %r' % (sampled(at_205), sampled(at_25), sampled(at_26)))

# token compression through the stream: off is the plain encoder with every token, exactly (the
# same answers as the compression path with its cache and pruner switched off, a separate code
# path); on hands fewer tokens per frame to the decoder and still answers every question
off, c_off = replay(asks + ['--stc', 'off'])
idle, c_idle = replay(asks + ['--stc-cache', '0', '--stc-prune', '0'])
full = 16  # the tiny projector's tokens per frame
if strip(off) != strip(idle) or len(off) != 3:
    fails.append('--stc off and a compression pass that changes nothing differ:\n%s\n%s' % (strip(off), strip(idle)))
if c_off and (c_off['stc']['on'] or c_off['stc']['tokens_per_frame'] != full):
    fails.append('--stc off: %s' % c_off['stc'])
if c_idle and (c_idle['stc']['tokens_per_frame'] != full or c_idle['stc']['recomputed_share'] != 1.0):
    fails.append('cache and pruner off: %s' % c_idle['stc'])
st = counters.get('stc', {})
if not (st.get('on') and 0 < st.get('tokens_per_frame', full) < 0.75 * full and st.get('recomputed_share', 1) < 1
        and st.get('frames_reused', 0) + st.get('frames_partial', 0) > 0):
    fails.append('compression on (the default) did not compress: %s' % st)
if c_off and counters and counters['kv_tier_bytes']['vision'] > c_off['kv_tier_bytes']['vision'] * 1.2:
    fails.append('pruned frames took more of the vision window: %s vs %s' % (counters['kv_tier_bytes'],
                                                                          c_off['kv_tier_bytes']))
print('stc: on %.2f tokens/frame (recomputed %.0f%%, %d frames reused), off %d; answers on: %s' % (
    st.get('tokens_per_frame', 0), 100 * st.get('recomputed_share', 0), st.get('frames_reused', 0), full,
    [a['answer'][:16] for a in answers]))

# a damaged recording: answered as before, and FFmpeg's decoders keep quiet (svlm counts damaged
# frames itself; they printed two lines a damaged frame, 89 for this copy, for ever on a camera)
import tempfile
with tempfile.TemporaryDirectory() as tmp:
    damaged = bytearray(open(video, 'rb').read())
    for at in (0.3, 0.5, 0.7):
        damaged[int(len(damaged) * at):int(len(damaged) * at) + 3000] = b'Z' * 3000
    path = os.path.join(tmp, 'damaged.mp4')
    open(path, 'wb').write(damaged)
    p = subprocess.run([binp, 'replay', path] + base[3:] + ['--ask', '2:What?', '--json'], capture_output=True,
                       text=True, timeout=300)
    if p.returncode != 0 or '"answer"' not in p.stdout or ' @ 0x' in p.stderr:
        fails.append('damaged recording: rc %d, stderr %r' % (p.returncode, p.stderr[-300:]))
    # a memory directory whose parents do not exist yet is made with them (serve's DIR/STREAM
    # failed to start on a new DIR)
    bank = os.path.join(tmp, 'new', 'banks', 'cam')
    p = subprocess.run(base + ['--ask', '2:What?', '--memory-dir', bank, '--json'], capture_output=True, text=True,
                       timeout=300)
    if p.returncode != 0 or not os.path.isdir(bank) or not os.listdir(bank):
        fails.append('--memory-dir with new parents: rc %d, %r' % (p.returncode, p.stderr[-300:]))

for args, needle in (([binp, 'replay', '/nonexistent.mp4', '-m', 'x', '--mmproj', 'y'], 'cannot'),
                     (base + ['--stc', 'maybe'], 'on or off'),
                     (base + ['--stc-keep-ratio', '2'], 'keep-ratio'),
                     (base + ['--stc-nosuch', '1'], "unknown control 'nosuch'"),
                     (base + ['--no-memory', '--memory-dir', '/tmp'], '--memory-dir'),
                     (base + ['--memory-tokens', '0'], '--memory-tokens'),
                     # a bank that cannot be made: the error, not a crash freeing the stream
                     (base + ['--memory-dir', '/proc/svlm-no-such/bank'], 'cannot create'),
                     (base + ['--memory-dir', os.path.abspath(binp)], 'not a directory'),
                     (base + ['--ask', 'soon:why?'], '--ask expects'),
                     (base + ['--ask', '1e3:why?'], '--ask expects'),
                     (base + ['--speed', 'warp'], '--speed expects'),
                     (base + ['--backend', 'tpu'], '--backend expects'),
                     ([binp, 'replay', video], 'required')):
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if p.returncode not in (1, 2) or needle not in p.stderr:
        fails.append('%s: expected an error mentioning %r, got rc %d %r' % (args[2:], needle, p.returncode,
                                                                              p.stderr[-200:]))

for f in fails:
    print('FAIL', f)
print('%d answers, %s; %d failures' % (len(answers), counters, len(fails)))
sys.exit(1 if fails else 0)
