"""Checks shared by every optimizer in the package.

The ``check_*`` functions run in Python while JAX traces, on shapes and dtypes
only, so they never raise inside compiled code; :func:`all_finite` is their
traced counterpart for values.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# The per-leaf results below are combined elementwise, not stacked and
# reduced: XLA:CPU allocates the buffers of every reduction in a compiled
# program at each of its calls (see trncg_jax.status.first_true).


def _every(test: Callable, *trees: Any) -> jax.Array:
  """Whether ``test`` holds for every entry of the trees' matching leaves."""
  leaves = zip(*(jax.tree_util.tree_leaves(tree) for tree in trees))
  return functools.reduce(
    jnp.logical_and, [jnp.all(test(*xs)) for xs in leaves], True
  )


def all_finite(tree: Any) -> jax.Array:
  """Whether every entry of every leaf of ``tree`` is finite (a traced bool)."""
  return _every(jnp.isfinite, tree)


def tree_max_abs(tree: Any) -> jax.Array:
  """``max_i |x_i|`` over every entry of every leaf (0 for an empty tree)."""
  return functools.reduce(
    jnp.maximum,
    [jnp.max(jnp.abs(x), initial=0) for x in jax.tree_util.tree_leaves(tree)],
    0.0,  # a Python float: the leaves' dtype wins
  )


def norm_exponent(tree: Any) -> jax.Array:
  """An int32 ``e`` with ``2^e`` within a factor of 2 of ``tree``'s largest
  entry (``max |x_i| = m 2^e``, ``m`` in [0.5, 1)); 0 when that entry is 0 or
  not finite. Scaling by ``2^-e`` (:func:`scale_tree`) is exact, and unlike a
  division it never forms a reciprocal that flushes to zero."""
  scale = tree_max_abs(tree)
  exponent = jnp.frexp(scale)[1]
  return jnp.where(jnp.isfinite(scale) & (scale > 0), exponent, 0)


