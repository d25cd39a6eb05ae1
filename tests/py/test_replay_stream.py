#!/usr/bin/env python3
"""svlm replay over the engine with the tiny SmolVLM fixture models:
- bounded: a 20,000-frame replay of the built-in test pattern at --speed max keeps resident memory
  (/proc/self/statm, reported every 1000 frames), KV bytes and memory-bank bytes flat: over the
  second half the largest sample is within 5% of the smallest (KV: plus one page, as pruned
  frames vary in size), and the bank stays under budget;
- questions are answered while frames keep arriving (frames ingested between the fork and the
  end of the answer, summed, > 0), and the same replay twice gives the same answers;
- without --json on a terminal a progress line shows video time, frames, speed and the answers."""
import json, os, pty, subprocess, sys, time

data = os.environ.get('SVLM_TEST_DATA', '../shared')
binp = os.environ['SVLM_BIN']
if not os.path.isdir(data):
    print('SKIP: test data folder not found (set SVLM_TEST_DATA)')
    sys.exit(77)
models = os.path.join(data, 'fixtures/vision-tiny/models')
model_args = ['-m', os.path.join(models, 'tiny-smolvlm-text-f32.gguf'), '--mmproj',
              os.path.join(models, 'tiny-smolvlm-mmproj-f32.gguf')]
fails = []


class NoVideo(Exception):
    """svlm was built without FFmpeg and GStreamer: only pattern: sources work."""


def run_json(args, timeout=240):
    p = subprocess.run([binp, 'replay'] + args + ['--json'], capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        if 'built without' in p.stderr:  # only a missing video library skips a part; any other failure fails
            raise NoVideo(p.stderr.strip()[-200:])
        fails.append('replay %s failed (rc %d): %s' % (args[:1], p.returncode, p.stderr[-300:]))
        return [], [], {}
    lines = [json.loads(l) for l in p.stdout.strip().splitlines()]
    answers = sorted([l for l in lines if 'question' in l], key=lambda a: a['t'])
    progress = [l for l in lines if l.get('progress')]
    return answers, progress, lines[-1]


# -- bounded over 20,000 frames -----------------------------------------------------------------
N = 20000
t0 = time.time()
_, samples, final = run_json(['pattern:size=64x48,rate=50,duration=%d' % (N // 50), '--fps', '50', '--speed', 'max',
                              '--frames-window', '4', '--memory-budget', '1', '--stats-every', '1000'] + model_args,
                             timeout=600)
secs = time.time() - t0
if final:
    if final['frames'] != N or final['drops'] != 0:
        fails.append('bounded replay: %s frames, %s drops (expected %d, 0)' % (final['frames'], final['drops'], N))
    half = [s for s in samples if s['frames'] >= N // 2]
    if len(half) < 5:
        fails.append('only %d samples over the second half' % len(half))
    for key in ('rss_bytes', 'kv_bytes'):
        vals = [s[key] for s in half]
        # token compression makes frames of different sizes: the window's pages in use then
        # move by one page as frames come and go (still bounded), so one page is allowed
        slack = final.get('kv_page_bytes', 0) if key == 'kv_bytes' else 0
        if vals and max(vals) > 1.05 * min(vals) + slack:
            fails.append('%s not flat over frames %d..%d: %s' % (key, N // 2, N, vals))
    mem = [s['memory']['bytes'] for s in samples]
    if any(b > final['memory']['budget'] for b in mem) or final['memory']['frames'] < N - 10:
        fails.append('memory bank: bytes %s, budget %s, frames %s' % (max(mem or [0]), final['memory']['budget'],
                                                                       final['memory']['frames']))
    print('bounded: %d frames in %.1f s (%.0f frames/s); rss %s..%s, kv %s, memory %s of %s' % (
        final['frames'], secs, final['fps'], min(s['rss_bytes'] for s in half), max(s['rss_bytes'] for s in half),
        final['kv_bytes'], final['memory']['bytes'], final['memory']['budget']))


def video_parts():
    # -- answers while frames arrive, twice the same ------------------------------------------------
    video = os.path.join(data, 'media/bottles_hands_tabletop.mp4')
    asks = []
    times = list(range(2, 38, 3))
    for t in times:
        asks += ['--ask', '%d:What happens on the table now?' % t]
    # long answers (200 tokens) so that answering takes longer than a frame's encoding
    args = [video, '--fps', '4', '--speed', 'max', '--frames-window', '4', '--max-tokens', '200'] + model_args + asks
    a1, _, c1 = run_json(args)
    a2, _, c2 = run_json(args)
    if len(a1) != len(times):
        fails.append('expected %d answers, got %d' % (len(times), len(a1)))
    strip = lambda xs: [(a['t'], a['answer'], a['tokens']) for a in xs]
    if strip(a1) != strip(a2):
        fails.append('a second replay gave other answers:\n%s\n%s' % (strip(a1), strip(a2)))
    during = sum(a['frames_during'] for a in a1)
    if during <= 0:
        fails.append('no frame was ingested while questions were answered: %s' % [a['frames_during'] for a in a1])
    if c1 and c1['answers_joined'] != len(times):
        fails.append('answered turns joined: %s' % c1.get('answers_joined'))
    print('answers: %d, frames ingested while answering: %d, ttft ms %s' % (len(a1), during,
                                                                             [round(a['ttft_ms'], 1) for a in a1]))

    # -- the progress line on a terminal ------------------------------------------------------------
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(binp, [binp, 'replay', video, '--fps', '2', '--speed', 'max', '--frames-window', '4', '--max-tokens',
                        '8'] + model_args + ['--ask', '3:What is there?'])
    out = b''
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode('utf-8', 'replace')
    for needle in ('s video', 'frames', 'real time', '[3.0 s] What is there?', 'frames/s'):
        if needle not in text:
            fails.append('terminal output lacks %r: %r' % (needle, text[-400:]))
    if os.WEXITSTATUS(status) != 0:
        fails.append('terminal replay exited with %d' % os.WEXITSTATUS(status))


try:
    video_parts()
except NoVideo as e:
    print('SKIP (the parts on a video file): %s' % e)

for f in fails:
    print('FAIL', f)
print('%d failures' % len(fails))
sys.exit(1 if fails else 0)
