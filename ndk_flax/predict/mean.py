"""The mean solver at T > 0 and finite t (docs/theory.md §4): product-trapezoid discretisation of the Volterra
equation f̄(X, t) = ∫_0^t R(t, s, X, X)[Y − f̄(X, s)] ds on a time grid and its bisection, with step-doubling error
control and Richardson extrapolation, R read from the kernel lattice of :mod:`ndk_flax.predict.lattice`."""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ndk_flax import resources
from ndk_flax.predict import lattice as L
from ndk_flax.predict.grid import bisect, interior_weights, time_grid, trapezoid_row
from ndk_flax.predict.kernels import KernelAccess, require_finite

__all__ = ['GridSolution', 'MeanSolver', 'MeanStats']


class GridSolution(NamedTuple):
  """The trapezoid solution g = Y − f̄(X, ·) on the nodes of ``grid`` (no extrapolation)."""

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
    first_step, growth, max_step: the base :func:`~ndk_flax.predict.grid.time_grid`.
    rtol: accuracy target relative to max|Y|.
    max_refinements: bisections allowed beyond the first step doubling.
    max_grid_times: largest accepted estimated number of solver grid times (a cap on the cost of late times).
    memory_limit: bytes the solver may use (None: what is free).
  """

  access: KernelAccess
  theta0: jax.Array
  first_step: float
  growth: float
  max_step: float
  rtol: float
  max_refinements: int
  max_grid_times: int
  memory_limit: Optional[float]

  def __post_init__(self):
    def ring_row(x, x1, ring, a, h, master):
      return L.ring_row(self.access.with_inputs(x), x1, ring, a, h, master)

    def lattice_row(x, x1, a, h, size):
      return L.lattice_row(self.access.with_inputs(x), x1, a, h, size)

    object.__setattr__(self, '_ring_row', jax.jit(ring_row, donate_argnums=2))
    object.__setattr__(self, '_lattice_row', jax.jit(lattice_row, static_argnums=4))
    object.__setattr__(self, '_solve_block', jax.jit(self._solve_block_impl, static_argnums=8, donate_argnums=4))
    object.__setattr__(self, '_request_block', jax.jit(self._request_block_impl))

  # --- public ------------------------------------------------------------------------------------------------

  def base_grid(self, t_max: float) -> np.ndarray:
    """The coarse grid of the first solve up to t_max."""
    return time_grid(t_max, first_step=self.first_step, growth=self.growth, max_step=self.max_step)

  def check_cost(self, t_max: float) -> None:
    """Refuse, before any work, a solve whose first fine grid alone exceeds ``max_grid_times``."""
    n = 2 * len(self.base_grid(t_max)) - 1
    resources.require_work(
      f'The mean up to t = {t_max:g}',
      n,
      unit='solver grid times (at least)',
      cap=self.max_grid_times,
      cap_name='max_grid_times',
    )

  def lattice(self, t_max: float) -> L.Lattice:
    return L.choose_lattice(self.access, self.theta0, t_max, self.max_step, self.rtol)

  def solve_on_grid(self, t_max: float, grid: np.ndarray) -> GridSolution:
    """The raw trapezoid solution on ``grid`` (ending at or before t_max), on the lattice chosen for t_max."""
    lat = self.lattice(t_max)
    state: dict = {}
    self._sweep(self.access.x, lat, [self._solve_job(lat, grid, state)], [0])
    return GridSolution(grid, state['g'])

  def mean(self, times: np.ndarray, x_test) -> tuple[jax.Array, MeanStats, np.ndarray]:
    """Mean at finite times > 0 (n_t, n, out), the stats and the final fine grid: the Richardson extrapolation
    f_fine + (f_fine − f_coarse)/3 of the solutions on a grid and its bisection, bisecting until the step-doubling
    estimate max|g_fine − g_coarse|/3 of the fine solution's error is ≤ rtol · max|Y|. Grid rows and requested
    rows share one sweep (x1 = X ∪ x_test)."""
    access = self.access
    t_max = float(times[-1])
    self.check_cost(t_max)
    x1 = access.x if x_test is None else jnp.concatenate([access.x, x_test])
    test = x_test is not None
    lat = self.lattice(t_max)
    pairs = [0]
    states = [{}, {}]
    jobs = [self._solve_job(lat, self.base_grid(t_max), states[0])]
    y = access.y
    target = self.rtol * max(float(jnp.max(jnp.abs(y))), np.finfo(access.dtype).tiny)
    for refinement in itertools.count():
      fine_grid = bisect(np.asarray(states[0]['grid'], np.float64))
      resources.require_work(
        f'The mean up to t = {t_max:g}',
        len(fine_grid),
        unit='solver grid times',
        cap=self.max_grid_times,
        cap_name='max_grid_times',
      )
      jobs.append(self._solve_job(lat, fine_grid, states[1]))
      outs = [[], []]
      self._sweep(x1, lat, jobs + [self._request_job(lat, s, times, test, o) for s, o in zip(states, outs)], pairs)
      err = float(jnp.max(jnp.abs(states[1]['g'][::2] - states[0]['g']))) / 3
      if not math.isfinite(err):
        require_finite('The mean solution g = Y − f̄(X, t)', states[1]['g'], f'on the solver grid up to t = {t_max:g}')
      if err <= target or refinement == self.max_refinements:
        break
      states, jobs = [states[1], {}], []
    if err > target:
      warnings.warn(
        f'The mean solver reached max_refinements={self.max_refinements} with an estimated error '
        f'{err:.3g} > rtol·max|Y| = {target:.3g} ({len(states[1]["grid"])} grid times up to '
        f't = {t_max:g}); raise `max_refinements` or lower `first_step`.',
        RuntimeWarning,
        stacklevel=4,
      )
    coarse, fine = (jnp.concatenate(out) for out in outs)
    mean = fine + (fine - coarse) / 3
    for i in np.flatnonzero(~np.asarray(jnp.all(jnp.isfinite(mean), axis=(1, 2))))[:1]:
      raise FloatingPointError(f'The mean f̄ is not finite at t = {times[i]:g}: check the kernel function up to there.')
    stats = MeanStats(len(states[1]['grid']), refinement, lat.size, lat.h, lat.stationary, pairs[0], err)
    return mean, stats, np.asarray(states[1]['grid'], np.float64)

  # --- the sweep ---------------------------------------------------------------------------------------------

  def _solve_block_impl(self, y, ring, h, grid, g, w, r0, r1, block):
    """Grid rows r0 … r1 − 1 (< r0 + block, all in lattice window w) of the trapezoid scheme,
    (I + w_ii R̃(t_i, t_i)) g_i = Y − Σ_{j<i} w_j R̃(t_i, t_j) g_j, g = Y − f̄(X, ·): the part j < r0 for the whole
    block at once, then j ∈ [r0, i) row by row with the window's 16 stencil nodes (such pairs have ⌊t_j/h⌋ = w,
    0 ≤ t_i − t_j < h)."""
    p, n = self.access.p, grid.shape[0]
    interior = interior_weights(grid)
    rows = r0 + jnp.arange(block)
    t_rows = grid[jnp.minimum(rows, n - 1)]
    old = L.old_history(
      ring, h, grid, g[:n], t_rows, jnp.broadcast_to(jnp.where(jnp.arange(n) < r0, interior, 0), (block, n))
    )[:, :p]  # rows beyond P: test points
    b0, nodes = L.window_nodes(ring, w)
    nodes = nodes[:p]
    l_s = L.lagrange4(t_rows / h - b0)
    w_new = interior[jnp.minimum(rows, n - 1)]

    def step(r, g_block):
      t_i = t_rows[r]
      l_u = L.lagrange4((t_i - t_rows) / h)
      c = jnp.einsum('j,jp,jq,jko->pqko', jnp.where(jnp.arange(block) < r, w_new, 0), l_u, l_s, g_block)
      history = old[r] + nodes.reshape(nodes.shape[0], -1) @ c.reshape(-1, c.shape[-1])
      r_star = jnp.einsum('q,mqk->mk', l_s[r], nodes[:, 0])
      a = jnp.eye(p, dtype=y.dtype) + 0.5 * (t_i - grid[r0 + r - 1]) * r_star
      return g_block.at[r].set(jnp.linalg.solve(a, y - history))

    g_block = lax.fori_loop(0, r1 - r0, step, lax.dynamic_slice_in_dim(g, r0, block))
    return lax.dynamic_update_slice_in_dim(g, g_block, r0, 0)

  def _request_block_impl(self, y, ring, h, grid, g, w, times):
    """Nyström rows at a block of requested times (all in lattice window w) on a solved grid:
    (I + w_* R̃(t*, t*, X, X)) g(t*) = Y − Σ_{t_j < t*} w_j R̃(t*, t_j, X, X) g_j and
    f̄(x, t*) = Σ_j w_j R̃(t*, t_j, x, X) g_j + w_* R̃(t*, t*, x, X) g(t*) for the rows x1[P:]."""
    p = self.access.p
    k = jnp.searchsorted(grid, times, side='left') - 1
    weights, w_star = jax.vmap(trapezoid_row, (None, 0, 0))(grid, k, times)
    history = L.old_history(ring, h, grid, g, times, weights)
    b0, nodes = L.window_nodes(ring, w)
    r_star = jnp.einsum('rq,mqk->rmk', L.lagrange4(times / h - b0), nodes[:, 0]) * w_star[:, None, None]
    g_star = jnp.linalg.solve(jnp.eye(p, dtype=y.dtype) + r_star[:, :p], y - history[:, :p])
    return g_star, history[:, p:] + r_star[:, p:] @ g_star

  def _block_size(self, n: int, rows: int) -> int:
    """Rows per block for ``rows`` rows of one window: 1, 8 or 64 (few compiled shapes), with the block's scattered
    terms (block × n × 16 × P × out values) within 16 × ``max_elements``; the ring is read once a block."""
    access = self.access
    cap = max(1, min(64, 16 * access.max_elements // (16 * n * access.p * access.y.shape[1])))
    return int(min(8 ** math.ceil(math.log(rows, 8)), 8 ** math.floor(math.log(cap, 8))))

  def _sweep(self, x1: jax.Array, lat: L.Lattice, jobs: list, pairs: list) -> None:
    """Sweep t upwards through the lattice windows, keeping the ring of lattice rows for x1 and running, in each
    window w and in list order, the rows of every job whose times t have ⌊t/h⌋ = w. A job is
    (sorted times, run(ring, w, lo, hi)) with [lo, hi) the indices of its times in window w. ``pairs[0]`` counts
    the kernel time pairs evaluated."""
    access = self.access
    rows = L.RING + 2 * lat.stationary  # the ring, and the doubled master row of a stationary lattice
    resources.require_memory(
      f'The mean solver ({L.RING} kernel lattice rows of {lat.size} times × {x1.shape[0]} × {access.p} points)',
      rows * lat.size * x1.shape[0] * access.p * access.dtype.itemsize,
      remedy='request fewer test points at once, an earlier last time (t = inf gives equilibrium in closed form), '
      'or a larger `rtol`',
      limit=self.memory_limit,
    )
    ring = jnp.zeros((x1.shape[0], L.RING, lat.size, access.p), access.dtype)
    h = jnp.asarray(lat.h, access.dtype)
    windows = [np.floor(times / lat.h).astype(np.int64) for times, _ in jobs]
    master = None
    if lat.stationary:
      master = jnp.concatenate(
        [self._lattice_row(access.x, x1, lat.size - 1, h, lat.size), jnp.zeros_like(ring[:, 0])], axis=1
      )
      require_finite('R(t, s, x, X)', master, f'on the lattice row t = {(lat.size - 1) * lat.h:g}')
      pairs[0] += lat.size

    def add_row(ring, a):
      ring = self._ring_row(access.x, x1, ring, a, h, master)
      if master is None:
        pairs[0] += -(-(a + 1) // access.chunk(x1.shape[0], lat.size)) * access.chunk(x1.shape[0], lat.size)
        require_finite('R(t, s, x, X)', ring[:, a % L.RING], f'at t = {a * lat.h:g} (kernel lattice row {a})')
      return ring

    for a in range(min(8, lat.size)):
      ring = add_row(ring, a)
    for w in range(int(max(ws[-1] for ws in windows)) + 1):
      if w > 0 and w + 7 < lat.size:
        ring = add_row(ring, w + 7)
      for (_, run), ws in zip(jobs, windows):
        lo, hi = np.searchsorted(ws, w, 'left'), np.searchsorted(ws, w, 'right')
        if hi > lo:
          run(ring, w, int(lo), int(hi))

  def _solve_job(self, lat: L.Lattice, grid: np.ndarray, state: dict):
    """Sweep job solving the trapezoid scheme on ``grid`` into ``state['g']`` (g = Y − f̄(X, ·) on the nodes)."""
    access = self.access
    h = jnp.asarray(lat.h, access.dtype)
    pad = self._block_size(len(grid), 64)
    grid_j = jnp.asarray(grid, access.dtype)
    g = jnp.zeros((len(grid) + pad,) + access.y.shape, access.dtype).at[0].set(access.y)
    state.update(grid=grid_j, g=g[: len(grid)])

    def run(ring, w, lo, hi):
      nonlocal g
      lo = max(lo, 1)
      block = self._block_size(len(grid), hi - lo) if hi > lo else 1
      for r0 in range(lo, hi, block):
        g = self._solve_block(access.y, ring, h, grid_j, g, w, r0, min(r0 + block, hi), block)
      state['g'] = g[: len(grid)]

    return grid, run

  def _request_job(self, lat: L.Lattice, state: dict, times: np.ndarray, test: bool, out: list):
    """Sweep job appending f̄ at ``times`` (Nyström rows on the solution in ``state``, train or test rows) to out."""
    access = self.access
    h = jnp.asarray(lat.h, access.dtype)
    n = len(state['grid'])
    padded = jnp.asarray(np.concatenate([times, np.full(64, times[-1])]), access.dtype)

    def run(ring, w, lo, hi):
      block = self._block_size(n, hi - lo)
      for r0 in range(lo, hi, block):
        g, f = self._request_block(access.y, ring, h, state['grid'], state['g'], w, padded[r0 : r0 + block])
        out.append((f if test else access.y[None] - g)[: min(block, hi - r0)])

    return times, run
