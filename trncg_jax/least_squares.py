"""Least-squares losses, given by their residuals, for Gauss-Newton curvature.

A loss ``f(x) = sum_i r_i(x)^2`` has Hessian ``2 J^T J + 2 sum_i r_i
\\nabla^2 r_i``. The Gauss-Newton matrix ``G = 2 J^T J`` drops the second term,
which vanishes as the residuals do: it is positive semidefinite, so CG never
meets negative curvature, and a product ``G v`` is one JVP and one VJP of the
residuals, with no second derivative of the loss. PINN losses and regression
losses are of this form, with the weights folded into the residuals.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

#: The most entries of ``J`` that are ever formed (the dense solver's, and
#: the Gauss-Newton product's with a ``jacobian_fn``): 2^27, 1 GiB in
#: float64.
DENSE_MAX_ENTRIES = 2**27


class LeastSquares:
  """The loss ``sum of squares of residual_fn(params, *args, **kwargs)``.

  Call it like any loss; pass it as the loss to ``trncg(hvp_mode=
  "gauss_newton")`` (or :func:`trncg_jax.trncg_update`, :func:`trncg_jax.solve`)
  so that the trust-region model uses the Gauss-Newton matrix ``2 J^T J``
  instead of the Hessian. Every other optimizer sees an ordinary loss.

  Args:
    residual_fn: ``residual_fn(params, *args, **kwargs)`` returns a pytree of
      float arrays; the loss is the sum of the squares of all their entries.
      A weighted sum ``sum_k w_k mean(r_k^2)`` is written with residuals
      ``sqrt(w_k / n_k) r_k``.
    jacobian_fn: optional, like SciPy's ``least_squares(jac=...)``:
      ``jacobian_fn(params, *args, **kwargs)`` returns the residuals'
      Jacobian in the layout of ``jax.jacrev(residual_fn)(params, *args)``
      (for each residual array of shape ``s``, a pytree like params with
      leaves of shape ``s + leaf.shape``). The dense Gauss-Newton solver
      uses it instead of ``P`` JVPs, and CG's Gauss-Newton products
      (:func:`gauss_newton_product`) as ``2 J^T (J v)``. Give it when the
      Jacobian is much cheaper than ``P`` JVPs: residuals that each depend
      on one data point (a PINN's collocation points, a regression's
      samples) have it as per-point gradients,
      ``jax.vmap(jax.grad(point_residual), (None, 0))``, at about the cost
      of one gradient of the loss.

  Examples:
    >>> import jax.numpy as jnp, trncg_jax
    >>> x, y = jnp.array([0.0, 1.0, 2.0]), jnp.array([1.0, 3.0, 5.0])
    >>> loss = trncg_jax.LeastSquares(
    ...     lambda w, x, y: (w[0] * x + w[1] - y) / jnp.sqrt(x.size))
    >>> round(float(loss(jnp.zeros(2), x, y)), 4)  # the mean squared error
    11.6667
    >>> res = trncg_jax.solve(loss, jnp.zeros(2), x, y, grad_tol=1e-6,
    ...     optimizer=trncg_jax.trncg(hvp_mode="gauss_newton"))
    >>> jnp.round(res.params, 4)
    Array([2., 1.], dtype=float32)

  References:
    Nocedal & Wright, *Numerical Optimization*, 2nd ed., Section 10.3: the
    Gauss-Newton method, pp. 254-258, and the Levenberg-Marquardt method,
    its trust-region form, pp. 258-262.
  """

  def __init__(
    self,
    residual_fn: Callable[..., Any],
    jacobian_fn: Callable[..., Any] | None = None,
  ):
    optional = {"jacobian_fn": jacobian_fn} if jacobian_fn is not None else {}
    for name, fn in dict(residual_fn=residual_fn, **optional).items():
      if not callable(fn):
        raise TypeError(
          f"LeastSquares needs a callable {name}, got {type(fn).__name__}."
        )
    self.residual_fn = residual_fn
    self.jacobian_fn = jacobian_fn

  def __call__(self, params: Any, *args, **kwargs) -> jax.Array:
    return sum_of_squares(self.residual_fn(params, *args, **kwargs))

  def bind(self, *args, **kwargs) -> "LeastSquares":
    """The same loss with its data fixed: a function of params alone."""
    fix = lambda fn: None if fn is None else lambda p: fn(p, *args, **kwargs)
    return LeastSquares(fix(self.residual_fn), fix(self.jacobian_fn))

  def __repr__(self) -> str:
    return f"LeastSquares({getattr(self.residual_fn, '__name__', '...')})"


def per_point_jacobian(
  residual_fn: Callable[..., jax.Array], params: Any, points: jax.Array
) -> Any:
  """The Jacobian of ``residual_fn(params, points)`` when its ``i``-th
  residual depends on ``points[i]`` alone, as per-point gradients.

  One vmapped gradient (``jax.vmap(jax.grad(...))`` over single-point
  calls), about the cost of one gradient of the loss, where ``jax.jacrev``
  or ``jax.jacfwd`` take ``N`` or ``P`` passes over all points. The result
  has the layout of ``jax.jacrev(residual_fn)(params, points)``: a pytree
  like params with a leading axis of ``len(points)``; scale it like the
  residuals, and return a tuple of such blocks for a tuple of residuals.

  Args:
    residual_fn: ``(params, points) -> (n,)`` residuals, one per point
      (``points`` of shape ``(n, ...)``).
    params: where the Jacobian is taken.
    points: the points, stacked on axis 0.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from trncg_jax.least_squares import per_point_jacobian
    >>> fit = lambda w, x: jnp.tanh(x @ w)  # one residual per row of x
    >>> w, x = jnp.array([0.5, -1.0]), jnp.array([[1.0, 2.0], [0.0, 1.0]])
    >>> bool(jnp.allclose(per_point_jacobian(fit, w, x),
    ...                   jax.jacrev(fit)(w, x)))
    True
  """
  point = lambda p, x: residual_fn(p, x[None])[0]
  return jax.vmap(jax.grad(point), (None, 0))(params, points)


def value_grad_residuals(loss: LeastSquares, params: Any) -> tuple:
  """``(value, grad, residuals)`` of ``loss`` at ``params``, in one pass: the
  residuals and one VJP, the cost of ``jax.value_and_grad(loss)``."""
  residuals, vjp = jax.vjp(loss.residual_fn, params)
  grad = vjp(optax.tree.scale(2.0, residuals))[0]
  return sum_of_squares(residuals), grad, residuals


def sum_of_squares(residuals: Any) -> jax.Array:
  """``sum r_i^2`` over all entries of a pytree of residuals."""
  return sum(jnp.sum(jnp.square(r)) for r in jax.tree.leaves(residuals))


def reduction(residuals: Any, new_residuals: Any) -> jax.Array:
  """``||r||^2 - ||r'||^2``, summed as ``sum (r_i - r'_i)(r_i + r'_i)``.

  The difference of the two sums loses every digit of a reduction below the
  sums' round-off, about ``eps ||r||^2``; term by term, the differences
  ``r_i - r'_i`` are exact or nearly (Sterbenz), and the sum's error is
  relative to the reduction itself, so near a minimum the trust region's
  ``rho`` still compares real numbers.

  Examples:
    In float32, with ``||r||^2 - ||r'||^2 = 19.53125 - 2^-20`` exactly:

    >>> import jax.numpy as jnp
    >>> from trncg_jax.least_squares import reduction
    >>> r = jnp.array([1e4], jnp.float32)
    >>> new = r - 2.0**-10
    >>> float(reduction(r, new)), float(jnp.sum(r**2) - jnp.sum(new**2))
    (19.53125, 16.0)
  """
  return sum(
    jnp.sum((r - s) * (r + s))
    for r, s in zip(jax.tree.leaves(residuals), jax.tree.leaves(new_residuals))
  )


def gauss_newton_product(
  loss: LeastSquares, params: Any
) -> Callable[[Any], Any]:
  """Returns ``v -> G v`` with ``G = 2 J^T J``, ``J`` the residuals' Jacobian.

  With a ``jacobian_fn`` and at most :data:`DENSE_MAX_ENTRIES` entries of
  ``J``, ``J`` is formed once (about a gradient's cost for per-point
  residuals) and each product is two matrix-vector products; otherwise the
  residuals are linearized once (``jax.linearize``), and each product is
  the linear JVP and its transpose. Either way: no primal recomputation, no
  Hessian. On the heat PINN at 10,000 points (2,521 params) a product from
  ``J`` costs about a sixth of a linearized one once ``J`` is formed (26 ms
  against 170 ms; docs/benchmarks.md, "How the defaults were chosen").

  Args:
    loss: a :class:`LeastSquares` loss of params alone (see :meth:`bind`).
    params: the point where ``J`` is taken.

  Raises:
    TypeError: if ``loss`` is not a :class:`LeastSquares`, or its residuals
      are not float arrays, or ``jacobian_fn``'s output is not laid out like
      ``jax.jacrev(residual_fn)(params)``.
  """
  check_residuals(loss, params)
  if loss.jacobian_fn is not None and jacobian_fits(loss, params):
    flat, unravel = ravel_pytree(params)
    # Materialized, so that XLA does not recompute J's producers inside
    # every product (see dense_solver).
    jac = jax.lax.optimization_barrier(
      raveled_jacobian(loss, params, flat.dtype)
    )
    return lambda v: unravel(2.0 * (jac.T @ (jac @ ravel_pytree(v)[0])))
  _, jvp = jax.linearize(loss.residual_fn, params)
  vjp = jax.linear_transpose(jvp, params)
  return lambda v: optax.tree.scale(2.0, vjp(jvp(v))[0])


def check_residuals(loss: Any, params: Any) -> None:
  """``TypeError`` unless ``loss`` is a :class:`LeastSquares` whose residuals
  at ``params`` are float arrays (checked on shapes, at trace time)."""
  if not isinstance(loss, LeastSquares):
    raise TypeError(
      "hvp_mode='gauss_newton' needs the loss as its residuals: wrap it as "
      "trncg_jax.LeastSquares(residual_fn), where the loss is the sum of "
      "squares of residual_fn(params, *args). For any other loss use "
      "hvp_mode='forward_over_reverse'."
    )
  for r in jax.tree.leaves(jax.eval_shape(loss.residual_fn, params)):
    if not jnp.issubdtype(r.dtype, jnp.floating):
      raise TypeError(
        f"LeastSquares: residuals must be real float arrays, "
        f"got dtype {r.dtype}."
      )


def residual_count(loss: LeastSquares, params: Any) -> int:
  """The number of residuals ``N`` at ``params``, from shapes alone
  (``optax.tree.size`` would call ``jnp.size`` on them, which JAX deprecates
  for ``ShapeDtypeStruct``)."""
  residuals = jax.eval_shape(loss.residual_fn, params)
  return sum(leaf.size for leaf in jax.tree.leaves(residuals))


def jacobian_fits(loss: LeastSquares, params: Any) -> bool:
  """Whether ``J`` at ``params`` has at most :data:`DENSE_MAX_ENTRIES`
  entries: the bound on every ``J`` that is formed."""
  return residual_count(loss, params) * optax.tree.size(params) <= (
    DENSE_MAX_ENTRIES
  )


def raveled_jacobian(loss: LeastSquares, params: Any, dtype) -> jax.Array:
  """``loss.jacobian_fn(params)`` as the ``N x P`` matrix of the raveled
  residuals and params (the orders of ``ravel_pytree``).

  Raises:
    TypeError: if ``jacobian_fn``'s output is not laid out like
      ``jax.jacrev(residual_fn)(params)``.
  """
  residuals = jax.eval_shape(loss.residual_fn, params)
  jacobian = loss.jacobian_fn(params)
  expected = jax.tree.map(
    lambda r: jax.tree.map(lambda x: r.shape + jnp.shape(x), params),
    residuals,
  )
  if jax.tree.map(jnp.shape, jacobian) != expected:
    raise TypeError(
      "LeastSquares: jacobian_fn must return the layout of "
      f"jax.jacrev(residual_fn)(params), shapes {expected}; got "
      f"{jax.tree.map(jnp.shape, jacobian)}."
    )
  rows = [
    jnp.concatenate(
      [x.reshape(r.size, -1).astype(dtype) for x in jax.tree.leaves(block)], 1
    )
    for r, block in zip(
      jax.tree.leaves(residuals),
      jax.tree.structure(residuals).flatten_up_to(jacobian),
    )
  ]
  return jnp.concatenate(rows, 0)
