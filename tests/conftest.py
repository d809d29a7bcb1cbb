"""Test set-up: float64 by default, since most checks compare to 1e-10.

float32 behaviour is tested with explicitly float32 arrays. The README and the
doctests run in subprocesses (see test_docs.py), so they see JAX's defaults.

One persistent XLA compilation cache serves the processes the session
starts: the heat notebook compiles the same programs as the tiny paper run
(the notebook took 147 s without it, 110 s with it, on 2 cores).

Each test module's compiled programs are released when it ends. The session
kept every executable loaded, each with its memory mappings, and once the
Newton branch had grown the dense Gauss-Newton programs it passed the
kernel's limit of 65,530 (``vm.max_map_count``) in test_pinn_benchmark:
jaxlib crashed there, reading the cache twice and compiling once. The
session itself stopped using the cache while that was found; with the
release in place it could use it again (not measured).
"""

import atexit
import gc
import os
import shutil
import tempfile

_cache = tempfile.mkdtemp(prefix="trncg-jax-xla-cache-")
atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# Read by JAX at import, here and in the subprocesses, which inherit them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import importlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_enable_compilation_cache", False)
# The module, not the function that trncg_jax exports under its name.
solve_module = importlib.import_module("trncg_jax.solve")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  yield
  # solve keeps its compiled loops too (64 of them, each with its data).
  solve_module._COMPILED.clear()
  solve_module._build_run.cache_clear()
  jax.clear_caches()
  gc.collect()
