#!/usr/bin/env python3
"""svlm bench-streams on a tiny random SmolVLM pair made by svlm mkmodel: 3 streams at 2 frames per
second for 2 s on the CPU. Frames reach every stream, questions are answered, every figure of the
text and JSON reports parses and is consistent (p50 <= p90 <= p99 <= max), and bad options are
refused with exit code 2 and a message. Speeds themselves are benchmarks, not checked here."""
import json, math, os, re, shutil, subprocess, sys, tempfile

binp = os.environ['SVLM_BIN']
base_tmp = os.environ.get('SVLM_TEST_TMP')
if base_tmp:
    os.makedirs(base_tmp, exist_ok=True)
tmp = tempfile.mkdtemp(prefix='bench-streams-', dir=base_tmp)
fails = []


def run(args, timeout=120):
    env = dict(os.environ)
    env.pop('OPENBLAS_CORETYPE', None)
    env.pop('SVLM_BACKEND', None)
    return subprocess.run([binp] + args, capture_output=True, text=True, timeout=timeout, env=env)


prefix = os.path.join(tmp, 'tiny')
p = run(['mkmodel', '--arch', 'smolvlm', '--shape', 'tiny', '--type', 'f32', '--seed', '1', '-o', prefix, '--quiet'])
if p.returncode != 0:
    print('FAIL mkmodel: %s' % p.stderr[-300:])
    sys.exit(1)
model, mmproj = prefix + '.gguf', prefix + '-mmproj.gguf'
STREAMS, FPS = 3, 2
base = ['bench-streams', '-m', model, '--mmproj', mmproj, '--streams', str(STREAMS), '--fps', str(FPS),
        '--duration', '2', '--warmup', '1', '--ask-every', '1', '--question-tokens', '20', '--answer-tokens', '4',
        '--threads', '1', '--backend', 'cpu']
NUM = r'([0-9]+(?:\.[0-9]+)?)'


def check_figures(r, where):
    """r: the JSON report, or the same keys parsed from the text report."""
    if r.get('streams') != STREAMS or r.get('target_fps') != FPS:
        fails.append('%s: streams/fps %s %s' % (where, r.get('streams'), r.get('target_fps')))
    if not r.get('backend', '').startswith('cpu'):
        fails.append('%s: backend %r' % (where, r.get('backend')))
    if not r.get('seconds', 0) > 0:
        fails.append('%s: seconds %r' % (where, r.get('seconds')))
    if not r.get('stream_frames_min', 0) > 0:
        fails.append('%s: a stream ingested no frame in the window: %s' % (where, r))
    if not r.get('frames', 0) >= STREAMS * r.get('stream_frames_min', 0):
        fails.append('%s: frames %r below streams x the per-stream minimum' % (where, r.get('frames')))
    if not r.get('fps_per_stream', 0) > 0 or r.get('dropped', -1) < 0:
        fails.append('%s: fps_per_stream %r dropped %r' % (where, r.get('fps_per_stream'), r.get('dropped')))
    asked, started, answered = (r.get('questions_' + k, 0) for k in ('asked', 'started', 'answered'))
    if not (0 < answered <= started <= asked):
        fails.append('%s: questions asked %r started %r answered %r' % (where, asked, started, answered))
    copied = r.get('answers_window_copied', -1)  # the fork copies the window into the answer's context
    if not (0 < copied <= answered):
        fails.append('%s: %r of %r answers copied the window' % (where, copied, answered))
    if not (r.get('encode_ms_per_frame', 0) > 0 and r.get('prefill_ms_per_frame', 0) > 0):
        fails.append('%s: ingest ms per frame %r %r' % (where, r.get('encode_ms_per_frame'),
                                                       r.get('prefill_ms_per_frame')))
    if not (r.get('answers_running_max', 0) >= 1 and r.get('answer_memory_waits', -1) == 0):
        fails.append('%s: answers running at once %r, memory waits %r' % (where, r.get('answers_running_max'),
                                                                         r.get('answer_memory_waits')))
    t = r.get('ttft_ms') or {}
    vals = [t.get(k) for k in ('p50', 'p90', 'p99', 'max')]
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0 for v in vals):
        fails.append('%s: ttft_ms %s' % (where, t))
    elif vals != sorted(vals):
        fails.append('%s: ttft percentiles out of order %s' % (where, vals))
    for key in ('ingest_busy', 'answer_busy'):
        if not r.get(key, -1) >= 0:  # a step spanning the window's edge counts whole: may pass 1
            fails.append('%s: %s %r' % (where, key, r.get(key)))
    if not r.get('answer_tok_s', -1) >= 0 or r.get('kv_bytes_per_stream', 0) <= 0:
        fails.append('%s: answer_tok_s %r kv_bytes_per_stream %r' % (where, r.get('answer_tok_s'),
                                                                        r.get('kv_bytes_per_stream')))
    if not isinstance(r.get('keeps_up'), bool):
        fails.append('%s: keeps_up %r' % (where, r.get('keeps_up')))


