"""Nonlinear conjugate gradient with optax's strong-Wolfe line search.

Directions ``d_k = -g_k + beta_k d_{k-1}`` (``d_0 = -g_0``), steps
``x_{k+1} = x_k + alpha_k d_k`` with ``alpha_k`` from a line search. With
``y = g_k - g_{k-1}``:

========================  =========================================
``'hestenes-stiefel'``    ``y^T g_k / y^T d_{k-1}``
``'fletcher-reeves'``     ``g_k^T g_k / g_{k-1}^T g_{k-1}``
``'polak-ribiere'``       ``y^T g_k / g_{k-1}^T g_{k-1}``
``'polak-ribiere-plus'``  ``max(y^T g_k / g_{k-1}^T g_{k-1}, 0)``
``'dai-yuan'``            ``g_k^T g_k / y^T d_{k-1}``
========================  =========================================

On a quadratic with exact line searches all five coincide and the directions
are conjugate, so the minimizer is reached in at most ``n`` steps (N&W
Theorem 5.1); away from that case the safeguards below keep the method sound.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from trncg_jax._checks import (
  all_finite,
  check_float_params,
  check_number,
  check_scalar_loss,
  check_state,
  named_options,
  tree_max_abs,
)
from trncg_jax.loss import bind, distinct_buffers, evaluate
from trncg_jax.status import SolveStatus

BETA_RULES = (
  "hestenes-stiefel",
  "fletcher-reeves",
  "polak-ribiere",
  "polak-ribiere-plus",
  "dai-yuan",
)
#: Closed-form step ``alpha = -g^T d / d^T H d`` (one HVP): exact for
#: quadratics only. It exists to test the CG theory, not for training.
EXACT_QUADRATIC = "exact_quadratic"
#: A line search may end this much (relatively) above its start before the
#: step is rejected: float32 round-off, the zoom's own approx_dec_rtol.
INCREASE_RTOL = 1e-6
#: After a rejected step the next search starts this much shorter, so that a
#: step into a NaN or -inf region is not retried as it was.
REJECTED_SHRINK = 0.1
#: Rejected steps in a row after which :func:`trncg_jax.solve` stops with
#: ``STAGNATION``: the first guess has shrunk by ``REJECTED_SHRINK ** 20 =
#: 1e-20``, below float64's resolution of the params.
MAX_REJECTIONS = 20


def _guarded_div(num, den):
  """``num / den``, or 0 where the quotient is undefined (a restart)."""
  ok = (den != 0) & jnp.isfinite(den)
  out = num / jnp.where(ok, den, 1.0)
  return jnp.where(ok & jnp.isfinite(out), out, 0.0)


def beta_value(rule: str, grad, prev_grad, prev_direction) -> jax.Array:
  """The conjugacy coefficient ``beta_k`` of ``rule`` (see module docstring)."""
  y = optax.tree.sub(grad, prev_grad)
  if rule == "fletcher-reeves":
    return _guarded_div(
      optax.tree.vdot(grad, grad), optax.tree.vdot(prev_grad, prev_grad)
    )
  if rule == "dai-yuan":
    return _guarded_div(
      optax.tree.vdot(grad, grad), optax.tree.vdot(y, prev_direction)
    )
  if rule == "hestenes-stiefel":
    return _guarded_div(
      optax.tree.vdot(y, grad), optax.tree.vdot(y, prev_direction)
    )
  pr = _guarded_div(
    optax.tree.vdot(y, grad), optax.tree.vdot(prev_grad, prev_grad)
  )
  return jnp.maximum(pr, 0.0) if rule == "polak-ribiere-plus" else pr


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NonlinearCGConfig:
  """Static configuration of nonlinear CG (changing it recompiles).

  Attributes:
    beta: one of :data:`BETA_RULES`. The default, Polak-Ribiere+, is globally
      convergent under the strong Wolfe conditions (Gilbert & Nocedal 1992)
      and, unlike Fletcher-Reeves, restarts itself (``beta = 0``) instead of
      jamming with tiny steps (N&W pp. 122-124).
    restart_every: restart with ``-g`` every this many steps; ``None`` means
      the number of parameters ``n``, the classical choice (N&W p. 124).
    powell_nu: restart when ``|g_k^T g_{k-1}| >= nu ||g_k||^2``, i.e. when
      successive gradients are far from orthogonal; ``0.2`` (N&W eq. 5.52).
    linesearch: an optax line search that stores ``value`` and ``grad`` in its
      state, or :data:`EXACT_QUADRATIC`. ``None`` means
      ``optax.scale_by_zoom_linesearch(max_linesearch_steps=30,
      curv_rtol=0.2, initial_guess_strategy='one')``: strong Wolfe with
      ``c2 = 0.2``, below the 1/2 that keeps nonlinear CG's directions descent
      directions (N&W Lemma 5.6, p. 125), and the cheapest of 0.1, 0.2 and
      0.3 on the benchmark fits. Each search
      starts from the step ``alpha_{k-1} g_{k-1}^T d_{k-1} / g_k^T d_k``
      (N&W eq. 3.60), so a first guess of 1 is well scaled.
  """

  beta: str = dataclasses.field(
    default="polak-ribiere-plus", metadata=dict(static=True)
  )
  restart_every: Optional[int] = dataclasses.field(
    default=None, metadata=dict(static=True)
  )
  powell_nu: float = dataclasses.field(default=0.2, metadata=dict(static=True))
  linesearch: "Linesearch" = dataclasses.field(
    default=None, metadata=dict(static=True)
  )

  def validate(self) -> "NonlinearCGConfig":
    if self.beta not in BETA_RULES:
      raise ValueError(f"beta must be one of {BETA_RULES}, got {self.beta!r}")
    if self.restart_every is not None:
      check_number(
        "restart_every", self.restart_every, 1, 2**31 - 1, integer=True
      )
    check_number(
      "powell_nu",
      self.powell_nu,
      0.0,
      float("inf"),
      low_open=True,
      high_open=True,
    )
    ls = self.linesearch
    is_transform = isinstance(ls, optax.GradientTransformation)
    # A line search keeps the new point's value and grad in its state (that is
    # how this optimizer reads them); optax.adam(...) and the like do not.
    if not (
      ls is None
      or (isinstance(ls, str) and ls == EXACT_QUADRATIC)
      or (is_transform and _stores_value_and_grad(ls))
    ):
      raise ValueError(
        "linesearch must be None, 'exact_quadratic' or an optax line search "
        "that stores value and grad in its state (e.g. "
        "optax.scale_by_zoom_linesearch(...) or optax."
        f"scale_by_backtracking_linesearch(..., store_grad=True)), got {ls!r}"
      )
    return self

  def resolved_linesearch(self):
    if self.linesearch is None:
      return _DEFAULT_LINESEARCH
    return self.linesearch


def _stores_value_and_grad(linesearch) -> bool:
  state = jax.eval_shape(linesearch.init, jnp.zeros(1))
  return all(
    optax.tree.get(state, key, default=None) is not None
    for key in ("value", "grad")
  )


_DEFAULT_LINESEARCH = optax.scale_by_zoom_linesearch(
  max_linesearch_steps=30, curv_rtol=0.2, initial_guess_strategy="one"
)


class ExactLinesearchState(NamedTuple):
  """State of the closed-form quadratic step: the accepted value and grad."""

  learning_rate: jax.Array
  value: jax.Array
  grad: Any


class NonlinearCGInfo(NamedTuple):
  """Diagnostics of the last step.

  Attributes:
    loss: the loss at the returned params (not called ``value``, so that
      ``optax.value_and_grad_from_state`` finds one ``value`` only).
    grad_norm: the gradient norm there.
    beta: the ``beta_k`` used (0 on a restart).
    restarted: whether ``d_k = -g_k`` was forced.
    linesearch_steps: line-search iterations (-1 if the search reports none).
    stepsize: ``alpha_k`` along the unscaled direction ``d_k``.
    accepted: false when the line search ended on a non-finite or higher
      loss, found no step, or the gradient was zero, and params were kept.
  """

  loss: jax.Array
  grad_norm: jax.Array
  beta: jax.Array
  restarted: jax.Array
  linesearch_steps: jax.Array
  stepsize: jax.Array
  accepted: jax.Array


class NonlinearCGState(NamedTuple):
  """State of nonlinear CG.

  Attributes:
    count: steps taken.
    direction: the last direction ``d_{k-1}``.
    prev_grad: the gradient ``g_{k-1}`` at which it was taken.
    prev_slope: ``g_{k-1}^T d_{k-1}``, for the initial step guess.
    stepsize: ``alpha_{k-1}``.
    since_restart: steps since the last restart.
    rejections: rejected steps in a row (0 after an accepted one).
    restart_every: the periodic restart interval (an array).
    linesearch_state: the line search's state; it holds ``value`` and
      ``grad`` at the current params.
    info: a :class:`NonlinearCGInfo`.
    config: the static :class:`NonlinearCGConfig`.
  """

  count: jax.Array
  direction: Any
  prev_grad: Any
  prev_slope: jax.Array
  stepsize: jax.Array
  since_restart: jax.Array
  rejections: jax.Array
  restart_every: jax.Array
  linesearch_state: Any
  info: NonlinearCGInfo
  config: NonlinearCGConfig

  def terminate(self, min_radius: jax.Array) -> jax.Array:
    """The protocol of :func:`trncg_jax.solve`: ``STAGNATION`` after
    :data:`MAX_REJECTIONS` rejected steps in a row, else ``MAX_STEPS`` (go
    on). ``min_radius`` is trncg's and unused here."""
    del min_radius
    return jnp.where(
      self.rejections >= MAX_REJECTIONS,
      SolveStatus.STAGNATION,
      SolveStatus.MAX_STEPS,
    )


