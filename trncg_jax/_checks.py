"""Checks shared by every optimizer in the package.

The ``check_*`` functions run in Python while JAX traces, on shapes and dtypes
only, so they never raise inside compiled code; :func:`all_finite` is their
traced counterpart for values.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp


def all_finite(tree: Any) -> jax.Array:
  """Whether every entry of every leaf of ``tree`` is finite (a traced bool)."""
  return jnp.all(jnp.asarray(
      [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def check_float_params(params: Any, who: str) -> None:
  """Raises ``TypeError`` unless every leaf of ``params`` is a real float."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  if not leaves:
    raise TypeError(f"{who}: params has no array leaves; nothing to optimize.")
  for path, leaf in leaves:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      kind = "complex" if jnp.issubdtype(dtype, jnp.complexfloating) else "non-float"
      raise TypeError(
          f"{who}: params leaf {jax.tree_util.keystr(path) or '<root>'} has "
          f"{kind} dtype {dtype}; only real floating-point params (float32 or "
          "float64) can be optimized. Cast it, e.g. jnp.asarray(x, jnp.float32),"
          " or keep integer data out of params (pass it through *args)."
      )


def check_scalar_loss(fun: Callable[[Any], Any], params: Any, who: str,
                      has_aux: bool = False) -> None:
  """Raises ``TypeError`` unless ``fun(params)`` is a real float scalar, or,
  with ``has_aux``, a pair ``(scalar, aux)``."""
  out = jax.eval_shape(fun, params)
  if has_aux:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
      raise TypeError(
          f"{who}: has_aux=True, so the loss must return a pair (loss, aux); "
          f"got {type(out).__name__}.")
    out = out[0]
  elif isinstance(out, (tuple, list)):
    raise TypeError(
        f"{who}: the loss returned a {type(out).__name__} of {len(out)} items;"
        " it must return one scalar. If it returns (loss, aux), pass "
        "has_aux=True (trncg and solve support it), or return only the loss."
    )
  shape = getattr(out, "shape", None)
  dtype = getattr(out, "dtype", None)
  if shape != () or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"{who}: the loss must return a real floating-point scalar (shape ()),"
        f" got shape {shape} and dtype {dtype}. Reduce it, e.g. with "
        "jnp.mean(...), before returning."
    )


def check_number(name: str, value: Any, low: float, high: float,
                 low_open: bool = False, high_open: bool = False,
                 integer: bool = False) -> None:
  """Raises ``ValueError`` naming ``name`` unless ``value`` is in the range.

  Traced values are let through: they can only be checked when concrete.
  """
  if isinstance(value, jax.core.Tracer):
    return
  lo_b, hi_b = ("(" if low_open else "["), (")" if high_open else "]")
  allowed = f"{lo_b}{low}, {high}{hi_b}"
  kind = "an integer" if integer else "a real number"
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(
        f"{name} must be {kind} in {allowed}, got {value!r}") from None
  if integer and (isinstance(value, bool) or not float(number).is_integer()
                  or not isinstance(value, (numbers.Integral, jax.Array))):
    raise ValueError(f"{name} must be {kind} in {allowed}, got {value!r}")
  too_low = number <= low if low_open else number < low
  too_high = number >= high if high_open else number > high
  if number != number or too_low or too_high:
    raise ValueError(f"{name} must be {kind} in {allowed}, got {value!r}")
