"""Helpers every benchmark script shares: the machine's description, the
dated header of each report, and ``solve`` runs with a wall-clock budget.

Importing this module changes no global state (float64 is each script's
``main``'s business).
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np

import trncg_jax


def machine() -> str:
  """The CPU model, core count, JAX version and backend, in one line."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return (
    f"{cpu}, {os.cpu_count()} cores, JAX {jax.__version__} "
    f"({jax.default_backend()})"
  )


def header(
  title: str,
  module: str,
  argv=None,
  *,
  date: Optional[str] = None,
  machine_name: Optional[str] = None,
) -> list[str]:
  """A report's first lines: its title, the date, the machine and the command
  that wrote it (today, this machine and ``sys.argv`` unless given), in the
  form the benchmarks page (``benchmarks.report``) reads back."""
  argv = sys.argv[1:] if argv is None else argv
  command = " ".join(["python -m", f"benchmarks.{module}", *argv])
  return [
    f"# {title}",
    "",
    f"Date: {date or time.strftime('%Y-%m-%d')}."
    f" Machine: {machine_name or machine()}.",
    f"Command: `{command}`.",
  ]


def work_counts(history: dict, num_steps: int) -> tuple[int, int]:
  """(gradients, HVPs) used: one value-and-gradient per evaluated point."""
  if "hvps" in history:  # trncg: a trial point per step, plus the start
    return 1 + num_steps, int(history["hvps"][1:].sum())
  for key in ("linesearch_steps", "num_linesearch_steps"):
    if key in history:  # one value-and-gradient per line-search trial
      return 1 + int(np.maximum(history[key][1:], 1).sum()), 0
  return 1 + num_steps, 0  # adam


def steps_that_fit(steps: int, seconds_left: float, per_step: float) -> int:
  """``steps``, or the largest power of two of steps below it that the
  budget's ``seconds_left`` still holds at ``per_step`` seconds a step (one
  at least): the last calls shrink instead of overrunning the budget by a
  whole call. Their sizes are at most ``log2(steps)`` more, and those of up
  to 15 steps share one compiled loop with calls of up to 15 (``solve``
  rounds its history up to 16 entries at least)."""
  fit = seconds_left / max(per_step, 1e-12)
  if fit >= steps:
    return steps
  return 2 ** max(0, math.floor(math.log2(max(fit, 1.0))))


def run_for(
  seconds: float,
  loss: Callable,
  params,
  args: tuple,
  optimizer,
  *,
  chunk: Optional[int] = None,
  records: int = 30,
  max_steps: Optional[int] = None,
  callback: Optional[Callable] = None,
  desc: str = "solve",
  progress: bool = False,
  **tols,
):
  """Runs ``optimizer`` until its run time (compile excluded) reaches
  ``seconds``, ``max_steps`` steps are made, or ``solve`` stops for another
  reason (after one call at least), so that every optimizer in a comparison
  gets the same budget.

  The run is a chain of ``trncg_jax.solve`` calls of ``chunk`` steps each,
  every call one compiled loop. With ``chunk=None`` the first call makes one
  step, and its time sizes the rest to about ``records`` calls in all (one
  size, so one compile). Near the end of the budget the calls shrink to what
  it still holds at the last call's time per step
  (:func:`steps_that_fit`), so a run overruns by about one step, not one
  call.

  Args:
    seconds: the run-time budget.
    loss, params, args, optimizer: as for ``solve``.
    chunk: steps per call, or ``None`` (see above).
    records: the number of calls to aim for when ``chunk`` is ``None``.
    max_steps: an iteration cap besides the budget.
    callback: called with the params after each call; its values are
      recorded in the trace under ``"callback"``.
    desc, progress: a progress bar: over the run-time budget, advanced
      after each call, or, without a finite budget, ``solve``'s own bar.
    **tols: ``solve``'s tolerances.

  Returns:
    ``(result, trace)``: ``solve``'s result with the calls' histories merged
    and their steps, run times and compile times summed; and ``trace``, a
    dict of lists with one entry per call (and one for the start):
    ``seconds``, ``steps``, ``loss`` and, with a callback, ``callback``.
  """
  max_steps = max_steps or 2**31 - 2
  trace = dict(seconds=[0.0], steps=[0], loss=[float(loss(params, *args))])
  if callback is not None:
    trace["callback"] = [callback(params)]
  histories, res, state, compile_seconds = [], None, None, 0.0
  size = chunk or 1
  timed = math.isfinite(seconds)
  bar = None
  if progress and timed:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm(
      total=seconds,
      desc=desc,
      bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s"
      " of run time{postfix}",
    )
  while res is None or (
    trace["seconds"][-1] < seconds and trace["steps"][-1] < max_steps
  ):
    steps = min(size, max_steps - trace["steps"][-1])
    if res is not None and timed:
      steps = steps_that_fit(
        steps,
        seconds - trace["seconds"][-1],
        res.run_seconds / max(res.num_steps, 1),
      )
    res = trncg_jax.solve(
      loss,
      params,
      *args,
      optimizer=optimizer,
      state=state,
      max_steps=steps,
      progress=progress and not timed,
      desc=desc,
      **tols,
    )
    compile_seconds += res.compile_seconds
    params, state = res.params, res.state
    # Entry 0 of each later history repeats the previous call's last.
    histories.append(
      {k: v[1 if histories else 0 :] for k, v in res.history.items()}
    )
    trace["seconds"].append(trace["seconds"][-1] + res.run_seconds)
    trace["steps"].append(trace["steps"][-1] + res.num_steps)
    trace["loss"].append(float(res.history["loss"][-1]))
    if callback is not None:
      trace["callback"].append(callback(params))
    if bar is not None:
      bar.update(min(res.run_seconds, bar.total - bar.n))
      bar.set_postfix(loss=f"{trace['loss'][-1]:.2e}")
    if res.status != trncg_jax.SolveStatus.MAX_STEPS:
      break
    if chunk is None and len(trace["steps"]) == 2:
      per_step = max(trace["seconds"][-1] / trace["steps"][-1], 1e-9)
      size = max(1, int(min(seconds / per_step, max_steps) / records))
  if bar is not None:
    bar.close()
  merged = {k: np.concatenate([h[k] for h in histories]) for k in histories[0]}
  result = res._replace(
    history=merged,
    num_steps=trace["steps"][-1],
    run_seconds=trace["seconds"][-1],
    compile_seconds=compile_seconds,
  )
  return result, trace
