"""A fully jitted training driver for trncg, nonlinear_cg and any optax optimizer.

The whole run is one ``lax.while_loop``: the stopping rules are inside, the
history is preallocated, and progress reaches Python only through
``jax.debug.callback`` every ``progress_every`` steps.
"""

from __future__ import annotations

import enum
import functools
import inspect
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trncg_jax._checks import check_float_params, check_number, check_scalar_loss
from trncg_jax.least_squares import bind
from trncg_jax.nonlinear_cg import NonlinearCGInfo
from trncg_jax.transform import trncg
from trncg_jax.trust_region import StepResult, TRNCGInfo, evaluate, loss_only


class SolveStatus(enum.IntEnum):
  """Why :func:`solve` stopped (``SolveResult.status``)."""

  #: ``max_steps`` updates were made without meeting a tolerance.
  MAX_STEPS = 0
  #: The loss fell to ``loss_tol``.
  LOSS_TOL = 1
  #: The gradient norm fell to ``grad_tol``.
  GRAD_TOL = 2
  #: The trust-region radius fell below ``min_radius``: no progress possible
  #: at this precision (try float64, or stop here).
  STAGNATION = 3
  #: The loss or gradient at the current params is NaN or inf.
  NON_FINITE = 4
  #: trncg found the gradient below its CG tolerance (``StepResult.
  #: STATIONARY``): every further step would be empty. Lower ``cg_tol`` (or
  #: use ``inexact_newton``) to go further.
  STATIONARY = 5


class SolveResult(NamedTuple):
  """What :func:`solve` returns.

  Attributes:
    params: the final params.
    state: the final optimizer state.
    history: per-step diagnostics, a dict of NumPy arrays of length
      ``num_steps + 1``: ``loss`` and ``grad_norm`` at each iterate (entry 0
      is the start), ``aux`` (a pytree of such arrays) with ``has_aux``, and
      for trncg / nonlinear_cg every field of their ``info`` after each step
      (entry 0 is the initial info); for
      ``optax.lbfgs``, its line search's ``num_linesearch_steps`` and errors.
    num_steps: updates made.
    status: a :class:`SolveStatus`.
    compile_seconds: time to trace and compile the loop.
    run_seconds: time to run it, compile time excluded.
  """

  params: Any
  state: Any
  history: dict
  num_steps: int
  status: SolveStatus
  compile_seconds: float
  run_seconds: float


def _find_info(state):
  """The diagnostics NamedTuple in ``state``: trncg's or nonlinear_cg's info,
  else optax's zoom line-search info (as in ``optax.lbfgs``), else None."""
  found = optax.tree.get_all_with_path(
      state, "info",
      filtering=lambda _, v: isinstance(v, (TRNCGInfo, NonlinearCGInfo)))
  if found:
    return found[0][1]
  return optax.tree.get(state, "ZoomLinesearchInfo")  # matched by class name


def _info_fields(info):
  # info.loss and info.grad_norm duplicate the history's own columns, and aux
  # gets a column of its own whatever the optimizer.
  return {k: v for k, v in info._asdict().items()
          if k not in ("loss", "grad_norm", "aux")}


def _aux_from_state(state):
  """The aux an optimizer keeps for its accepted point (trncg with has_aux)."""
  info = _find_info(state)
  return None if info is None else getattr(info, "aux", None)


class _Progress:
  """The Python side of the progress bar, fed from inside the jitted loop."""

  bar = None
  log_fn: Optional[Callable] = None

  @classmethod
  def update(cls, step, loss, grad_norm):
    step = int(step)
    if cls.bar is not None:
      cls.bar.n = step
      cls.bar.set_postfix(loss=f"{float(loss):.3e}", refresh=False)
      cls.bar.refresh()
    if cls.log_fn is not None:
      cls.log_fn(step, float(loss), float(grad_norm))


