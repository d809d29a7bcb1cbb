"""A fully jitted training driver for trncg, nonlinear_cg and any optax optimizer.

The whole run is one ``lax.while_loop``: the stopping rules are inside, the
history is preallocated, and progress reaches Python only through
``jax.debug.callback`` every ``progress_every`` steps.

The driver has no special case per optimizer. Each step calls ``update(grad,
state, params, value=value, grad=grad, value_fn=loss)`` and reads the state
through a small protocol, every part of it optional and found anywhere in the
state (e.g. inside an ``optax.chain``):

* a field ``value`` (with ``grad``), as ``optax.value_and_grad_from_state``
  reads it: the value at the new params is reused, not recomputed;
* a sub-state method ``value_and_grad(fun, params) -> (value, grad, aux)``,
  which replaces that rule (trncg re-evaluates when params moved elsewhere);
* a sub-state method ``terminate(min_radius)`` returning a
  :class:`SolveStatus` code, ``MAX_STEPS`` to go on: the optimizer's own
  stopping rule;
* the outermost field ``info`` that is a ``NamedTuple`` of arrays: recorded
  in ``history`` after every step;
* an ``init`` with the attribute ``accepts_aux``: with ``has_aux``, it gets
  ``aux=`` an example of the loss's aux output.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trncg_jax import hvp as hvp_lib
from trncg_jax._checks import (
  check_float_params,
  check_number,
  check_scalar_loss,
  safe_norm,
)
from trncg_jax.loss import bind, evaluate, loss_only
from trncg_jax.status import SolveStatus, first_true
from trncg_jax.steihaug import cg_steihaug
from trncg_jax.transform import trncg

#: ``differentiate`` values: implicit differentiation at the solution, or
#: forward-mode differentiation through the iterations.
IMPLICIT, UNROLLED = "implicit", "unrolled"


class SolveResult(NamedTuple):
  """What :func:`solve` returns.

  Attributes:
    params: the final params.
    state: the final optimizer state.
    history: per-step diagnostics, a dict of NumPy arrays, one entry per
      recorded step: ``step`` (the step number; every ``history_every``-th
      step and the last), ``loss`` and ``grad_norm`` at that iterate (entry 0
      is the start), ``aux`` (a pytree of such arrays) with ``has_aux``, and
      for trncg / nonlinear_cg every field of their ``info`` after that step
      (entry 0 is the initial info); for ``optax.lbfgs``, its line search's
      ``num_linesearch_steps`` and errors. With ``history_every=1`` (the
      default up to 10,000 steps) entry ``k`` is step ``k``.
    num_steps: updates made.
    status: a :class:`SolveStatus`.
    compile_seconds: time to trace and compile the loop (near 0 when an
      earlier call compiled the same loop for inputs of the same shapes,
      dtypes and shardings: compiled loops are kept).
    run_seconds: time to run it, compile time excluded.
  """

  params: Any
  state: Any
  history: dict
  num_steps: int
  status: SolveStatus
  compile_seconds: float
  run_seconds: float


def _implementers(state: Any, method: str) -> list:
  """The sub-states of ``state`` (e.g. in a chain) that have ``method``."""
  return [
    node
    for node in jax.tree.leaves(
      state, is_leaf=lambda node: hasattr(node, method)
    )
    if hasattr(node, method)
  ]


def _find_info(state):
  """The outermost field ``info`` of ``state`` that is a NamedTuple (trncg's
  and nonlinear_cg's, optax's line-search info in ``optax.lbfgs``), or None."""
  found = optax.tree.get_all_with_path(
    state, "info", filtering=lambda _, v: hasattr(v, "_fields")
  )
  return min(found, key=lambda item: len(item[0]))[1] if found else None


def _info_fields(info):
  # info.loss and info.grad_norm duplicate the history's own columns, and aux
  # gets a column of its own whatever the optimizer.
  return {
    k: v
    for k, v in info._asdict().items()
    if k not in ("loss", "grad_norm", "aux")
  }


def _aux_from_state(state):
  """The aux an optimizer keeps for its accepted point (trncg with has_aux)."""
  info = _find_info(state)
  return None if info is None else getattr(info, "aux", None)


#: The Python side of running loops' progress: a bar and a ``log_fn`` per run,
#: keyed by the run id the loop passes to its callback, so that runs in
#: several threads never share a bar.
_PROGRESS: dict = {}
_RUN_IDS = itertools.count()


def _report_progress(run_id, step, loss, grad_norm):
  bar, log_fn = _PROGRESS.get(int(run_id), (None, None))
  step = int(step)
  if bar is not None:
    bar.n = step
    bar.set_postfix(loss=f"{float(loss):.3e}", refresh=False)
    bar.refresh()
  if log_fn is not None:
    log_fn(step, float(loss), float(grad_norm))


def _zero_cotangent(tree):
  """Zeros to stand for the cotangent of ``tree`` (``float0`` for ints)."""

  def zero(x):
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
      return jnp.zeros_like(x)
    return np.zeros(np.shape(x), jax.dtypes.float0)

  return jax.tree.map(zero, tree)


def _implicit_cotangent(loss_fn, has_aux, params, args, cotangent):
  """The cotangent of ``args`` from that of the minimizer ``params``.

  At a minimizer ``grad_x f(x*, theta) = 0``, so ``dx*/dtheta = -H^{-1}
  d^2 f / dx dtheta`` with ``H`` the Hessian at ``x*`` (implicit function
  theorem). The cotangent ``v`` of ``x*`` gives ``w = H^{-1} v`` by CG
  (:func:`trncg_jax.steihaug.cg_steihaug` with an infinite radius, on the
  package's forward-over-reverse Hessian-vector products), and ``theta``'s
  cotangent is ``-d/dtheta <grad_x f(x*, theta), w>``. Needs ``H`` positive
  definite: a singular or indefinite one gives non-finite cotangents.
  """

  def loss_at(args):
    return loss_only(bind(loss_fn, *args), has_aux)

  hvp = hvp_lib.make_hvp(loss_at(args), params, hvp_lib.FORWARD_OVER_REVERSE)
  dtype = jnp.result_type(*jax.tree.leaves(params))
  size = optax.tree.size(params)
  # -v as the "gradient" of the model: CG's minimizer is H^{-1} v.
  solved = cg_steihaug(
    optax.tree.scale(-1.0, cotangent),
    hvp,
    jnp.asarray(jnp.inf, dtype),
    0.0,
    10 * size + 10,
    rtol=jnp.finfo(dtype).eps ** 0.75,
  )
  # Integer arguments get float0 cotangents from jax.vjp itself.
  _, vjp = jax.vjp(lambda args: jax.grad(loss_at(args))(params), args)
  (cotangents,) = vjp(solved.step)
  return jax.tree.map(
    lambda c: c if c.dtype == jax.dtypes.float0 else -c, cotangents
  )


@functools.lru_cache(maxsize=64)  # same loss and optimizer: no recompilation
def _build_run(
  loss_fn,
  optimizer,
  slots,
  with_callback,
  has_aux,
  history_every,
  differentiate,
):
  opt = optax.with_extra_args_support(optimizer)

  # max_steps and progress_every are arguments, not constants, so that runs
  # of other lengths (a chunked run's shorter last calls) share one loop.
  def loop(
    params,
    state,
    args,
    loss_tol,
    grad_tol,
    min_radius,
    max_steps,
    progress_every,
    run_id,
  ):
    full_fun = bind(loss_fn, *args)  # a LeastSquares loss stays one
    fun = loss_only(full_fun, has_aux)
    if state is None:  # built here: no eager op per leaf, no input buffers
      if has_aux and getattr(optimizer.init, "accepts_aux", False):
        state = optimizer.init(params, aux=jax.eval_shape(full_fun, params)[1])
      else:
        state = optimizer.init(params)
    stored = optax.tree.get(state, "value") is not None
    # trncg(has_aux=True) keeps the accepted point's aux and takes the full
    # loss; other optimizers see the loss alone, and the aux is computed here.
    aux_in_state = has_aux and _aux_from_state(state) is not None
    value_fn = full_fun if aux_in_state else fun

    def current(params, state, first=False):
      """The value, gradient and aux (``None`` without has_aux) at params."""
      if not stored:  # e.g. adam: one evaluation gives all three
        value, grad, aux = evaluate(
          full_fun, params, jax.eval_shape(fun, params).dtype, has_aux
        )
        return value, grad, aux
      own = _implementers(state, "value_and_grad")
      if own:  # trncg: re-evaluates if params moved from the accepted point
        value, grad, aux = own[0].value_and_grad(value_fn, params)
        if has_aux and not aux_in_state:
          aux = full_fun(params)[1]
        return value, grad, aux
      # nonlinear_cg, lbfgs: reuse the accepted point's value.
      value, grad = optax.value_and_grad_from_state(fun)(params, state=state)
      if not has_aux:
        aux = None
      elif aux_in_state and not first:
        aux = _aux_from_state(state)
      else:  # one forward pass for the aux alone
        aux = full_fun(params)[1]
      return value, grad, aux

    info0 = _find_info(state)
    value0, grad0, aux0 = current(params, state, first=True)
    value0 = jnp.asarray(value0)
    # Step k is written to slot ceil(k / history_every): slot j ends up
    # holding step j * history_every, and the slot after the last multiple
    # holds the final step, whatever it is.
    history = {
      "step": jnp.zeros(slots, jnp.int32),
      "loss": jnp.zeros(slots, value0.dtype),
      "grad_norm": jnp.zeros(slots, value0.dtype),
    }
    if has_aux:
      history["aux"] = jax.tree.map(
        lambda leaf: jnp.zeros(
          (slots,) + jnp.shape(leaf), jnp.result_type(leaf)
        ),
        aux0,
      )
    if info0 is not None:
      for name, leaf in _info_fields(info0).items():
        history[name] = jnp.zeros(
          (slots,) + jnp.shape(leaf), jnp.asarray(leaf).dtype
        )

    def status_of(value, gnorm, state):
      # The optimizer's own rule: without it, a run that can make no more
      # progress (trncg's radius gone, nonlinear_cg's searches failing)
      # idles to max_steps.
      own = [
        node.terminate(min_radius) for node in _implementers(state, "terminate")
      ]
      return first_true(
        [
          ~jnp.isfinite(value) | ~jnp.isfinite(gnorm),
          value <= loss_tol,
          gnorm <= grad_tol,
        ],
        [SolveStatus.NON_FINITE, SolveStatus.LOSS_TOL, SolveStatus.GRAD_TOL],
        own[0] if own else SolveStatus.MAX_STEPS,
      )

    def record(history, k, value, gnorm, aux, state):
      slot = -(-k // history_every)
      history = dict(
        history,
        step=history["step"].at[slot].set(k),
        loss=history["loss"].at[slot].set(value),
        grad_norm=history["grad_norm"].at[slot].set(gnorm),
      )
      if has_aux:
        history["aux"] = jax.tree.map(
          lambda h, a: h.at[slot].set(a), history["aux"], aux
        )
      info = _find_info(state)
      if info is not None:
        for name, leaf in _info_fields(info).items():
          history[name] = history[name].at[slot].set(leaf)
      return history

    gnorm0 = safe_norm(grad0)
    history = record(history, 0, value0, gnorm0, aux0, state)
    carry0 = (
      jnp.zeros((), jnp.int32),
      params,
      state,
      value0,
      grad0,
      history,
      status_of(value0, gnorm0, state),
    )

    def cond(carry):
      k, *_, status = carry
      return (k < max_steps) & (status == SolveStatus.MAX_STEPS)

    def body(carry):
      k, params, state, value, grad, history, _ = carry
      updates, state = opt.update(
        grad, state, params, value=value, grad=grad, value_fn=value_fn
      )
      params = optax.apply_updates(params, updates)
      value, grad, aux = current(params, state)
      gnorm = safe_norm(grad)
      k = k + 1
      history = record(history, k, value, gnorm, aux, state)
      if with_callback:
        jax.lax.cond(
          (k % progress_every == 0) | (k == max_steps),
          lambda: jax.debug.callback(_report_progress, run_id, k, value, gnorm),
          lambda: None,
        )
      return (
        k,
        params,
        state,
        value,
        grad,
        history,
        status_of(value, gnorm, state),
      )

    k, params, state, value, grad, history, status = jax.lax.while_loop(
      cond, body, carry0
    )
    return params, state, history, k, status

  if differentiate == UNROLLED:
    return jax.jit(loop)

  # Implicit differentiation: the minimizer's cotangent goes to the loss's
  # arguments through the Hessian at the solution; the start, the state and
  # the tolerances get none (the minimizer does not depend on them).
  @jax.custom_vjp
  def run(params, state, args, *controls):
    return loop(params, state, args, *controls)

  def run_fwd(params, state, args, *controls):
    out = loop(params, state, args, *controls)
    return out, (out[0], args, (params, state, *controls))

  def run_bwd(residuals, cotangents):
    solution, args, others = residuals
    params, state, *rest = _zero_cotangent(others)
    return (
      params,
      state,
      _implicit_cotangent(loss_fn, has_aux, solution, args, cotangents[0]),
      *rest,
    )

  run.defvjp(run_fwd, run_bwd)
  return jax.jit(run)


#: Compiled loops by (loop, input signature), most recent last, so that a
#: second :func:`solve` of the same problem neither recompiles nor pays a new
#: executable's first-call costs.
_COMPILED: "collections.OrderedDict" = collections.OrderedDict()
_COMPILED_SIZE = 64


def _compiled(run, *inputs):
  """``run.lower(*inputs).compile()``, cached on the inputs' structure,
  shapes, dtypes and shardings."""
  leaves, treedef = jax.tree.flatten(inputs)
  key = (
    run,
    treedef,
    tuple(
      (
        jnp.shape(x),
        jnp.result_type(x),
        getattr(x, "weak_type", None),
        getattr(x, "sharding", None),
      )
      for x in leaves
    ),
  )
  if key in _COMPILED:
    _COMPILED.move_to_end(key)
  else:
    _COMPILED[key] = run.lower(*inputs).compile()
    if len(_COMPILED) > _COMPILED_SIZE:
      _COMPILED.popitem(last=False)
  return _COMPILED[key]


#: The most history entries :func:`solve` allocates by default.
_HISTORY_ENTRIES = 10_000


def _history_slots(entries: int) -> int:
  """The slots allocated for ``entries`` history entries: the next power of
  two, at least 16, so that runs of other lengths share one compiled loop
  (a chunked run's calls of 10 steps and its shorter last ones), but no more
  than the default's cap where that holds them."""
  if entries > _HISTORY_ENTRIES + 1:
    return entries
  return min(max(16, 1 << (entries - 1).bit_length()), _HISTORY_ENTRIES + 1)


@functools.lru_cache(maxsize=None)
def _default_optimizer(has_aux: bool) -> optax.GradientTransformation:
  """One ``trncg()`` per ``has_aux``, so that calls of :func:`solve` without an
  optimizer (e.g. a run continued with ``state=``) reuse the compiled loop."""
  return trncg(has_aux=has_aux)


def solve(
  loss_fn: Callable[..., jax.Array],
  params: Any,
  *args,
  optimizer: Optional[optax.GradientTransformation] = None,
  max_steps: int = 1000,
  loss_tol: float = -np.inf,
  grad_tol: float = 0.0,
  min_radius: float = 0.0,
  progress: bool = False,
  progress_every: Optional[int] = None,
  log_fn: Optional[Callable[[int, float, float], None]] = None,
  desc: str = "solve",
  state: Any = None,
  has_aux: bool = False,
  history_every: Optional[int] = None,
  differentiate: str = IMPLICIT,
) -> SolveResult:
  """Minimizes ``loss_fn(params, *args)`` in one jitted ``lax.while_loop``.

  Each step evaluates the value and gradient at the current params (taken
  from the optimizer's state when it stores them, as trncg, nonlinear_cg and
  ``optax.lbfgs`` do), checks the stopping rules, then updates. Plain optax
  optimizers such as ``optax.adam`` work as they are.

  Args:
    loss_fn: ``loss_fn(params, *args)`` returns a float scalar; a
      :class:`trncg_jax.LeastSquares` for ``trncg(hvp_mode="gauss_newton")``.
    params: initial params, any pytree of float arrays.
    *args: extra arguments for ``loss_fn`` (data, collocation points).
    optimizer: an optax transformation; ``None`` for ``trncg()``.
    max_steps: the most updates to make.
    loss_tol: stop once the loss is ``<= loss_tol``.
    grad_tol: stop once the gradient norm is ``<= grad_tol``.
    min_radius: stop once trncg's trust-region radius is below this.
    progress: show a tqdm progress bar.
    progress_every: steps between progress updates (default ``max_steps //
      100``, at least 1); also the period of ``log_fn``.
    log_fn: called as ``log_fn(step, loss, grad_norm)`` every
      ``progress_every`` steps, from inside the loop.
    desc: the progress bar's label.
    state: an optimizer state to continue from (e.g. a previous result's
      ``state``, with its ``params``); ``None`` for ``optimizer.init(params)``.
      A run continued this way makes the same steps as one uninterrupted run.
    has_aux: ``loss_fn`` returns ``(loss, aux)``; ``history["aux"]`` then
      holds the aux at every iterate. ``trncg(has_aux=True)`` keeps it in its
      state for free; with any other optimizer it costs a forward pass per step
      (none for optimizers that store no value, such as adam).
    history_every: record every this many steps (and the last). The history
      is allocated up front, ``max_steps / history_every + 1`` entries per
      field, so ``None`` picks ``ceil(max_steps / 10_000)``: every step up to
      10,000 steps, and at most 10,001 entries (a few MB) however large
      ``max_steps`` is. Below that cap the entries are rounded up to a power
      of two (at least 16), and ``max_steps`` and ``progress_every`` are
      inputs of the compiled loop, not constants: runs of other lengths that
      round to the same number reuse it rather than compile again.
    differentiate: how derivatives of the result's ``params`` are taken.
      ``"implicit"`` (the default): ``jax.grad`` (reverse mode) by the
      implicit function theorem at the solution, ``dx*/dtheta = -H^{-1}
      d^2 f / dx dtheta``, solved by CG on Hessian-vector products; it
      assumes the run converged to a minimizer with a positive definite
      Hessian, and gives the start, the state and the tolerances no
      cotangent. ``"unrolled"``: differentiate through the iterations, in
      forward mode only (``jax.jvp``, ``jax.jacfwd``): the loops are
      while loops, which reverse mode cannot traverse. Only
      ``params`` is differentiated; the history and state are diagnostics.

  Returns:
    A :class:`SolveResult`. Under ``jax.jit``, ``jax.vmap`` or ``jax.grad``
    (any traced ``params``, ``args`` or ``state``), ``num_steps`` and
    ``status`` are arrays, ``history`` keeps all ``max_steps /
    history_every + 1`` entries (those after ``num_steps`` are zeros), the
    times are NaN, and there is no progress bar. Under ``jax.vmap`` each
    problem stops at its own step, so the results equal separate runs.

  Examples:
    >>> import jax.numpy as jnp, optax, trncg_jax
    >>> rosen = lambda x: 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
    >>> res = trncg_jax.solve(rosen, jnp.array([-1.2, 1.0]), grad_tol=1e-5)
    >>> res.status.name, res.num_steps, jnp.round(res.params, 4)
    ('GRAD_TOL', 29, Array([1., 1.], dtype=float32))
    >>> res = trncg_jax.solve(rosen, jnp.array([-1.2, 1.0]),
    ...                       optimizer=optax.adam(1e-2), max_steps=100)
    >>> res.status.name, res.history["loss"].shape
    ('MAX_STEPS', (101,))

    Batched and differentiated: the minimizer of ``(x - c)^2 + x^4/4`` over
    ``x`` for three ``c``, and its derivative ``dx*/dc = 1 / (1 + 1.5 x*^2)``:

    >>> import jax
    >>> loss = lambda x, c: jnp.sum((x - c) ** 2 + x ** 4 / 4)
    >>> x_star = lambda c: trncg_jax.solve(loss, jnp.zeros(()), c,
    ...                                    grad_tol=1e-6).params
    >>> cs = jnp.array([0.5, 1.0, 2.0])
    >>> print(*(f"{x:.4f}" for x in jax.vmap(x_star)(cs)))
    0.4534 0.7709 1.1795
    >>> print(*(f"{d:.4f}" for d in jax.vmap(jax.grad(x_star))(cs)))
    0.7643 0.5287 0.3240
  """
  check_number("max_steps", max_steps, 1, 2**31 - 2, integer=True)
  if progress_every is None:
    progress_every = max(1, max_steps // 100)
  check_number("progress_every", progress_every, 1, 2**31 - 1, integer=True)
  if history_every is None:
    history_every = max(1, math.ceil(max_steps / _HISTORY_ENTRIES))
  check_number("history_every", history_every, 1, 2**31 - 1, integer=True)
  check_number("loss_tol", loss_tol, -np.inf, np.inf)
  check_number("grad_tol", grad_tol, 0.0, np.inf)
  check_number("min_radius", min_radius, 0.0, np.inf)
  if optimizer is not None and not isinstance(
    optimizer, optax.GradientTransformation
  ):
    hint = (
      f" Did you mean {optimizer.__name__}()?"
      if callable(optimizer) and hasattr(optimizer, "__name__")
      else ""
    )
    raise TypeError(
      "solve: optimizer must be an optax GradientTransformation (e.g. "
      f"trncg_jax.trncg() or optax.adam(1e-3)), got {optimizer!r}.{hint}"
    )
  check_float_params(params, "solve")
  fun = bind(loss_fn, *args)
  check_scalar_loss(fun, params, "solve", has_aux)
  if differentiate not in (IMPLICIT, UNROLLED):
    raise ValueError(
      f"differentiate must be {IMPLICIT!r} or {UNROLLED!r}, "
      f"got {differentiate!r}"
    )
  if optimizer is None:
    optimizer = _default_optimizer(bool(has_aux))
  # Under jit, vmap or grad the loop runs as part of the caller's trace:
  # no progress bar, no timing, and the counts stay arrays.
  traced = any(
    isinstance(x, jax.core.Tracer)
    for x in jax.tree.leaves((params, args, state))
  )
  with_callback = bool(progress or log_fn is not None) and not traced
  entries = -(-int(max_steps) // int(history_every)) + 1
  run = _build_run(
    loss_fn,
    optimizer,
    _history_slots(entries),
    with_callback,
    bool(has_aux),
    int(history_every),
    differentiate,
  )
  dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
  controls = tuple(
    jnp.asarray(t, dtype) for t in (loss_tol, grad_tol, min_radius)
  ) + (jnp.int32(max_steps), jnp.int32(progress_every))
  # state None: the loop builds optimizer.init(params) itself.
  run_id = next(_RUN_IDS)
  if traced:
    params, state, history, k, status = run(
      params, state, args, *controls, run_id
    )
    history = jax.tree.map(lambda v: v[:entries], history)
    return SolveResult(params, state, history, k, status, math.nan, math.nan)

  start = time.perf_counter()
  compiled = _compiled(run, params, state, args, *controls, run_id)
  compile_seconds = time.perf_counter() - start

  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm(total=max_steps, desc=desc, leave=True)
  _PROGRESS[run_id] = (bar, log_fn)
  out = None
  # The state's arrays may still be in flight from init (eager ops run
  # asynchronously): wait for them, so that run_seconds is the loop alone.
  jax.block_until_ready((params, state, args, controls))
  try:
    start = time.perf_counter()
    out = jax.block_until_ready(
      compiled(params, state, args, *controls, run_id)
    )
    jax.effects_barrier()
    run_seconds = time.perf_counter() - start
  finally:
    del _PROGRESS[run_id]
    if bar is not None:
      if out is not None:  # an early stop falls between two updates
        bar.n = int(out[3])
        bar.refresh()
      bar.close()
  params, state, history, k, status = out
  k = int(k)
  used = -(-k // int(history_every)) + 1
  history = jax.tree.map(lambda v: np.asarray(v)[:used], history)
  return SolveResult(
    params,
    state,
    history,
    k,
    SolveStatus(int(status)),
    compile_seconds,
    run_seconds,
  )
