"""The uniform kernel lattice R(a·h, b·h, x1, X) read by the mean solver, its cubic interpolation and its ring buffer.

The dynamics need a fine time grid (stiff NTK eigenvalues early, the diffusive scale late), but the kernels only
drift on the weights' time scale ~1/λ. So R is evaluated on a uniform lattice R(a·h, b·h) (b ≤ a) resolving that
drift and interpolated (cubic Lagrange in u = t − s and s, whose stencils stay in the causal region s ≤ t) at the
grid pairs: O((t_max/h)² P²) kernel work instead of O(n_t² P²). A solver row at time t only touches lattice rows
a ∈ [⌊t/h⌋ − 4, ⌊t/h⌋ + 7], kept in a ring buffer while sweeping t upwards: O(t_max/h · P²) memory. A stationary
lattice (R(t, s) = R(t − s)) keeps only its one row (:class:`StationaryRow`), and its stencils are cubic in t − s
only (4 nodes a window instead of 16).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ndk_flax.predict.kernels import KernelAccess

__all__ = [
  'COARSE',
  'DIAGONAL_FROM',
  'EVALUATED',
  'FAR_FROM',
  'FLUSH',
  'KINK_MARGIN',
  'NEAR',
  'RING',
  'Lattice',
  'StationaryRow',
  'choose_lattice',
  'cubic_stencil',
  'diagonal_stencil',
  'evaluated_columns',
  'evaluated_rows',
  'far_stencils',
  'lagrange4',
  'lattice_pairs',
  'lattice_row_pairs',
  'node',
]

RING = 12
"""Lattice rows a solver row at time t can touch: [⌊t/h⌋ − 4, ⌊t/h⌋ + 7] (cubic stencils, ±1 rounding)."""


FAR_FROM = 4
"""First lattice window w = ⌊t/h⌋ whose rows read the history of windows < w − 1 through the far-field
interpolation (:func:`far_stencils`): from there on every node of a far stencil is causal."""


KINK_MARGIN = 12
"""The lattice interpolates R within rtol / KINK_MARGIN: the slope of a cubic interpolant jumps at lattice nodes (by
≈ its error / h), and these kinks must stay invisible on curves at the default accuracy (relative second difference
of the test MSE < 1e-4; at error rtol/5 they reached 1.3e-4, at rtol/80 4e-5)."""


FLUSH = 8
"""Weight columns a stationary lattice adds to its running far-field sums at once (:func:`toeplitz_flush`): its one
row is read once every FLUSH windows instead of once a window."""


NEAR = FLUSH + 6
"""Nodes R(α·h) (α < NEAR) a :class:`StationaryRow` keeps apart: window stencils (4), early histories
(``RING − 4``) and the far-field columns not yet flushed (fewer than FLUSH + 6)."""


COARSE = 4
"""Far from the diagonal a general lattice row is evaluated on every COARSE-th column only (:func:`lattice_row`); a
diagonal lattice evaluates every COARSE-th row only (:func:`diagonal_row`)."""


DIAGONAL_FROM = 2 * COARSE
"""First row a diagonal lattice interpolates: the rows below are evaluated (their diagonals hold too few nodes)."""


EVALUATED = 5
"""Evaluated rows a diagonal lattice keeps (:func:`evaluated_row`): interpolated row a reads the rows COARSE·k,
⌊a/COARSE⌋ − 1 ≤ k ≤ ⌊a/COARSE⌋ + 3 (:func:`diagonal_stencil`, centred or shifted forward)."""


def evaluated_columns(size: int) -> int:
  """Columns of the evaluated rows of a diagonal lattice of ``size`` rows: 3·COARSE beyond the lattice, so that
  every row that :func:`evaluated_rows` names for its last row has all its columns b ≤ a.

  Examples:
    >>> from ndk_flax.predict.lattice import evaluated_columns, evaluated_rows
    >>> evaluated_rows(39)[-1] < evaluated_columns(40)  # the last row a lattice of 40 rows reads fits
    True
  """
  return size + 3 * COARSE


def evaluated_rows(a: int) -> range:
  """The evaluated rows COARSE, 2·COARSE, … that the interpolated rows ≤ a of a diagonal lattice read.

  Examples:
    >>> from ndk_flax.predict.lattice import evaluated_rows
    >>> list(evaluated_rows(9))  # row 9 reads rows 4 … 16 (centred) and 20 (its forward-shifted columns)
    [4, 8, 12, 16, 20]
  """
  return range(COARSE, COARSE * (a // COARSE + 4), COARSE)


class Lattice(NamedTuple):
  """Kernel lattice: R(a·h, b·h, ·, X) for 0 ≤ b ≤ a < size; stationary when R(t, s) depends on t − s only.

  ``band`` > 0 (general lattices): row a evaluates ``ndk_fn`` on the columns a − band ≤ b ≤ a and on every
  :data:`COARSE`-th column, and fills the columns b < a − band by cubic interpolation along b, where R is smooth on
  a scale of many h; 0: every column evaluated. ``diagonal`` (general lattices): only every :data:`COARSE`-th row
  (and those below :data:`DIAGONAL_FROM`) is evaluated; the others are cubic interpolants along the diagonals
  t − s = const, on which R drifts slowly (it varies fast in t − s, slowly in s), except their first COARSE
  columns (:func:`diagonal_row`).

  Examples:
    >>> from ndk_flax.predict.lattice import Lattice
    >>> lat = Lattice(h=0.5, size=29, stationary=True)
    >>> lat.size * lat.h > 10.0, lat.band  # a lattice for t_max = 10 has ⌊t_max/h⌋ + 9 rows (stencil margin)
    (True, 0)
  """

  h: float
  size: int
  stationary: bool
  band: int = 0
  diagonal: bool = False


def lagrange4(r):
  """Cubic Lagrange weights of the nodes 0, 1, 2, 3 at position r (…, 4). Works on NumPy and JAX arrays.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.predict.lattice import lagrange4
    >>> lagrange4(np.array(2.0)).tolist()
    [0.0, -0.0, 1.0, 0.0]
  """
  xp = jnp if isinstance(r, jax.Array) else np
  return xp.stack(
    [
      -(r - 1) * (r - 2) * (r - 3) / 6,
      r * (r - 2) * (r - 3) / 2,
      -r * (r - 1) * (r - 3) / 2,
      r * (r - 1) * (r - 2) / 6,
    ],
    axis=-1,
  )


def cubic_stencil(x, h):
  """First lattice index i0 and the 4 cubic Lagrange weights at nodes i0 … i0 + 3 interpolating at x ≥ 0 on the
  lattice {i·h} (centred, i0 = ⌊x/h⌋ − 1, one-sided near 0). Works on NumPy and JAX arrays.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.predict.lattice import cubic_stencil
    >>> i0, w = cubic_stencil(np.float64(2.5), 1.0)
    >>> int(i0), w.round(4).tolist(), float(w @ (i0 + np.arange(4)) ** 3)  # exact for cubics: 2.5³
    (1, [-0.0625, 0.5625, 0.5625, -0.0625], 15.625)
  """
  xp = jnp if isinstance(x, jax.Array) else np
  z = x / h
  i0 = xp.maximum(xp.floor(z) - 1, 0)
  return i0.astype(xp.int32), lagrange4(z - i0)


def far_stencils(t, s, h, t_window=None, s_window=None):
  """Far-field tensor stencils R̃(t, s) = Σ_{k,q} ℓ_k(t) ℓ_q(s) R((a0 + k)h, (b0 + q)h): centred in t
  (a0 = ⌊t/h⌋ − 1) and shifted back in s (b0 = max(⌊s/h⌋ − 2, 0)), so that every node is causal (b0 + 3 ≤ a0)
  whenever ⌊s/h⌋ ≤ ⌊t/h⌋ − 2 and ⌊t/h⌋ ≥ ``FAR_FROM``. All rows t of one window then share the lattice rows
  a0 … a0 + 3, and the history of the earlier windows is Σ_k ℓ_k(t) V_{a0+k} with V_a = Σ_b R(ah, bh) G_b (G the
  weighted solution scattered onto the lattice columns), computed once per window instead of once per solver row.
  The t-stencil is centred because its error polynomial is what varies with t (the shifted s-stencil's error is
  fixed for each node). Returns (a0, ℓ(t), b0, ℓ(s)); works on NumPy and JAX arrays. ``t_window`` and
  ``s_window``, when given, are the windows ⌊t/h⌋ and ⌊s/h⌋ as the caller assigned them (so that rounding cannot
  move a node across a window edge).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.predict.lattice import far_stencils
    >>> a0, la, b0, lb = far_stencils(np.float64(7.5), np.float64(4.25), 1.0)
    >>> int(a0), int(b0), bool(b0 + 3 <= a0), float(la.sum()), float(lb.sum())
    (6, 2, True, 1.0, 1.0)
  """
  xp = jnp if any(isinstance(v, jax.Array) for v in (t, s, h, t_window, s_window)) else np
  a0 = (xp.floor(t / h) if t_window is None else t_window) - 1
  b0 = xp.maximum((xp.floor(s / h) if s_window is None else s_window) - 2, 0)
  return a0, lagrange4(t / h - a0), b0, lagrange4(s / h - b0)


def choose_lattice(access: KernelAccess, theta0: jax.Array, t_max: float, max_step: float, rtol: float) -> Lattice:
  """Lattice spacing: 8 × the kernel drift time ``max_step`` (≈ growth/λ), halved until the interpolated R on (up to
  8 of) the training points matches ``ndk_fn`` within rtol / KINK_MARGIN · max|R| (over Θ0 and the probes) at probe
  pairs (edges s = 0, s = t and random ones; the far-field stencils of :func:`far_stencils` too, where the solver
  reads a pair through them, including their least central position). The lattice is marked stationary when
  R(t, s) = R(t − s, 0) within rtol, interpolation error included, at every probe (all groups start at their prior,
  σ0 = σ): its rows are then shifts of one row. A general lattice gets the smallest band (:class:`Lattice`) that
  meets the same tolerance.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> from ndk_flax.predict.kernels import KernelAccess
    >>> from ndk_flax.predict.lattice import choose_lattice
    >>> dense = lambda n: stax.Dense(n, W_std=1.0, W_prior_std=0.8)
    >>> x, y = np.eye(3, dtype=np.float32), np.ones((3, 1), np.float32)
    >>> access = KernelAccess(stax.serial(dense(4), stax.Erf(), dense(1)).ndk_fn, x, y, 0.1, 2**20)
    >>> theta0 = access(access.x, access.x, access.times(0.0), access.times(0.0))[1][0, 0]
    >>> lat = choose_lattice(access, theta0, 20.0, max_step=2.0, rtol=1e-3)
    >>> bool(lat.stationary), lat.size * lat.h > 20.0  # σ0 ≠ σ: R(t, s) depends on both times
    (False, True)
  """
  xs = access.x[:8]
  scale = float(jnp.max(jnp.abs(theta0[:8, :8])))
  rng = np.random.default_rng(0)
  t = t_max * np.concatenate([[1.0, 1.0, 1.0], rng.uniform(size=29)])
  s = t * np.concatenate([[0.0, 1.0, 0.5], rng.uniform(size=29)])

  def ndk(t1, t2):
    out = np.asarray(access(xs, xs, access.times(t1), access.times(t2))[1], np.float64)
    if not np.all(np.isfinite(out)):
      bad = np.argwhere(~np.isfinite(out))[0]
      raise FloatingPointError(
        f'`ndk_fn` returned a non-finite R(t, s) at t = {np.atleast_1d(t1)[bad[0]]:g}, '
        f's = {np.atleast_1d(t2)[bad[1]]:g} on `x_train`: check the kernel function there.'
      )
    return out

  exact = [ndk(ti, si)[0, 0] for ti, si in zip(t, s)]
  scale = max(scale, max(float(np.abs(ex).max()) for ex in exact))  # R may grow far beyond Θ0 (small σ0)
  drift = max(np.abs(ex - ndk(ti - si, 0.0)[0, 0]).max() for ti, si, ex in zip(t, s, exact)) / scale
  h = min(8 * max_step, t_max / 4)
  q = np.arange(4)
  t_far = t_max * np.array([1.0, 0.61, 0.37])
  for _ in range(12):
    err = 0.0
    # Far-field probes at the end of the last far window (the shifted s-stencil's least central position).
    s_far = (np.floor(t_far / h) - 1.02) * h
    far = [(ti, si, ndk(ti, si)[0, 0]) for ti, si in zip(t_far, s_far) if si > 0]
    for ti, si, ex in [*zip(t, s, exact), *far]:
      a0, la = cubic_stencil(np.float64(ti - si), h)
      b0, lb = cubic_stencil(np.float64(si), h)
      nodes = ndk(h * (a0 + b0 + np.arange(7)), h * (b0 + q))
      interp = np.einsum('p,q,pqmn->mn', la, lb, nodes[q[:, None] + q[None, :], q[None, :]])
      err = max(err, np.abs(interp - ex).max() / scale)
      a0, la, b0, lb = far_stencils(np.float64(ti), np.float64(si), h)
      if a0 + 1 >= FAR_FROM and np.floor(si / h) <= a0 - 1:  # the pair is read through the far-field stencils
        interp = np.einsum('p,q,pqmn->mn', la, lb, ndk(h * (a0 + q), h * (b0 + q)))
        err = max(err, np.abs(interp - ex).max() / scale)
    if err <= rtol / KINK_MARGIN:
      break
    h /= 2
  else:
    warnings.warn(
      f'The kernel lattice did not reach interpolation error rtol / KINK_MARGIN = {rtol / KINK_MARGIN:.2g} '
      f'(got {err:.2g} at spacing {h:.3g}).',
      RuntimeWarning,
      stacklevel=4,
    )
  size = math.floor(t_max / h) + 9
  stationary = drift + err <= rtol
  if stationary:
    return Lattice(h, size, True)
  tol = rtol / KINK_MARGIN
  return Lattice(h, size, False, _coarse_band(ndk, h, size, scale, tol), _diagonal_rows(ndk, h, size, scale, tol))


def _coarse_band(ndk, h: float, size: int, scale: float, tol: float) -> int:
  """Smallest band (16, 32, 64, … columns) beyond which the columns b ≥ COARSE of a lattice row, interpolated from
  every COARSE-th column, match ``ndk_fn`` within tol · scale at probe nodes (six columns each of four rows from the
  first banded one to the last); 0 when no band saves work."""
  q = np.arange(4)
  band = 16
  while band + 4 * COARSE < size // 2:
    err = 0.0
    for a in (band + 4 * COARSE + 2, size // 3, (2 * size) // 3, size - 1):
      for b in range(a - band - 1, COARSE - 1, -max((a - band - COARSE) // 5, 1))[:6]:
        c0 = max(b // COARSE - 1, 0)
        nodes = ndk(a * h, (c0 + q) * COARSE * h)[0]
        interp = np.einsum('q,qmn->mn', lagrange4(b / COARSE - c0), nodes)
        err = max(err, np.abs(interp - ndk(a * h, b * h)[0, 0]).max() / scale)
    if err <= tol:
      return band
    band *= 2
  return 0


def _diagonal_rows(ndk, h: float, size: int, scale: float, tol: float) -> bool:
  """Whether rows interpolated along their diagonals (:func:`diagonal_stencil`) match ``ndk_fn`` within tol · scale
  at probe nodes (columns whose stencils are shifted forward in the first rows; near, mid and far columns of three
  later rows); False for lattices too short to save work."""
  if size < 4 * DIAGONAL_FROM:
    return False
  later = [a + (a % COARSE == 0) for a in (size // 3, (2 * size) // 3, size - 2)]
  probes = [(9, 4), (10, 5), (11, 7), (13, 6)]
  probes += [(a, b) for a in later for b in (COARSE + 1, 2 * COARSE, a // 3, (2 * a) // 3, a - 1)]
  for a, b in probes:
    rows, weights = diagonal_stencil(a, b)
    nodes = ndk(rows * h, (b + rows - a) * h)[np.arange(4), np.arange(4)]
    if np.abs(np.einsum('k,kmn->mn', weights, nodes) - ndk(a * h, b * h)[0, 0]).max() > tol * scale:
      return False
  return True


def diagonal_stencil(a, b):
  """Evaluated rows a_k = first + COARSE·k (k < 4) and cubic weights ℓ_k interpolating R(a·h, b·h) along its
  diagonal: R(a·h, b·h) ≈ Σ_k ℓ_k R(a_k·h, (b + a_k − a)·h). Centred, first = COARSE(⌊a/COARSE⌋ − 1), or, where
  that node would leave the lattice (b < a − first), shifted forward to the diagonal's first evaluated row
  COARSE⌈(a − b)/COARSE⌉. Works on NumPy and JAX arrays.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.predict.lattice import diagonal_stencil
    >>> rows, w = diagonal_stencil(np.int64(10), np.int64(9))  # centred: rows 4, 8, 12, 16
    >>> rows.tolist(), float(w @ rows ** 3)  # exact for cubics along the diagonal: 10³
    ([4, 8, 12, 16], 1000.0)
    >>> diagonal_stencil(np.int64(10), np.int64(5))[0].tolist()  # a − b = 5: the diagonal starts at row 8
    [8, 12, 16, 20]
  """
  xp = jnp if any(isinstance(v, jax.Array) for v in (a, b)) else np
  centred = COARSE * (a // COARSE - 1)
  forward = -COARSE * ((b - a) // COARSE)
  first = xp.where(b >= a - centred, centred, forward)
  return first + COARSE * xp.arange(4), lagrange4((a - first) / COARSE)


COARSE_CALL = 8
"""Coarse columns per ``ndk_fn`` call: a row needs ⌊(a − band − 1)/COARSE⌋ + 3 of them, so whole calls of 8 waste
fewer than 8 pairs (calls of all ⌈size/COARSE⌉ + 3 columns gave the benchmark's P = 300 lattice 8 293 pairs a pass
instead of 6 747)."""


def _steps(band: int, chunk: int, size: int) -> tuple[int, int]:
  """Columns per ``ndk_fn`` call of a row's band and of its coarse columns (static: at most what each needs)."""
  return min(chunk, band + 1), min(chunk, COARSE_CALL, -(-size // COARSE) + 3)


def _coarse_count(lo):
  """Coarse columns 0, COARSE, … that the interpolation of the columns b < lo reads (up to ⌊(lo − 1)/COARSE⌋ + 2)."""
  return (lo - 1) // COARSE + 3


def lattice_row_pairs(a: int, band: int, chunk: int, size: int) -> int:
  """Kernel time pairs :func:`lattice_row` evaluates for row a (whole calls of up to ``chunk`` columns).

  Examples:
    >>> from ndk_flax.predict.lattice import lattice_row_pairs
    >>> lattice_row_pairs(100, 0, 10, 120)  # columns 0 … 100 in calls of 10
    110
    >>> lattice_row_pairs(100, 16, 10, 120)  # columns 84 … 100 (2 calls of 10), 0, 4, … 92 (3 calls of 8), 0 … 3
    48
  """
  lo = max(a - band, 0) if band else 0
  if not lo:
    return -(-(a + 1) // chunk) * chunk
  fine, coarse = _steps(band, chunk, size)
  return -(-(a - lo + 1) // fine) * fine + -(-_coarse_count(lo) // coarse) * coarse + COARSE


def write_row(access: KernelAccess, x1, store, slot, a, h, band: int = 0):
  """Write lattice row a, R(a·h, b·h, x1, X) for b ≤ a (zero beyond), into ``store[:, slot]`` (n1, ·, columns, P)
  in place, ``chunk`` columns an ``ndk_fn`` call; with ``band`` > 0 the columns b < a − band are cubic
  interpolants of every COARSE-th column (:class:`Lattice`). Also returns whether the evaluated kernel values are
  finite (the interpolants are weighted sums of them)."""
  n1, _, size, p = store.shape
  chunk = access.chunk(n1, size)

  def evaluate(first, stride, count, most, step):
    """Columns first + stride·k, k < count (≤ most), ``step`` a call: (n1, ⌈most/step⌉·step, P)."""

    def body(c, out):
      ts = (first + (c * step + jnp.arange(step)) * stride) * h
      values = jnp.swapaxes(access(x1, access.x, (a * h)[None], ts)[1][0], 0, 1)
      return lax.dynamic_update_slice_in_dim(out, values, c * step, 1)

    out = jnp.zeros((n1, -(-most // step) * step, p), access.dtype)
    return lax.fori_loop(0, (count + step - 1) // step, body, out)

  def put(store, values, column):
    return lax.dynamic_update_slice(store, values[:, None].astype(store.dtype), (0, slot, column, 0))

  if not band:
    values = evaluate(0, 1, a + 1, size, chunk)
    return put(store, values[:, :size], 0), jnp.all(jnp.isfinite(values))
  fine_step, coarse_step = _steps(band, chunk, size)
  lo = jnp.maximum(a - band, 0)
  fine = evaluate(lo, 1, a - lo + 1, band + 1, fine_step)[:, : min(band + 1, size)]
  coarse = evaluate(0, COARSE, jnp.where(lo > 0, _coarse_count(lo), 0), -(-size // COARSE) + 3, coarse_step)
  head = evaluate(0, 1, jnp.where(lo > 0, COARSE, 0), COARSE, COARSE)
  # Column b = COARSE·(c + 1) + r from coarse columns c … c + 3 (shifted slices, one fused pass), kept where b < lo
  # and zero elsewhere; the first COARSE columns (s near 0, where a one-sided stencil would be least accurate) are
  # evaluated; then columns lo … a from the band.
  n_c = -(-size // COARSE)
  w = jnp.asarray(lagrange4(1 + np.arange(COARSE) / COARSE), access.dtype)
  body = sum(w[None, None, :, k, None] * coarse[:, k : k + n_c - 1, None] for k in range(4))
  body = body.reshape(n1, -1, p)[:, : size - COARSE]
  columns = jnp.arange(size)
  store = put(store, jnp.where((columns[COARSE:] < lo)[None, :, None], body, 0), COARSE)
  store = put(store, jnp.where((columns[:COARSE] < lo)[None, :, None], head, 0), 0)
  finite = jnp.all(jnp.isfinite(fine)) & jnp.all(jnp.isfinite(coarse)) & jnp.all(jnp.isfinite(head))
  return put(store, fine, lo), finite


def lattice_row(access: KernelAccess, x1, a, h, size, band: int = 0):
  """Lattice row a (:func:`write_row`) as an array, (n1, size, P)."""
  store = jnp.zeros((x1.shape[0], 1, size, access.p), access.dtype)
  return write_row(access, x1, store, 0, a, h, band)[0][:, 0]


def ring_row(access: KernelAccess, x1, ring, a, h, band: int = 0):
  """Store lattice row a (from ``ndk_fn``, ``band``: see :class:`Lattice`) in ring slot a mod RING; also returns
  whether the row is finite."""
  return write_row(access, x1, ring, a % RING, a, h, band)


def evaluated_row(access: KernelAccess, x1, store, a, h, band: int = 0):
  """Store the evaluated row a (a multiple of COARSE) of a diagonal lattice in slot (a/COARSE) mod EVALUATED of
  ``store`` (n1, EVALUATED, :func:`evaluated_columns`, P): columns beyond the lattice, which the interpolation of
  its last rows reads (:func:`diagonal_row`). Also returns whether the row is finite."""
  return write_row(access, x1, store, (a // COARSE) % EVALUATED, a, h, band)


def copy_row(ring, store, a):
  """Ring slot a mod RING ← the evaluated row a (a multiple of COARSE) of ``store`` (:func:`evaluated_row`)."""
  row = lax.dynamic_index_in_dim(store, (a // COARSE) % EVALUATED, 1, keepdims=False)
  return ring.at[:, a % RING].set(row[:, : ring.shape[2]])


def diagonal_row(access: KernelAccess, x1, ring, store, a, h):
  """Store row a ≥ DIAGONAL_FROM (a mod COARSE ≠ 0) of a diagonal lattice in ring slot a mod RING: column b is the
  cubic interpolant :func:`diagonal_stencil` along its diagonal of the evaluated rows in ``store``
  (:func:`evaluated_row`), the first COARSE columns are evaluated. The columns b ≥ 2·COARSE share one centred
  stencil: four shifted slices of the evaluated rows. Also returns whether the row is finite."""
  n1, _, _, p = store.shape
  size = ring.shape[2]
  edge, slot = 2 * COARSE, a % RING

  def interpolant(b0, count):
    """Columns b0 … b0 + count − 1 from one stencil (that of column b0): (n1, 1, count, P), one fused pass."""
    rows, weights = diagonal_stencil(a, jnp.asarray(b0, a.dtype))
    return sum(
      weights[k]
      * lax.dynamic_slice(store, (0, (rows[k] // COARSE) % EVALUATED, b0 + rows[k] - a, 0), (n1, 1, count, p))
      for k in range(4)
    )

  # Written into the ring in place (no concatenated row): the columns ≥ 2·COARSE share one centred stencil.
  ring = lax.dynamic_update_slice(ring, interpolant(edge, size - edge).astype(ring.dtype), (0, slot, edge, 0))
  for b in range(COARSE, edge):  # the stencils of these columns may be shifted forward
    ring = lax.dynamic_update_slice(ring, interpolant(b, 1).astype(ring.dtype), (0, slot, b, 0))
  head = access(x1, access.x, (a * h)[None], jnp.arange(COARSE, dtype=h.dtype) * h)[1][0]
  ring = lax.dynamic_update_slice(ring, jnp.swapaxes(head, 0, 1)[:, None].astype(ring.dtype), (0, slot, 0, 0))
  return ring, jnp.all(jnp.isfinite(head))


def lattice_pairs(lat: Lattice, chunk: int) -> int:
  """Kernel time pairs of one pass over the lattice ``lat`` with ``chunk`` columns an ``ndk_fn`` call: its one row
  if stationary; else its rows (:func:`lattice_row_pairs`), for a diagonal lattice the rows below DIAGONAL_FROM,
  the evaluated rows (:func:`evaluated_rows`) and COARSE columns of every interpolated row.

  Examples:
    >>> from ndk_flax.predict.lattice import Lattice, lattice_pairs
    >>> lattice_pairs(Lattice(1.0, 40, False), 1)  # every pair b ≤ a of 40 rows
    820
    >>> lattice_pairs(Lattice(1.0, 40, False, diagonal=True), 1)  # rows 0 … 7, 4, 8, … 48 and 4 × 24
    456
  """
  if lat.stationary:
    return lat.size
  if not lat.diagonal:
    return sum(lattice_row_pairs(a, lat.band, chunk, lat.size) for a in range(lat.size))
  wide = evaluated_columns(lat.size)
  evaluated = evaluated_rows(lat.size - 1)
  interpolated = sum(1 for a in range(DIAGONAL_FROM, lat.size) if a % COARSE)
  return (
    sum(lattice_row_pairs(a, lat.band, chunk, lat.size) for a in range(min(DIAGONAL_FROM, lat.size)))
    + sum(lattice_row_pairs(a, lat.band, chunk, wide) for a in evaluated)
    + COARSE * interpolated
  )


class StationaryRow(NamedTuple):
  """The values of a stationary lattice, R(a·h, b·h) = R((a − b)h) (zero for b > a), in place of a ring of rows.

  Attributes:
    row: its last row R((size − 1)h, b·h, x1, X), (n1, size, P): R(a·h, b·h) = row[:, size − 1 − a + b].
    near: R(α·h, 0, x1, X) for α < NEAR, (n1, NEAR, P) (zero for α ≥ size): the nodes of every window's stencils,
      of the early windows' history and of the unflushed far-field columns, read without slicing ``row`` (a
      slice of it is copied first).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.predict.lattice import StationaryRow
    >>> store = StationaryRow.of(np.arange(10.0).reshape(1, 10, 1))  # R(u) = 9 − u/h on a lattice of 10 times
    >>> store.near[0, :3, 0].tolist()  # R(0), R(h), R(2h)
    [9.0, 8.0, 7.0]
  """

  row: jax.Array
  near: jax.Array

  @classmethod
  def of(cls, row) -> StationaryRow:
    """The store of the lattice whose last row is ``row``."""
    row = jnp.asarray(row)
    near = jnp.flip(row[:, max(row.shape[1] - NEAR, 0) :], 1)
    return cls(row, jnp.pad(near, ((0, 0), (0, NEAR - near.shape[1]), (0, 0))))


def node(store, a, b):
  """R(a·h, b·h, x1, X) from a ``store`` of lattice values: a ring of general lattice rows (n1, RING, size, P; row a
  in slot a mod RING) or a :class:`StationaryRow`. a and b broadcast; (n1, *shape, P).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.predict.lattice import StationaryRow, node
    >>> store = StationaryRow.of(np.arange(3.0).reshape(1, 3, 1))  # R(u) = 2 − u/h on a lattice of 3 times
    >>> node(store, np.array([2, 1, 0]), np.array([0, 0, 1]))[0, :, 0].tolist()  # R(2h), R(h), and 0 for b > a
    [0.0, 1.0, 0.0]
  """
  if isinstance(store, StationaryRow):
    size = store.row.shape[1]
    a, b = (jnp.asarray(v) for v in jnp.broadcast_arrays(a, b))
    values = store.row[:, jnp.clip(size - 1 - a + b, 0, size - 1)]
    return jnp.where((b <= a)[None, ..., None], values, 0)
  return store[:, a % RING, b]


def row_columns(store, a, start, count: int):
  """Columns start … start + count − 1 ≤ a of lattice row a, (n1, count, P), from a ring or a
  :class:`StationaryRow`."""
  if isinstance(store, StationaryRow):
    return lax.dynamic_slice_in_dim(store.row, store.row.shape[1] - 1 - a + start, count, axis=1)
  index = [jnp.asarray(i, jnp.int32) for i in (0, a % RING, start, 0)]
  return lax.dynamic_slice(store, index, (store.shape[0], 1, count, store.shape[3]))[:, 0]


def row_product(store, a, weights):
  """Σ_{b ≤ a} R(a·h, b·h, x1, X) weights[b] over lattice row a, (n1, out) for weights (size, P, out). A
  :class:`StationaryRow` is read whole against the weights shifted to row a's offset (a sliced row would be copied
  first: 3× slower on CPU at P = 1000)."""
  size, out = weights.shape[0], weights.shape[-1]
  if isinstance(store, StationaryRow):
    shifted = jnp.zeros((2 * size,) + weights.shape[1:], weights.dtype)
    shifted = lax.dynamic_update_slice_in_dim(shifted, weights, size - 1 - a, 0)[:size]
    return store.row.reshape(store.row.shape[0], -1) @ shifted.reshape(-1, out)
  return row_columns(store, a, 0, size).reshape(store.shape[0], -1) @ weights.reshape(-1, out)


def toeplitz_flush(store: StationaryRow, sums, weights, c0):
  """``sums`` plus the products of the FLUSH weight columns c0 … c0 + FLUSH − 1 with every row a of a stationary
  lattice: sums[:, size − 1 − a] += Σ_k R((a − c0 − k)h, 0, x1, X) weights[c0 + k] (zero for a < c0 + k). One
  product of the whole row with FLUSH columns (the row read once for FLUSH windows); ``sums`` (n1, size, out) are
  ordered like the row, by lag size − 1 − a; ``weights`` (size, P, out)."""
  n1, size, p = store.row.shape
  out = weights.shape[-1]
  block = jnp.moveaxis(lax.dynamic_slice_in_dim(weights, c0, FLUSH), 0, 1).reshape(p, FLUSH * out)
  z = (store.row.reshape(n1 * size, p) @ block).reshape(n1, size, FLUSH, out)
  # z[:, j, k] is R((size − 1 − j)h) w_{c0+k}: it reaches row a = size − 1 − j + c0 + k, sums index j − c0 − k.
  z = jnp.pad(z, ((0, 0), (0, FLUSH), (0, 0), (0, 0)))
  shifted = sum(z[:, k : k + size, k] for k in range(FLUSH))  # shifted[:, m] = Σ_k z[:, m + k, k]
  shifted = jnp.pad(shifted, ((0, 0), (0, size), (0, 0)))
  return sums + lax.dynamic_slice_in_dim(shifted, c0, size, 1)


def recent_columns(weights, a, flushed):
  """weights[a − α] for α < NEAR, zero where a − α < ``flushed`` (columns already in the Toeplitz sums,
  :func:`toeplitz_flush`): the weights that :func:`near_product` contracts for row a ≥ NEAR − 1. (NEAR, P, out)."""
  recent = jnp.flip(lax.dynamic_slice_in_dim(weights, a - NEAR + 1, NEAR), 0)
  return jnp.where((a - jnp.arange(NEAR) >= flushed)[:, None, None], recent, 0)


def near_product(store: StationaryRow, weights):
  """Σ_{α < NEAR} R(α·h, 0, x1, X) weights[α] for weights (NEAR, P, m): (n1, m), one read of ``store.near``. Row a
  of a stationary lattice is Σ_b R((a − b)h) w_b = sums[:, size − 1 − a] + near_product(store,
  :func:`recent_columns`) when its columns ≥ ``flushed`` lie in a − NEAR < b ≤ a."""
  n1, near, p = store.near.shape
  return store.near.reshape(n1, near * p) @ weights.reshape(near * p, -1)


def stencil_apply(store, a0, b0, weights, g):
  """Σ_q weights[q] R((a0 + k)h, (b0 + q)h, x1, X) g for k = 0 … 3, (4, n1, out), b0 + 3 ≤ a0 (a causal far-field
  stencil): its 16 nodes from a ring; from a :class:`StationaryRow` its 7 distinct nodes R((a0 − b0 + k − q)h),
  one slice of the row and one product."""
  four = jnp.arange(4)
  if isinstance(store, StationaryRow):
    cols = row_columns(store, a0 + 3, b0, 7)  # column i: k − q = 3 − i
    z = (cols.reshape(-1, cols.shape[-1]) @ g).reshape(cols.shape[0], 7, g.shape[-1])
    return jnp.einsum('q,mkqo->kmo', weights, z[:, 3 - four[:, None] + four[None, :]])
  # Row by row: 4 columns of a row are one slice (a gather of the 16 nodes is ~5× slower on CPU).
  rows = jnp.stack([row_columns(store, a0 + k, b0, 4) for k in range(4)])  # (4, n1, 4, P)
  return jnp.einsum('q,kmqo->kmo', weights, (rows.reshape(-1, rows.shape[-1]) @ g).reshape(rows.shape[:3] + (-1,)))


def window_nodes(store, w):
  """The lattice nodes N[:, p, q] = R((β0 + p + q)h, (β0 + q)h) of the cubic stencils of pairs (t, s) with
  ⌊s/h⌋ = w and 0 ≤ t − s < h (β0 = max(w − 1, 0)); returns (β0, N of shape (n1, 4, Q, P)). Q = 4 for a ring; for a
  :class:`StationaryRow` N does not depend on q, R(p·h, 0), and Q = 1 (:func:`s_weights`)."""
  b0 = jnp.maximum(w - 1, 0)
  if isinstance(store, StationaryRow):
    return b0, store.near[:, :4, None]
  slabs = [row_columns(store, b0 + m, b0, 4) for m in range(7)]  # rows β0 + m, columns β0 … β0 + 3: one slice each
  return b0, jnp.stack([jnp.stack([slabs[p + q][:, q] for q in range(4)], 1) for p in range(4)], 1)


def s_weights(nodes, s, b0, h):
  """Weights of the Q nodes along s of :func:`window_nodes` at times s (…, Q): cubic Lagrange at s/h − β0, or 1
  for a stationary lattice (Q = 1), whose nodes do not depend on s."""
  if nodes.shape[2] == 1:
    return jnp.ones(s.shape + (1,), s.dtype)
  return lagrange4(s / h - b0)


def old_history(ring, h, grid, g, t_rows, w_rows, cols):
  """Σ_j w_rows[r, j] R̃(t_rows[r], t_j, x1, X) g_j for a block of rows, R̃ the interpolated kernel: the weighted
  g_j are scattered onto the lattice nodes of their cubic stencils (a = α + β, b = β, held by ring slot
  a mod RING; all in the ring's window) and contracted with the first ``cols`` columns of the ring once for the
  whole block (every t_j with a nonzero weight must have its stencil there). (B, n1, out). For a
  :class:`StationaryRow` the nodes R(α·h) do not depend on β: the weights are scattered onto α < cols alone."""
  n_rows, out = t_rows.shape[0], g.shape[-1]
  a0, la = cubic_stencil(jnp.maximum(t_rows[:, None] - grid[None, :], 0), h)
  if isinstance(ring, StationaryRow):
    alpha = a0[:, :, None] + jnp.arange(4)
    rows, nodes = jnp.arange(n_rows)[:, None, None], jnp.arange(grid.shape[0])[None, :, None]
    weights = (
      jnp.zeros((n_rows, cols, grid.shape[0]), g.dtype).at[rows, alpha, nodes].add(w_rows[:, :, None] * la, mode='drop')
    )
    flat = jnp.einsum('buj,jpo->upbo', weights, g).reshape(-1, n_rows * out)
    ring = ring.near[:, :cols]
    return jnp.moveaxis((ring.reshape(ring.shape[0], -1) @ flat).reshape(ring.shape[0], n_rows, out), 0, 1)
  four = jnp.arange(4)
  ring = ring[:, :, :cols]
  size = cols
  b0, lb = cubic_stencil(grid, h)
  coef = w_rows[:, :, None, None] * la[:, :, :, None] * lb[None, :, None, :]
  beta = b0[None, :, None, None] + four
  slot = (a0[:, :, None, None] + four[:, None] + beta) % RING
  rows = jnp.arange(t_rows.shape[0])[:, None, None, None]
  nodes = jnp.arange(grid.shape[0])[None, :, None, None]
  # Scatter the scalar weights first, (B, RING, cols, n), then contract with g: no (B, n, 16, P) intermediate.
  weights = (
    jnp.zeros((t_rows.shape[0], RING, size, grid.shape[0]), g.dtype).at[rows, slot, beta, nodes].add(coef, mode='drop')
  )
  scattered = jnp.einsum('bscj,jpo->bscpo', weights, g)
  # A plain matrix product (XLA:CPU lowers the equivalent 4-index einsum ~30× slower).
  flat = jnp.moveaxis(scattered.reshape(n_rows, -1, out), 0, 1).reshape(-1, n_rows * out)
  return jnp.moveaxis((ring.reshape(ring.shape[0], -1) @ flat).reshape(ring.shape[0], n_rows, out), 0, 1)


def window_history(nodes, b0, h, grid, g, t_rows, w_rows):
  """Σ_j w_rows[r, j] R̃(t_rows[r], t_j, x1, X) g_j for nodes t_j of lattice window w (⌊t_j/h⌋ = w, t_j ≤ t_r <
  t_j + h) from the window's 16 stencil nodes ``nodes`` = :func:`window_nodes` (β0 = ``b0``; 4 nodes for a
  stationary lattice): one matrix product for the block. (B, n1, out)."""
  l_u = lagrange4(jnp.maximum(t_rows[:, None] - grid[None, :], 0) / h)
  l_s = s_weights(nodes, grid, b0, h)
  c = jnp.einsum('rj,rjp,jq,jko->pqkro', w_rows, l_u, l_s, g)
  n_rows, out = t_rows.shape[0], g.shape[-1]
  flat = nodes.reshape(nodes.shape[0], -1) @ c.reshape(-1, n_rows * out)
  return jnp.moveaxis(flat.reshape(nodes.shape[0], n_rows, out), 0, 1)