def _init(params, config: NonlinearCGConfig) -> NonlinearCGState:
  check_float_params(params, "nonlinear_cg")
  dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
  ls = config.resolved_linesearch()
  if ls == EXACT_QUADRATIC:
    ls_state = ExactLinesearchState(
      jnp.ones((), dtype),
      jnp.asarray(jnp.inf, dtype),
      optax.tree.zeros_like(params),
    )
  else:
    ls_state = ls.init(jax.tree.map(jnp.asarray, params))  # Python floats
  n = optax.tree.size(params)
  zero, inf = jnp.zeros((), dtype), jnp.asarray(jnp.inf, dtype)
  return distinct_buffers(
    NonlinearCGState(
      count=jnp.zeros((), jnp.int32),
      direction=optax.tree.zeros_like(params),
      prev_grad=optax.tree.zeros_like(params),
      prev_slope=zero,
      stepsize=jnp.ones((), dtype),
      since_restart=jnp.zeros((), jnp.int32),
      rejections=jnp.zeros((), jnp.int32),
      restart_every=jnp.asarray(config.restart_every or n, jnp.int32),
      linesearch_state=ls_state,
      info=NonlinearCGInfo(
        inf,
        inf,
        zero,
        jnp.asarray(True),
        jnp.zeros((), jnp.int32),
        zero,
        jnp.asarray(True),
      ),
      config=config,
    )
  )


