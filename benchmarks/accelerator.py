"""Ensembles at accelerator scale: member-steps/s of the sharded Langevin engine and the time of the theory, per
device count.

For every device count n (all divisors of the available devices up to their number; on CPU, n forced host
devices via ``XLA_FLAGS=--xla_force_host_platform_device_count=n`` in a subprocess each), the members of one
ensemble are sharded over n devices along the member axis (``ndk_flax.ensemble``, the library's compiled loop) and
timed over a fixed number of Langevin steps; the infinite-width theory (``ndk_flax.predict.langevin_mse_ensemble``,
mean and covariance on the record grid) is timed once per count. Default sizes (``--preset gpu``): width 4096,
M = 1024, float32; ``--quick`` is a CPU smoke run (width 256, M = 16).

Usage: python benchmarks/accelerator.py [--quick] [--devices 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PRESETS = {
  'gpu': dict(width=4096, n_members=1024, n_train=64, n_steps=200, d_in=16),
  'quick': dict(width=256, n_members=16, n_train=16, n_steps=50, d_in=8),
}
TEMPERATURE, ETA = 0.01, 1e-3


def measure(preset: dict) -> dict:
  """member-steps/s and theory seconds on the devices visible to this process."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from ndk_flax import predict, stax
  from ndk_flax.ensemble import _member_mesh, _members, build_program

  layer = stax.serial(stax.Dense(preset['width'], W_std=1.0, b_std=0.5), stax.Erf(), stax.Dense(1))
  x = jax.random.normal(jax.random.PRNGKey(0), (preset['n_train'], preset['d_in']), jnp.float32)
  y = jnp.sin(x[:, :1])
  program = build_program(
    layer,
    x,
    y,
    temperature=TEMPERATURE,
    learning_rate=ETA,
    width=None,
    x_observe=x,
    record_hidden=False,
    dtype=jnp.float32,
  )
  members = _members(0, preset['n_members'])
  params, state = jax.jit(program.init, out_shardings=members.sharding)(members.keys)
  start, n = jnp.asarray(0), jnp.asarray(preset['n_steps'])
  jax.block_until_ready(program.advance(params, state, start, n))  # compile
  t0 = time.perf_counter()
  jax.block_until_ready(program.advance(params, state, start, n))
  train_s = time.perf_counter() - t0
  _, n_padded = _member_mesh(preset['n_members'])

  t0 = time.perf_counter()
  predictor = predict.langevin_mse_ensemble(
    layer, np.asarray(x, np.float64), np.asarray(y, np.float64), temperature=1.0
  )
  theory = predictor(np.linspace(0.0, 10.0, 20), compute_cov=True)
  np.asarray(theory.covariance)
  theory_s = time.perf_counter() - t0
  return {
    'devices': jax.device_count(),
    'backend': jax.default_backend(),
    'member_steps_per_s': n_padded * preset['n_steps'] / train_s,
    'train_s': train_s,
    'theory_s': theory_s,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--preset', choices=sorted(PRESETS), default='gpu')
  parser.add_argument('--quick', action='store_true', help='same as --preset quick')
  parser.add_argument('--devices', default=None, help='comma-separated device counts (default: 1, 2, 4, ... up to all)')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  preset = PRESETS['quick' if args.quick else args.preset]
  if args.child:
    print(json.dumps(measure(preset)))
    return

  import jax

  accelerator = jax.default_backend() != 'cpu'
  available = jax.device_count() if accelerator else os.cpu_count() or 1
  if args.devices:
    counts = [int(c) for c in args.devices.split(',')]
  else:
    counts = [c for c in (1, 2, 4, 8, 16) if c <= max(available, 4)]
  print(f'preset {preset}, T={TEMPERATURE}, eta={ETA}, float32')
  print(f'{"devices":>7} {"backend":>8} {"member-steps/s":>15} {"train s":>8} {"theory s":>9}')
  for count in counts:
    env = dict(os.environ)
    if accelerator:
      env['CUDA_VISIBLE_DEVICES'] = ','.join(str(i) for i in range(count))
    else:
      env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={count}'.strip()
      env['JAX_PLATFORMS'] = 'cpu'
    cmd = [sys.executable, __file__, '--child', '--preset', 'quick' if args.quick else args.preset]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
      print(f'{count:>7} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}')
      continue
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
      f'{row["devices"]:>7} {row["backend"]:>8} {row["member_steps_per_s"]:>15.1f} {row["train_s"]:>8.3f} '
      f'{row["theory_s"]:>9.3f}'
    )


if __name__ == '__main__':
  main()
