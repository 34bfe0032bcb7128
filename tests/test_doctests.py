"""Every public function and class of ndk_flax has a runnable `Examples:` doctest, and all doctests pass."""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import ndk_flax


def _public_modules() -> list[str]:
  return sorted(
    m.name
    for m in pkgutil.walk_packages(ndk_flax.__path__, 'ndk_flax.')
    if not any(part.startswith('_') for part in m.name.split('.')[1:])
  )


def _public_objects(module) -> list[tuple[str, object]]:
  names = getattr(module, '__all__', [n for n in vars(module) if not n.startswith('_')])
  out = []
  for name in names:
    obj = getattr(module, name, None)
    if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, '__module__', '') == module.__name__:
      out.append((name, obj))
  return out


@pytest.mark.parametrize('module_name', _public_modules())
def test_public_docstrings_have_examples(module_name):
  module = importlib.import_module(module_name)
  missing = [name for name, obj in _public_objects(module) if 'Examples:' not in (inspect.getdoc(obj) or '')]
  assert not missing, f'{module_name}: public names without an `Examples:` section: {missing}'


@pytest.mark.parametrize('module_name', _public_modules() + ['ndk_flax._nt'])
def test_doctests_pass(module_name):
  module = importlib.import_module(module_name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
  assert result.failed == 0, f'{result.failed} of {result.attempted} doctest examples failed in {module_name}'
