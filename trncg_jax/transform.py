"""The optax interface to trust-region Newton-CG."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from trncg_jax._checks import (
  check_float_params,
  check_scalar_loss,
  named_options,
)
from trncg_jax.loss import bind, match_aux
from trncg_jax.trust_region import (
  DEFAULTS,
  STATIC_FIELDS,
  Float,
  Int,
  TRNCGState,
  check_trncg_state,
  hyperparams_from,
  init_state,
  trust_region_step,
  value_at,
)


@named_options
def trncg(
  *,
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
) -> optax.GradientTransformationExtraArgs:
  """Trust-region Newton-CG as an optax transformation.

  The keyword options are the fields of
  :class:`trncg_jax.trust_region.TRNCGHyperparams`, which documents each
  one's meaning, default and range; the defaults are our recommendation, and
  ``trncg(**trncg_jax.PAPER_HYPERPARAMS)`` reproduces the paper. The numeric
  options can be changed during a run without recompiling through
  ``optax.inject_hyperparams(trncg_jax.trncg)(eta=0.1)``; the
  code-selecting ones (``hvp_mode``, ``solver``, ``has_aux``,
  ``nystrom_rank``, ``newton_finish``) are fixed at ``init``.

  It follows the line-search convention of ``optax.lbfgs``: ``update`` takes
  the loss through ``value_fn`` (extra keyword arguments are forwarded to it)
  and the value and gradient at ``params`` through ``value`` and ``grad``. The
  returned updates are the accepted step, or zeros when the step is rejected.
  The value and gradient of the accepted point are kept in the state (as
  ``value`` and ``grad``), so ``optax.value_and_grad_from_state`` reuses them:
  a rejected step costs no new gradient. See :func:`trncg_jax.trncg_update`
  for the algorithm.

  Put ``trncg`` first in an ``optax.chain``: the trust-region model needs the
  true gradient of ``value_fn``, and later transformations only see the step.
  When one changes the step (``optax.scale``, clipping), params land away
  from the point whose value and gradient the state keeps; the next update
  sees that and evaluates the loss at the params it is given (one more
  gradient), so the run stays correct. ``value_and_grad_from_state`` still
  reports the stored value for that one call.

  With ``has_aux=True``, ``value_fn`` returns ``(loss, aux)``, ``init`` needs
  an example aux (``init(params, aux=...)``), and the aux of the accepted
  point is kept in ``state.info.aux``. ``hvp_extra_args`` (a dict) replaces
  ``extra_args`` in the Hessian-vector products, e.g. to take them on a
  sub-batch; for mini-batches, pass the value and gradient on the current
  batch rather than the stored ones (see :func:`trncg_jax.trncg_update`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`trncg_jax.TRNCGState`.

  Raises:
    ValueError: naming an option outside its range.
    TypeError: for an unknown option (the message lists the valid ones).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import trncg_jax
    >>> def loss(x):
    ...   return jnp.sum((x - 1.0) ** 2) + 0.1 * jnp.sum(x ** 4)
    >>> opt = trncg_jax.trncg()
    >>> x = jnp.zeros(3)
    >>> state = opt.init(x)
    >>> value_and_grad = optax.value_and_grad_from_state(loss)
    >>> for _ in range(8):
    ...   value, grad = value_and_grad(x, state=state)
    ...   updates, state = opt.update(grad, state, x, value=value, grad=grad,
    ...                               value_fn=loss)
    ...   x = optax.apply_updates(x, updates)
    >>> print(jnp.round(x, 4))
    [0.8688 0.8688 0.8688]

  References:
    Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithm 4.1, p. 69,
    and Algorithm 7.2, p. 171.
  """
  config = hyperparams_from(locals())

  def init_fn(params: Any, *, aux: Any = None) -> TRNCGState:
    return init_state(params, config, aux)

  init_fn.accepts_aux = True  # trncg_jax.solve passes aux= (see its protocol)

  def update_fn(
    updates: Any,
    state: TRNCGState,
    params: Any = None,
    *,
    value_fn: Optional[Callable[..., Any]] = None,
    value: Optional[jax.Array] = None,
    grad: Any = None,
    hvp_extra_args: Optional[dict] = None,
    **extra_args,
  ) -> tuple[Any, TRNCGState]:
    if params is None or value_fn is None:
      raise TypeError(
        "trncg's update needs params and value_fn: call "
        "update(grads, state, params, value_fn=loss, value=..., grad=...)."
      )
    check_float_params(params, "trncg")
    check_trncg_state(state, params, "trncg")
    # The factory's numbers rule (optax.inject_hyperparams passes new ones to
    # each update, as arrays); the fields that select code are the state's.
    state = state._replace(
      hyperparams=dataclasses.replace(
        config.as_arrays(state.value.dtype),
        **{name: getattr(state.hyperparams, name) for name in STATIC_FIELDS},
      )
    )
    fun = bind(value_fn, **extra_args)
    check_scalar_loss(fun, params, "trncg", config.has_aux)
    hvp_fun = (
      None if hvp_extra_args is None else bind(value_fn, **hvp_extra_args)
    )
    grad = updates if grad is None else grad
    if value is None:  # one evaluation gives the value and the aux
      value, aux = fun(params) if config.has_aux else (fun(params), None)
      aux = None if aux is None else match_aux(aux, state.info.aux)
      value = jnp.asarray(value, state.value.dtype)
    else:
      if jnp.shape(value) != ():
        raise TypeError(
          f"trncg: value must be the loss at params, a scalar; got shape "
          f"{jnp.shape(value)}. Pass value=loss(params) (as "
          "optax.value_and_grad_from_state returns it)."
        )
      value, grad, aux = value_at(fun, params, state, (value, grad))
    return trust_region_step(fun, params, value, grad, aux, state, hvp_fun)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
