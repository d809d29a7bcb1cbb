"""Matrix-free Hessian-vector products by automatic differentiation.

No Hessian is ever formed: each product ``H v`` costs a small constant times
one gradient.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.extend

from trncg_jax.least_squares import gauss_newton_product

#: Forward-over-reverse, ``jax.jvp(jax.grad(f))``: each product re-runs the
#: primal forward and backward pass with tangents. Lowest memory.
FORWARD_OVER_REVERSE = "forward_over_reverse"
#: Forward-over-reverse linearized once per outer iteration with
#: ``jax.linearize``: the primal work is done once and each product in the
#: CG loop only evaluates the tangent (linear) part. Costs the memory of the
#: stored linearization.
LINEARIZE = "linearize"
#: Reverse-over-reverse, ``jax.vjp(jax.grad(f))``, valid because the Hessian is
#: symmetric. Use it for losses with a ``jax.custom_vjp`` that has no JVP rule.
REVERSE_OVER_REVERSE = "reverse_over_reverse"
#: Not the Hessian but the Gauss-Newton matrix ``2 J^T J`` of a
#: :class:`trncg_jax.LeastSquares` loss (see
#: :func:`trncg_jax.least_squares.gauss_newton_product`): positive
#: semidefinite, and each product is one linear JVP and one VJP of the
#: residuals, with no second derivatives of the loss.
GAUSS_NEWTON = "gauss_newton"

#: The modes whose products are exact Hessian-vector products.
HESSIAN_MODES = (FORWARD_OVER_REVERSE, LINEARIZE, REVERSE_OVER_REVERSE)
HVP_MODES = HESSIAN_MODES + (GAUSS_NEWTON,)


def jaxprs_in(value):
  """The jaxprs inside an equation parameter (a jaxpr, or a tuple of them)."""
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jax.extend.core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in jaxprs_in(v)]
  return []


def uses_custom_vjp(jaxpr) -> bool:
  """Whether ``jaxpr`` (or one nested in it) calls a ``jax.custom_vjp``."""
  for eqn in jaxpr.eqns:
    if "custom_vjp" in eqn.primitive.name:
      return True
    if any(
      uses_custom_vjp(j) for v in eqn.params.values() for j in jaxprs_in(v)
    ):
      return True
  return False


def check_hvp_mode(
  fun: Callable[[Any], jax.Array], params: Any, mode: str
) -> None:
  """Raises ``TypeError`` at trace time if ``mode`` cannot differentiate ``fun``.

  JAX reports a forward-mode derivative of a ``jax.custom_vjp`` only when the
  staged program is lowered, far from the cause; this looks for one in the
  loss's jaxpr instead, and names the fix.
  """
  if mode == REVERSE_OVER_REVERSE:
    return
  if uses_custom_vjp(jax.make_jaxpr(fun)(params).jaxpr):
    raise TypeError(
      f"hvp_mode={mode!r} differentiates the gradient in forward mode, but "
      "the loss contains a jax.custom_vjp function, which has no forward-mode"
      " rule. Construct the optimizer with hvp_mode='reverse_over_reverse'."
    )


def make_hvp(
  fun: Callable[[Any], jax.Array], params: Any, mode: str = FORWARD_OVER_REVERSE
) -> Callable[[Any], Any]:
  """Returns ``v -> H v`` where ``H`` is the Hessian of ``fun`` at ``params``
  (its Gauss-Newton matrix for ``mode="gauss_newton"``).

  ``v`` and the result are pytrees with the structure and dtypes of ``params``.

  Args:
    fun: scalar function of a pytree of float arrays.
    params: point at which the Hessian is taken.
    mode: one of :data:`HVP_MODES`.

  Returns:
    A function computing Hessian-vector products at ``params``.

  Raises:
    ValueError: for an unknown ``mode``.
    TypeError: at trace time, for a forward-mode ``mode`` and a loss that
      contains a ``jax.custom_vjp`` (see :func:`check_hvp_mode`), or for
      ``"gauss_newton"`` and a loss that is not a
      :class:`trncg_jax.LeastSquares`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from trncg_jax.hvp import make_hvp
    >>> hvp = make_hvp(lambda x: jnp.sum(x ** 3), jnp.array([1.0, 2.0]))
    >>> hvp(jnp.array([1.0, 1.0]))
    Array([ 6., 12.], dtype=float32)

  References:
    Nocedal & Wright, *Numerical Optimization*, 2nd ed., Section 8.2
    (automatic differentiation of Hessian-vector products), pp. 204-213.
    Pearlmutter, "Fast exact multiplication by the Hessian", 1994.
  """
  if mode not in HVP_MODES:
    raise ValueError(f"hvp_mode must be one of {HVP_MODES}, got {mode!r}")
  check_hvp_mode(fun, params, mode)
  if mode == GAUSS_NEWTON:
    return gauss_newton_product(fun, params)
  grad_fn = jax.grad(fun)
  if mode == FORWARD_OVER_REVERSE:
    return lambda v: jax.jvp(grad_fn, (params,), (v,))[1]
  if mode == LINEARIZE:
    return jax.linearize(grad_fn, params)[1]
  _, vjp_fn = jax.vjp(grad_fn, params)  # REVERSE_OVER_REVERSE
  return lambda v: vjp_fn(v)[0]
