"""trncg's defaults on the unconstrained CUTEst problems of sif2jax.

    python -m benchmarks.cutest [--quick] [--problems NAME ...] [--max-n 5000]
                                [--solvers ...] [--out results/latest/cutest]

Every problem with at most ``--max-n`` variables whose objective traces is
solved in float64 from its standard start by each solver, in one run:

* ``trncg``: ``trncg_jax.solve`` with ``trncg()``'s defaults;
* ``scipy-trust-ncg`` and ``scipy-trust-krylov``: ``scipy.optimize.minimize``
  with jitted JAX ``fun``, ``jac`` and ``hessp``;
* ``optax-lbfgs``: ``trncg_jax.solve`` with ``optax.lbfgs()``;
* ``optimistix-bfgs``: ``optimistix.minimise`` with ``optimistix.BFGS``.

Each stops at ``||g|| <= 1e-6`` or after 1000 iterations (optimistix's BFGS
has no gradient test: it runs with tight Cauchy tolerances and is judged by
the gradient at its answer). A problem counts as solved by a solver when the
final ``||g|| <= 1e-6`` and ``f <= f_best + 1e-6 max(1, |f_best|)``, with
``f_best`` the lowest final value of any solver.

Every JAX solver is timed the same way: one compiled function that returns
the solution, the step count and the status, called with synchronous CPU
dispatch (see ``main``). Compile time is measured apart and left out of the
run time; a run under a second is timed by the median of warm repeats (see
``timed``).

Writes ``cutest.csv``, ``cutest.md`` and ``cutest_profile.png`` (Dolan-More
performance profiles of run time and of gradient + HVP evaluations).

sif2jax is imported problem set by problem set: its top-level import builds
every constrained problem too, which takes minutes.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import math
import pathlib
import sys
import time
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

import trncg_jax
from benchmarks.common import header

GTOL = 1e-6
MAX_ITERATIONS = 1000
#: SciPy's solvers run in Python: one run stops after this many seconds.
SCIPY_SECONDS = 120.0
#: A run shorter than this is repeated, for at most ``REPEAT_SECONDS`` and
#: ``REPEATS`` runs, and the median of the repeats is its time: the first
#: calls of a new executable pay one-time costs (allocations, code loading,
#: cold caches) of 0.1-0.3 ms, more than a whole solve of a small problem
#: (DENSCHNF: the second call 0.1-0.4 ms, the steady state 28 us).
RERUN_BELOW_SECONDS = 1.0
REPEAT_SECONDS = 0.2
REPEATS = 21
SOLVERS = (
  "trncg",
  "scipy-trust-ncg",
  "scipy-trust-krylov",
  "optax-lbfgs",
  "optimistix-bfgs",
)
#: ``--quick``: the problems the issue names as failures, and a few easy ones.
QUICK = (
  "QUARTC",
  "BROWNBS",
  "NONCVXU2",
  "LUKSAN15LS",
  "GAUSS3LS",
  "KIRBY2LS",
  "PALMER3C",
  "ROSENBR",
  "BEALE",
  "DENSCHNA",
  "HIMMELBF",
  "ARWHEAD",
)


def load_problems() -> list:
  """sif2jax's unconstrained problems, without running ``sif2jax/__init__``
  (which builds every other problem set)."""
  spec = importlib.util.find_spec("sif2jax")
  if spec is None:
    raise ImportError(
      "benchmarks.cutest needs sif2jax: pip install -e '.[cutest]'"
    )
  root = pathlib.Path(list(spec.submodule_search_locations)[0])
  for name, path in (("sif2jax", root), ("sif2jax.cutest", root / "cutest")):
    if name not in sys.modules:  # an empty package: its __init__ is skipped
      module = types.ModuleType(name)
      module.__path__ = [str(path)]
      sys.modules[name] = module
  module = importlib.import_module("sif2jax.cutest._unconstrained_minimisation")
  return list(module.unconstrained_minimisation_problems)


class Outcome(NamedTuple):
  """One solver on one problem."""

  problem: str
  n: int
  solver: str
  f: float
  grad_norm: float
  iterations: int
  evaluations: int  # gradients (with their values) + HVPs
  hvps: int
  compile_seconds: float
  run_seconds: float
  status: str


def _grad_norm(fun, y) -> float:
  return float(jnp.linalg.norm(jax.grad(fun)(y)))


def timed(call) -> tuple:
  """``(output, seconds)`` of ``call()``: a run under ``RERUN_BELOW_SECONDS``
  is repeated (see ``REPEATS``) and timed by the median of the repeats."""

  def once():
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start

  out, seconds = once()
  if seconds >= RERUN_BELOW_SECONDS:
    return out, seconds
  times, deadline = [], time.perf_counter() + REPEAT_SECONDS
  while len(times) < REPEATS and (
    len(times) < 3 or time.perf_counter() < deadline
  ):
    out, seconds = once()
    times.append(seconds)
  return out, float(np.median(times))


def run_solve(fun, y0, optimizer, name) -> tuple:
  """trncg or optax.lbfgs in ``trncg_jax.solve``, timed as optimistix is: one
  compiled function that returns the solution, the step count and the status
  (XLA drops the history and state nobody reads). The work counts come from
  the history of a second, untimed, run: keeping it costs more than a small
  problem's solve (BEALE: 30 us without, 80 us with one history field)."""

  def minimise(y0):
    res = trncg_jax.solve(
      fun, y0, optimizer=optimizer, max_steps=MAX_ITERATIONS, grad_tol=GTOL
    )
    return res.params, res.num_steps, res.status

  start = time.perf_counter()
  compiled = jax.jit(minimise).lower(y0).compile()
  compile_seconds = time.perf_counter() - start
  (y, steps, status), run_seconds = timed(
    lambda: jax.block_until_ready(compiled(y0))
  )

  res = trncg_jax.solve(
    fun, y0, optimizer=optimizer, max_steps=MAX_ITERATIONS, grad_tol=GTOL
  )
  h = res.history
  if name == "trncg":
    # One value-and-gradient at the start and one per trial point.
    gradients, hvps = 1 + res.num_steps, int(h["hvps"][1:].sum())
  else:  # each zoom line-search step is one value-and-gradient
    gradients, hvps = (
      1 + int(np.maximum(h["num_linesearch_steps"][1:], 1).sum()),
      0,
    )
  status = trncg_jax.SolveStatus(int(status)).name
  if res.num_steps != int(steps):  # XLA rounded the two programs apart
    status += f" (counted run: {res.num_steps} steps)"
  return (
    y,
    int(steps),
    gradients,
    hvps,
    compile_seconds,
    run_seconds,
    status,
  )


