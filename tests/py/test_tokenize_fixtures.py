#!/usr/bin/env python3
"""`svlm tokenize` against llama.cpp's token ids.

Runs the built binary (env SVLM_BIN) over every case of shared/fixtures/stories260K/tokenize.json
(model shared/models/stories260K.gguf) and shared/fixtures/vocab/tokenize-ggml-vocab-*.json
(model shared/models/vocab/<name>.gguf) in the three settings the fixtures give:
no_special (--no-bos), add_special (no flag) and add_special_parse_special (--parse-special).
Ids must be identical. For no_special it also checks each token's bytes (pieces_hex) and the
detokenized text against the fixture. Exits 77 (skipped) when the shared data is absent.
"""
import glob
import json
import os
import subprocess
import sys

SETTINGS = ((['--no-bos'], 'no_special'), ([], 'add_special'), (['--parse-special'], 'add_special_parse_special'))


def main():
    binp = os.environ.get('SVLM_BIN')
    shared = os.environ.get('SVLM_TEST_DATA') or os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared')
    stories = os.path.join(shared, 'fixtures', 'stories260K', 'tokenize.json')
    if not os.path.isfile(stories):
        print('SKIP: shared data not found (set SVLM_TEST_DATA)')
        return 77
    if not binp or not os.access(binp, os.X_OK):
        print('FAIL: SVLM_BIN does not name the built svlm binary')
        return 1

    pairs = [(stories, os.path.join(shared, 'models', 'stories260K.gguf'))]
    for fx in sorted(glob.glob(os.path.join(shared, 'fixtures', 'vocab', 'tokenize-ggml-vocab-*.json'))):
        name = os.path.basename(fx)[len('tokenize-'):-len('.json')]
        pairs.append((fx, os.path.join(shared, 'models', 'vocab', name + '.gguf')))

    fails, n_checks = [], 0
    for fx, model in pairs:
        label = os.path.basename(model)
        for case in json.load(open(fx, encoding='utf-8')):
            text = case['text']
            for flags, key in SETTINGS:
                extra = ['--pieces'] if key == 'no_special' else []
                cmd = [binp, 'tokenize', '-m', model] + flags + ['--json'] + extra + ['--', text]
                p = subprocess.run(cmd, capture_output=True, timeout=60)
                n_checks += 1
                if p.returncode != 0:
                    fails.append('%s %s %r: exit %d: %s' % (label, key, text, p.returncode, p.stderr.decode()[-200:]))
                    continue
                out = json.loads(p.stdout.decode())
                if out['tokens'] != case[key]:
                    fails.append('%s %s %r: got %s, expected %s' % (label, key, text, out['tokens'], case[key]))
                if key == 'no_special':
                    n_checks += 2
                    if out['pieces_hex'] != case['pieces_hex_no_special']:
                        fails.append('%s pieces %r: got %s, expected %s' % (label, text, out['pieces_hex'],
                                                                            case['pieces_hex_no_special']))
                    if out['text'] != case['detok_no_special']:
                        fails.append('%s detok %r: got %r, expected %r' % (label, text, out['text'],
                                                                           case['detok_no_special']))
    # a NUL byte (its own token) is text like any other: the detokenized text ended at it
    import tempfile
    with tempfile.NamedTemporaryFile(suffix='.txt') as nul:
        nul.write(b'abc\x00def')
        nul.flush()
        p = subprocess.run([binp, 'tokenize', '-m', pairs[0][1], '--json', '--pieces', '--no-bos', '-f',
                            nul.name],
                           capture_output=True, timeout=60)
        n_checks += 1
        if p.returncode != 0 or json.loads(p.stdout.decode())['text'] != 'abc\x00def':
            fails.append('text with a NUL byte: exit %d, %r' % (p.returncode, p.stdout[-200:]))
    for f in fails:
        print('FAIL:', f)
    print('%d of %d checks hold over %d fixture files' % (n_checks - len(fails), n_checks, len(pairs)))
    return 1 if fails else 0


if __name__ == '__main__':
    sys.exit(main())
