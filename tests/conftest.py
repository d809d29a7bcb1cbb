"""Test set-up: float64 by default, since most checks compare to 1e-10.

float32 behaviour is tested with explicitly float32 arrays. The README and the
doctests run in subprocesses (see test_docs.py), so they see JAX's defaults.
"""

import jax

jax.config.update("jax_enable_x64", True)
