"""trncg_jax: matrix-free trust-region Newton-CG and nonlinear CG in JAX.

The top level holds the optimizers, their states and diagnostics, ``solve``
and the status enums. Building blocks live in their modules:
:mod:`trncg_jax.hvp` (curvature products), :mod:`trncg_jax.steihaug`
(CG-Steihaug), :mod:`trncg_jax.dense` (the dense Gauss-Newton step),
:mod:`trncg_jax.preconditioner` (Nystrom), :mod:`trncg_jax.trust_region`
(the pure update and its hyperparameters), :mod:`trncg_jax.nonlinear_cg`.
"""

from trncg_jax.least_squares import LeastSquares
from trncg_jax.nonlinear_cg import (
  NonlinearCGInfo,
  NonlinearCGState,
  nonlinear_cg,
  nonlinear_cg_init,
  nonlinear_cg_update,
)
from trncg_jax.solve import SolveResult, solve
from trncg_jax.status import CGStatus, SolveStatus, StepStatus
from trncg_jax.transform import trncg
from trncg_jax.trust_region import (
  PAPER_HYPERPARAMS,
  TRNCGHyperparams,
  TRNCGInfo,
  TRNCGState,
  trncg_init,
  trncg_update,
)

__version__ = "0.1.0"

__all__ = [
  "CGStatus",
  "LeastSquares",
  "NonlinearCGInfo",
  "NonlinearCGState",
  "PAPER_HYPERPARAMS",
  "SolveResult",
  "SolveStatus",
  "StepStatus",
  "TRNCGHyperparams",
  "TRNCGInfo",
  "TRNCGState",
  "nonlinear_cg",
  "nonlinear_cg_init",
  "nonlinear_cg_update",
  "solve",
  "trncg",
  "trncg_init",
  "trncg_update",
]