@functools.lru_cache(maxsize=64)  # same loss and optimizer: no recompilation
def _build_run(loss_fn, optimizer, max_steps, progress_every, with_callback,
               has_aux):
  opt = optax.with_extra_args_support(optimizer)

  def run(params, state, args, loss_tol, grad_tol, min_radius):
    full_fun = bind(loss_fn, *args)  # a LeastSquares loss stays one
    fun = loss_only(full_fun, has_aux)
    stored = optax.tree.get(state, "value") is not None
    # trncg(has_aux=True) keeps the accepted point's aux and takes the full
    # loss; other optimizers see the loss alone, and the aux is computed here.
    aux_in_state = has_aux and _aux_from_state(state) is not None
    value_fn = full_fun if aux_in_state else fun

    def current(params, state, first=False):
      """The value, gradient and aux (``None`` without has_aux) at params."""
      if not stored:  # e.g. adam: one evaluation gives all three
        value, grad, aux = evaluate(full_fun, params,
                                    jax.eval_shape(fun, params).dtype, has_aux)
        return value, grad, aux
      # trncg, nonlinear_cg, lbfgs: reuse the accepted point's value.
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
    history = {"loss": jnp.zeros(max_steps + 1, value0.dtype),
               "grad_norm": jnp.zeros(max_steps + 1, value0.dtype)}
    if has_aux:
      history["aux"] = jax.tree.map(
          lambda leaf: jnp.zeros((max_steps + 1,) + jnp.shape(leaf),
                                 jnp.result_type(leaf)), aux0)
    if info0 is not None:
      for name, leaf in _info_fields(info0).items():
        history[name] = jnp.zeros((max_steps + 1,) + jnp.shape(leaf),
                                  jnp.asarray(leaf).dtype).at[0].set(leaf)

    def status_of(value, gnorm, state):
      tr_state = optax.tree.get(state, "TRNCGState")  # matched by class name
      stagnant = stationary = False
      if tr_state is not None:
        stagnant = tr_state.radius < min_radius
        # Without this, a run at a stationary point idles to max_steps.
        stationary = tr_state.info.result == StepResult.STATIONARY
      return jnp.select(
          [~jnp.isfinite(value) | ~jnp.isfinite(gnorm), value <= loss_tol,
           gnorm <= grad_tol, stagnant, stationary],
          [SolveStatus.NON_FINITE, SolveStatus.LOSS_TOL, SolveStatus.GRAD_TOL,
           SolveStatus.STAGNATION, SolveStatus.STATIONARY],
          SolveStatus.MAX_STEPS).astype(jnp.int32)

    def record(history, k, value, gnorm, aux, state):
      history = dict(history, loss=history["loss"].at[k].set(value),
                     grad_norm=history["grad_norm"].at[k].set(gnorm))
      if has_aux:
        history["aux"] = jax.tree.map(lambda h, a: h.at[k].set(a),
                                      history["aux"], aux)
      info = _find_info(state)
      if info is not None:
        for name, leaf in _info_fields(info).items():
          history[name] = history[name].at[k].set(leaf)
      return history

    gnorm0 = optax.tree.norm(grad0)
    history = record(history, 0, value0, gnorm0, aux0, state)
    carry0 = (jnp.zeros((), jnp.int32), params, state, value0, grad0, history,
              status_of(value0, gnorm0, state))

    def cond(carry):
      k, *_, status = carry
      return (k < max_steps) & (status == SolveStatus.MAX_STEPS)

    def body(carry):
      k, params, state, value, grad, history, _ = carry
      updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                  value_fn=value_fn)
      params = optax.apply_updates(params, updates)
      value, grad, aux = current(params, state)
      gnorm = optax.tree.norm(grad)
      k = k + 1
      history = record(history, k, value, gnorm, aux, state)
      if with_callback:
        jax.lax.cond(
            (k % progress_every == 0) | (k == max_steps),
            lambda: jax.debug.callback(_Progress.update, k, value, gnorm),
            lambda: None)
      return k, params, state, value, grad, history, status_of(value, gnorm,
                                                               state)

    k, params, state, value, grad, history, status = jax.lax.while_loop(
        cond, body, carry0)
    return params, state, history, k, status

  return jax.jit(run)


@functools.lru_cache(maxsize=None)
def _default_optimizer(has_aux: bool) -> optax.GradientTransformation:
  """One ``trncg()`` per ``has_aux``, so that calls of :func:`solve` without an
  optimizer (e.g. a run continued with ``state=``) reuse the compiled loop."""
  return trncg(has_aux=has_aux)


def solve(loss_fn: Callable[..., jax.Array], params: Any, *args,
          optimizer: Optional[optax.GradientTransformation] = None,
          max_steps: int = 1000, loss_tol: float = -np.inf,
          grad_tol: float = 0.0, min_radius: float = 0.0,
          progress: bool = False, progress_every: Optional[int] = None,
          log_fn: Optional[Callable[[int, float, float], None]] = None,
          desc: str = "solve", state: Any = None,
          has_aux: bool = False) -> SolveResult:
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

  Returns:
    A :class:`SolveResult`.

  Examples:
    >>> import jax.numpy as jnp, optax, trncg_jax
    >>> rosen = lambda x: 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
    >>> res = trncg_jax.solve(rosen, jnp.array([-1.2, 1.0]), grad_tol=1e-5)
    >>> res.status.name, res.num_steps, jnp.round(res.params, 4)
    ('GRAD_TOL', 24, Array([1., 1.], dtype=float32))
    >>> res = trncg_jax.solve(rosen, jnp.array([-1.2, 1.0]),
    ...                       optimizer=optax.adam(1e-2), max_steps=100)
    >>> res.status.name, res.history["loss"].shape
    ('MAX_STEPS', (101,))
  """
  check_number("max_steps", max_steps, 1, 2**31 - 2, integer=True)
  if progress_every is None:
    progress_every = max(1, max_steps // 100)
  check_number("progress_every", progress_every, 1, 2**31 - 1, integer=True)
  check_float_params(params, "solve")
  fun = bind(loss_fn, *args)
  check_scalar_loss(fun, params, "solve", has_aux)
  if optimizer is None:
    optimizer = _default_optimizer(bool(has_aux))
  with_callback = bool(progress or log_fn is not None)
  run = _build_run(loss_fn, optimizer, int(max_steps), int(progress_every),
                   with_callback, bool(has_aux))
  dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
  tolerances = tuple(jnp.asarray(t, dtype)
                     for t in (loss_tol, grad_tol, min_radius))
  if state is None and has_aux and "aux" in inspect.signature(
      optimizer.init).parameters:  # trncg: fix the state's aux structure
    state = optimizer.init(
        params, aux=jax.eval_shape(fun, params)[1])
  elif state is None:
    state = optimizer.init(params)
  start = time.perf_counter()
  compiled = run.lower(params, state, args, *tolerances).compile()
  compile_seconds = time.perf_counter() - start

  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=max_steps, desc=desc, leave=True)
  _Progress.bar, _Progress.log_fn = bar, log_fn
  out = None
  try:
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(params, state, args, *tolerances))
    jax.effects_barrier()
    run_seconds = time.perf_counter() - start
  finally:
    _Progress.bar, _Progress.log_fn = None, None
    if bar is not None:
      if out is not None:  # an early stop falls between two updates
        bar.n = int(out[3])
        bar.refresh()
      bar.close()
  params, state, history, k, status = out
  k = int(k)
  history = jax.tree.map(lambda v: np.asarray(v)[:k + 1], history)
  return SolveResult(params, state, history, k, SolveStatus(int(status)),
                     compile_seconds, run_seconds)
