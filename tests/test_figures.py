"""Figures: the house style (ndk_flax.style) gives the promised pixel size and DPI, curves that coincide are one
legend entry, and heat maps keep the t = 0 row and column."""

import struct
import zlib

import numpy as np
import pytest

from ndk_flax import plotting, style


def png_size_and_dpi(path) -> tuple[int, int, float]:
  """(width px, height px, dots per inch) from the IHDR and pHYs chunks of a PNG file (no image library)."""
  with open(path, 'rb') as fh:
    blob = fh.read()
  assert blob[:8] == b'\x89PNG\r\n\x1a\n', f'{path} is not a PNG'
  pos, width, height, dpi = 8, None, None, None
  while pos < len(blob):
    (length,) = struct.unpack('>I', blob[pos : pos + 4])
    kind, body = blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + length]
    assert zlib.crc32(kind + body) == struct.unpack('>I', blob[pos + 8 + length : pos + 12 + length])[0]
    if kind == b'IHDR':
      width, height = struct.unpack('>II', body[:8])
    elif kind == b'pHYs':
      per_metre, _, unit = struct.unpack('>IIB', body)
      assert unit == 1, 'pHYs unit is not the metre'
      dpi = per_metre * 0.0254
    pos += 12 + length
  return width, height, dpi


def assert_house_figure(path, min_height_in: float = 2.0, max_height_in: float = 8.0) -> None:
  """Full width (style.COLUMN inches) at style.DPI, a height in range: shown at its size, ≥ 150 dpi."""
  width, height, dpi = png_size_and_dpi(path)
  assert dpi == pytest.approx(style.DPI, rel=1e-3) and style.DPI >= 150
  assert width == round(style.COLUMN * style.DPI), (path, width)
  assert min_height_in * style.DPI <= height <= max_height_in * style.DPI, (path, height)


def test_time_panels_size_dpi_and_grouped_legend(tmp_path):
  t = np.concatenate([[0.0], np.geomspace(0.01, 10, 50)])
  curves = np.stack([np.exp(-t), np.exp(-t) * 1.001, 1 - np.exp(-t)], axis=1)
  panel = plotting.Panel('panel', 'y', t, curves, t[::10], curves[::10], 0.01 + 0 * curves[::10], ['p 0', 'p 1', 'p 2'])
  path = plotting.time_panels(str(tmp_path / 'a.png'), [panel, panel], suptitle='title', time_scales=(0.2, 5.0))
  assert_house_figure(path)
  assert plotting.group_curves(curves) == [[0, 1], [2]]
  assert plotting._group_label(['p 0', 'p 1', 'p 2'], [0, 1]) == 'p 0, 1'


def test_group_curves_separates_curves_that_differ():
  t = np.linspace(0, 1, 20)
  assert plotting.group_curves(np.stack([t, t + 0.05, t + 0.1], 1)) == [[0], [1], [2]]
  assert plotting.group_curves(np.stack([np.exp(t), 1.001 * np.exp(t)], 1), logy=True) == [[0, 1]]


def test_heatmaps_draw_t0_as_its_own_strip(tmp_path):
  times = np.concatenate([[0.0], np.geomspace(0.1, 10, 20)])
  matrix = np.add.outer(times, times)
  path = plotting.kernel_heatmaps(str(tmp_path / 'k.png'), times, [('a', matrix), ('b', matrix)], suptitle='k')
  assert_house_figure(path)
  edges, zero_centre, zero_edges = plotting._strip_coordinates(times)
  assert zero_edges[1] < edges[0] and zero_edges[0] < zero_centre < zero_edges[1]
  with pytest.raises(ValueError, match='increasing'):
    plotting.kernel_heatmaps(str(tmp_path / 'x.png'), times[::-1], [('a', matrix)], suptitle='k')


def test_style_leaves_global_rcparams_alone():
  import matplotlib

  before = dict(matplotlib.rcParams)
  with style.context():
    assert matplotlib.rcParams['savefig.dpi'] == style.DPI
  assert dict(matplotlib.rcParams) == before
