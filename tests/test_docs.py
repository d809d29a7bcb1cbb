"""The README's code examples and the docstrings' examples run as written.

Both run in a fresh interpreter, with JAX's defaults (float32), as a user
would run them.
"""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = ["trncg_jax.hvp", "trncg_jax.least_squares",
           "trncg_jax.preconditioner", "trncg_jax.steihaug",
           "trncg_jax.trust_region",
           "trncg_jax.transform", "trncg_jax.nonlinear_cg", "trncg_jax.solve"]


def readme_blocks():
  text = (ROOT / "README.md").read_text()
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_python(code):
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_readme_has_python_examples():
  assert len(readme_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_example_runs(index):
  proc = run_python(readme_blocks()[index])
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module):
  code = (f"import doctest, importlib, sys\n"
          f"m = importlib.import_module({module!r})\n"
          f"r = doctest.testmod(m, optionflags=doctest.NORMALIZE_WHITESPACE)\n"
          f"print(r)\nsys.exit(1 if r.failed or not r.attempted else 0)\n")
  proc = run_python(code)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_public_names_are_exported():
  import trncg_jax
  for name in trncg_jax.__all__:
    assert hasattr(trncg_jax, name), name
  public = {n for n in dir(trncg_jax) if not n.startswith("_")
            and callable(getattr(trncg_jax, n))}
  assert public <= set(trncg_jax.__all__), public - set(trncg_jax.__all__)