def parse_text(out):
    """The text report's figures under the JSON report's keys (every line must parse)."""
    r = {}
    pats = [
        (r'backend +(\S.*)$', lambda m: r.update(backend=m[1])),
        (r'streams +([0-9]+) at ' + NUM + r' fps each \(stc (on|off|auto), memory (on|off)\)$',
         lambda m: r.update(streams=int(m[1]), target_fps=float(m[2]))),
        (r'seconds +' + NUM + r' measured after ' + NUM + r' s of warmup$', lambda m: r.update(seconds=float(m[1]))),
        (r'fps_per_stream +' + NUM + r' \(' + NUM + r' % of target\)$',
         lambda m: r.update(fps_per_stream=float(m[1]), fps_share=float(m[2]) / 100)),
        (r'frames +([0-9]+) ingested \(([0-9]+) to ([0-9]+) per stream\), ([0-9]+) pushed, ([0-9]+) dropped$',
         lambda m: r.update(frames=int(m[1]), stream_frames_min=int(m[2]), stream_frames_max=int(m[3]),
                            frames_pushed=int(m[4]), dropped=int(m[5]))),
        (r'questions +([0-9]+) asked, ([0-9]+) started, ([0-9]+) answered, ([0-9]+) failed, ([0-9]+) unanswered '
         r'\(([0-9]+) tokens, up to ([0-9]+) answer tokens\)$',
         lambda m: r.update(questions_asked=int(m[1]), questions_started=int(m[2]), questions_answered=int(m[3]),
                            questions_failed=int(m[4]), questions_unanswered=int(m[5]), question_tokens=int(m[6]))),
        (r'ttft_ms +p50 ' + NUM + ' p90 ' + NUM + ' p99 ' + NUM + ' max ' + NUM
         + r"; ([0-9]+) of ([0-9]+) answers copied the stream's window$",
         lambda m: r.update(ttft_ms={'p50': float(m[1]), 'p90': float(m[2]), 'p99': float(m[3]), 'max': float(m[4])},
                            answers_window_copied=int(m[5]))),
        (r'answer_tok_s +' + NUM + ' aggregate, ' + NUM + ' per answer$', lambda m: r.update(answer_tok_s=float(m[1]))),
        (r'lanes_busy +ingest ' + NUM + ' % answer ' + NUM + ' %$',
         lambda m: r.update(ingest_busy=float(m[1]) / 100, answer_busy=float(m[2]) / 100)),
        (r'answers +at most ([0-9]+) running at once(?:; ([0-9]+) starts waited for a running answer\'s memory)?$',
         lambda m: r.update(answers_running_max=int(m[1]), answer_memory_waits=int(m[2] or 0))),
        (r'ingest_batch +' + NUM + ' frames per encoder batch of several streams; ' + NUM + ' % of frames in them; '
         + NUM + ' % of batches preprocessed while the one before ran$',
         lambda m: r.update(ingest_batch_mean=float(m[1]), ingest_batch_share=float(m[2]) / 100,
                            ingest_ahead_share=float(m[3]) / 100)),
        (r'ingest_ms +' + NUM + ' encode ' + NUM + ' prefill per frame$',
         lambda m: r.update(encode_ms_per_frame=float(m[1]), prefill_ms_per_frame=float(m[2]))),
        (r'stc +' + NUM + r' % of patches recomputed; frames ' + NUM + r' % reused, ' + NUM + r' % partial, ' + NUM
         + r' % full; ' + NUM + ' of ' + NUM + ' tokens kept a frame$',
         lambda m: r.update(stc_recomputed_share=float(m[1]) / 100, stc_reused_share=float(m[2]) / 100,
                            stc_partial_share=float(m[3]) / 100, stc_full_share=float(m[4]) / 100,
                            stc_tokens_kept_per_frame=float(m[5]), stc_tokens=float(m[6]))),
        (r'memory +per stream: KV ' + NUM + r' MiB \(f16\), memory bank ' + NUM + ' MiB; process ' + NUM + ' MiB resident$',
         lambda m: r.update(kv_bytes_per_stream=float(m[1]) * 2**20)),
        (r'producer_lag_ms +' + NUM + '(?: max)?; drain ' + NUM + ' s$', lambda m: None),
        (r'keeps up: (yes|no) \(fps >= 0\.95\*target and p99 < 250 ms\)$', lambda m: r.update(keeps_up=m[1] == 'yes')),
    ]
    for line in out.splitlines():
        for pat, fn in pats:
            m = re.match(pat, line)
            if m:
                fn(m)
                break
        else:
            fails.append('text report: line does not parse: %r' % line)
    return r


