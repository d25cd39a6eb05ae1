#!/usr/bin/env python3
"""Every C source and header is formatted with the project's .clang-format (skips without clang-format)."""
import os, shutil, subprocess, sys

root = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
tool = shutil.which('clang-format')
if not tool:
    print('SKIP: clang-format is not installed')
    sys.exit(77)
files = []
for d in ('common', 'kernels', 'llm', 'vision', 'memory', 'pipeline', 'tools', 'tests', 'include'):
    for dirpath, _, names in os.walk(os.path.join(root, d)):
        files += [os.path.join(dirpath, n) for n in names
                  if n.endswith(('.c', '.h')) and n != 'unicode_tables.c']  # generated table
bad = []
for f in sorted(files):
    p = subprocess.run([tool, '--dry-run', '--Werror', f], capture_output=True, text=True)
    if p.returncode:
        bad.append(os.path.relpath(f, root))
for f in bad:
    print('FAIL not formatted (run clang-format -i %s)' % f)
print('%d passed, %d failed' % (len(files) - len(bad), len(bad)))
sys.exit(1 if bad else 0)
