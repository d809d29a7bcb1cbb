"""Helpers every optimizer and ``solve`` share to call the user's loss.

``bind`` fixes the loss's data, ``evaluate`` takes value, gradient and aux in
one pass, ``match_aux`` keeps the aux in the state's types, and
``distinct_buffers`` makes a state donatable.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from trncg_jax.least_squares import LeastSquares


def bind(loss_fn: Callable[..., Any], *args, **kwargs) -> Callable[[Any], Any]:
  """``params -> loss_fn(params, *args, **kwargs)``, keeping a
  :class:`LeastSquares` loss one, so its residuals stay reachable."""
  if isinstance(loss_fn, LeastSquares):
    return loss_fn.bind(*args, **kwargs)
  return lambda params: loss_fn(params, *args, **kwargs)


def distinct_buffers(tree: Any) -> Any:
  """``tree`` with a fresh copy of every leaf, so that no two leaves share a
  buffer and ``jax.jit(..., donate_argnums=...)`` can donate the state."""
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def evaluate(fun, params, dtype, has_aux: bool, aux_like: Any = None):
  """``(value, grad, aux)`` of ``fun`` at ``params``.

  The value is cast to ``dtype``, the dtype the optimizer state keeps it in
  (``lax.cond`` branches must agree). ``aux`` is ``None`` unless ``fun``
  returns ``(value, aux)``, and is cast like ``aux_like`` (see
  :func:`match_aux`) when that is given."""
  if has_aux:
    (value, aux), grad = jax.value_and_grad(fun, has_aux=True)(params)
    aux = aux if aux_like is None else match_aux(aux, aux_like)
  else:
    (value, grad), aux = jax.value_and_grad(fun)(params), None
  return jnp.asarray(value, dtype), grad, aux


def match_aux(aux: Any, like: Any) -> Any:
  """``aux`` in the dtypes of the state's ``like``, so the state keeps its
  types (as the value keeps the state's dtype). Raises ``TypeError`` at
  trace time if the structure or shapes differ from the init example."""
  if jax.tree.structure(aux) != jax.tree.structure(like) or any(
    jnp.shape(a) != jnp.shape(b)
    for a, b in zip(jax.tree.leaves(aux), jax.tree.leaves(like))
  ):
    raise TypeError(
      "has_aux: the loss's aux output "
      f"{jax.tree.map(jnp.shape, aux)} does not match the example given at "
      f"init {jax.tree.map(jnp.shape, like)}; pass aux=jax.eval_shape("
      "loss_fn, params, *args)[1] to init."
    )
  return jax.tree.map(lambda a, b: jnp.asarray(a, b.dtype), aux, like)


def loss_only(fun, has_aux: bool):
  """``fun`` without its aux output."""
  return (lambda p: fun(p)[0]) if has_aux else fun