def run_scipy(fun, y0, method) -> tuple:
  """SciPy's trust-region methods with jitted JAX functions (compiled first)."""
  value = jax.jit(fun)
  grad = jax.jit(jax.grad(fun))
  hessp = jax.jit(lambda y, p: trncg_jax.hvp.make_hvp(fun, y)(p))
  start = time.perf_counter()
  jax.block_until_ready((value(y0), grad(y0), hessp(y0, y0)))
  compile_seconds = time.perf_counter() - start
  deadline = time.perf_counter() + SCIPY_SECONDS

  def callback(intermediate_result):  # noqa: ARG001
    if time.perf_counter() > deadline:
      raise StopIteration

  x0 = np.asarray(y0, np.float64)

  def minimize():
    return scipy.optimize.minimize(
      lambda x: float(value(x)),
      x0,
      jac=lambda x: np.asarray(grad(x)),
      hessp=lambda x, p: np.asarray(hessp(x, p)),
      method=method,
      callback=callback,
      options=dict(gtol=GTOL, maxiter=MAX_ITERATIONS),
    )

  # Repeats run only after a first run under a second: the deadline, set for
  # the first, cannot cut them short.
  res, run_seconds = timed(minimize)
  return (
    jnp.asarray(res.x),
    int(res.nit),
    int(res.njev),
    int(res.nhev),
    compile_seconds,
    run_seconds,
    f"{res.status}: {res.message}",
  )


def run_optimistix(fun, y0) -> tuple:
  import optimistix as optx  # pylint: disable=g-import-not-at-top

  solver = optx.BFGS(rtol=1e-12, atol=1e-12)

  def minimise(y0):
    sol = optx.minimise(
      lambda y, _: fun(y), solver, y0, max_steps=MAX_ITERATIONS, throw=False
    )
    return sol.value, sol.stats["num_steps"], sol.result._value  # noqa: SLF001

  start = time.perf_counter()
  compiled = jax.jit(minimise).lower(y0).compile()
  compile_seconds = time.perf_counter() - start

  (y, steps, result), run_seconds = timed(
    lambda: jax.block_until_ready(compiled(y0))
  )
  steps = int(steps)
  # One value-and-gradient per step, and one at the start.
  return (
    y,
    steps,
    steps + 1,
    0,
    compile_seconds,
    run_seconds,
    f"result {int(result)}",
  )