def _exact_quadratic_step(fun, params, direction, grad):
  """``alpha = -g^T d / d^T H d``, the exact minimizer along ``d`` if quadratic."""
  hd = jax.jvp(jax.grad(fun), (params,), (direction,))[1]
  alpha = _guarded_div(
    -optax.tree.vdot(grad, direction), optax.tree.vdot(direction, hd)
  )
  updates = optax.tree.scale(alpha, direction)
  value, new_grad = jax.value_and_grad(fun)(optax.tree.add(params, updates))
  return updates, ExactLinesearchState(alpha, value, new_grad)


def _outside_domain_as_nan(value_fn):
  """``value_fn`` with inf and -inf turned to NaN: optax's line searches take
  NaN as outside the domain and shorten the step, but would accept -inf as a
  decrease, and this optimizer then rejects it, the same step every time."""

  def fn(params, **kwargs):
    value = value_fn(params, **kwargs)
    return jnp.where(jnp.isfinite(value), value, jnp.nan)

  return fn


def _update(
  config: NonlinearCGConfig,
  state: NonlinearCGState,
  params,
  value,
  grad,
  value_fn,
  extra_args,
) -> tuple[Any, NonlinearCGState]:
  """One nonlinear CG step from a known value and gradient (shared core)."""
  dtype = state.stepsize.dtype
  value = jnp.asarray(value, dtype)
  gg = optax.tree.vdot(grad, grad)
  beta = beta_value(config.beta, grad, state.prev_grad, state.direction)
  direction = optax.tree.add_scale(
    optax.tree.scale(-1.0, grad), beta, state.direction
  )
  slope = optax.tree.vdot(grad, direction)
  restart = (
    (state.count == 0)
    | (state.since_restart + 1 >= state.restart_every)
    | ~(slope < 0)  # not a descent direction (or NaN)
    | (jnp.abs(optax.tree.vdot(grad, state.prev_grad)) >= config.powell_nu * gg)
    | ~state.info.accepted
  )
  beta = jnp.where(restart, 0.0, beta).astype(dtype)
  direction = optax.tree.where(restart, optax.tree.scale(-1.0, grad), direction)
  slope = jnp.where(restart, -gg, slope)
  # N&W eq. 3.60: start where the last step's first-order change would repeat.
  # First step: a unit-length move along -g (capped at alpha = 1).
  # Capped at 10x the last step: near a minimizer g^T d collapses and the
  # ratio would explode, sending the search into overflow.
  # After a rejection, a shorter step than the one rejected.
  guess = jnp.where(
    state.count == 0,
    jnp.minimum(1.0, _guarded_div(1.0, jnp.sqrt(gg))),
    jnp.where(
      state.info.accepted,
      jnp.minimum(
        _guarded_div(state.stepsize * state.prev_slope, slope),
        10.0 * state.stepsize,
      ),
      REJECTED_SHRINK * state.stepsize,
    ),
  )
  guess = jnp.where(guess > 0, guess, 1.0).astype(dtype)
  scaled = optax.tree.scale(guess, direction)

  fun = bind(value_fn, **extra_args)
  ls = config.resolved_linesearch()
  if ls == EXACT_QUADRATIC:
    updates, ls_state = _exact_quadratic_step(fun, params, direction, grad)
    stepsize = ls_state.learning_rate
  else:
    updates, ls_state = ls.update(
      scaled,
      state.linesearch_state,
      params,
      value=value,
      grad=grad,
      value_fn=_outside_domain_as_nan(value_fn),
      **extra_args,
    )
    stepsize = guess * optax.tree.get(ls_state, "learning_rate")
  new_value = optax.tree.get(ls_state, "value")
  new_grad = optax.tree.get(ls_state, "grad")
  # A failed search can end above the start: reject an increase beyond the
  # round-off slack that optax's zoom allows itself (approx_dec_rtol = 1e-6).
  # A search that found no step (every trial outside the domain) returns
  # zero updates: a rejection too, so that solve stops instead of idling.
  step_max = tree_max_abs(updates)
  accepted = (
    jnp.isfinite(new_value)
    & all_finite(new_grad)
    & jnp.isfinite(step_max)
    & (step_max > 0)
    & (gg > 0)
    & (new_value <= value + INCREASE_RTOL * jnp.abs(value))
  )
  # Rejected (non-finite or higher end point, zero gradient): stay put, keep
  # value and grad; the next step restarts from -g.
  updates = optax.tree.where(accepted, updates, optax.tree.zeros_like(updates))
  ls_state = optax.tree.set(
    ls_state,
    value=jnp.where(accepted, new_value, value),
    grad=optax.tree.where(accepted, new_grad, grad),
  )
  steps = optax.tree.get(ls_state, "num_linesearch_steps")
  info = NonlinearCGInfo(
    loss=optax.tree.get(ls_state, "value"),
    grad_norm=optax.tree.norm(optax.tree.get(ls_state, "grad")),
    beta=beta,
    restarted=restart,
    linesearch_steps=jnp.asarray(-1 if steps is None else steps, jnp.int32),
    stepsize=jnp.asarray(stepsize, dtype),
    accepted=accepted,
  )
  new_state = NonlinearCGState(
    count=state.count + 1,
    direction=direction,
    prev_grad=grad,
    prev_slope=slope.astype(dtype),
    stepsize=info.stepsize,
    since_restart=jnp.where(restart, 0, state.since_restart + 1),
    rejections=jnp.where(accepted, 0, state.rejections + 1),
    restart_every=state.restart_every,
    linesearch_state=ls_state,
    info=info,
    config=state.config,
  )
  return updates, new_state


