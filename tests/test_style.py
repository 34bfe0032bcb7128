"""The one formatter and linter (ruff, configured in pyproject.toml) run clean on the whole tree."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('command', [['format', '--check'], ['check']], ids=['format', 'lint'])
def test_ruff_is_clean(command):
  ruff = shutil.which('ruff')
  assert ruff is not None, 'ruff is a test dependency: pip install -e ".[test]"'
  out = subprocess.run([ruff, *command, '.'], cwd=ROOT, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stdout + out.stderr
