"""The mean solver at T > 0 and finite t (docs/theory.md §4): product-trapezoid discretisation of the Volterra
equation f̄(X, t) = ∫_0^t R(t, s, X, X)[Y − f̄(X, s)] ds on a time grid and its bisection, with step-doubling error
control and Richardson extrapolation, R read from the kernel lattice of :mod:`ndk_flax.predict.lattice`."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ndk_flax import resources
from ndk_flax._progress import progress_bar
from ndk_flax.predict import lattice as L
from ndk_flax.predict.grid import bisect, interior_weights, time_grid, trapezoid_row
from ndk_flax.predict.kernels import KernelAccess, not_finite, require_finite

__all__ = ['GridSolution', 'MeanSolver', 'MeanStats']

REFINE = 8
"""Most refinement steps of a general lattice's implicit solves (:meth:`MeanSolver._refined_solve`) before a row
falls back to its own LU."""


PAD = 512
"""Repeated last nodes appended to every solver grid (blocks and window spans read past the last node)."""


def _hand_over(x):
  """φ(x) = 3x² − 2x³ on [0, 1] (0 below, 1 above): the share of window w − 2's nodes read through the far field at
  position x = t/h − w of window w; flat at both ends, so f̄ has no kink where the hand-over starts or ends."""
  x = jnp.clip(x, 0, 1)
  return x * x * (3 - 2 * x)


def _rows(blocks: list[tuple[jax.Array, int]]) -> jax.Array:
  """The leading ``count`` rows of each (block, count) of request rows, in order, as one array (one gather)."""
  offsets = np.cumsum([0] + [block.shape[0] for block, _ in blocks])
  keep = np.concatenate([offset + np.arange(count) for offset, (_, count) in zip(offsets, blocks)])
  return jnp.concatenate([block for block, _ in blocks])[keep]


def _step_difference(g_fine: jax.Array, g_coarse: jax.Array, lo, hi) -> jax.Array:
  """max_{lo ≤ j < hi} |g_fine[2j] − g_coarse[j]| of a padded solution and its padded bisection (NaN if any is
  NaN): the step-doubling difference on the coarse nodes lo … hi − 1, with traced bounds (one compiled function
  for every range; static slices compile once per range)."""
  n = min(g_coarse.shape[0], (g_fine.shape[0] + 1) // 2)
  j = jnp.arange(n).reshape((n,) + (1,) * (g_coarse.ndim - 1))
  return jnp.max(jnp.where((j >= lo) & (j < hi), jnp.abs(g_fine[: 2 * n : 2] - g_coarse[:n]), 0))


class _Eigenbasis(NamedTuple):
  """A stationary lattice's solver basis: Θ0 = V diag(λ) Vᵀ (R(t, t) = Θ0) and the window nodes R(α·h, 0, X, X),
  α = 1, 2, 3, as Vᵀ R(α·h) V (P, 3, P); R(0) = Θ0 is diag(λ) there."""

  evals: jax.Array
  evecs: jax.Array
  nodes: jax.Array


def _eigenbasis(evals: jax.Array, evecs: jax.Array, near: jax.Array) -> _Eigenbasis:
  """The basis of Θ0's eigenvectors for a stationary row's near nodes ``near`` (n1, ≥ 4, P)."""
  p = evecs.shape[0]
  nodes = jnp.einsum('am,aqk->mqk', evecs, near[:p, 1:4] @ evecs)
  return _Eigenbasis(evals, evecs, nodes)


class GridSolution(NamedTuple):
  """The trapezoid solution g = Y − f̄(X, ·) on the nodes of ``grid`` (no extrapolation).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import predict, stax
    >>> predictor = predict.langevin_mse_ensemble(stax.Dense(1), np.ones((1, 1)), np.ones((1, 1)), temperature=0.5)
    >>> solution = predictor.mean_solver.solve_on_grid(2.0, np.linspace(0.0, 2.0, 5))
    >>> solution.g.shape, float(solution.g[0, 0, 0])  # g(0) = Y − f̄(X, 0) = Y
    ((5, 1, 1), 1.0)
  """

  grid: np.ndarray
  g: jax.Array


class MeanStats(NamedTuple):
  """What one mean solve did.

  Attributes:
    grid_times: nodes of the final fine solver grid.
    refinements: bisections beyond the first step doubling.
    lattice_times: rows of the kernel lattice (its spacing is ``lattice_step``).
    lattice_step: h of the kernel lattice.
    stationary: whether R(t, s) was detected to depend on t − s only (one lattice row).
    kernel_time_pairs: (t, s) pairs of all ``ndk_fn`` calls on (X ∪ x*) × X blocks, probes on ≤ 16 points excluded.
    error_estimate: step-doubling estimate max|g_fine − g_coarse|/3 of the fine solution's error.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import predict, stax
    >>> predictor = predict.langevin_mse_ensemble(stax.Dense(1), np.ones((1, 1)), np.ones((1, 1)), temperature=0.5)
    >>> stats = predictor.predict(np.array([1.0, 2.0])).stats.mean
    >>> bool(stats.stationary), stats.error_estimate <= predict.DEFAULT_RTOL, stats.grid_times > 2
    (True, True, True)
  """

  grid_times: int
  refinements: int
  lattice_times: int
  lattice_step: float
  stationary: bool
  kernel_time_pairs: int
  error_estimate: float


@dataclasses.dataclass(frozen=True, eq=False)
class MeanSolver:
  """Solver of the mean at finite times for one training problem. Holds only settings and compiled functions:
  every call solves from scratch, so results never depend on earlier calls.

  Attributes:
    access: the kernels of the problem.
    theta0: Θ0 = R(0, 0, X, X).
    theta0_eigh: (eigenvalues, eigenvectors) of Θ0: a stationary lattice has R(t, t) = Θ0, so its implicit
      trapezoid rows (I + c Θ0) g = b are solved in that basis: solver rows run in it (a division instead of an
      LU), requested rows pass through it (two matrix-vector products).
    first_step, growth, max_step: the base :func:`~ndk_flax.predict.grid.time_grid`.
    rtol: accuracy target relative to max|Y|.
    max_refinements: bisections allowed beyond the first step doubling.
    max_grid_times: largest accepted estimated number of solver grid times (a cap on the cost of late times).
    max_kernel_pairs: largest accepted number of kernel time pairs of one pass over the lattice.
    memory_limit: bytes the solver may use (None: what is free).
    progress: show a progress bar over each sweep's kernel pairs and solver rows (only when stderr is a terminal).

  Examples:
    One weight, f = w x with x = y = 1 (bias-free Dense, σ0 = σ = 1): the mean is the OU relaxation
    f̄(t) = (1 − e^{−(1 + λ)t})/(1 + λ), λ = T/σ².

    >>> import numpy as np
    >>> from ndk_flax import predict, stax
    >>> predictor = predict.langevin_mse_ensemble(stax.Dense(1), np.ones((1, 1)), np.ones((1, 1)), temperature=0.5)
    >>> times = np.array([1.0, 2.0])
    >>> mean, stats, grid = predictor.mean_solver.mean(times, None)
    >>> exact = -np.expm1(-1.5 * times) / 1.5
    >>> bool(np.abs(np.asarray(mean)[:, 0, 0] - exact).max() < 1e-3), len(grid) == stats.grid_times
    (True, True)
  """

  access: KernelAccess
  theta0: jax.Array
  theta0_eigh: tuple[jax.Array, jax.Array]
  first_step: float
  growth: float
  max_step: float
  rtol: float
  max_refinements: int
  max_grid_times: int
  max_kernel_pairs: int
  memory_limit: Optional[float]
  progress: bool = False

  def __post_init__(self):
    def ring_row(x, x1, ring, a, h, band):
      return L.ring_row(self.access.with_inputs(x), x1, ring, a, h, band)

    def lattice_row(x, x1, a, h, size):
      return L.lattice_row(self.access.with_inputs(x), x1, a, h, size)

    def evaluated_row(x, x1, store, a, h, band):
      return L.evaluated_row(self.access.with_inputs(x), x1, store, a, h, band)

    def diagonal_row(x, x1, ring, store, a, h):
      return L.diagonal_row(self.access.with_inputs(x), x1, ring, store, a, h)

    object.__setattr__(self, '_ring_row', jax.jit(ring_row, donate_argnums=2, static_argnums=5))
    object.__setattr__(self, '_evaluated_row', jax.jit(evaluated_row, donate_argnums=2, static_argnums=5))
    object.__setattr__(self, '_diagonal_row', jax.jit(diagonal_row, donate_argnums=2))
    object.__setattr__(self, '_copy_row', jax.jit(L.copy_row, donate_argnums=0))
    object.__setattr__(self, '_lattice_row', jax.jit(lattice_row, static_argnums=4))
    object.__setattr__(
      self, '_solve_block', jax.jit(self._solve_block_impl, static_argnums=(14, 15, 16), donate_argnums=6)
    )
    object.__setattr__(self, '_request_block', jax.jit(self._request_block_impl, static_argnums=(14, 15, 16)))
    object.__setattr__(self, '_window_nodes', jax.jit(L.window_nodes))
    object.__setattr__(
      self, '_far_update', jax.jit(self._far_update_impl, donate_argnums=(2, 3, 4, 5), static_argnums=11)
    )
    object.__setattr__(self, '_step_difference', jax.jit(_step_difference))
    object.__setattr__(self, '_eigenbasis', jax.jit(_eigenbasis))

  # --- public ------------------------------------------------------------------------------------------------

  def base_grid(self, t_max: float) -> np.ndarray:
    """The coarse grid of the first solve up to t_max."""
    return time_grid(t_max, first_step=self.first_step, growth=self.growth, max_step=self.max_step)

  def plan(self, t_max: float, n_test: int = 0) -> L.Lattice:
    """The kernel lattice of a solve up to t_max with ``n_test`` test points, after refusing, before any solving, a
    solve whose first fine grid alone exceeds ``max_grid_times`` solver times, whose lattice needs more than
    ``max_kernel_pairs`` kernel time pairs per pass (n(n + 1)/2 for n general lattice rows, fewer with a band; n
    if stationary), or
    whose ring of lattice rows does not fit in memory. Choosing the lattice costs ~40 ``ndk_fn`` calls on ≤ 8 points.

    Examples:
      >>> import numpy as np
      >>> from ndk_flax import predict, stax
      >>> net = stax.serial(stax.Dense(8, W_std=1.0, W_prior_std=0.8), stax.Erf(), stax.Dense(1, W_prior_std=0.8))
      >>> x, y = np.eye(3, dtype=np.float32), np.ones((3, 1), np.float32)
      >>> solver = predict.langevin_mse_ensemble(net, x, y, temperature=0.1, max_kernel_pairs=10).mean_solver
      >>> n = solver.lattice(20.0).size
      >>> try:
      ...   solver.plan(20.0)
      ... except ValueError as e:
      ...   message = str(e)
      >>> f'needs about {n * (n + 1) // 2:.3g} kernel time pairs per pass ({n} general lattice rows)' in message
      True
    """
    access = self.access
    resources.require_work(
      f'The mean up to t = {t_max:g}',
      2 * len(self.base_grid(t_max)) - 1,
      unit='solver grid times (at least)',
      cap=self.max_grid_times,
      cap_name='max_grid_times',
    )
    lat = self.lattice(t_max)
    kind = 'stationary' if lat.stationary else 'general'
    resources.require_work(
      f'The mean up to t = {t_max:g}',
      L.lattice_pairs(lat, 1),
      unit=f'kernel time pairs per pass ({lat.size} {kind} lattice rows)',
      cap=self.max_kernel_pairs,
      cap_name='max_kernel_pairs',
    )
    n1 = access.p + n_test
    # One row and its near nodes, or a ring (and the evaluated rows of a diagonal lattice).
    columns = lat.size + L.NEAR if lat.stationary else L.RING * lat.size
    held = 'its one kernel lattice row' if lat.stationary else f'{L.RING} kernel lattice rows'
    if lat.diagonal:
      columns += L.EVALUATED * L.evaluated_columns(lat.size)
      held += f' and {L.EVALUATED} evaluated ones'
    resources.require_memory(
      f'The mean solver ({held} of {lat.size} times × {n1} × {access.p} points)',
      columns * n1 * access.p * access.dtype.itemsize,
      remedy='request fewer test points at once, an earlier last time (t = inf gives equilibrium in closed form), '
      'or a larger `rtol`',
      limit=self.memory_limit,
    )
    return lat

  def lattice(self, t_max: float) -> L.Lattice:
    """The kernel lattice for t_max (:func:`~ndk_flax.predict.lattice.choose_lattice`), unchecked."""
    return L.choose_lattice(self.access, self.theta0, t_max, self.max_step, self.rtol)

  def solve_on_grid(self, t_max: float, grid: np.ndarray) -> GridSolution:
    """The raw trapezoid solution on ``grid`` (ending at or before t_max), on the lattice chosen for t_max."""
    lat = self.plan(t_max)
    pairs = [0]
    row = self._stationary_row(self.access.x, lat, pairs) if lat.stationary else None
    solutions = [self._solution(lat, grid)]
    self._sweep(self.access.x, lat, solutions, [self._solve_job(solutions, 0, self._basis(row))], pairs, row)
    return GridSolution(grid, solutions[0]['g'][: len(grid)])

  def mean(
    self, times: np.ndarray, x_test, lattice: Optional[L.Lattice] = None
  ) -> tuple[jax.Array, MeanStats, np.ndarray]:
    """Mean at finite times > 0 (n_t, n, out), the stats and the final fine grid: the Richardson extrapolation
    f_fine + (f_fine − f_coarse)/3 of the solutions on a grid and its bisection, bisecting until the step-doubling
    estimate max|g_fine − g_coarse|/3 of the fine solution's error is ≤ rtol · max|Y|. Grid rows and requested
    rows share one sweep (x1 = X ∪ x_test). ``lattice``: the result of :meth:`plan` for these times, if made."""
    access = self.access
    t_max = float(times[-1])
    test = x_test is not None
    lat = self.plan(t_max, x_test.shape[0] if test else 0) if lattice is None else lattice
    x1 = access.x if x_test is None else jnp.concatenate([access.x, x_test])
    pairs = [0]
    solutions = [self._solution(lat, self.base_grid(t_max))]
    solving = [0]
    outs = [[]]  # requested rows on each solution; a solution carried into the next pass keeps its rows
    row = self._stationary_row(x1, lat, pairs) if lat.stationary else None  # read by every pass
    eig = self._basis(row)
    level0 = 0  # bisections of the base grid in solutions[0]
    y = access.y
    target = self.rtol * max(float(jnp.max(jnp.abs(y))), np.finfo(access.dtype).tiny)
    chosen = None
    while chosen is None:
      # Every pass re-reads the lattice (a general one: a kernel sweep, far more than solver rows), so the first
      # pass also solves the next bisection, two for a general lattice: that saves the later passes whenever one
      # (two) refinements are enough; the benchmark problem needs one at P ≤ 300 and two at P = 1000.
      ahead = (2 if lat.stationary else 3) if level0 == 0 else 1
      for _ in range(min(ahead, self.max_refinements + 1 - (level0 + len(solutions) - 1))):
        fine_grid = bisect(solutions[-1]['grid'])
        resources.require_work(
          f'The mean up to t = {t_max:g}',
          len(fine_grid),
          unit='solver grid times',
          cap=self.max_grid_times,
          cap_name='max_grid_times',
        )
        solutions.append(self._solution(lat, fine_grid))
        solving.append(len(solutions) - 1)
        outs.append([])
      first = 1 if outs[0] else 0  # the sweep skips a carried solution: it is solved and its rows are known
      active = solutions[first:]
      jobs = [self._solve_job(active, i - first, eig) for i in solving]
      jobs += [self._request_job(active, i - first, eig, times, test, outs[i]) for i in range(first, len(outs))]
      owners = [i - first for i in solving] + list(range(len(outs) - first))
      final = level0 + len(solutions) - 2 == self.max_refinements  # then the finest pair is used in any case
      dropped = self._rejection(solutions, first, target, keep=2 if final else 1)
      self._sweep(x1, lat, active, jobs, pairs, row, owners, dropped)
      for i in range(len(solutions) - 1):
        err = float(self._step_difference(solutions[i + 1]['g'], solutions[i]['g'], 0, len(solutions[i]['grid']))) / 3
        if not math.isfinite(err):
          g_fine = solutions[i + 1]['g'][: len(solutions[i + 1]['grid'])]
          require_finite('The mean solution g = Y − f̄(X, t)', g_fine, f'on the solver grid up to t = {t_max:g}')
        if err <= target:
          chosen = i
          break
      else:
        if level0 + len(solutions) - 2 == self.max_refinements:
          chosen = len(solutions) - 2
        else:
          level0 += len(solutions) - 1
          solutions, solving, outs = [solutions[-1]], [], [outs[-1]]
    refinement = level0 + chosen
    if err > target:
      warnings.warn(
        f'The mean solver reached max_refinements={self.max_refinements} with an estimated error '
        f'{err:.3g} > rtol·max|Y| = {target:.3g} ({len(solutions[chosen + 1]["grid"])} grid times up to '
        f't = {t_max:g}); raise `max_refinements` or lower `first_step`.',
        RuntimeWarning,
        stacklevel=4,
      )
    coarse, fine = (_rows(out) for out in outs[chosen : chosen + 2])
    mean = fine + (fine - coarse) / 3
    for i in np.flatnonzero(~np.asarray(jnp.all(jnp.isfinite(mean), axis=(1, 2))))[:1]:
      raise FloatingPointError(f'The mean f̄ is not finite at t = {times[i]:g}: check the kernel function up to there.')
    grid = solutions[chosen + 1]['grid']
    stats = MeanStats(len(grid), refinement, lat.size, lat.h, lat.stationary, pairs[0], err)
    return mean, stats, grid

  # --- the sweep ---------------------------------------------------------------------------------------------

  def _far(self, far_v, far_dv, w, t_rows, h):
    """The history of the windows before w − 1 for a block of rows in window w: Σ_k ℓ_k(t) (V + φ dV)_{w−1+k},
    V over the windows < w − 2 and dV over window w − 2 (far-field stencils), φ = :func:`_hand_over` (t/h − w):
    window w − 2's nodes pass from their window stencils to the far field gradually, so f̄ stays smooth in t."""
    four = jnp.arange(4)
    slots = (w - 1 + four) % L.RING
    phi = _hand_over(t_rows / h - w)
    far = far_v[slots][None] + phi[:, None, None, None] * far_dv[slots][None]
    return jnp.einsum('rk,rkmo->rmo', L.lagrange4(t_rows / h - (w - 1)), far)

  def _recent(self, near, h, grid, g, win, w, los, span, t_rows, weights, rows=None):
    """Σ_j weights[r, j] R̃(t_r, t_j) g_j over the nodes j of windows w and w − 1 and, with its share 1 − φ (see
    :meth:`_far`), w − 2, through each window's stencil nodes ``near`` (:func:`~ndk_flax.predict.lattice.window_nodes`
    of windows w, w − 1, w − 2), for the first ``rows`` points of x1 (all by default). ``los``: the windows' first
    nodes, ``span`` of them read from each (others masked); ``weights`` (B, n). A stationary lattice's three windows
    share their nodes R(0), …, R(3h), so their sums are one product."""
    keep = 1 - _hand_over(t_rows / h - w)[:, None]
    parts = []
    for v, lo, share in zip((w, w - 1, w - 2), los, (1, 1, keep)):
      j = lo + jnp.arange(span)
      parts.append((j, jnp.where(win[j] == v, share * weights[:, j], 0)))
    if near[0][1].shape[2] == 1:  # stationary: Q = 1
      parts = [tuple(jnp.concatenate(p, axis=-1) for p in zip(*parts))]
      near = near[:1]
    total = 0
    for (b0, nodes), (j, w_rows) in zip(near, parts):
      total += L.window_history(nodes[:rows], b0, h, grid[j], g[j], t_rows, w_rows)
    return total

  def _implicit_solve(self, eig, c, r_star, b, lu=None):
    """(I + c R̃(t, t)) g = b for the rows of a block: in Θ0's eigenbasis for a stationary lattice (``eig``), else
    by iterative refinement preconditioned with the block's LU factors ``lu`` (:meth:`_block_factor`), or by LU
    (``lu`` None). c (B,), r_star (B, P, P) or None, b (B, P, out)."""
    if eig is None:
      return self._exact_solve(c, r_star, b) if lu is None else self._refined_solve(lu, c, r_star, b)
    return jnp.einsum(
      'pk,rk,rko->rpo', eig.evecs, 1 / (1 + c[:, None] * eig.evals), jnp.einsum('pk,rpo->rko', eig.evecs, b)
    )

  def _exact_solve(self, c, r_star, b):
    """(I + c R̃) g = b by one LU a row."""
    return jnp.linalg.solve(jnp.eye(b.shape[1], dtype=b.dtype) + c[:, None, None] * r_star, b)

  def _block_factor(self, c, r_star):
    """LU factors of I + c R̃(t, t) at one row of a block: the preconditioner of :meth:`_refined_solve`."""
    return jax.scipy.linalg.lu_factor(jnp.eye(r_star.shape[0], dtype=r_star.dtype) + c * r_star)

  def _refined_solve(self, lu, c, r_star, b):
    """(I + c_r R̃_r) g_r = b_r for the rows r of a block by iterative refinement, g ← g + M⁻¹(b − (I + c_r R̃_r) g),
    with M = I + c R̃ factored at one row of the block (``lu``). R̃(t, t) drifts slowly across a lattice window, so
    the error contracts by about the relative change of c R̃ over the block (an LU is O(P³), a refinement step
    O(P²)). It stops once the corrections are at the rounding level of the residual (16 ε · max(|g| + |c R̃ g|));
    when they are not after :data:`REFINE` steps (steps c that change along the block, early on), the rows are
    solved by their own LU."""
    eps = jnp.finfo(b.dtype).eps

    def precondition(v):
      return jax.vmap(lambda v: jax.scipy.linalg.lu_solve(lu, v))(v)

    def step(state):
      g, _, k = state
      cr_g = c[:, None, None] * (r_star @ g)
      d = precondition(b - g - cr_g)
      level = 16 * eps * jnp.max(jnp.abs(g) + jnp.abs(cr_g))
      return g + d, jnp.max(jnp.abs(d)) / level, k + 1

    g, ratio, _ = lax.while_loop(
      lambda state: (state[1] > 1) & (state[2] < REFINE), step, (precondition(b), jnp.inf, 0)
    )
    return lax.cond(ratio <= 1, lambda: g, lambda: self._exact_solve(c, r_star, b))

  def _solve_block_impl(self, y, ring, near, h, grid, win, g, far_v, far_dv, eig, w, los, r0, r1, block, span, early):
    """Grid rows r0 … r1 − 1 (< r0 + block, all in lattice window w; ``los`` = first nodes of windows w, w − 1,
    w − 2) of the trapezoid scheme, (I + w_ii R̃(t_i, t_i)) g_i = Y − Σ_{j<i} w_j R̃(t_i, t_j) g_j, g = Y − f̄(X, ·).
    The history j < r0 for the whole block at once: nodes of windows < w − 1 through the far-field sums (``far_v``,
    ``far_dv``, :func:`~ndk_flax.predict.lattice.far_stencils`; window w − 2 handed over gradually, see
    :meth:`_far`), nodes of windows w − 1 and w (before r0) through their 16 stencil nodes (in the first
    ``FAR_FROM`` windows, all of it through the ring, ``early``); then j ∈ [r0, i) row by row with the window's 16
    stencil nodes (such pairs have ⌊t_j/h⌋ = w, 0 ≤ t_i − t_j < h), or for a stationary lattice (``eig``) in Θ0's
    eigenbasis with its 4 nodes there."""
    p = self.access.p
    interior = interior_weights(grid)
    rows = r0 + jnp.arange(block)
    t_rows = grid[rows]
    b0, nodes = near[0]
    weights = jnp.broadcast_to(jnp.where(jnp.arange(grid.shape[0]) < r0, interior, 0), (block, grid.shape[0]))
    if early:
      lead = slice(0, span)  # the nodes of windows ≤ w; rows beyond P: test points
      old = L.old_history(ring, h, grid[lead], g[lead], t_rows, weights[:, lead], L.RING - 4)[:, :p]
    else:
      old = self._far(far_v, far_dv, w, t_rows, h)[:, :p]
      old += self._recent(near, h, grid, g, win, w, los, span, t_rows, weights, p)
    w_new = interior[rows]
    if eig is not None:
      # Row by row in Θ0's eigenbasis, where R(0) is diagonal: the window's history reads R(h), R(2h), R(3h) once
      # a row and the implicit solve is a division.
      b = jnp.einsum('pk,rpo->rko', eig.evecs, y - old)
      flat = eig.nodes.reshape(p, -1)

      def eigen_step(r, g_block):
        t_i = t_rows[r]
        l_u = L.lagrange4((t_i - t_rows) / h)
        c = jnp.einsum('j,jp,jko->pko', jnp.where(jnp.arange(block) < r, w_new, 0), l_u, g_block)
        history = eig.evals[:, None] * c[0] + flat @ c[1:].reshape(-1, c.shape[-1])
        c_i = 0.5 * (t_i - grid[r0 + r - 1])
        return g_block.at[r].set((b[r] - history) / (1 + c_i * eig.evals)[:, None])

      g_block = jnp.einsum('pk,rpo->rko', eig.evecs, lax.dynamic_slice_in_dim(g, r0, block))
      g_block = jnp.einsum('pk,rko->rpo', eig.evecs, lax.fori_loop(0, r1 - r0, eigen_step, g_block))
      return lax.dynamic_update_slice_in_dim(g, g_block, r0, 0)
    nodes = nodes[:p]
    l_s = L.s_weights(nodes, t_rows, b0, h)

    def diagonal(r):
      """c_r and R̃(t_r, t_r, X, X) of block row r."""
      return 0.5 * (t_rows[r] - grid[r0 + r - 1]), jnp.einsum('q,mqk->mk', l_s[r], nodes[:, 0])

    lu = self._block_factor(*diagonal((r1 - r0 - 1) // 2))

    def step(r, g_block):
      t_i = t_rows[r]
      l_u = L.lagrange4((t_i - t_rows) / h)
      c = jnp.einsum('j,jp,jq,jko->pqko', jnp.where(jnp.arange(block) < r, w_new, 0), l_u, l_s, g_block)
      history = old[r] + nodes.reshape(nodes.shape[0], -1) @ c.reshape(-1, c.shape[-1])
      c_i, r_star = diagonal(r)
      return g_block.at[r].set(self._implicit_solve(None, c_i[None], r_star[None], (y - history)[None], lu)[0])

    g_block = lax.fori_loop(0, r1 - r0, step, lax.dynamic_slice_in_dim(g, r0, block))
    return lax.dynamic_update_slice_in_dim(g, g_block, r0, 0)

  def _request_block_impl(
    self, y, ring, near, h, grid, win, g, far_v, far_dv, eig, w, los, padded, r0, block, span, early
  ):
    """Nyström rows at the requested times padded[r0 : r0 + block] (all in lattice window w) on a solved grid:
    (I + w_* R̃(t*, t*, X, X)) g(t*) = Y − Σ_{t_j < t*} w_j R̃(t*, t_j, X, X) g_j and
    f̄(x, t*) = Σ_j w_j R̃(t*, t_j, x, X) g_j + w_* R̃(t*, t*, x, X) g(t*) for the rows x1[P:]. The history as in
    :meth:`_solve_block_impl`; the far-field sums hold the interior weights, so the last node before window w − 1
    gets its own correction when the row's last interval starts there."""
    p = self.access.p
    times = lax.dynamic_slice_in_dim(padded, r0, block)
    k = jnp.searchsorted(grid, times, side='left') - 1
    weights, w_star = jax.vmap(trapezoid_row, (None, 0, 0))(grid, k, times)
    b0, nodes = near[0]
    if early:
      lead = slice(0, span)
      history = L.old_history(ring, h, grid[lead], g[lead], times, weights[:, lead], L.RING - 4)
    else:
      lo1 = los[1]
      history = self._far(far_v, far_dv, w, times, h)
      history += self._recent(near, h, grid, g, win, w, los, span, times, weights)
      # The far field holds the two nodes before window w − 1 with their interior weights (times φ in window
      # w − 2); a row whose last interval starts at one of them weights both differently (trapezoid_row).
      interior = interior_weights(grid)
      for back in (1, 2):
        k_far = jnp.maximum(lo1 - back, 0)
        a0, la, c0, lb = L.far_stencils(times, grid[k_far], h, t_window=w, s_window=win[k_far])
        u = L.stencil_apply(ring, a0, c0, lb, g[k_far])
        phi = jnp.where(win[k_far] == w - 2, _hand_over(times / h - w), 1) * (lo1 >= back)
        delta = phi * (weights[:, k_far] - interior[k_far])
        history = history + delta[:, None, None] * jnp.einsum('rk,kmo->rmo', la, u)
    l_s = L.s_weights(nodes, times, b0, h)
    # Requested rows have their own partial last steps w_*: a shared LU would precondition them poorly.
    r_star = None if eig is not None else jnp.einsum('rq,mqk->rmk', l_s, nodes[:p, 0])
    g_star = self._implicit_solve(eig, w_star, r_star, y - history[:, :p])
    # w_* R̃(t*, t*, x, X) g(t*) for the rows beyond P, without forming R̃(t*, t*) per row.
    diagonal = jnp.einsum('rq,mqk,rko->rmo', l_s, nodes[p:, 0], g_star)
    return g_star, history[:, p:] + w_star[:, None, None] * diagonal

  def _far_update_impl(self, ring, h, far_g, far_v, far_dv, far_sums, w, grids, wins, gs, starts, span):
    """Far-field sums for window w ≥ FAR_FROM of every solution (stacked along the last axis): G_b = Σ_j w_j ℓ_b(t_j)
    g_j scattered onto lattice columns with the shifted s-stencils, V_a = Σ_b R(ah, bh, x1, X) G_b over the nodes
    of windows < w − 2 and dV_a the same over window w − 2, for the rows a = w − 1 … w + 2 (ring slots a mod RING).
    At w = FAR_FROM from scratch; later V = V + dV of the previous window for the rows it had, row w + 2
    contracted whole, and dV from window w − 2's nodes alone (columns w − 4 … w − 1; its nodes are the ``span``
    from ``starts``, one start a solution). A stationary lattice contracts row w + 2 from ``far_sums``, the
    Toeplitz sums of the final columns of G (columns < w − 4 hold only windows < w − 2) flushed in blocks of FLUSH
    columns (:func:`~ndk_flax.predict.lattice.toeplitz_flush`), plus the columns not yet flushed
    (:func:`~ndk_flax.predict.lattice.near_product`): its row is read whole once every FLUSH windows instead of
    every window."""
    start = w == L.FAR_FROM

    def moments(select, first, window=None):
      """G on columns first … first + 3 from the selected nodes, whose shifted s-stencils all start at column
      ``first`` (windows < 2 at the start, window w − 2 later): one product, no scatter. ``window``: read only
      that many nodes from each solution's start."""
      parts = []
      for grid, win, g, lo in zip(grids, wins, gs, starts):
        weights = interior_weights(grid)
        if window is not None:
          grid, win, g, weights = (lax.dynamic_slice_in_dim(v, lo, window) for v in (grid, win, g, weights))
        _, _, _, lb = L.far_stencils(grid, grid, h, t_window=w, s_window=win)
        parts.append(jnp.einsum('jq,jpo->qpo', (weights * select(win))[:, None] * lb, g))
      four_columns = jnp.concatenate(parts, axis=-1)
      return lax.dynamic_update_slice_in_dim(jnp.zeros_like(far_g), four_columns, first, 0)

    older = lax.cond(start, lambda g: moments(lambda win: win < w - 2, 0), lambda g: g, far_g)
    newest = moments(lambda win: win == w - 2, w - 4, span)

    def whole(a):
      return L.row_product(ring, a, older)

    def carried(a):
      return far_v[a % L.RING] + far_dv[a % L.RING]

    new_v, new_dv = far_v, far_dv
    rows = [w - 1 + k for k in range(4)]
    if isinstance(ring, L.StationaryRow) and ring.row.shape[1] >= L.NEAR:  # (a shorter row: whole rows)
      final = w - 4
      flushed = L.FLUSH * (final // L.FLUSH)
      flush = (final == flushed) & (final >= L.FLUSH)
      far_sums = lax.cond(flush, lambda s: L.toeplitz_flush(ring, s, older, final - L.FLUSH), lambda s: s, far_sums)
      # One read of the near nodes for the unflushed columns of row w + 2 and the increments of all four rows:
      # row w − 1 + k reads window w − 2's columns w − 4 … w − 1 at lags k … k + 3.
      newest4 = jnp.flip(lax.dynamic_slice_in_dim(newest, w - 4, 4), 0)
      increments = [jnp.pad(newest4, ((k, L.NEAR - 4 - k), (0, 0), (0, 0))) for k in range(4)]
      weights = [L.recent_columns(older, jnp.maximum(rows[3], L.NEAR - 1), flushed)] + increments
      z = L.near_product(ring, jnp.concatenate(weights, axis=-1)).reshape(-1, 5, newest.shape[-1])
      size = ring.row.shape[1]
      sums = lax.dynamic_index_in_dim(far_sums, size - 1 - rows[3], 1, keepdims=False)
      top = lax.cond(rows[3] >= L.NEAR - 1, lambda a: sums + z[:, 0], whole, rows[3])
      for k, a in enumerate(rows):
        new_v = new_v.at[a % L.RING].set(top if k == 3 else lax.cond(start, whole, carried, a))
        new_dv = new_dv.at[a % L.RING].set(z[:, 1 + k])
      return older + newest, new_v, new_dv, far_sums

    def increment(a):
      cols = L.row_columns(ring, a, w - 4, 4)
      return cols.reshape(cols.shape[0], -1) @ lax.dynamic_slice_in_dim(newest, w - 4, 4).reshape(-1, newest.shape[-1])

    for k, a in enumerate(rows):
      new_v = new_v.at[a % L.RING].set(whole(a) if k == 3 else lax.cond(start, whole, carried, a))
      new_dv = new_dv.at[a % L.RING].set(increment(a))
    return older + newest, new_v, new_dv, far_sums

  def _block_size(self, rows: int) -> int:
    """Rows per block for ``rows`` rows of one window: 8 or 64 (few compiled shapes; the ring or the window's nodes
    are read once a block)."""
    return 8 if rows <= 8 else 64

  def _solution(self, lat: L.Lattice, grid: np.ndarray) -> dict:
    """A solution on ``grid``: its nodes, their lattice windows and g (initial g_0 = Y), padded with repeated last
    nodes (zero trapezoid weight, window index beyond every window) to at least PAD more, a power of 2 (so that
    grids of similar sizes share compiled functions)."""
    access = self.access
    n = len(grid)
    n_pad = max(1024, 2 ** math.ceil(math.log2(n + PAD))) - n
    windows = np.floor(grid / lat.h).astype(np.int64)
    padded = np.concatenate([grid, np.full(n_pad, grid[-1])])
    g = jnp.zeros((n + n_pad,) + access.y.shape, access.dtype).at[0].set(access.y)
    return dict(
      grid=grid,
      windows=windows,
      grid_j=jnp.asarray(padded, access.dtype),
      win_j=jnp.asarray(np.concatenate([windows, np.full(n_pad, 2**30)]), jnp.int32),
      g=g,
    )

  def _rejection(self, solutions: list, first: int, target: float, keep: int) -> Callable[[int], set[int]]:
    """After window w of a sweep: the solutions of ``solutions[first:]`` (by index there) that no pair can use. The
    estimate of pair (i, i + 1) is a maximum over the grid, so once the nodes up to window w exceed ``target`` the
    pair is rejected, and a solution whose pairs are all rejected is neither solved nor read further; the ``keep``
    finest are always kept (the next pass refines the finest; the last pass uses the finest pair). The accepted pair
    is the one the full estimate accepts, unchanged."""
    last = len(solutions) - 1
    seen, worst, rejected = [0] * last, [0.0] * last, set()

    def dropped(w: int) -> set[int]:
      for i in set(range(last)) - rejected:
        n = int(np.searchsorted(solutions[i]['windows'], w, 'right'))
        if n > seen[i]:
          difference = self._step_difference(solutions[i + 1]['g'], solutions[i]['g'], seen[i], n)
          worst[i] = max(worst[i], float(difference) / 3)
          seen[i] = n
          if worst[i] > target:
            rejected.add(i)
      unused = [k for k in range(first, last + 1 - keep) if k in rejected and (k == 0 or k - 1 in rejected)]
      return {k - first for k in unused}

    return dropped

  def _stationary_row(self, x1: jax.Array, lat: L.Lattice, pairs: list) -> L.StationaryRow:
    """The values of a stationary lattice: its one row R((size − 1)h, b·h, x1, X)."""
    h = jnp.asarray(lat.h, self.access.dtype)
    row = self._lattice_row(self.access.x, x1, lat.size - 1, h, lat.size)
    require_finite('R(t, s, x, X)', row, f'on the lattice row t = {(lat.size - 1) * lat.h:g}')
    pairs[0] += lat.size
    return L.StationaryRow.of(row)

  def _sweep(
    self,
    x1: jax.Array,
    lat: L.Lattice,
    solutions: list,
    jobs: list,
    pairs: list,
    row: Optional[L.StationaryRow] = None,
    owners: Sequence[int] = (),
    dropped: Optional[Callable[[int], set[int]]] = None,
  ) -> None:
    """Sweep t upwards through the lattice windows, keeping the ring of lattice rows for x1 (a stationary lattice:
    its row, :class:`~ndk_flax.predict.lattice.StationaryRow`) and the far-field sums
    of every solution in ``solutions``, and running, in each window w and in list order, the rows of every job
    whose times t have ⌊t/h⌋ = w. A job is (sorted times, run(ring, near, far, w, lo, hi)) with [lo, hi) the indices of
    its times in window w. ``pairs[0]`` counts the kernel time pairs evaluated. ``row``: a stationary lattice's row
    for x1 (:meth:`_stationary_row`). ``owners``: the solution of each job; after each window the jobs of the solutions
    in ``dropped(w)`` stop."""
    access = self.access
    h = jnp.asarray(lat.h, access.dtype)
    windows = [np.floor(times / lat.h).astype(np.int64) for times, _ in jobs]
    if lat.stationary:
      ring = row
    else:
      ring = jnp.zeros((x1.shape[0], L.RING, lat.size, access.p), access.dtype)

    store = None
    if lat.diagonal:
      wide = L.evaluated_columns(lat.size)
      store = jnp.zeros((x1.shape[0], L.EVALUATED, wide, access.p), access.dtype)
    evaluated = [0]  # the last evaluated row in ``store``

    def checked(finite, a):
      if not bool(finite):
        raise not_finite('R(t, s, x, X)', f'at t = {a * lat.h:g} (kernel lattice row {a})')

    def add_row(ring, a):
      """Ring row a: evaluated, or for a diagonal lattice copied from or interpolated between evaluated rows."""
      nonlocal store
      if not lat.diagonal or a < L.DIAGONAL_FROM:
        ring, finite = self._ring_row(access.x, x1, ring, a, h, lat.band)
        pairs[0] += L.lattice_row_pairs(a, lat.band, access.chunk(x1.shape[0], lat.size), lat.size)
        checked(finite, a)
        return ring
      for e in L.evaluated_rows(a)[evaluated[0] // L.COARSE :]:
        store, finite = self._evaluated_row(access.x, x1, store, e, h, lat.band)
        pairs[0] += L.lattice_row_pairs(e, lat.band, access.chunk(x1.shape[0], wide), wide)
        checked(finite, e)
        evaluated[0] = e
      if a % L.COARSE == 0:
        return self._copy_row(ring, store, a)
      ring, finite = self._diagonal_row(access.x, x1, ring, store, a, h)
      pairs[0] += L.COARSE
      checked(finite, a)
      return ring

    out = access.y.shape[1]
    far_g = jnp.zeros((lat.size, access.p, len(solutions) * out), access.dtype)
    far_v = jnp.zeros((L.RING, x1.shape[0], len(solutions) * out), access.dtype)
    far_dv = jnp.zeros_like(far_v)
    far_sums = jnp.zeros((x1.shape[0], lat.size if lat.stationary else 0, len(solutions) * out), access.dtype)
    for a in range(0 if lat.stationary else min(8, lat.size)):
      ring = add_row(ring, a)
    n_windows = int(max(ws[-1] for ws in windows)) + 1
    # Work per window for the progress bar: the kernel pairs of its new lattice row and its solver rows.
    rows = np.bincount(np.concatenate(windows), minlength=n_windows)
    new_pairs = np.zeros(n_windows) if lat.stationary else np.minimum(np.arange(n_windows) + 8, lat.size)
    work = rows + new_pairs
    bar = progress_bar(int(work.sum()), 'Langevin predictor (mean)', 'row', self.progress)
    near, stopped = (), set()
    for w in range(n_windows):
      bar.update(int(work[w]))
      if not lat.stationary and w > 0 and w + 7 < lat.size:
        ring = add_row(ring, w + 7)
      # The stencil nodes of windows w, w − 1, w − 2, gathered once each (a ring keeps their rows until w + 3).
      nodes = self._window_nodes(ring, w)
      near = (nodes,) + (near[:2] or (nodes, nodes))
      if w >= L.FAR_FROM:
        spans = [self._window_span(s, w) for s in solutions]  # window w − 2's nodes: from los[2]
        far_g, far_v, far_dv, far_sums = self._far_update(
          ring,
          h,
          far_g,
          far_v,
          far_dv,
          far_sums,
          w,
          [s['grid_j'] for s in solutions],
          [s['win_j'] for s in solutions],
          [s['g'] for s in solutions],
          [los[2] for los, _ in spans],
          max(span for _, span in spans),
        )
      for k, ((_, run), ws) in enumerate(zip(jobs, windows)):
        lo, hi = np.searchsorted(ws, w, 'left'), np.searchsorted(ws, w, 'right')
        if hi > lo and not (owners and owners[k] in stopped):
          run(ring, near, far_v, far_dv, h, w, int(lo), int(hi))
      if dropped is not None:
        stopped |= dropped(w)
    bar.close()

  def _window_span(self, solution: dict, w: int) -> tuple[tuple[int, int, int], int]:
    """First nodes of windows w, w − 1 and w − 2 in ``solution`` and a static span (64 or PAD: few compiled shapes)
    covering the nodes of each; in the early windows, which read all history through the lattice at once, a power
    of 2 ≥ 64 covering the nodes of windows ≤ w."""
    lo2, lo1, lo, hi = (int(i) for i in np.searchsorted(solution['windows'], [w - 2, w - 1, w, w + 1]))
    if w < L.FAR_FROM:
      return (lo, lo1, lo2), min(max(64, 1 << (hi - 1).bit_length()), len(solution['grid_j']))
    most = max(hi - lo, lo - lo1, lo1 - lo2)
    if most > PAD:
      raise RuntimeError(f'Lattice windows {w - 2} … {w} hold {most} solver nodes, more than the padding {PAD}.')
    return (lo, lo1, lo2), 64 if most <= 64 else PAD

  def _block_arguments(self, ring, near, far_v, far_dv, h, w, sol: dict, index: int, eig) -> tuple:
    """The leading arguments of the solve and request blocks for solution ``index`` (of ``sol``) in window w."""
    out = self.access.y.shape[1]
    v, dv = (a[:, :, index * out : (index + 1) * out] for a in (far_v, far_dv))
    return (self.access.y, ring, near, h, sol['grid_j'], sol['win_j'], sol['g'], v, dv, eig, w)

  def _basis(self, row: Optional[L.StationaryRow]) -> Optional[_Eigenbasis]:
    """The eigenbasis a stationary lattice with row ``row`` is solved in; None for a general lattice."""
    return None if row is None else self._eigenbasis(*self.theta0_eigh, row.near)

  def _solve_job(self, solutions: list, index: int, eig: Optional[_Eigenbasis]):
    """Sweep job solving the trapezoid scheme on solution ``index`` (g = Y − f̄(X, ·) on the nodes) in place;
    ``eig``: :meth:`_basis`."""
    sol = solutions[index]

    def run(ring, near, far_v, far_dv, h, w, lo, hi):
      lo = max(lo, 1)
      block = self._block_size(hi - lo) if hi > lo else 1
      los, span = self._window_span(sol, w)
      for r0 in range(lo, hi, block):
        common = self._block_arguments(ring, near, far_v, far_dv, h, w, sol, index, eig)
        sol['g'] = self._solve_block(*common, los, r0, min(r0 + block, hi), block, span, w < L.FAR_FROM)

    return sol['grid'], run

  def _request_job(
    self, solutions: list, index: int, eig: Optional[_Eigenbasis], times: np.ndarray, test: bool, out: list
  ):
    """Sweep job appending f̄ at ``times`` (Nyström rows on solution ``index``, train or test rows) to out, as
    (block of rows, rows of it that are requested); ``eig``: :meth:`_basis`."""
    access = self.access
    sol = solutions[index]
    padded = jnp.asarray(np.concatenate([times, np.full(64, times[-1])]), access.dtype)

    def run(ring, near, far_v, far_dv, h, w, lo, hi):
      block = self._block_size(hi - lo) if eig is not None else 8  # an LU per row: little padding
      los, span = self._window_span(sol, w)
      common = self._block_arguments(ring, near, far_v, far_dv, h, w, sol, index, eig)
      for r0 in range(lo, hi, block):
        g, f = self._request_block(*common, los, padded, r0, block, span, w < L.FAR_FROM)
        out.append((f if test else access.y[None] - g, min(block, hi - r0)))

    return times, run