p = run(base)
if p.returncode != 0:
    fails.append('text run: rc %d %s' % (p.returncode, p.stderr[-400:]))
else:
    r = parse_text(p.stdout)
    check_figures(r, 'text')
    if r.get('question_tokens') != 20:  # the built-in words reach 20 tokens exactly with this vocabulary
        fails.append('text: question of %r tokens, wanted 20' % r.get('question_tokens'))
    if 't=' in p.stderr:
        fails.append('progress lines without a terminal or --progress: %r' % p.stderr[-200:])
    # the CPU's default: token compression on, its figures reported (the moving box: some frames
    # partial, the first ones full)
    shares = [r.get(k) for k in ('stc_reused_share', 'stc_partial_share', 'stc_full_share')]
    if (None in shares or abs(sum(shares) - 1) > 0.02 or not 0 < r.get('stc_recomputed_share', -1) <= 1
            or not 0 < r.get('stc_tokens_kept_per_frame', -1) <= r.get('stc_tokens', 0)):
        fails.append('text: token compression figures %r %r of %r' % (shares, r.get('stc_tokens_kept_per_frame'),
                                                                    r.get('stc_tokens')))

def json_run(args, where):
    """The JSON report of a run, or None (a failure recorded) when it failed or is not one object."""
    p = run(args)
    if p.returncode != 0:
        fails.append('%s: rc %d %s' % (where, p.returncode, p.stderr[-400:]))
        return p, None
    try:
        return p, json.loads(p.stdout)
    except ValueError as e:
        fails.append('%s: --json is not one JSON object (%s): %r' % (where, e, p.stdout[-300:]))
        return p, {}


p, r = json_run(base + ['--json', '--progress', '--no-stc', '--no-memory', '--ingest-batch', '3', '--kv', 'f16'],
                'json run')
if r is not None:
    check_figures(r, 'json')
    if r.get('kv') != 'f16' or r.get('questions_skipped') != 0:
        fails.append('json: kv %r (--kv f16), questions skipped %r' % (r.get('kv'), r.get('questions_skipped')))
    if 'device_bytes_per_stream' in r:  # the CPU's buffers are host memory: no device figures
        fails.append('json: the CPU backend reported device memory %r' % r.get('device_bytes_per_stream'))
    if r.get('stc') is not False or r.get('memory') is not False or r.get('answer_tokens') != 4:
        fails.append('json: stc %r memory %r answer_tokens %r' %
                     (r.get('stc'), r.get('memory'), r.get('answer_tokens')))
    if not re.search(r'^t=[0-9]+s (warmup|measure) frames [0-9]+ drops [0-9]+', p.stderr, re.M):
        fails.append('--progress printed no progress line: %r' % p.stderr[-300:])