Linesearch = Union[None, str, optax.GradientTransformationExtraArgs]


@named_options
def nonlinear_cg(
  *,
  beta: str = "polak-ribiere-plus",
  restart_every: Optional[int] = None,
  powell_nu: float = 0.2,
  linesearch: Linesearch = None,
) -> optax.GradientTransformationExtraArgs:
  """Nonlinear conjugate gradient, called exactly like ``optax.lbfgs``.

  ``update(grads, state, params, *, value, grad, value_fn, **extra_args)``;
  extra arguments go to ``value_fn``. The line search keeps the value and
  gradient of the new point in the state, so ``optax.value_and_grad_from_state``
  costs nothing on the next step.

  Safeguards: restart with ``d = -g`` on the first step, every
  ``restart_every`` steps, when ``d`` is not a descent direction, when Powell's
  test ``|g_k^T g_{k-1}| >= nu ||g_k||^2`` fires, and after a rejected step.
  Every denominator is guarded (an undefined ``beta`` becomes 0, a restart);
  the initial step guess is capped at 10x the previous step; a zero gradient
  gives zero updates, never NaN; a line search ending on a non-finite or
  higher loss leaves params unchanged.

  Args:
    beta: the conjugacy formula, one of :data:`BETA_RULES`.
    restart_every: periodic restart interval; ``None`` for the parameter count.
    powell_nu: Powell's restart threshold ``nu > 0``.
    linesearch: ``None`` for the strong-Wolfe zoom search, any optax line
      search that stores ``value`` and ``grad``, or ``'exact_quadratic'``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, trncg_jax
    >>> def rosenbrock(x):
    ...   return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    >>> opt = trncg_jax.nonlinear_cg()
    >>> x = jnp.array([-1.2, 1.0])
    >>> state = opt.init(x)
    >>> value_and_grad = optax.value_and_grad_from_state(rosenbrock)
    >>> @jax.jit
    ... def step(x, state):
    ...   value, grad = value_and_grad(x, state=state)
    ...   updates, state = opt.update(grad, state, x, value=value, grad=grad,
    ...                               value_fn=rosenbrock)
    ...   return optax.apply_updates(x, updates), state
    >>> for _ in range(60):
    ...   x, state = step(x, state)
    >>> print(jnp.round(x, 3))
    [1. 1.]

  References:
    Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithm 5.4 (FR-CG),
    p. 121; eqs. 5.44-5.50 (PR, PR+, HS), pp. 122-123; restarts, p. 124-125;
    Dai & Yuan, SIAM J. Optim. 10 (1999) 177-182.
  """
  config = NonlinearCGConfig(
    beta, restart_every, powell_nu, linesearch
  ).validate()

  def init_fn(params):
    return _init(params, config)

  def update_fn(
    updates,
    state,
    params=None,
    *,
    value=None,
    grad=None,
    value_fn=None,
    **extra_args,
  ):
    if params is None or value_fn is None:
      raise TypeError(
        "nonlinear_cg's update needs params and value_fn: call "
        "update(grads, state, params, value=..., grad=..., value_fn=loss)."
      )
    check_float_params(params, "nonlinear_cg")
    check_state(
      state,
      NonlinearCGState,
      params,
      getattr(state, "prev_grad", None),
      "nonlinear_cg",
    )
    check_scalar_loss(bind(value_fn, **extra_args), params, "nonlinear_cg")
    if value is not None and jnp.shape(value) != ():
      raise TypeError(
        f"nonlinear_cg: value must be the loss at params, a scalar; got "
        f"shape {jnp.shape(value)}."
      )
    grad = updates if grad is None else grad
    value = value_fn(params, **extra_args) if value is None else value
    return _update(config, state, params, value, grad, value_fn, extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@named_options
def nonlinear_cg_init(
  params: Any,
  *,
  beta: str = "polak-ribiere-plus",
  restart_every: Optional[int] = None,
  powell_nu: float = 0.2,
  linesearch: Linesearch = None,
) -> NonlinearCGState:
  """Initializes :func:`nonlinear_cg_update`; the options are those of
  :func:`nonlinear_cg`, kept in the state (``state.config``)."""
  return _init(
    params,
    NonlinearCGConfig(beta, restart_every, powell_nu, linesearch).validate(),
  )


def nonlinear_cg_update(
  params, state: NonlinearCGState, loss_fn: Callable[..., jax.Array], *args
):
  """One nonlinear CG step as a pure function, like :func:`trncg_update`.

  Args:
    params: a pytree of float arrays.
    state: from :func:`nonlinear_cg_init` or a previous update.
    loss_fn: ``loss_fn(params, *args)`` returns a float scalar (static under
      ``jax.jit``).
    *args: extra arguments for ``loss_fn``.

  Returns:
    ``(new_params, new_state)``.

  Examples:
    >>> import jax, jax.numpy as jnp, trncg_jax
    >>> loss = lambda x, c: jnp.sum((x - c) ** 2 * jnp.arange(1.0, 4.0))
    >>> update = jax.jit(trncg_jax.nonlinear_cg_update, static_argnums=2)
    >>> x, state = jnp.zeros(3), trncg_jax.nonlinear_cg_init(jnp.zeros(3))
    >>> for _ in range(12):
    ...   x, state = update(x, state, loss, 2.0)
    >>> print(jnp.round(x, 4))
    [2. 2. 2.]
  """
  check_float_params(params, "nonlinear_cg_update")
  check_state(
    state,
    NonlinearCGState,
    params,
    getattr(state, "prev_grad", None),
    "nonlinear_cg_update",
  )
  fun = bind(loss_fn, *args)
  check_scalar_loss(fun, params, "nonlinear_cg_update")
  stored_value = optax.tree.get(state.linesearch_state, "value")
  value, grad = jax.lax.cond(
    jnp.isfinite(stored_value),
    lambda: (stored_value, optax.tree.get(state.linesearch_state, "grad")),
    lambda: evaluate(fun, params, stored_value.dtype, has_aux=False)[:2],
  )
  updates, state = _update(state.config, state, params, value, grad, fun, {})
  return optax.tree.add(params, updates), state
