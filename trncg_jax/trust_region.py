"""The trust-region Newton-CG method: state, diagnostics and the pure update.

One outer iteration (N&W Algorithm 4.1) at params ``x`` with value ``f`` and
gradient ``g`` already known:

1. ``p`` approximately minimizes ``m(p) = f + g^T p + p^T H p / 2`` over
   ``||p|| <= Delta`` by CG-Steihaug, with Hessian-vector products only;
2. the loss and gradient are evaluated once at ``x + p``;
3. ``rho = (f - f(x + p) + delta) / (m(0) - m(p) + delta)``, with ``delta =
   100 eps |f|`` so that reductions both lost in the round-off of ``f`` count
   as agreement; for a :class:`trncg_jax.LeastSquares` loss ``f - f(x + p)``
   is summed term by term, ``sum (r - r')(r + r')``, which keeps the digits
   that the difference of two sums loses; the step is accepted when ``rho >
   eta`` and the trial value and gradient are finite;
4. ``Delta`` shrinks when ``rho < 1/4`` and grows (up to ``max_radius``) when
   ``rho > 3/4`` and the step reached the boundary;
5. with the dense solver, a rejected step is tried again at the shrunk
   radius from the same factorization, up to :data:`DENSE_TRIALS` times in
   the iteration (``info.trials``);
6. with the dense Gauss-Newton solver on a small net, once the relative
   gain per step has settled into a slow linear rate, later iterations take
   the exact Hessian's step instead (:func:`newton_mode`).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trncg_jax import hvp as hvp_lib
from trncg_jax._checks import (
  check_float_params,
  check_number,
  check_scalar_loss,
  check_state,
  named_options,
  safe_norm,
  tree_equal,
  tree_within,
)
from trncg_jax.dense import dense_solver, newton_solver
from trncg_jax.least_squares import (
  LeastSquares,
  jacobian_fits,
  reduction,
  residual_count,
  value_grad_residuals,
)
from trncg_jax.loss import (
  bind,
  distinct_buffers,
  evaluate,
  loss_only,
)
from trncg_jax.preconditioner import IDENTITY, NystromFactors, nystrom_factors
from trncg_jax.status import CGStatus, SolveStatus, StepStatus, first_true
from trncg_jax.steihaug import cg_steihaug

#: Reductions within this many ulps of ``|f|`` count as round-off in the rho
#: safeguard ``delta``; also the floor of CG's relative tolerance. Conn, Gould
#: & Toint use 10, too tight for the noisier losses of long sums of squares
#: (the evidence: docs/benchmarks.md, "How the defaults were chosen").
ROUND_OFF_ULPS = 100.0

#: A step cut by the trust region that moves no coordinate of params by more
#: than this many ulps ends the run (``PRECISION_LIMIT``): the region has
#: collapsed to the resolution of params.
STEP_ULPS = 4.0

CG, DENSE, AUTO = "cg", "dense", "auto"
SOLVERS = (CG, DENSE, AUTO)
#: The largest number of params for which ``solver="auto"`` solves the
#: Gauss-Newton subproblem densely from ``P`` JVPs (no ``jacobian_fn``): a
#: Cholesky factorization of 2048^2 costs about 3e9 flops (a fraction of a
#: second on 2 CPU cores), and the Jacobian 2048 JVPs, the order of what a few
#: hundred CG steps of HVPs cost.
DENSE_MAX_PARAMS = 2048
#: With a ``jacobian_fn`` (``J`` costs about one gradient), the most
#: multiply-adds of forming ``2 J^T J`` or ``2 J J^T``, ``N P min(N, P)``,
#: for which ``solver="auto"`` takes the dense step: 2^36, which admits the
#: heat PINN at 10,000 points and 2,521 params (6.4e10; a Gauss-Newton step
#: takes 1.1 s on 2 CPU cores, 3.5 s when it beat CG-Steihaug's accuracy
#: 20-fold in a sixth of the time: docs/benchmarks.md, "How the defaults were
#: chosen").
DENSE_MAX_FLOPS = 2**36
#: The most trial steps of one dense iteration (see :func:`trust_region_step`).
#: At the shrink factor 1/4, 16 tries span 4^-16 ~ 2e-10 of the radius: the
#: Gauss-Newton step cut to DAMPED_BELOW = 1e-5 from the full step takes 9,
#: and on the discontinuous heat PINN every chain of rejections ended there.
#: A try costs a gradient, against P JVPs or a Jacobian for the factorization.
DENSE_TRIALS = 16

# The switch from Gauss-Newton to Newton (``newton_finish``). It watches the
# gain per step, ``(f - f') / f``, as an exponential average of its log10
# (weight NEWTON_GAIN_WEIGHT: about ten steps' memory). On the 257-param
# Poisson PINN from eight initial nets the Gauss-Newton run goes through up
# to three phases: plateaus gaining 1e-5 to 1e-3 per step, a fast descent
# gaining 0.1 to 0.9, then a slow phase at 0.05 falling to 0.01, where the
# Gauss-Newton model misses the residuals' curvature. Newton ends the slow
# phase within 40 steps, but from a plateau or in the fast descent it is
# slower than Gauss-Newton (docs/benchmarks.md, "Newton after
# Gauss-Newton"). So: after the average has passed NEWTON_FAST, switch once
# it has stayed within [NEWTON_SLOW_LOW, NEWTON_SLOW_HIGH] for NEWTON_AFTER
# consecutive iterations. From every one of the eight nets this switches
# between iterations 113 and 205, in the slow phase, with 10 to 30 slow
# iterations alike.
NEWTON_GAIN_WEIGHT = 0.1
NEWTON_FAST = 0.1
NEWTON_SLOW_LOW = 2e-3
NEWTON_SLOW_HIGH = 5e-2
NEWTON_AFTER = 20
#: The gain of a step that gained nothing (a rejected one), in the average.
NEWTON_GAIN_FLOOR = 1e-12


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TRNCGHyperparams:
  """Hyperparameters, stored as arrays so that changing them never recompiles.

  The defaults are our recommendation for general problems; the paper's
  hyperparameters (Boyd & Tanadi 2025) are :data:`PAPER_HYPERPARAMS`. The
  radius update rule is N&W Algorithm 4.1. ``hvp_mode`` is static: it selects
  code.

  Attributes:
    initial_radius: ``Delta_0 = 1``, SciPy's ``initial_trust_radius`` (the
      paper's 2).
    max_radius: ``Delta_hat = 1e10``: a bound that only keeps N&W's theory
      (Thm 4.5) and never binds in practice; the radius grows only while the
      model predicts well. The paper's 10, and even SciPy's 1000, made minima
      far from the start unreachable in 1000 steps (CUTEst QUARTC: 5000
      coordinates, each about 2500 from its minimizer; BROWNBS: x* = (1e6,
      2e-6) from (1, 1)).
    eta: acceptance threshold on ``rho``, ``1e-3`` to favour acceptance.
      N&W require ``eta`` in ``[0, 1/4)`` for global convergence (Thm 4.6).
    cg_tol: absolute CG residual tolerance, used when ``inexact_newton`` is
      false; ``0`` by default (the paper's ``1e-8``).
    inexact_newton: if true (the default), CG stops at ``||r|| <= eta_k ||g||``
      with the forcing term ``eta_k = min(0.5, ||g||^forcing_power)`` (N&W
      eq. 7.3 and Thm 7.2), floored at ``100 eps``, below which CG's residual
      is round-off. Relative to the gradient, it never declares a point
      stationary while ``g != 0``. If false, the absolute ``cg_tol``.
    forcing_power: ``1`` (the default: a quadratic rate) or down to ``0.5``
      (SciPy's ``trust-ncg``: superlinear).
    max_cg_steps: CG iterations per subproblem, ``500``.
    shrink_factor: ``Delta <- shrink_factor * Delta`` when ``rho <
      shrink_threshold``; ``0.25`` and ``0.25`` as in N&W Algorithm 4.1.
    expand_factor: ``Delta <- min(expand_factor * Delta, max_radius)`` when
      ``rho > expand_threshold`` on the boundary; ``2`` and ``0.75``.
    shrink_threshold: see ``shrink_factor``.
    expand_threshold: see ``expand_factor``.
    hvp_mode: one of :data:`trncg_jax.hvp.HVP_MODES`; ``"gauss_newton"``
      replaces the Hessian by the Gauss-Newton matrix of a
      :class:`trncg_jax.LeastSquares` loss.
    has_aux: the loss returns ``(loss, aux)``; the aux of the accepted point
      is kept in ``state.info.aux``. The state then needs an example aux at
      init (``trncg_init(params, aux=...)``).
    nystrom_rank: ``0`` (the default: CG as in the paper) or the rank ``s``
      of a randomized Nystrom preconditioner for CG, built from ``s``
      curvature products taken in one batch
      (:func:`trncg_jax.preconditioner.nystrom_factors`). The trust region is
      then ``||p||_M <= Delta`` in the preconditioner's norm, and the radius
      is rescaled when the preconditioner is rebuilt, so that the last step
      keeps its length in the new norm. It pays off when
      CG needs many steps per subproblem because the curvature spectrum
      decays fast. Static: it fixes the sketch's shape.
    nystrom_refresh: rebuild the preconditioner every this many iterations,
      ``10``: a stale one is still a valid preconditioner, and rebuilding
      costs ``s`` products, more than CG takes once preconditioned.
    nystrom_damping: ``1e-4``, the preconditioner's damping relative to the
      largest curvature; it bounds the stretch of the region along flat
      directions by ``1 / sqrt(nystrom_damping) = 100``: undamped, one step
      along a flat direction can ruin a fit; much more damped, the
      preconditioner does little.
    solver: how the subproblem is solved (static). ``"cg"``: CG-Steihaug in
      the Euclidean norm (or the Nystrom preconditioner's). ``"dense"``
      (``hvp_mode="gauss_newton"`` only): the Jacobian by ``P`` JVPs (or the
      loss's ``jacobian_fn``) and the exact Gauss-Newton step in the norm of
      ``B + mu I``, a region in function space
      (:func:`trncg_jax.dense.dense_gauss_newton`); memory ``N P + m^2`` and
      time ``max(N, P) m^2`` per iteration, ``m = min(N, P)``. With an
      exact-Hessian ``hvp_mode``, ``"dense"`` forms the Hessian from ``P``
      HVPs and takes the exact trust-region step in the Euclidean norm
      (:func:`trncg_jax.dense.newton_solver`): for small nets after the
      Gauss-Newton fit, whose model misses the residuals' curvature along
      flat directions. ``"auto"`` (the
      default): ``"dense"`` for Gauss-Newton without a preconditioner when
      ``N P`` is at most
      :data:`trncg_jax.least_squares.DENSE_MAX_ENTRIES` and either ``P`` is at
      most :data:`DENSE_MAX_PARAMS` or the loss has a ``jacobian_fn`` and
      ``N P m`` is at most :data:`DENSE_MAX_FLOPS`; ``"cg"`` otherwise.
    dense_damping: ``mu`` of ``solver="dense"`` relative to the mean
      curvature ``tr(B) / P``: ``0`` by default, which leaves the floor ``mu =
      10 eps tr(B)`` that keeps the Cholesky factor finite. The Gauss-Newton
      matrix of a network is singular; ``mu`` keeps the step off its null
      space (ENGD's damping). Larger values shorten the step along flat
      directions, and slow the final convergence.
    newton_finish: with the dense Gauss-Newton solver and at most
      :data:`DENSE_MAX_PARAMS` params, switch to the exact Hessian's step
      (as ``solver="dense"`` with an exact-Hessian ``hvp_mode`` takes it)
      once the Gauss-Newton run has slowed to a steady linear rate, and stay
      there; ``True`` by default. Near the fit the Gauss-Newton model misses
      the residuals' own curvature along flat directions, and the rate falls
      with it; Newton takes ``P`` HVPs and one eigendecomposition per
      iteration. ``info.newton`` marks its iterations. Not for losses with a
      ``jax.custom_vjp`` (no forward-mode Hessian). Static: it selects code.
  """

  initial_radius: Any = 1.0
  max_radius: Any = 1e10
  eta: Any = 1e-3
  cg_tol: Any = 0.0
  inexact_newton: Any = True
  forcing_power: Any = 1.0
  max_cg_steps: Any = 500
  nystrom_refresh: Any = 10
  nystrom_damping: Any = 1e-4
  dense_damping: Any = 0.0
  shrink_factor: Any = 0.25
  expand_factor: Any = 2.0
  shrink_threshold: Any = 0.25
  expand_threshold: Any = 0.75
  hvp_mode: str = dataclasses.field(
    default=hvp_lib.FORWARD_OVER_REVERSE, metadata=dict(static=True)
  )
  has_aux: bool = dataclasses.field(default=False, metadata=dict(static=True))
  nystrom_rank: int = dataclasses.field(default=0, metadata=dict(static=True))
  solver: str = dataclasses.field(default=AUTO, metadata=dict(static=True))
  newton_finish: bool = dataclasses.field(
    default=True, metadata=dict(static=True)
  )

  def validate(self) -> "TRNCGHyperparams":
    """Raises ``ValueError`` naming any parameter outside its allowed range.

    Called by the constructors (:func:`trncg_init`, :func:`trncg_jax.trncg`),
    not on pytree unflattening, which rebuilds this class with abstract leaves.
    """
    check_number(
      "initial_radius",
      self.initial_radius,
      0.0,
      float("inf"),
      low_open=True,
      high_open=True,
    )
    check_number(
      "max_radius",
      self.max_radius,
      0.0,
      float("inf"),
      low_open=True,
      high_open=True,
    )
    if not any(
      isinstance(x, jax.core.Tracer)
      for x in (self.initial_radius, self.max_radius)
    ):
      check_number(
        "initial_radius",
        self.initial_radius,
        0.0,
        float(self.max_radius),
        low_open=True,
      )
    check_number(
      "shrink_threshold",
      self.shrink_threshold,
      0.0,
      1.0,
      low_open=True,
      high_open=True,
    )
    if not isinstance(self.shrink_threshold, jax.core.Tracer):
      check_number(
        "eta", self.eta, 0.0, float(self.shrink_threshold), high_open=True
      )
      check_number(
        "expand_threshold",
        self.expand_threshold,
        float(self.shrink_threshold),
        1.0,
        high_open=True,
      )
    check_number("cg_tol", self.cg_tol, 0.0, float("inf"), high_open=True)
    check_number("forcing_power", self.forcing_power, 0.0, 1.0, low_open=True)
    check_number("max_cg_steps", self.max_cg_steps, 1, 2**31 - 1, integer=True)
    check_number(
      "shrink_factor",
      self.shrink_factor,
      0.0,
      1.0,
      low_open=True,
      high_open=True,
    )
    check_number(
      "expand_factor",
      self.expand_factor,
      1.0,
      float("inf"),
      low_open=True,
      high_open=True,
    )
    if not (
      isinstance(self.inexact_newton, bool)
      or (
        isinstance(self.inexact_newton, jax.Array)
        and self.inexact_newton.shape == ()
        and self.inexact_newton.dtype == bool
      )
    ):
      raise ValueError(
        "inexact_newton must be a bool (True or False), got "
        f"{self.inexact_newton!r}"
      )
    for name in ("has_aux", "newton_finish"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(
          f"{name} must be a bool (True or False), got {getattr(self, name)!r}"
        )
    check_number("nystrom_rank", self.nystrom_rank, 0, 2**31 - 1, integer=True)
    check_number(
      "nystrom_refresh", self.nystrom_refresh, 1, 2**31 - 1, integer=True
    )
    check_number("nystrom_damping", self.nystrom_damping, 0.0, 1.0)
    check_number("dense_damping", self.dense_damping, 0.0, 1.0)
    if self.solver not in SOLVERS:
      raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
    if self.solver == DENSE and self.nystrom_rank:
      raise ValueError(
        "solver='dense' needs nystrom_rank=0: it solves the subproblem "
        f"exactly, with no preconditioner (got nystrom_rank="
        f"{self.nystrom_rank})."
      )
    if self.hvp_mode not in hvp_lib.HVP_MODES:
      raise ValueError(
        f"hvp_mode must be one of {hvp_lib.HVP_MODES}, got {self.hvp_mode!r}"
      )
    if self.nystrom_rank and self.hvp_mode != hvp_lib.GAUSS_NEWTON:
      raise ValueError(
        "nystrom_rank > 0 needs hvp_mode='gauss_newton': the Nystrom sketch "
        "needs positive semidefinite curvature, and a Hessian may be "
        f"indefinite (got hvp_mode={self.hvp_mode!r})."
      )
    if self.has_aux and self.hvp_mode == hvp_lib.GAUSS_NEWTON:
      raise ValueError(
        "has_aux=True is not supported with hvp_mode='gauss_newton': a "
        "LeastSquares loss returns its sum of squares only. Compute the aux "
        "from the params after the run."
      )
    return self

  def replace(self, **changes) -> "TRNCGHyperparams":
    """New values, validated and cast to the current dtypes (no retrace).

    Examples:
      >>> import jax.numpy as jnp, trncg_jax
      >>> state = trncg_jax.trncg_init(jnp.zeros(2))
      >>> state = state._replace(
      ...     hyperparams=state.hyperparams.replace(eta=0.1, max_cg_steps=20))
      >>> state.hyperparams.eta, int(state.hyperparams.max_cg_steps)
      (Array(0.1, dtype=float32), 20)
    """
    new = dataclasses.replace(self, **changes)
    dataclasses.replace(
      jax.tree.map(lambda x: x.item(), self), **changes
    ).validate()
    return dataclasses.replace(
      new,
      **{
        name: jnp.asarray(value, jnp.result_type(getattr(self, name)))
        for name, value in changes.items()
        if name not in STATIC_FIELDS
      },
    )

  def as_arrays(self, dtype) -> "TRNCGHyperparams":
    """The same hyperparameters as arrays: floats in ``dtype``.

    Raises:
      ValueError: naming a float hyperparameter that the cast turns to 0 or
        inf (``initial_radius=1e-300`` in float32), with ``dtype``'s range.
    """
    info = jnp.finfo(dtype)

    def cast(name, value):
      if name in ("max_cg_steps", "nystrom_refresh"):
        return jnp.array(value, jnp.int32)
      if name == "inexact_newton":
        return jnp.array(value, bool)
      if not isinstance(value, jax.core.Tracer):
        with np.errstate(over="ignore"):  # an overflow is reported below
          before, after = float(value), float(np.asarray(value, dtype))
        if (before != 0 and after == 0) or (
          abs(before) < float("inf") and abs(after) == float("inf")
        ):
          raise ValueError(
            f"{name}={before!r} is {after!r} in {jnp.dtype(dtype).name}, "
            f"the params' dtype; it must be 0 or of magnitude in "
            f"[{float(info.tiny)}, {float(info.max)}] there."
          )
      return jnp.array(value, dtype)  # a new buffer per field (donation)

    return dataclasses.replace(
      self,
      **{
        f.name: cast(f.name, getattr(self, f.name))
        for f in dataclasses.fields(self)
        if f.name not in STATIC_FIELDS
      },
    )


# Fields that select code rather than hold numbers: never cast to arrays.
STATIC_FIELDS = (
  "hvp_mode",
  "has_aux",
  "nystrom_rank",
  "solver",
  "newton_finish",
)


def uses_dense_solver(
  hyperparams: TRNCGHyperparams, params: Any, loss: Any = None
) -> bool:
  """Whether ``hyperparams.solver`` means the dense solver for ``params``
  (and ``loss``, a function of params alone)."""
  if hyperparams.solver != AUTO:
    return hyperparams.solver == DENSE
  if hyperparams.hvp_mode != hvp_lib.GAUSS_NEWTON or hyperparams.nystrom_rank:
    return False
  n_params = optax.tree.size(params)
  if not isinstance(loss, LeastSquares):  # no residuals to count
    return n_params <= DENSE_MAX_PARAMS
  if not jacobian_fits(loss, params):
    return False
  if loss.jacobian_fn is None:
    return n_params <= DENSE_MAX_PARAMS
  n_residuals = residual_count(loss, params)
  m = min(n_residuals, n_params)
  return n_residuals * n_params * m <= DENSE_MAX_FLOPS


def newton_mode(
  hyperparams: TRNCGHyperparams, params: Any, loss: Callable[[Any], Any]
) -> Optional[str]:
  """The exact-Hessian ``hvp_mode`` that ``newton_finish`` switches to for
  ``params`` and ``loss`` (a function of params alone), or ``None`` where it
  does not apply: only after dense Gauss-Newton steps, with at most
  :data:`DENSE_MAX_PARAMS` params (``P`` HVPs per iteration) and a loss
  that forward mode can differentiate."""
  if not (
    hyperparams.newton_finish
    and hyperparams.hvp_mode == hvp_lib.GAUSS_NEWTON
    and uses_dense_solver(hyperparams, params, loss)
    and optax.tree.size(params) <= DENSE_MAX_PARAMS
  ):
    return None
  if hvp_lib.uses_custom_vjp(jax.make_jaxpr(loss)(params).jaxpr):
    return None
  return hvp_lib.FORWARD_OVER_REVERSE


#: The hyperparameters of Boyd & Tanadi (2025), for reproducing the paper:
#: ``trncg(**PAPER_HYPERPARAMS)``. An absolute CG tolerance of 1e-8 and a
#: maximal radius of 10; the defaults of :class:`TRNCGHyperparams` are ours.
PAPER_HYPERPARAMS = types.MappingProxyType(
  dict(
    initial_radius=2.0,
    max_radius=10.0,
    eta=1e-3,
    cg_tol=1e-8,
    inexact_newton=False,
    max_cg_steps=500,
  )
)


class TRNCGInfo(NamedTuple):
  """Diagnostics of the last outer iteration.

  The value is called ``loss`` (not ``value``) so that
  ``optax.value_and_grad_from_state`` finds exactly one ``value`` in the state.

  Attributes:
    loss: the loss at the params returned by this update.
    grad_norm: the gradient norm there.
    radius: the radius ``Delta`` this iteration's subproblem used.
    rho: actual over predicted reduction (``-inf`` when undefined).
    actual_reduction: ``f(x) - f(x + p)``.
    predicted_reduction: ``m(0) - m(p)``.
    step_norm: ``||p||`` (``||p||_M`` with a preconditioner).
    cg_steps: CG iterations, each one HVP.
    hvps: all HVPs of the iteration: ``cg_steps``, plus ``nystrom_rank`` when
      the preconditioner was rebuilt.
    cg_status: a :class:`trncg_jax.CGStatus`.
    accepted: whether params moved.
    status: a :class:`StepStatus`.
    trials: the trial points evaluated, each one value and gradient: 1, or
      up to :data:`DENSE_TRIALS` with the dense solver, which tries a
      rejected step again at the shrunk radius within the iteration.
    newton: whether the step was the exact Hessian's, after the switch of
      ``newton_finish``.
    aux: with ``has_aux``, the loss's aux output at the params returned by
      this update (the accepted point); ``None`` otherwise.
  """

  loss: jax.Array
  grad_norm: jax.Array
  radius: jax.Array
  rho: jax.Array
  actual_reduction: jax.Array
  predicted_reduction: jax.Array
  step_norm: jax.Array
  cg_steps: jax.Array
  hvps: jax.Array
  cg_status: jax.Array
  accepted: jax.Array
  status: jax.Array
  trials: jax.Array
  newton: jax.Array
  aux: Any = None


class Attempt(NamedTuple):
  """One trial step of :func:`trust_region_step` and its verdict."""

  cg: Any  # the subproblem's SteihaugResult
  radius: jax.Array  # the region the step was taken in
  trial: Any  # params + step
  value: jax.Array  # the loss there
  grad: Any
  grad_norm: jax.Array
  aux: Any
  actual_reduction: jax.Array
  rho: jax.Array
  new_radius: jax.Array
  accepted: jax.Array
  status: jax.Array  # a StepStatus
  trials: jax.Array  # attempts so far in this iteration


class TRNCGState(NamedTuple):
  """State of the trust-region Newton-CG method.

  Attributes:
    count: outer iterations taken.
    value: the loss at the current params (``inf`` until first evaluated).
    grad: the gradient at the current params.
    radius: the trust-region radius for the next iteration.
    hyperparams: a :class:`TRNCGHyperparams` of arrays.
    info: a :class:`TRNCGInfo` for the last iteration.
    nystrom: with ``nystrom_rank > 0``, the preconditioner's
      :class:`trncg_jax.preconditioner.NystromFactors`; ``None`` otherwise.
    point: the params at which ``value`` and ``grad`` were taken. An update
      called with other params (a transformation after trncg in an
      ``optax.chain`` changed the step, or the caller moved them)
      re-evaluates the loss there instead of trusting ``value``.
    last_step: with ``nystrom_rank > 0``, the last trial step (accepted or
      not), whose length in the old and the new preconditioner's norm
      rescales the radius when the preconditioner is rebuilt (see
      :func:`norm_ratio`); ``None`` otherwise.
    gain: the running average of ``log10`` of the gain per step, ``(f -
      f') / f``, that ``newton_finish`` watches (see :data:`NEWTON_AFTER`).
    slow_steps: ``-1`` until ``gain`` has passed :data:`NEWTON_FAST`, then
      the count of consecutive iterations with ``gain`` in the slow band;
      the steps are Newton's from :data:`NEWTON_AFTER` on.
  """

  count: jax.Array
  value: jax.Array
  grad: Any
  radius: jax.Array
  hyperparams: TRNCGHyperparams
  info: TRNCGInfo
  nystrom: Optional[NystromFactors] = None
  point: Any = None
  last_step: Any = None
  gain: Any = None
  slow_steps: Any = None

  # The protocol of trncg_jax.solve (see its module docstring).

  def value_and_grad(self, fun: Callable[[Any], Any], params: Any) -> tuple:
    """``(value, grad, aux)`` at ``params``: the stored ones, unless params
    are not the point they describe (see :func:`value_at`)."""
    return value_at(fun, params, self)

  def terminate(self, min_radius: jax.Array) -> jax.Array:
    """A :class:`trncg_jax.SolveStatus` code: ``STAGNATION`` once the radius
    is below ``min_radius``, ``STATIONARY`` or ``PRECISION_LIMIT`` when the
    last iteration found no further progress possible, else ``MAX_STEPS``
    (go on)."""
    return first_true(
      [
        self.radius < min_radius,
        self.info.status == StepStatus.STATIONARY,
        self.info.status == StepStatus.PRECISION_LIMIT,
      ],
      [
        SolveStatus.STAGNATION,
        SolveStatus.STATIONARY,
        SolveStatus.PRECISION_LIMIT,
      ],
      SolveStatus.MAX_STEPS,
    )


def _float_dtype(params):
  return jnp.result_type(*jax.tree_util.tree_leaves(params))


def init_state(
  params: Any, hyperparams: TRNCGHyperparams, aux: Any = None
) -> TRNCGState:
  """The state before the first iteration, with hyperparams in params' dtype.

  With ``has_aux``, ``aux`` is an example of the loss's aux output (arrays or
  ``jax.ShapeDtypeStruct``); zeros of its shapes fill ``info.aux`` until the
  first update, so the state's structure never changes (no retracing).
  Without ``has_aux`` it is ignored.
  """
  check_float_params(params, "trncg")
  if hyperparams.has_aux and aux is None:
    raise TypeError(
      "trncg(has_aux=True) needs an example of the loss's aux output at "
      "init, to fix the state's structure: init(params, aux=jax.eval_shape("
      "loss_fn, params, *args)[1]). trncg_jax.solve(..., has_aux=True) does "
      "this for you."
    )
  num_params = optax.tree.size(params)
  if hyperparams.nystrom_rank > num_params:
    raise ValueError(
      f"nystrom_rank must be an integer in [0, {num_params}] (the number of "
      f"params), got {hyperparams.nystrom_rank}"
    )
  aux = (
    jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.result_type(x)), aux)
    if hyperparams.has_aux
    else None
  )
  dtype = _float_dtype(params)
  hp = hyperparams.as_arrays(dtype)
  inf = jnp.asarray(jnp.inf, dtype)
  zero = jnp.zeros((), dtype)
  info = TRNCGInfo(
    loss=inf,
    grad_norm=inf,
    radius=hp.initial_radius,
    rho=zero,
    actual_reduction=zero,
    predicted_reduction=zero,
    step_norm=zero,
    cg_steps=jnp.zeros((), jnp.int32),
    hvps=jnp.zeros((), jnp.int32),
    cg_status=jnp.asarray(CGStatus.CONVERGED, jnp.int32),
    accepted=jnp.asarray(False),
    status=jnp.asarray(StepStatus.ACCEPTED, jnp.int32),
    trials=jnp.zeros((), jnp.int32),
    newton=jnp.asarray(False),
    aux=aux,
  )
  state = TRNCGState(
    count=jnp.zeros((), jnp.int32),
    value=inf,
    grad=optax.tree.zeros_like(params),
    radius=hp.initial_radius,
    hyperparams=hp,
    info=info,
    nystrom=(
      NystromFactors.identity(params, hyperparams.nystrom_rank)
      if hyperparams.nystrom_rank
      else None
    ),
    point=params,
    last_step=(
      optax.tree.zeros_like(params) if hyperparams.nystrom_rank else None
    ),
    gain=jnp.asarray(np.log10(NEWTON_GAIN_FLOOR), dtype),
    slow_steps=jnp.asarray(-1, jnp.int32),
  )
  return distinct_buffers(state)


def value_at(
  fun, params: Any, state: TRNCGState, given: Optional[tuple] = None
) -> tuple:
  """``(value, grad, aux)`` at ``params``: ``given`` (the caller's), else the
  state's, unless the state holds none yet or ``params`` are not the point
  the state describes; then the loss is evaluated (one gradient)."""
  stored = (state.value, state.grad, state.info.aux)
  if given is not None:  # the caller's value comes with the state's aux
    given = (jnp.asarray(given[0], state.value.dtype), given[1], state.info.aux)
  known = (
    jnp.isfinite(state.value)
    if given is None or state.hyperparams.has_aux
    else jnp.asarray(True)
  )
  # A transformation after trncg in optax.chain moves params elsewhere than
  # the accepted point: its stored value would be silently wrong (a stall).
  fresh = known & tree_equal(params, state.point)
  return jax.lax.cond(
    fresh,
    lambda: stored if given is None else given,
    lambda: evaluate(
      fun, params, state.value.dtype, state.hyperparams.has_aux, state.info.aux
    ),
  )


def check_trncg_state(state: Any, params: Any, who: str) -> None:
  """``TypeError`` unless ``state`` is a :class:`TRNCGState` for ``params``."""
  check_state(
    state,
    TRNCGState,
    params,
    state.grad if isinstance(state, TRNCGState) else None,
    who,
  )


def trust_region_step(
  fun: Callable[[Any], Any],
  params: Any,
  value: jax.Array,
  grad: Any,
  aux: Any,
  state: TRNCGState,
  hvp_fun: Optional[Callable[[Any], Any]] = None,
) -> tuple[Any, TRNCGState]:
  """One outer iteration from a known value and gradient.

  Shared by :func:`trncg_update` and the optax transformation.

  Args:
    fun: the loss as a function of params alone; returns ``(loss, aux)`` with
      ``has_aux``.
    params: the current params.
    value: the loss at ``params``.
    grad: its gradient there.
    aux: the aux output there (``None`` without ``has_aux``).
    state: the current :class:`TRNCGState`.
    hvp_fun: the function whose Hessian the model uses, like ``fun``; e.g.
      the loss on a sub-batch (Byrd et al. 2011). ``None`` for ``fun``.

  Returns:
    ``(updates, new_state)``: ``updates`` is the step when accepted and zeros
    otherwise, so that ``params + updates`` are the new params.
  """
  hp = state.hyperparams
  dtype = state.value.dtype
  value = jnp.asarray(value, dtype)
  radius = state.radius
  grad_norm = safe_norm(grad).astype(dtype)
  # The norm is finite when every entry is, unless it passes the dtype's
  # largest value, where the run could not go on anyway: one reduction, not
  # two (see trncg_jax.status.first_true).
  current_finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
  # The forcing term min(0.5, ||g||^q), relative to ||g||; floored at
  # 100 eps, below which CG's residual is round-off.
  rtol = jnp.where(
    hp.inexact_newton,
    jnp.clip(
      grad_norm**hp.forcing_power, ROUND_OFF_ULPS * jnp.finfo(dtype).eps, 0.5
    ),
    0.0,
  )
  tol = jnp.where(hp.inexact_newton, 0.0, hp.cg_tol)

  curvature_fun = loss_only(fun if hvp_fun is None else hvp_fun, hp.has_aux)
  dense = uses_dense_solver(hp, params, curvature_fun)
  dense_gn = dense and hp.hvp_mode == hvp_lib.GAUSS_NEWTON
  hvp = (
    None if dense_gn else hvp_lib.make_hvp(curvature_fun, params, hp.hvp_mode)
  )
  factors, sketch_hvps = state.nystrom, 0
  preconditioner = IDENTITY
  if hp.nystrom_rank:
    refresh = state.count % hp.nystrom_refresh == 0
    # A fresh key per refresh, derived from the count: no key in the state.
    factors = jax.lax.cond(
      refresh,
      lambda: nystrom_factors(
        hvp,
        grad,
        hp.nystrom_rank,
        jax.random.fold_in(jax.random.key(0), state.count),
        hp.nystrom_damping,
      ),
      lambda: state.nystrom,
    )
    radius = jnp.minimum(
      radius * norm_ratio(state.last_step, state.nystrom, factors),
      hp.max_radius,
    )
    sketch_hvps = jnp.where(refresh, hp.nystrom_rank, 0)
    preconditioner = factors.preconditioner(grad)
  finish_mode = newton_mode(hp, params, curvature_fun)

  damped = state.info.cg_status == CGStatus.DAMPED

  def gauss_newton_solver():
    return dense_solver(
      curvature_fun,
      params,
      grad,
      hp.dense_damping,
      loss_only(fun, hp.has_aux),  # the damped search picks by the loss
      # After a damped step, far from a minimizer, the model's own error
      # dwarfs float32's: B in float32 halves the cost of the iteration.
      damped,
    )

  def cg_solve(radius, _):
    return cg_steihaug(
      grad, hvp, radius, tol, hp.max_cg_steps, preconditioner, rtol
    )

  # Each builds its solve(radius, damped) when called (a factorization).
  if dense_gn:
    solver = gauss_newton_solver
  elif dense:
    solver = lambda: newton_solver(hvp, params, grad)
  else:
    solver = lambda: cg_solve
  least_squares = isinstance(fun, LeastSquares) and not hp.has_aux
  # One forward pass, outside the retries (XLA can share it with the
  # curvature's linearization).
  residuals = fun.residual_fn(params) if least_squares else None

  def attempt(
    solve, searched: bool, radius: jax.Array, damped: jax.Array, trials
  ) -> Attempt:
    cg = solve(radius, damped)
    if searched:
      # The dense Gauss-Newton step searched radii around Delta: the region
      # is the one whose step was taken.
      radius = jnp.where(
        (cg.status == CGStatus.HIT_BOUNDARY) | (cg.status == CGStatus.DAMPED),
        cg.step_norm,
        radius,
      )
    trial = optax.tree.add(params, cg.step)
    if least_squares:
      # f - f(x + p) term by term: near a minimum the difference of the two
      # sums is their round-off.
      trial_value, trial_grad, trial_residuals = value_grad_residuals(
        fun, trial
      )
      trial_value, trial_aux = jnp.asarray(trial_value, dtype), None
      actual = reduction(residuals, trial_residuals)
    else:
      trial_value, trial_grad, trial_aux = evaluate(
        fun, trial, dtype, hp.has_aux, state.info.aux
      )
      actual = value - trial_value
    trial_grad_norm = safe_norm(trial_grad).astype(dtype)
    trial_finite = jnp.isfinite(trial_value) & jnp.isfinite(trial_grad_norm)
    predicted = cg.predicted_reduction
    # Round-off safeguard (Conn, Gould & Toint, Section 17.4.2): both
    # reductions within a few ulps of |f| are noise and count as agreement,
    # so steps near the minimizer are not rejected for round-off.
    delta = ROUND_OFF_ULPS * jnp.finfo(dtype).eps * jnp.abs(value)
    defined = (predicted > 0) & jnp.isfinite(actual) & trial_finite
    rho = jnp.where(
      defined,
      (actual + delta) / jnp.where(defined, predicted + delta, 1.0),
      -jnp.inf,
    ).astype(dtype)
    stationary = (cg.steps == 0) & current_finite
    interior = (cg.status == CGStatus.CONVERGED) | (
      cg.status == CGStatus.MAX_STEPS
    )
    on_boundary = ~interior  # NEGATIVE_CURVATURE, HIT_BOUNDARY or NON_FINITE
    # Nothing is left to win at this precision (a bounded stop, not idling):
    # the step is lost in the round-off of params; or the region has shrunk
    # until its step moves no coordinate by more than STEP_ULPS ulps (a loss
    # whose round-off exceeds ulps of |f|, a sum that cancels, can go on
    # accepting such steps for ever: CUTEst's PENALTY3); or the model's own
    # minimizer gains less than f can resolve and the gradient did not
    # shrink either. While it shrinks, Newton steps below f's resolution
    # still improve x, and the safeguarded rho accepts them.
    step_rtol = jnp.where(on_boundary, STEP_ULPS * jnp.finfo(dtype).eps, 0.0)
    precision_limit = (
      current_finite
      & ~stationary
      & (
        tree_within(trial, params, step_rtol.astype(dtype))
        | (
          interior
          & (predicted <= jnp.finfo(dtype).eps * jnp.abs(value))
          & ~(trial_grad_norm < grad_norm)
        )
      )
    )
    accepted = current_finite & ~stationary & (rho > hp.eta)
    new_radius = jnp.where(
      rho < hp.shrink_threshold,
      hp.shrink_factor * radius,
      jnp.where(
        (rho > hp.expand_threshold) & on_boundary,
        jnp.minimum(hp.expand_factor * radius, hp.max_radius),
        radius,
      ),
    )
    new_radius = jnp.where(current_finite & ~stationary, new_radius, radius)
    status = first_true(
      [~current_finite, stationary, precision_limit, accepted, ~trial_finite],
      [
        StepStatus.NON_FINITE_CURRENT,
        StepStatus.STATIONARY,
        StepStatus.PRECISION_LIMIT,
        StepStatus.ACCEPTED,
        StepStatus.NON_FINITE_TRIAL,
      ],
      StepStatus.REJECTED,
    )
    return Attempt(
      cg,
      radius,
      trial,
      trial_value,
      trial_grad,
      trial_grad_norm,
      trial_aux,
      actual.astype(dtype),
      rho,
      new_radius.astype(dtype),
      accepted,
      status,
      jnp.asarray(trials, jnp.int32),
    )

  def iterate(solve, searched: bool) -> Attempt:
    last = attempt(solve, searched, radius, damped, 1)
    if dense:
      # A rejected step is tried again at the shrunk radius from the same
      # factorization, within the iteration (the inner loop of MINPACK's
      # lmder: More 1978, pp. 105-116): a retry costs one gradient, not P
      # JVPs or a Jacobian. The steps are those that as many iterations
      # would take.
      last = jax.lax.while_loop(
        lambda a: (
          (
            (a.status == StepStatus.REJECTED)
            | (a.status == StepStatus.NON_FINITE_TRIAL)
          )
          & (a.trials < DENSE_TRIALS)
        ),
        lambda a: attempt(
          solve,
          searched,
          a.new_radius,
          a.cg.status == CGStatus.DAMPED,
          a.trials + 1,
        ),
        last,
      )
    return last

  newton = state.slow_steps >= NEWTON_AFTER
  if finish_mode is None:
    last = iterate(solver(), dense_gn)
  else:
    # Only the taken branch forms its matrix (J, or H from P HVPs).
    last = jax.lax.cond(
      newton,
      lambda: iterate(
        newton_solver(
          hvp_lib.make_hvp(curvature_fun, params, finish_mode), params, grad
        ),
        False,
      ),
      lambda: iterate(gauss_newton_solver(), True),
    )
  cg, accepted = last.cg, last.accepted
  updates = optax.tree.where(accepted, cg.step, optax.tree.zeros_like(cg.step))
  new_value = jnp.where(accepted, last.value, value)
  new_grad = optax.tree.where(accepted, last.grad, grad)
  info = TRNCGInfo(
    loss=new_value,
    grad_norm=jnp.where(accepted, last.grad_norm, grad_norm),
    radius=last.radius,
    rho=last.rho,
    actual_reduction=last.actual_reduction,
    predicted_reduction=cg.predicted_reduction,
    step_norm=cg.step_norm,
    cg_steps=cg.steps,
    hvps=cg.steps + sketch_hvps,
    cg_status=cg.status,
    accepted=accepted,
    status=last.status,
    trials=last.trials,
    newton=newton,
    aux=optax.tree.where(accepted, last.aux, aux),
  )
  gain, slow_steps = state.gain, state.slow_steps
  new_radius = last.new_radius
  if finish_mode is not None:
    gain, slow_steps = newton_clock(
      state.gain,
      state.slow_steps,
      jnp.where(accepted, last.actual_reduction / value, 0.0),
    )
    # Newton's region is Euclidean, not the Gauss-Newton one's function
    # space: it starts afresh, and shrinks within its first iteration.
    new_radius = jnp.where(
      ~newton & (slow_steps >= NEWTON_AFTER), hp.initial_radius, new_radius
    )
  new_state = TRNCGState(
    count=state.count + 1,
    value=new_value,
    grad=new_grad,
    radius=new_radius,
    hyperparams=hp,
    info=info,
    nystrom=factors,
    point=optax.tree.where(accepted, last.trial, params),
    last_step=cg.step if hp.nystrom_rank else None,
    gain=gain,
    slow_steps=slow_steps,
  )
  return updates, new_state


def newton_clock(
  gain: jax.Array, slow_steps: jax.Array, relative_gain: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The next ``(gain, slow_steps)`` of :class:`TRNCGState` after a step
  that lowered the loss by ``relative_gain`` times its value (see
  :data:`NEWTON_AFTER`); once ``slow_steps`` reaches ``NEWTON_AFTER`` it
  stays."""
  log_gain = jnp.log10(
    jnp.clip(
      jnp.nan_to_num(relative_gain, nan=0.0).astype(gain.dtype),
      NEWTON_GAIN_FLOOR,
      1.0,
    )
  )
  gain = (1 - NEWTON_GAIN_WEIGHT) * gain + NEWTON_GAIN_WEIGHT * log_gain
  started = (slow_steps >= 0) | (gain > np.log10(NEWTON_FAST))
  slow = (gain >= np.log10(NEWTON_SLOW_LOW)) & (
    gain <= np.log10(NEWTON_SLOW_HIGH)
  )
  next_steps = jnp.where(started, jnp.where(slow, slow_steps + 1, 0), -1)
  return gain, jnp.where(slow_steps >= NEWTON_AFTER, slow_steps, next_steps)


def norm_ratio(step: Any, old: NystromFactors, new: NystromFactors):
  """``||step||_new / ||step||_old``, the factor that keeps the trust region
  the size the last step earned when the preconditioner (and with it the
  region's norm) changes; ``1`` when the ratio is undefined (no step yet).

  Without it, a region stretched along directions the old ``M`` found flat
  shrinks by up to ``1 / sqrt(nystrom_damping)`` when the new ``M`` finds
  them stiff, and the radius takes many expansions to recover."""
  before, after = old.norm(step), new.norm(step)
  defined = (before > 0) & jnp.isfinite(before) & jnp.isfinite(after)
  return jnp.where(defined, after / jnp.where(defined, before, 1.0), 1.0)


#: The defaults, for the signatures of :func:`trncg_init` and
#: :func:`trncg_jax.trncg` (one place, the dataclass, defines them).
DEFAULTS = TRNCGHyperparams()
#: A float or an int hyperparameter: a Python number, or a scalar array (as
#: ``optax.inject_hyperparams`` passes them).
Float = Union[float, jax.Array]
Int = Union[int, jax.Array]


def hyperparams_from(options: dict) -> TRNCGHyperparams:
  """Validated :class:`TRNCGHyperparams` from the keyword options of
  :func:`trncg_init` or :func:`trncg_jax.trncg` (their ``locals()``).

  ``nystrom_rank`` selects code, but ``optax.inject_hyperparams`` passes
  every int as an array: a concrete one becomes an int, and a traced one (in
  an injected update) only passes validation, since the update takes the
  code-selecting fields from the state.
  """
  fields = {f.name for f in dataclasses.fields(TRNCGHyperparams)}
  options = {k: v for k, v in options.items() if k in fields}
  rank = options["nystrom_rank"]
  if isinstance(rank, jax.core.Tracer):
    options["nystrom_rank"] = 0
  elif (
    isinstance(rank, (jax.Array, np.ndarray))
    and np.ndim(rank) == 0
    and jnp.issubdtype(rank.dtype, jnp.integer)
  ):
    options["nystrom_rank"] = int(rank)
  return TRNCGHyperparams(**options).validate()


@named_options
def trncg_init(
  params: Any,
  *,
  aux: Any = None,
  initial_radius: Float = DEFAULTS.initial_radius,
  max_radius: Float = DEFAULTS.max_radius,
  eta: Float = DEFAULTS.eta,
  cg_tol: Float = DEFAULTS.cg_tol,
  inexact_newton: bool = DEFAULTS.inexact_newton,
  forcing_power: Float = DEFAULTS.forcing_power,
  max_cg_steps: Int = DEFAULTS.max_cg_steps,
  nystrom_refresh: Int = DEFAULTS.nystrom_refresh,
  nystrom_damping: Float = DEFAULTS.nystrom_damping,
  dense_damping: Float = DEFAULTS.dense_damping,
  shrink_factor: Float = DEFAULTS.shrink_factor,
  expand_factor: Float = DEFAULTS.expand_factor,
  shrink_threshold: Float = DEFAULTS.shrink_threshold,
  expand_threshold: Float = DEFAULTS.expand_threshold,
  hvp_mode: str = DEFAULTS.hvp_mode,
  has_aux: bool = DEFAULTS.has_aux,
  nystrom_rank: Int = DEFAULTS.nystrom_rank,
  solver: str = DEFAULTS.solver,
  newton_finish: bool = DEFAULTS.newton_finish,
) -> TRNCGState:
  """Initializes the trust-region Newton-CG state for :func:`trncg_update`.

  The keyword options are the fields of :class:`TRNCGHyperparams`, which
  documents each one's meaning, default and range. They are stored in the
  state as arrays (``state.hyperparams``), so new values
  (``state.hyperparams.replace(eta=0.1)``) never recompile.

  Args:
    params: a pytree of float arrays (float32 or float64).
    aux: with ``has_aux=True`` only, an example of the loss's aux output,
      e.g. ``jax.eval_shape(loss_fn, params, *args)[1]``.

  Returns:
    A :class:`TRNCGState`.

  Raises:
    ValueError: naming an option outside its range.
    TypeError: for an unknown option (the message lists the valid ones) or
      non-float params.

  Examples:
    >>> import jax.numpy as jnp
    >>> import trncg_jax
    >>> state = trncg_jax.trncg_init(jnp.zeros(3), initial_radius=0.5)
    >>> float(state.radius)
    0.5
  """
  return init_state(params, hyperparams_from(locals()), aux)


def trncg_update(
  params: Any,
  state: TRNCGState,
  loss_fn: Callable[..., Any],
  *args,
  hvp_args: Optional[tuple] = None,
  fresh_batch: bool = False,
) -> tuple[Any, TRNCGState]:
  """One trust-region Newton-CG iteration, as a pure function.

  .. math::

    p_k \\approx \\arg\\min_{\\|p\\| \\le \\Delta_k} g_k^\\top p
      + \\tfrac12 p^\\top \\nabla^2 f(x_k) p, \\qquad
    \\rho_k = \\frac{f(x_k) - f(x_k + p_k)}{m_k(0) - m_k(p_k)}, \\qquad
    x_{k+1} = \\begin{cases} x_k + p_k & \\rho_k > \\eta \\\\
                             x_k & \\text{otherwise.}\\end{cases}

  The value and gradient at the current params are taken from ``state`` (they
  were computed at the trial point of the previous iteration), or computed
  when the state holds none. Per iteration the cost is the CG's HVPs plus one
  value-and-gradient at the trial point.

  Mini-batches: pass a new batch in ``args`` each call with
  ``fresh_batch=True``, so that the value and gradient at ``params`` are
  recomputed on it and ``rho`` compares both points on the same batch. With
  ``hvp_args`` the HVPs use ``loss_fn(params, *hvp_args)`` instead, e.g. a
  sub-batch of ``args`` (a subsampled Hessian, Byrd et al. 2011).

  Args:
    params: a pytree of float arrays; never flattened.
    state: from :func:`trncg_init` or a previous update.
    loss_fn: ``loss_fn(params, *args)`` returns a float scalar, or ``(loss,
      aux)`` with ``has_aux``; a :class:`trncg_jax.LeastSquares` with
      ``hvp_mode="gauss_newton"``. Mark it static under ``jax.jit``.
    *args: extra arguments for ``loss_fn``, e.g. data.
    hvp_args: the arguments for ``loss_fn`` in Hessian-vector products;
      ``None`` for ``args``.
    fresh_batch: ``args`` differ from the previous call's (static under
      ``jax.jit``): re-evaluate the loss at ``params`` rather than reuse the
      stored value. Costs one more gradient per iteration.

  Returns:
    ``(new_params, new_state)``.

  Raises:
    TypeError: at trace time, for non-float params or a non-scalar loss.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import trncg_jax
    >>> def loss(x, c):
    ...   return jnp.sum((x - c) ** 2) + jnp.sum(x ** 4)
    >>> update = jax.jit(trncg_jax.trncg_update, static_argnums=2)
    >>> x = jnp.zeros(2)
    >>> state = trncg_jax.trncg_init(x)
    >>> for _ in range(10):
    ...   x, state = update(x, state, loss, jnp.array([1.0, -1.0]))
    >>> print(jnp.round(x, 4), int(state.count))
    [ 0.5898 -0.5898] 10

  References:
    Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithm 4.1
    (Trust Region), p. 69, and Algorithm 7.2 (CG-Steihaug), p. 171.
    Byrd, Chin, Neveitt & Nocedal, "On the use of stochastic Hessian
    information in optimization methods for machine learning", SIAM J. Optim.
    21(3), 2011, pp. 977-995.
  """
  check_float_params(params, "trncg_update")
  check_trncg_state(state, params, "trncg_update")
  has_aux = state.hyperparams.has_aux
  fun = bind(loss_fn, *args)
  check_scalar_loss(fun, params, "trncg_update", has_aux)
  hvp_fun = None if hvp_args is None else bind(loss_fn, *hvp_args)
  dtype = state.value.dtype
  if fresh_batch:
    value, grad, aux = evaluate(fun, params, dtype, has_aux, state.info.aux)
  else:
    value, grad, aux = value_at(fun, params, state)
  updates, state = trust_region_step(
    fun, params, value, grad, aux, state, hvp_fun
  )
  return optax.tree.add(params, updates), state