# the null backend: the whole engine under a GPU's policies (frames of several streams batched, no
# token compression) with no compute; its figures are svlm's own host work, its answers meaningless
nb = [a if a != 'cpu' else 'null' for a in base]
nb[nb.index('--ask-every') + 1] = '0.1'  # 30 questions a second: answers share decode steps
nb[nb.index('--answer-tokens') + 1] = '16'
p, r = json_run(nb + ['--json', '--ingest-batch', '3'], 'null backend')
if r is not None:
    if not r.get('backend', '').startswith('null') or r.get('stc') is not False:
        fails.append('null backend: backend %r stc %r (a GPU\'s policy: no compression)' %
                     (r.get('backend'), r.get('stc')))
    if not r.get('stream_frames_min', 0) > 0 or not r.get('questions_answered', 0) > 0:
        fails.append('null backend: frames %r answered %r' % (r.get('stream_frames_min'),
                                                              r.get('questions_answered')))
    # its logits pick an ordinary token, batched or not: every answer runs its full length (here
    # three streams ask at once, so answers share decode steps)
    if r.get('answer_tokens_mean') != r.get('answer_tokens'):
        fails.append('null backend: answers of %r tokens on average, wanted all %r' %
                     (r.get('answer_tokens_mean'), r.get('answer_tokens')))
    # its blocks stand for device memory: each stream holds its working copy there, and with no
    # device size there is no estimate of how many fit
    per, one, end = (r.get(k) for k in ('device_bytes_per_stream', 'device_bytes_one_stream', 'device_bytes_end'))
    nums = all(isinstance(v, (int, float)) for v in (per, one, end))
    if not (nums and per > 0 and 0 < one < end and r.get('device_streams_fit') is None and
            r.get('device_bytes_total') == 0):
        fails.append('null backend: device memory per stream %r, with one stream %r, end %r, fit %r, total %r' %
                     (per, one, end, r.get('device_streams_fit'), r.get('device_bytes_total')))

# an engine that falls behind its questions: a stream's next question is skipped while one waits
# (100 questions a second on each of 3 streams, 32-token answers on one thread), and the run does
# not keep up
fast = [a for a in base]
fast[fast.index('--ask-every') + 1] = '0.01'
fast[fast.index('--answer-tokens') + 1] = '32'
p, r = json_run(fast + ['--json', '--max-waiting', '1'], 'max-waiting run')
if r is not None:
    if not (r.get('questions_skipped', 0) > 0 and r.get('questions_asked', 0) > 0 and r.get('keeps_up') is False
            and r.get('questions_unanswered') == 0):
        fails.append('--max-waiting 1: asked %r skipped %r unanswered %r keeps_up %r' %
                     (r.get('questions_asked'), r.get('questions_skipped'), r.get('questions_unanswered'),
                      r.get('keeps_up')))

ok = ['-m', model, '--mmproj', mmproj]
for bad in (['--mmproj', mmproj], ok + ['--streams', '0'], ok + ['--streams', '1025'], ok + ['--fps', '0'],
            ok + ['--fps', 'x'], ok + ['--duration', '-1'], ok + ['--warmup', 'nan'], ok + ['--ask-every', '0.001'],
            ok + ['--question-tokens', '0'], ok + ['--answer-tokens', '5000'], ok + ['--threads', '0'],
            ok + ['--backend', 'tpu'], ok + ['--kv', 'q8'], ok + ['--max-waiting', '0'], ok + ['--bogus'], ok + ['video.mp4'],
            ok + ['--memory-dir', tmp], ok + ['--stc', 'maybe'], ok + ['--streams'], ok + ['--ingest-batch', '65']):
    p = run(['bench-streams'] + bad)
    if p.returncode != 2 or not p.stderr.strip():
        fails.append('%s: exit %d, stderr %r (want 2 and a message)' % (bad, p.returncode, p.stderr[-200:]))

missing = os.path.join(tmp, 'no-such-model.gguf')
p = run(['bench-streams', '-m', missing, '--mmproj', mmproj, '--duration', '1', '--warmup', '0'])
if p.returncode != 1 or 'no-such-model' not in p.stderr:
    fails.append('missing model: exit %d, %r' % (p.returncode, p.stderr[-200:]))

p = run(['bench-streams', '--help'])
if p.returncode != 0 or '--streams' not in p.stdout:
    fails.append('--help: exit %d' % p.returncode)

shutil.rmtree(tmp, ignore_errors=True)
for f in fails:
    print('FAIL', f)
print('bench-streams reports: %d failures' % len(fails))
sys.exit(1 if fails else 0)
