"""Typed, frozen descriptions of an ``ndk_flax.stax`` network: what ``stax`` writes and ``nn`` / ``drift`` read.

Every ``ndk_flax.stax`` layer carries a ``spec`` built once, at construction, from the classes below (frozen
dataclasses; nothing is mutated afterwards):

* :class:`DenseSpec`, :class:`ConvSpec` (``Conv``, ``ConvTranspose``, ``ConvLocal``): parametric layers, with their
  parameter groups as :class:`ParamGroup` (σ0, σ) or None when the group is absent;
* :class:`FreeSpec`: a parameter-free Neural Tangents layer (its NT triple is the forward pass);
* :class:`SerialSpec`, :class:`ParallelSpec`, :class:`RepeatSpec`: the combinators.

:data:`PARAMETRIC_KINDS` is the one list of parametric layer kinds, and :func:`param_group` the one set of std rules,
shared by ``ndk_flax.stax`` (theory) and ``ndk_flax.nn`` (Flax models). docs/theory.md §1–§3.

Examples:
  >>> from ndk_flax import spec
  >>> spec.param_group('W', 1.5, None)
  ParamGroup(init_std=1.5, prior_std=1.5)
  >>> spec.param_group('b', 0.0, None) is None  # init std 0, no prior: the group is absent
  True
  >>> [k.value for k in spec.PARAMETRIC_KINDS]
  ['Dense', 'Conv', 'ConvTranspose', 'ConvLocal']
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Callable, Optional, Union

__all__ = [
  'PARAMETRIC_KINDS',
  'ConvSpec',
  'DenseSpec',
  'FreeSpec',
  'LayerKind',
  'NetworkSpec',
  'ParallelSpec',
  'ParamGroup',
  'RepeatSpec',
  'SerialSpec',
  'param_group',
  'parametric_specs',
]


class LayerKind(enum.Enum):
  """The parametric layer kinds that have a two-time rule (docs/theory.md §3) and a Flax module in ``nn``.

  Examples:
    >>> LayerKind('Conv') is LayerKind.CONV
    True
  """

  DENSE = 'Dense'
  CONV = 'Conv'
  CONV_TRANSPOSE = 'ConvTranspose'
  CONV_LOCAL = 'ConvLocal'


PARAMETRIC_KINDS: tuple[LayerKind, ...] = tuple(LayerKind)
"""The one list of parametric layer kinds."""


@dataclasses.dataclass(frozen=True)
class ParamGroup:
  """One parameter group (the weights or the biases of a layer): θ(0) ~ N(0, σ0²), prior N(0, σ²).

  Attributes:
    init_std: σ0 ≥ 0.
    prior_std: σ > 0 (λ = T/σ², docs/theory.md §2).

  Examples:
    >>> ParamGroup(1.0, 2.0).decay_rate(0.5)
    0.125
  """

  init_std: float
  prior_std: float

  def decay_rate(self, temperature: Any) -> Any:
    """λ = T/σ², the relaxation rate of the free OU process of this group (docs/theory.md §2)."""
    return temperature / self.prior_std**2


def _std(name: str, value: Any, *, allow_zero: bool) -> float:
  if isinstance(value, bool) or callable(value):
    raise TypeError(f'`{name}` must be a real number, got {value!r}.')
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise TypeError(f'`{name}` must be a real number, got {value!r}.') from None
  if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
    bound = '>= 0' if allow_zero else '> 0'
    raise ValueError(f'`{name}` must be finite and {bound}, got {value!r}.')
  return v


def param_group(kind: str, init_std: Any, prior_std: Any) -> Optional[ParamGroup]:
  """The std rule of one parameter group ``kind`` in {'W', 'b'}, shared by ``stax`` and ``nn``.

  * ``init_std`` None: no such group (a layer without bias); then ``prior_std`` must be None too.
  * ``init_std`` = 0 and ``prior_std`` None: the group is **absent** (frozen at zero). This matches Neural Tangents
    at T = 0 (a zero std adds nothing) and adds nothing at any time.
  * otherwise σ0 = ``init_std`` ≥ 0 and σ = ``prior_std`` > 0 (default: σ0). σ0 = 0 with an explicit σ is a group
    started at zero that grows under Langevin noise.

  Returns:
    :class:`ParamGroup`, or None for an absent group.

  Examples:
    >>> param_group('W', 0.0, 1.0)
    ParamGroup(init_std=0.0, prior_std=1.0)
    >>> param_group('b', None, None) is None
    True
  """
  if init_std is None:
    if prior_std is not None:
      raise ValueError(
        f'`{kind}_prior_std` is given but `{kind}_std` is None (the layer has no such group); pass `{kind}_std`.'
      )
    return None
  init = _std(f'{kind}_std', init_std, allow_zero=True)
  if prior_std is None:
    return None if init == 0 else ParamGroup(init, init)
  return ParamGroup(init, _std(f'{kind}_prior_std', prior_std, allow_zero=False))


@dataclasses.dataclass(frozen=True)
class DenseSpec:
  """A Dense layer h = W a/√N + b along ``channel_axis``.

  Examples:
    >>> DenseSpec(3, ParamGroup(1.0, 1.0), None).kind
    <LayerKind.DENSE: 'Dense'>
  """

  out_dim: int
  weight: Optional[ParamGroup]
  bias: Optional[ParamGroup]
  batch_axis: int = 0
  channel_axis: int = -1
  parameterization: str = 'ntk'
  kind: LayerKind = LayerKind.DENSE


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """A Conv, ConvTranspose or ConvLocal layer (fan-in = in_channels × filter size).

  Examples:
    >>> ConvSpec(LayerKind.CONV, 4, (3, 3), None, 'SAME', None, ParamGroup(1.0, 1.0), None).filter_shape
    (3, 3)
  """

  kind: LayerKind
  out_chan: int
  filter_shape: tuple[int, ...]
  strides: Optional[tuple[int, ...]]
  padding: str
  dimension_numbers: Optional[tuple[str, str, str]]
  weight: Optional[ParamGroup]
  bias: Optional[ParamGroup]
  parameterization: str = 'ntk'


@dataclasses.dataclass(frozen=True)
class FreeSpec:
  """A parameter-free Neural Tangents layer: ``name`` and its NT ``(init_fn, apply_fn, kernel_fn)``.

  Examples:
    >>> FreeSpec('Relu', (None, None, None)).name
    'Relu'
  """

  name: str
  layer: tuple[Callable, Callable, Callable]


@dataclasses.dataclass(frozen=True)
class SerialSpec:
  """``children[-1] ∘ … ∘ children[0]``.

  Examples:
    >>> len(SerialSpec(()).children)
    0
  """

  children: tuple['NetworkSpec', ...]


@dataclasses.dataclass(frozen=True)
class ParallelSpec:
  """``children[i]`` applied to the i-th input of a list.

  Examples:
    >>> len(ParallelSpec(()).children)
    0
  """

  children: tuple['NetworkSpec', ...]


@dataclasses.dataclass(frozen=True)
class RepeatSpec:
  """``child`` composed ``n`` times with independent parameters (Neural Tangents' ``repeat``).

  Examples:
    >>> RepeatSpec(SerialSpec(()), 3).n
    3
  """

  child: 'NetworkSpec'
  n: int


NetworkSpec = Union[DenseSpec, ConvSpec, FreeSpec, SerialSpec, ParallelSpec, RepeatSpec]


def parametric_specs(spec: NetworkSpec) -> list[Union[DenseSpec, ConvSpec]]:
  """The parametric layers of ``spec`` in forward order (a repeated block counts ``n`` times).

  Examples:
    >>> w = ParamGroup(1.0, 1.0)
    >>> net = SerialSpec((DenseSpec(4, w, None), FreeSpec('Relu', (None,) * 3), DenseSpec(1, w, None)))
    >>> [s.out_dim for s in parametric_specs(net)]
    [4, 1]
  """
  if isinstance(spec, (DenseSpec, ConvSpec)):
    return [spec]
  if isinstance(spec, (SerialSpec, ParallelSpec)):
    return [s for child in spec.children for s in parametric_specs(child)]
  if isinstance(spec, RepeatSpec):
    return parametric_specs(spec.child) * spec.n
  return []
