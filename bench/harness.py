"""The measurement harness: workers, interleaved rounds, medians with min and max, ratios from side-by-side samples.

Interleaving: after a warm-up batch of every contender, round r runs a batch of each contender in turn, in an order
that changes every round so that each contender follows every other one equally often and takes every place in
the round equally often (a Williams design: balanced_order).  A plain rotation (A B C, B C A, C A B) changes only
who starts: B would always follow A, and whatever A leaves behind (a busy CPU, pages to fault again after a fork)
would always be charged to B.  A ratio A/B is median(A) / median(B) over all samples, with its spread given by the
per-round ratios (median of A's batch / median of B's batch in the same round): min and max.

Pinning: a spawn's child that the scheduler places on another CPU than its parent's costs every way of spawning
alike some tens of microseconds more (measured on the 2-vCPU VM of issue 19: 40 to 56 us on 80 to 200 us, the
other CPU being idle and halted), and whether it does depends on what the parent did just before, not on the way
measured.  So the short spawn+wait series run with the worker (and the children, which inherit it) pinned to one
CPU (pinned(), the `cpu` of a worker request): every way is measured with its child on its parent's CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tied


class WorkerError(RuntimeError):
    """A worker failed to start or a request failed inside it; reason: the error as the worker said it."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class Worker:
    """A `python -m bench.worker SIZE STATE` process: a parent region of SIZE bytes in STATE, and the calls it runs."""

    def __init__(self, size: int, state: str) -> None:
        self.size = size
        self.state = state
        env = tied.child_env()  # it dies with this process
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.worker", str(size), state],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        hello = self._read()
        if "error" in hello:
            self.close()
            raise WorkerError(f"worker ({size} bytes, {state}) could not start: {hello['error']}")
        self.info: dict[str, Any] = hello["ready"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise WorkerError(f"worker ({self.size} bytes, {self.state}) died (exit status {code})",
                              f"the worker process died (exit status {code})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def request(self, **req: Any) -> dict[str, Any]:
        """Sends one request and returns the answer; WorkerError if it failed in the worker."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:  # BrokenPipeError: it died
            code = self.proc.poll()
            raise WorkerError(f"worker ({self.size} bytes, {self.state}) is gone (exit status {code}): {exc}",
                              f"the worker process died (exit status {code})") from None
        answer = self._read()
        if "error" in answer:
            raise WorkerError(f"{req.get('op')} {req.get('method', '')}: {answer['error']}\n"
                              f"{answer.get('traceback', '')}", answer["error"])
        return answer

    def close(self) -> None:
        """Stops the worker (its memory goes with it)."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op": "exit"}\n')
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Series:
    """The samples of one contender (ns), kept per round (round 0 is not the warm-up: warm-ups are dropped)."""

    name: str
    rounds: list[list[int]] = field(default_factory=list)
    skipped: str | None = None

    @property
    def samples(self) -> list[int]:
        return [x for r in self.rounds for x in r]

    def stats(self) -> dict[str, float] | None:
        """median / min / max / n of the samples, or None when there are none."""
        s = self.samples
        if not s:
            return None
        return {"median": float(statistics.median(s)), "min": float(min(s)), "max": float(max(s)), "n": len(s)}

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "skipped": self.skipped, "stats": self.stats(), "rounds_ns": self.rounds}


def ratio(a: Series, b: Series, plus: float = 0.0) -> dict[str, float] | None:
    """median(a) / (median(b) + plus), with min and max of the same-round ratios; None if either has no samples.

    `plus` (ns) is a cost measured elsewhere that the bound adds to b (e.g. a capture's kernel work timed in C)."""
    if not a.samples or not b.samples:
        return None
    per_round = [statistics.median(ra) / (statistics.median(rb) + plus)
                 for ra, rb in zip(a.rounds, b.rounds, strict=False) if ra and rb]
    value = a.median / (b.median + plus)
    return {"ratio": value, "min": min(per_round, default=value), "max": max(per_round, default=value)}


def target(name: str, issue: int, r: dict[str, float] | None, op: str, bound: float, what: str,
           skipped: str | None = None, note: str = "", unit: str = "x") -> dict[str, Any]:
    """One target of an issue: a measured value (a ratio unless `unit` says otherwise; None with why it was not
    measured) against a bound; held is None when not measured."""
    held = None
    if r is not None:
        held = r["ratio"] <= bound if op == "<=" else r["ratio"] >= bound
    return {"name": name, "issue": issue, "ratio": r, "op": op, "bound": bound, "unit": unit, "what": what,
            "held": held, "skipped": (skipped or "not measured") if r is None else None, "note": note}


def fmt_ratio(r: dict[str, float] | None, unit: str = "x") -> str:
    """A ratio with its single-round spread, 1.23x [1.10, 1.31]; another unit: 12.3 MiB (one figure)."""
    if r is None:
        return "n/a"
    if unit != "x":
        return f"{r['ratio']:.1f} {unit}"
    return f"{r['ratio']:.2f}x [{r['min']:.2f}, {r['max']:.2f}]"


Runner = Callable[[int], list[int]]
"""Runs a batch of n calls and returns their times in ns."""


def balanced_order(n: int, r: int) -> list[int]:
    """The order of n contenders (0 .. n-1) in round r: row r of a Williams design, whose rows (n of them when n is
    even, 2n when it is odd: each row then also reversed) put each contender right after every other one equally
    often and in every place equally often."""
    rows = n if n % 2 == 0 else 2 * n
    row, reverse = r % rows, False
    if row >= n:
        row, reverse = row - n, True
    first = [(k + 1) // 2 if k % 2 else (n - k // 2) % n for k in range(n)]  # 0, 1, n-1, 2, n-2, ...
    order = [(f + row) % n for f in first]
    return order[::-1] if reverse else order


def interleave(contenders: Sequence[tuple[str, Runner]], rounds: int, batch: int, warmup: int = 1,
               tick: Callable[[], None] | None = None) -> dict[str, Series]:
    """Runs every contender `warmup` batches (dropped), then `rounds` rounds of one batch each, in balanced_order."""
    series = {name: Series(name) for name, _ in contenders}

    def attempt(name: str, run: Runner) -> list[int] | None:
        """run(batch); a contender whose call fails is dropped (its Series says why), the others go on."""
        if series[name].skipped:
            return None
        try:
            return run(batch)
        except WorkerError as exc:
            series[name].skipped = f"failed: {exc.reason}"
            series[name].rounds = []
            return None

    for name, run in contenders:
        for _ in range(warmup):
            attempt(name, run)
    for r in range(rounds):
        for k in balanced_order(len(contenders), r):
            name, run = contenders[k]
            got = attempt(name, run)
            if got is not None:
                series[name].rounds.append(got)
        if tick:
            tick()
    return series


def spawn_cpu() -> int:
    """The CPU the short spawn+wait series are pinned to: the highest this process may use."""
    return max(os.sched_getaffinity(0))


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """This thread (and the processes it starts meanwhile, which keep it) on `cpu` only; None: unchanged."""
    if cpu is None:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def fmt_ns(ns: float) -> str:
    """A duration with a readable unit."""
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"