def pow2(exponent: jax.Array, dtype: Any) -> jax.Array:
  """``2^exponent`` in the float ``dtype``, built from its bits: exact, and
  one integer operation where a scalar ``jnp.ldexp`` takes a dozen, which
  XLA:CPU runs as a kernel of their own. ``exponent`` is clipped to the
  normal range, ``[minexp, maxexp - 1]``."""
  info = jnp.finfo(dtype)
  bias = info.maxexp - 1
  biased = jnp.clip(exponent, info.minexp, bias) + bias
  bits = biased.astype(
    {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[info.bits // 8]
  )
  return jax.lax.bitcast_convert_type(bits << info.nmant, dtype)


def scale_tree(tree: Any, exponent: jax.Array) -> Any:
  """Every entry of ``tree`` times ``2^exponent``, exactly where input and
  result are normal, for ``|exponent| <= 2 |minexp|`` (252 in float32, 2044
  in float64), which covers every :func:`norm_exponent` and its negative.

  Two multiplications by normal scalar powers of two, not an elementwise
  ``jnp.ldexp``, which emulates ``frexp`` with a dozen integer and select
  operations per entry, 4x the time of a multiplication on a CPU. Two, since
  ``2^exponent`` alone need not be a float (``2^149`` in float32). XLA:CPU
  flushes subnormal inputs to zero, as in any other arithmetic.
  """
  half = exponent // 2

  def scaled(x):
    x = jnp.asarray(x)
    return x * pow2(half, x.dtype) * pow2(exponent - half, x.dtype)

  return jax.tree.map(scaled, tree)


def safe_norm(tree: Any) -> jax.Array:
  """The Euclidean norm of ``tree``, computed as ``2^e ||2^-e tree||`` with
  ``2^e`` about its largest entry, so that it neither overflows nor
  underflows when the entries are representable (``||g||^2`` overflows
  float32 from entries of about 1e19, and underflows below about 1e-19).

  NaN or inf entries give a non-finite norm, as the plain norm does.
  """
  exponent = norm_exponent(tree)
  total = sum(
    jnp.sum(jnp.square(x))
    for x in jax.tree_util.tree_leaves(scale_tree(tree, -exponent))
  )
  return scale_tree(jnp.sqrt(total), exponent)


def tree_within(a: Any, b: Any, rtol: jax.Array) -> jax.Array:
  """Whether every entry of ``a`` is within ``rtol |b_i|`` of ``b``'s (a
  traced bool; ``rtol = 0`` asks for equal finite values)."""
  return _every(lambda x, y: jnp.abs(x - y) <= rtol * jnp.abs(y), a, b)


def tree_equal(a: Any, b: Any) -> jax.Array:
  """Whether two pytrees of one structure hold the same values (traced bool)."""
  return _every(jnp.equal, a, b)


def check_float_params(params: Any, who: str) -> None:
  """Raises ``TypeError`` unless every leaf of ``params`` is a real float."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  if not leaves:
    raise TypeError(f"{who}: params has no array leaves; nothing to optimize.")
  dtypes = {}
  for path, leaf in leaves:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      kind = (
        "complex" if jnp.issubdtype(dtype, jnp.complexfloating) else "non-float"
      )
      raise TypeError(
        f"{who}: params leaf {jax.tree_util.keystr(path) or '<root>'} has "
        f"{kind} dtype {dtype}; only real floating-point params (float32 or "
        "float64) can be optimized. Cast it, e.g. jnp.asarray(x, jnp.float32),"
        " or keep integer data out of params (pass it through *args)."
      )
    if not getattr(leaf, "weak_type", isinstance(leaf, float)):
      dtypes.setdefault(str(dtype), []).append(
        jax.tree_util.keystr(path) or "<root>"
      )
  if len(dtypes) > 1:
    listing = "; ".join(
      f"{d}: {', '.join(names[:4])}" + (" ..." if len(names) > 4 else "")
      for d, names in dtypes.items()
    )
    raise TypeError(
      f"{who}: params mix floating-point dtypes ({listing}). The optimizer "
      "keeps one dtype for its state and products; cast every leaf to one, "
      "e.g. jax.tree.map(lambda x: x.astype(jnp.float64), params)."
    )


def check_scalar_loss(
  fun: Callable[[Any], Any], params: Any, who: str, has_aux: bool = False
) -> None:
  """Raises ``TypeError`` unless ``fun(params)`` is a real float scalar, or,
  with ``has_aux``, a pair ``(scalar, aux)``."""
  out = jax.eval_shape(fun, params)
  if has_aux:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
      raise TypeError(
        f"{who}: has_aux=True, so the loss must return a pair (loss, aux); "
        f"got {type(out).__name__}."
      )
    if not jax.tree_util.tree_leaves(out[1]):
      raise TypeError(
        f"{who}: has_aux=True, but the loss's aux ({out[1]!r}) holds no "
        "arrays. Return an array or a pytree of arrays as aux, or pass "
        "has_aux=False and return the loss alone."
      )
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


def check_number(
  name: str,
  value: Any,
  low: float,
  high: float,
  low_open: bool = False,
  high_open: bool = False,
  integer: bool = False,
) -> None:
  """Raises ``ValueError`` naming ``name`` unless ``value`` is in the range.

  Traced values are let through: they can only be checked when concrete.
  """
  if isinstance(value, jax.core.Tracer):
    return
  lo_b, hi_b = ("(" if low_open else "["), (")" if high_open else "]")
  allowed = f"{lo_b}{low}, {high}{hi_b}"
  kind = "an integer" if integer else "a real number"
  # A string such as '0.2' converts with float() but is a misuse, not a number.
  is_number = (
    isinstance(value, (numbers.Real, np.ndarray, jax.Array))
    and not isinstance(value, bool)
    and np.ndim(value) == 0
  )
  try:
    number = float(value) if is_number else None
  except (TypeError, ValueError):
    number = None
  if number is None:
    raise ValueError(
      f"{name} must be {kind} in {allowed}, got {value!r}"
    ) from None
  if integer and (
    isinstance(value, bool)
    or not float(number).is_integer()
    or not isinstance(value, (numbers.Integral, jax.Array))
  ):
    raise ValueError(f"{name} must be {kind} in {allowed}, got {value!r}")
  too_low = number <= low if low_open else number < low
  too_high = number >= high if high_open else number > high
  if number != number or too_low or too_high:
    raise ValueError(f"{name} must be {kind} in {allowed}, got {value!r}")


def check_state(
  state: Any, state_type: type, params: Any, like: Any, who: str
) -> None:
  """Raises ``TypeError`` unless ``state`` is a ``state_type`` made for params
  of the structure, shapes and dtypes of ``params`` (``like`` is the state's
  params-shaped field)."""
  if not isinstance(state, state_type):
    raise TypeError(
      f"{who}: state is a {type(state).__name__}, not a "
      f"{state_type.__name__}; pass the state made by this optimizer's init "
      "(each optimizer has its own state)."
    )

  def describe(tree):
    return jax.tree.map(
      lambda x: f"{jnp.result_type(x)}{list(jnp.shape(x))}", tree
    )

  same = jax.tree.structure(like) == jax.tree.structure(params) and all(
    jnp.shape(a) == jnp.shape(b) and jnp.result_type(a) == jnp.result_type(b)
    for a, b in zip(jax.tree.leaves(like), jax.tree.leaves(params))
  )
  if not same:
    raise TypeError(
      f"{who}: the state was made for params {describe(like)}, but params "
      f"are {describe(params)}. Call init with the params you update."
    )


def named_options(factory: Callable) -> Callable:
  """``factory`` with a misspelled keyword reported with the valid options.

  Python's own message names only the bad keyword; this one also suggests the
  closest option and lists them all. The signature stays ``factory``'s own
  (``inspect.signature`` follows ``__wrapped__``), so ``help()``, IDEs and
  ``optax.inject_hyperparams`` see every option.
  """
  parameters = inspect.signature(factory).parameters
  options = [
    name
    for name, p in parameters.items()
    if p.kind == inspect.Parameter.KEYWORD_ONLY
  ]

  @functools.wraps(factory)
  def checked(*args, **kwargs):
    for name in kwargs:
      if name not in parameters:
        close = difflib.get_close_matches(name, options, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(
          f"{factory.__name__}() got an unknown option {name!r}.{hint} "
          f"Valid options: {', '.join(options)}."
        )
    return factory(*args, **kwargs)

  return checked