def run_one(problem, solver: str) -> Outcome:
  y0 = jnp.asarray(problem.y0, jnp.float64)
  args = problem.args

  def fun(y):
    return jnp.asarray(problem.objective(y, args), jnp.float64)

  try:
    if solver == "trncg":
      out = run_solve(fun, y0, trncg_jax.trncg(), solver)
    elif solver == "optax-lbfgs":
      out = run_solve(fun, y0, optax.lbfgs(), solver)
    elif solver.startswith("scipy-"):
      out = run_scipy(fun, y0, solver[len("scipy-") :])
    else:
      out = run_optimistix(fun, y0)
  except Exception as err:  # pylint: disable=broad-except
    # A failure of the solver on this problem is a result, not a crash.
    return Outcome(
      problem.name,
      y0.size,
      solver,
      math.nan,
      math.nan,
      0,
      0,
      0,
      0.0,
      0.0,
      f"error: {type(err).__name__}: {err}"[:200],
    )
  y, iterations, gradients, hvps, compile_s, run_s, status = out
  return Outcome(
    problem.name,
    int(y0.size),
    solver,
    float(fun(y)),
    _grad_norm(fun, y),
    iterations,
    gradients + hvps,
    hvps,
    compile_s,
    run_s,
    status,
  )


def traces(problem, max_n: int) -> bool:
  """Whether the problem has at most ``max_n`` variables and its objective
  traces to a scalar in float64."""
  try:
    y0 = jnp.asarray(problem.y0, jnp.float64)
    if y0.ndim != 1 or y0.size > max_n:
      return False
    out = jax.eval_shape(lambda y: problem.objective(y, problem.args), y0)
    return out.shape == ()
  except Exception:  # pylint: disable=broad-except
    return False


def best_values(rows: list[Outcome]) -> dict:
  """``{problem: the lowest finite f any solver reached}``."""
  best = {}
  for r in rows:
    if np.isfinite(r.f):
      best[r.problem] = min(best.get(r.problem, math.inf), r.f)
  return best


def solved_flags(rows: list[Outcome]) -> dict:
  """``{(problem, solver): solved}`` by the issue's rule."""
  best = best_values(rows)
  return {
    (r.problem, r.solver): bool(
      np.isfinite(r.f)
      and r.grad_norm <= GTOL
      and r.f <= best[r.problem] + 1e-6 * max(1.0, abs(best[r.problem]))
    )
    for r in rows
  }


def profile(rows, solved, metric: str, solvers) -> dict:
  """Dolan-More performance ratios: ``{solver: ratios}``, inf when unsolved."""
  problems = sorted({r.problem for r in rows})
  by = {(r.problem, r.solver): r for r in rows}
  ratios = {s: [] for s in solvers}
  for p in problems:
    costs = {
      s: getattr(by[p, s], metric)
      for s in solvers
      if (p, s) in by and solved[p, s]
    }
    if not costs:
      continue  # no solver solved it: it counts for none
    low = max(min(costs.values()), 1e-12)
    for s in solvers:
      ratios[s].append(costs[s] / low if s in costs else math.inf)
  return ratios


