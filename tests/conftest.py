"""Test configuration: float64 everywhere (identities are checked to ~1e-10)."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax

jax.config.update('jax_enable_x64', True)
