"""Wall-clock import time of `ndk_flax.stax` against the JAX stack it sits on, measured in the same run.

Run: `python benchmarks/imports.py [--repeats 7]`. Each sample is a fresh interpreter (`python -X importtime` is
not used: it measures self time, not what a user waits for). The baseline is `import jax, flax.nnx, optax`, the
stack every ndk_flax user imports anyway; the target of issue 10 is a ratio of at most 1.3.
"""

import argparse
import statistics
import subprocess
import sys

CASES = {
  'python (empty)': 'pass',
  'import jax, flax.nnx, optax': 'import jax, flax.nnx, optax',
  'import ndk_flax.stax': 'import ndk_flax.stax',
  'import ndk_flax.stax, predict, nn, optax, ensemble, validate': (
    'import ndk_flax.stax, ndk_flax.predict, ndk_flax.nn, ndk_flax.optax, ndk_flax.ensemble, ndk_flax.validate'
  ),
}

TIMER = """
import time
start = time.perf_counter()
{code}
print(time.perf_counter() - start)
"""


def import_seconds(code: str) -> float:
  out = subprocess.run([sys.executable, '-c', TIMER.format(code=code)], capture_output=True, text=True, check=True)
  return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--repeats', type=int, default=7, help='fresh interpreters per case (median reported)')
  args = parser.parse_args()
  import_seconds('import jax, flax.nnx, optax, ndk_flax.stax')  # warm the file cache once
  medians = {}
  for name, code in CASES.items():
    medians[name] = statistics.median(import_seconds(code) for _ in range(args.repeats))
  base = medians['import jax, flax.nnx, optax']
  print(f'python {sys.version.split()[0]}, median of {args.repeats} fresh interpreters each')
  print(f'{"import":<64} {"seconds":>8} {"/ jax+flax+optax":>17}')
  for name, seconds in medians.items():
    print(f'{name:<64} {seconds:8.3f} {seconds / base:17.2f}')


if __name__ == '__main__':
  main()
