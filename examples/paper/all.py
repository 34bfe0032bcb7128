"""Regenerate every figure and summary of the paper scripts: ``python -m examples.paper.all [--quick] [--out DIR]``.

Runs :mod:`two_phases`, :mod:`parameter_dependence`, :mod:`digits` and :mod:`drift` in one process (networks and
their compiled kernels are shared), each writing to ``DIR/<name>``, then ``DIR/README.md`` with the claim tables.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional, Sequence

from examples.paper import digits, drift, parameter_dependence, two_phases
from examples.paper.common import verdict

SCRIPTS = (two_phases, parameter_dependence, digits, drift)
SHARE_QUICK = {'two_phases': 0.17, 'parameter_dependence': 0.24, 'digits': 0.25, 'drift': 0.34}
SHARE_FULL = {'two_phases': 0.2, 'parameter_dependence': 0.35, 'digits': 0.15, 'drift': 0.3}
"""Measured fractions of the run time of each script (2 CPU cores): the ETA printed before each script."""


def main(argv: Optional[Sequence[str]] = None) -> dict:
  parser = argparse.ArgumentParser(prog='python -m examples.paper.all', description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='paper_out', help='output directory (one sub-directory per script)')
  parser.add_argument('--quick', action='store_true', help='small, fast presets (used by the tests)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  results, lines = {}, ['# Paper findings reproduced with ndk_flax', '']
  shares = SHARE_QUICK if args.quick else SHARE_FULL
  began = time.time()
  for i, script in enumerate(SCRIPTS):
    start = time.time()
    done = sum(shares[s.NAME] for s in SCRIPTS[:i])
    eta = f'; about {(start - began) * (1 - done) / done:.0f} s left' if done else ''
    print(f'[{i + 1}/{len(SCRIPTS)}] {script.NAME} (at {start - began:.0f} s{eta})', flush=True)
    out = os.path.join(args.out, script.NAME)
    results[script.NAME] = script.main(['--out', out, '--seed', str(args.seed)] + (['--quick'] if args.quick else []))
    lines += [
      f'## [{script.NAME}]({script.NAME}/summary.md) ({time.time() - start:.0f} s)',
      '',
      '| claim | reproduced |',
      '|---|---|',
    ]
    lines += [f'| {c["claim"]} | {verdict(c["reproduced"])} |' for c in results[script.NAME]['claims']]
    lines.append('')
  with open(os.path.join(args.out, 'README.md'), 'w') as f:
    f.write('\n'.join(lines))
  return results


if __name__ == '__main__':
  main()
