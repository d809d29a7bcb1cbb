"""trncg_jax: matrix-free trust-region Newton-CG and nonlinear CG in JAX."""

from trncg_jax.hvp import HVP_MODES, make_hvp
from trncg_jax.least_squares import LeastSquares
from trncg_jax.nonlinear_cg import (
    BETA_RULES,
    NonlinearCGConfig,
    NonlinearCGInfo,
    NonlinearCGState,
    nonlinear_cg,
    nonlinear_cg_init,
    nonlinear_cg_update,
)
from trncg_jax.preconditioner import NystromFactors, Preconditioner, nystrom
from trncg_jax.solve import SolveResult, SolveStatus, solve
from trncg_jax.steihaug import CGExit, SteihaugResult, cg_steihaug
from trncg_jax.transform import trncg
from trncg_jax.trust_region import (
    PAPER_HYPERPARAMS,
    StepResult,
    TRNCGHyperparams,
    TRNCGInfo,
    TRNCGState,
    trncg_init,
    trncg_update,
)

__version__ = "0.1.0"

__all__ = [
    "BETA_RULES",
    "NonlinearCGConfig",
    "NonlinearCGInfo",
    "NonlinearCGState",
    "nonlinear_cg",
    "nonlinear_cg_init",
    "nonlinear_cg_update",
    "CGExit",
    "HVP_MODES",
    "LeastSquares",
    "NystromFactors",
    "PAPER_HYPERPARAMS",
    "Preconditioner",
    "SolveResult",
    "SolveStatus",
    "SteihaugResult",
    "StepResult",
    "TRNCGHyperparams",
    "TRNCGInfo",
    "TRNCGState",
    "make_hvp",
    "nystrom",
    "solve",
    "cg_steihaug",
    "trncg",
    "trncg_init",
    "trncg_update",
]