def summary(rows, solved, solvers) -> str:
  problems = sorted({r.problem for r in rows})
  any_solved = sum(
    any(solved.get((p, s), False) for s in solvers) for p in problems
  )
  time_ratios = profile(rows, solved, "run_seconds", solvers)
  eval_ratios = profile(rows, solved, "evaluations", solvers)
  lines = [
    f"{len(problems)} problems; {any_solved} solved by at least one solver."
    f" Solved: ||g|| <= {GTOL:g} and f within 1e-6 max(1, |f_best|) of the"
    " best f found.",
    "",
    "| solver | solved | % of those any solver solved | median time ratio "
    "to best | median evaluation ratio to best | compile s (total) |",
    "| --- | --- | --- | --- | --- | --- |",
  ]
  for s in solvers:
    count = sum(solved.get((p, s), False) for p in problems)
    finite_t = [r for r in time_ratios[s] if np.isfinite(r)]
    finite_e = [r for r in eval_ratios[s] if np.isfinite(r)]
    compile_total = sum(r.compile_seconds for r in rows if r.solver == s)
    lines.append(
      f"| {s} | {count} | {100 * count / max(any_solved, 1):.0f} % | "
      f"{np.median(finite_t) if finite_t else math.nan:.2f} | "
      f"{np.median(finite_e) if finite_e else math.nan:.2f} | "
      f"{compile_total:.0f} |"
    )
  failures = [
    r for r in rows if r.solver == "trncg" and not solved[r.problem, r.solver]
  ]
  lines += [
    "",
    f"Problems trncg does not solve ({len(failures)}):",
    "",
    "| problem | n | f | best f | ‖g‖ | iterations | status | solved by |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  best = best_values(rows)
  for r in failures:
    others = [s for s in solvers if solved.get((r.problem, s), False)]
    lines.append(
      f"| {r.problem} | {r.n} | {r.f:.6g} | "
      f"{best.get(r.problem, math.nan):.6g} | {r.grad_norm:.2e} | "
      f"{r.iterations} | {r.status} | {', '.join(others) or 'none'}"
      " |"
    )
  return "\n".join(lines) + "\n"


def plot_profiles(rows, solved, solvers, path: pathlib.Path) -> None:
  from benchmarks.plots import subplots  # pylint: disable=g-import-not-at-top

  fig, axes = subplots(1, 2, figsize=(11, 4.2))
  for ax, metric, label in zip(
    axes,
    ("run_seconds", "evaluations"),
    ("run time (compile excluded)", "gradient + HVP evaluations"),
  ):
    ratios = profile(rows, solved, metric, solvers)
    taus = np.logspace(0, 3, 300)
    for s in solvers:
      r = np.asarray(ratios[s])
      ax.step(
        taus,
        [np.mean(r <= t) if r.size else 0 for t in taus],
        where="post",
        label=s,
        lw=2 if s == "trncg" else 1.2,
      )
    ax.set_xscale("log")
    ax.set_xlabel(r"$\tau$ (ratio to the best solver)")
    ax.set_ylabel(r"fraction of problems within $\tau$ of the best")
    ax.set_title(f"Performance profile: {label}")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
  axes[1].legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help=f"only {len(QUICK)} problems: {', '.join(QUICK)}",
  )
  parser.add_argument("--problems", nargs="*", help="problem names")
  parser.add_argument("--max-n", type=int, default=5000)
  parser.add_argument(
    "--solvers", nargs="*", default=list(SOLVERS), choices=SOLVERS
  )
  parser.add_argument("--out", default="results/latest/cutest")
  args = parser.parse_args(argv)
  jax.config.update("jax_enable_x64", True)
  # Every solve here is one blocking call. With asynchronous dispatch (JAX's
  # default) XLA:CPU hands any program it estimates at over 1000 flops to a
  # worker thread, about 30 us on this machine: more than a whole solve of a
  # small problem, and paid by loops with large bodies, not by small ones.
  # Synchronous dispatch times each solver's arithmetic alone. It is read
  # when the CPU client is made, so it must precede every computation.
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  wanted = set(args.problems or (QUICK if args.quick else ()))
  problems = [
    p
    for p in load_problems()
    if (not wanted or p.name in wanted) and traces(p, args.max_n)
  ]
  print(
    f"{len(problems)} problems, solvers: {', '.join(args.solvers)}", flush=True
  )
  rows = []
  csv_path = out / "cutest.csv"
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(Outcome._fields)
    for i, problem in enumerate(problems):
      for solver in args.solvers:
        row = run_one(problem, solver)
        rows.append(row)
        writer.writerow(row)
        f.flush()
        print(
          f"[{i + 1}/{len(problems)}] {row.problem:>12} n={row.n:<5} "
          f"{solver:>18}: f={row.f:.6g} |g|={row.grad_norm:.1e} "
          f"its={row.iterations} {row.run_seconds:.2f}s "
          f"(+{row.compile_seconds:.1f}s compile) {row.status[:40]}",
          flush=True,
        )
      jax.clear_caches()  # one problem's programs are not needed again
  solved = solved_flags(rows)
  text = summary(rows, solved, args.solvers)
  lines = header("CUTEst (sif2jax), float64", "cutest", argv)
  (out / "cutest.md").write_text(
    "\n".join(lines) + f" trncg_jax {trncg_jax.__version__}.\n\n{text}"
  )
  plot_profiles(rows, solved, args.solvers, out / "cutest_profile.png")
  print(text)
  print(f"wrote {csv_path}, {out / 'cutest.md'}, {out / 'cutest_profile.png'}")


if __name__ == "__main__":
  main()
