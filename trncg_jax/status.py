"""Status enums: why CG stopped, what an iteration did, why ``solve`` stopped.

One convention for all three (as optimistix's ``RESULTS``): an ``IntEnum``,
so it travels through jitted code as an ``int32`` array, whose members carry
a ``message`` that says what happened and what to do about it. Convert a
traced value back with ``StepStatus(int(info.status))``.
"""

from __future__ import annotations

import enum
from typing import Sequence

import jax
import jax.numpy as jnp


def first_true(
  conditions: Sequence[jax.Array], codes: Sequence[int], default: int
) -> jax.Array:
  """The code of the first true condition, else ``default``, as an int32.

  ``jnp.select`` without its ``argmax``: XLA:CPU allocates a buffer for every
  value inside a reduction's body at each call of a compiled program, whether
  the reduction runs or not, and an ``argmax`` has a dozen (about 1 us per
  ``jnp.select`` and call, measured in docs/choosing.md, "Many small problems
  on a CPU"). A chain of ``jnp.where`` allocates none.
  """
  result = jnp.asarray(default, jnp.int32)
  for condition, code in reversed(tuple(zip(conditions, codes))):
    result = jnp.where(condition, jnp.asarray(code, jnp.int32), result)
  return result


class Status(enum.IntEnum):
  """An ``IntEnum`` whose members are declared as ``NAME = value, message``."""

  def __new__(cls, value: int, message: str):
    member = int.__new__(cls, value)
    member._value_ = value
    member.message = message
    return member


class CGStatus(Status):
  """Why CG-Steihaug stopped (``info.cg_status``)."""

  CONVERGED = (
    0,
    (
      "CG's residual fell to its tolerance inside the trust region: the step "
      "is the (inexact) Newton step."
    ),
  )
  NEGATIVE_CURVATURE = (
    1,
    (
      "CG found a direction of non-positive curvature and followed it to the "
      "boundary of the region. Normal away from a minimum."
    ),
  )
  HIT_BOUNDARY = (
    2,
    (
      "The next CG iterate would have left the region, so the step stops on "
      "its boundary. Normal while the radius is small."
    ),
  )
  MAX_STEPS = (
    3,
    (
      "CG took max_cg_steps iterations without converging; the last iterate "
      "is the step. If this repeats, raise max_cg_steps or use a "
      "preconditioner (nystrom_rank)."
    ),
  )
  NON_FINITE = (
    4,
    (
      "A curvature product was NaN or inf. The step follows the current CG "
      "direction to the boundary and the trust region then judges it on the "
      "true loss; if this repeats, check the loss for non-smooth or undefined "
      "regions."
    ),
  )
  DAMPED = (
    5,
    (
      "Dense Gauss-Newton solver only: the step is the Levenberg-Marquardt "
      "point on the region's boundary, because the Gauss-Newton step would "
      "have been cut to a tiny fraction of its length (its direction is "
      "poor here; common at the start of a PINN). Normal; the solver returns "
      "to the Gauss-Newton step once that reduces the loss more."
    ),
  )


class StepStatus(Status):
  """What one outer iteration of trncg did (``info.status``)."""

  ACCEPTED = 0, "Step accepted."
  REJECTED = (
    1,
    (
      "Step rejected: rho <= eta, the quadratic model predicted the loss "
      "badly. The radius shrinks and the next iteration retries; no action "
      "is needed unless this repeats until the radius underflows, which "
      "points to a loss that is not twice differentiable or to float32 "
      "round-off near convergence (try float64)."
    ),
  )
  NON_FINITE_TRIAL = (
    2,
    (
      "Step rejected: the loss or gradient at the trial point is NaN or inf. "
      "The radius shrinks so the next trial stays closer. If this repeats, "
      "check the loss for undefined regions (log or sqrt of negatives, "
      "division by zero) or lower initial_radius."
    ),
  )
  NON_FINITE_CURRENT = (
    3,
    (
      "The loss or gradient at the current params is NaN or inf; params are "
      "left unchanged. Check the initial params and the data passed to the "
      "loss."
    ),
  )
  STATIONARY = (
    4,
    (
      "The gradient norm is below the CG tolerance: params are at a "
      "stationary point. Stop iterating; lower cg_tol (or use "
      "inexact_newton=True) to go further."
    ),
  )
  PRECISION_LIMIT = (
    5,
    (
      "The step no longer changes params, or the region has shrunk until "
      "its step moves no coordinate by more than 4 ulps (a loss computed "
      "with round-off far above eps |f|), or the model's minimizer inside "
      "the region predicts a decrease below the round-off of the loss (eps "
      "|f|) and does not lower the gradient norm either: no further "
      "progress is possible at this precision. Stop iterating; use float64 "
      "to go further."
    ),
  )


class SolveStatus(Status):
  """Why :func:`trncg_jax.solve` stopped (``SolveResult.status``)."""

  MAX_STEPS = (
    0,
    (
      "max_steps updates were made without meeting a tolerance. Continue "
      "with solve(..., state=result.state) or raise max_steps."
    ),
  )
  LOSS_TOL = 1, "The loss fell to loss_tol."
  GRAD_TOL = 2, "The gradient norm fell to grad_tol."
  STAGNATION = (
    3,
    (
      "No progress is possible: trncg's radius fell below min_radius, or "
      "nonlinear_cg's line search failed MAX_REJECTIONS times in a row. "
      "Check the loss for regions where it is NaN or -inf, or use float64."
    ),
  )
  NON_FINITE = (
    4,
    (
      "The loss or gradient at the current params is NaN or inf. Check the "
      "initial params and the data passed to the loss."
    ),
  )
  STATIONARY = (
    5,
    (
      "trncg found the gradient below its CG tolerance: every further step "
      "would be empty. Lower cg_tol (or use inexact_newton=True) to go "
      "further."
    ),
  )
  PRECISION_LIMIT = (
    6,
    (
      "trncg's model predicts a decrease below the loss's round-off, or its "
      "step no longer changes the params by more than a few ulps: they are "
      "optimal to working precision. Use float64 to go further, or compute "
      "the loss with less cancellation."
    ),
  )
