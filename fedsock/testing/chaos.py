"""Chaos runs: a chief and numpy workers as real processes, under faults drawn from a seed.

``run_chaos(workdir, plan)`` starts a bring-your-own-model chief on
127.0.0.1 and the plan's numpy workers (``fedsock.testing.chaosplan``: each
direct, through the fault proxy, or in its own network namespace behind a
``tbf``-shaped veth link and a fault proxy there), carries out the plan's
events (SIGKILL and restart, SIGSTOP and SIGCONT, of workers and of the
chief; cuts, stalls and delays in the proxies), and then checks what the
run left on disk (``fedsock.testing.chaoscheck``). It passes when:

* it finishes within ``bound`` seconds of wall-clock time (enforced: past
  it every process is killed and the run fails as hung);
* the chief exits 0 and every worker exits 0 (a worker restarted so late
  that the run ended before it joined is killed and counted as ``late``);
* no round is lost, repeated or corrupted (see ``chaoscheck``).

Events are skipped (and counted) when their target is already down, or once
the last round is recorded: a chief killed while it hands out the final
model waits three done-grace periods for its workers, which only makes the
run longer.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from fedsock.testing.chaoscheck import Watch, check_run, metrics_rows
from fedsock.testing.chaosplan import PROXY_EVENTS, Event, RunPlan, plan_run
from fedsock.testing.faultproxy import FaultProxy
from fedsock.testing.netlinks import ShapedLink

__all__ = ["free_port", "plan_run", "run_chaos"]

#: Timeouts of the chaos runs (seconds): short, so that faults are noticed within a run.
CHIEF_FLAGS = ["--min-workers", "2", "--round-timeout", "2", "--idle-timeout", "3", "--heartbeat-interval", "0.5",
               "--secagg-timeout", "3", "--done-grace", "8", "--progress", "plain"]
WORKER_FLAGS = ["--idle-timeout", "3", "--heartbeat-interval", "0.5", "--reconnect-timeout", "60"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_token(state: Path, name: str) -> str:
    """A per-worker token for ``name`` (``fedsock token create``)."""
    from fedsock.chief import tokens

    return str(tokens.create(state, name))


class Cast:
    """The run's processes, proxies and links, and what was done to them."""

    def __init__(self, workdir: Path, plan: RunPlan) -> None:
        self.workdir, self.plan = workdir, plan
        self.state, self.updates = workdir / "chief", workdir / "updates"
        self.port = free_port()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.logs: list[IO[bytes]] = []
        self.chief: subprocess.Popen[bytes] | None = None
        self.workers: dict[int, subprocess.Popen[bytes] | None] = {}
        self.incarnation: dict[int, int] = {}
        self.tokens: dict[int, str] = {}
        self.proxies: dict[int, FaultProxy] = {}
        self.links: dict[int, ShapedLink] = {}
        self.later: list[tuple[float, str, Any]] = []  # (when, action, its argument)
        self.stopped: set[int] = set()  # pids under SIGSTOP
        self.done: list[dict[str, object]] = []
        self.skipped: list[dict[str, object]] = []

    def spawn(self, argv: list[str], log: str, token: str | None = None) -> subprocess.Popen[bytes]:
        f = open(self.workdir / f"{log}.log", "ab")
        self.logs.append(f)
        env = self.env if token is None else dict(self.env, FEDSOCK_TOKEN=token)
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)

    def start_chief(self) -> None:
        (self.state / "chief.addr").unlink(missing_ok=True)
        argv = [sys.executable, "-m", "fedsock", "chief", "--host", "127.0.0.1", "--port", str(self.port),
                "--state-dir", str(self.state), "--rounds", str(self.plan.rounds),
                "--keep-checkpoints", str(self.plan.rounds + 1), *CHIEF_FLAGS]
        self.chief = self.spawn(argv + (["--secure-agg"] if self.plan.secure else []), "chief")

    def setup(self, timeout: float) -> None:
        from fedsock.demo import wait_for_address

        self.start_chief()
        assert self.chief is not None
        wait_for_address(self.state, self.chief, timeout=timeout)
        for p in self.plan.proxies():
            if p >= 0:
                self.links[p] = ShapedLink.create(f"w{p}", self.plan.rate_kbit[p])
            proxy = FaultProxy(("127.0.0.1", self.port), seed=self.plan.seed,
                               listen=self.links[p].host_ip if p >= 0 else "127.0.0.1")
            proxy.start()
            self.proxies[p] = proxy
        shared = (self.state / "token").read_text().strip()
        for i in range(self.plan.workers):
            self.tokens[i] = worker_token(self.state, f"w{i}") if self.plan.secure else shared
            self.start_worker(i)

    def start_worker(self, i: int) -> None:
        link = self.plan.links[i]
        address = (f"127.0.0.1:{self.port}" if link == "direct"
                   else self.proxies[i if link == "netns" else -1].url)
        self.incarnation[i] = self.incarnation.get(i, -1) + 1
        argv = [sys.executable, "-m", "fedsock.testing.numpy_worker", "--chief", address, "--name", f"w{i}",
                "--shape", ",".join(map(str, self.plan.shape)),
                "--examples", str(self.plan.examples[i]), "--work", str(self.plan.work),
                "--save-updates", str(self.updates / f"w{i}"), *WORKER_FLAGS]
        self.workers[i] = self.spawn(self.links[i].wrap(argv) if link == "netns" else argv,
                                     f"w{i}-{self.incarnation[i]}", self.tokens[i])

    def log_of(self, i: int) -> str:
        return (self.workdir / f"w{i}-{self.incarnation[i]}.log").read_text(errors="replace")

    # --- events ---------------------------------------------------------------

    def carry_out(self, ev: Event, now: float) -> None:
        """Do ``ev`` now (or record why it was skipped)."""
        d = ev.describe()
        if ev.kind in PROXY_EVENTS:
            proxy = self.proxies[ev.target]
            if ev.kind == "delay":
                proxy.slow(ev.size / 1000, ev.pause)
            else:
                proxy.inject(ev.kind, ev.size, hold=ev.pause)
            self.done.append(d)
            return
        proc = self.chief if ev.kind.endswith("chief") else self.workers.get(ev.target)
        if proc is None or proc.poll() is not None or (ev.kind.startswith("stop") and proc.pid in self.stopped):
            self.skipped.append({**d, "why": "its target is down or stopped already"})
            return
        if ev.kind.startswith("kill"):
            proc.kill()
            proc.wait()
            self.stopped.discard(proc.pid)
            if ev.kind == "kill_chief":
                self.later.append((now + ev.pause, "restart_chief", None))
            else:
                self.workers[ev.target] = None
                self.later.append((now + ev.pause, "restart_worker", ev.target))
        else:
            proc.send_signal(signal.SIGSTOP)
            self.stopped.add(proc.pid)
            self.later.append((now + ev.pause, "cont", proc))
        self.done.append(d)

    def due(self, now: float, over: bool, final: bool = False) -> None:
        """Carry out the restarts and SIGCONTs whose time has come (``final``: every SIGCONT, no
        restart). Workers are not restarted once the last round is recorded (``over``): one started
        after the end has nothing to join."""
        for item in sorted((x for x in self.later if x[0] <= now or final), key=lambda x: x[0]):
            self.later.remove(item)
            _, action, arg = item
            if action == "cont":
                if arg.poll() is None:
                    arg.send_signal(signal.SIGCONT)
                self.stopped.discard(arg.pid)
            elif action == "restart_chief" and not final:
                self.start_chief()
            elif action == "restart_worker" and not (over or final):
                self.start_worker(arg)

    def teardown(self) -> None:
        for p in [self.chief, *self.workers.values()]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        for proxy in self.proxies.values():
            proxy.stop()
        for link in self.links.values():
            link.close()
        for f in self.logs:
            f.close()


def _reconnects(log: str) -> int:
    m = re.search(r"after (\d+) reconnects", log)
    return int(m.group(1)) if m else 0


def run_chaos(workdir: Path, plan: RunPlan | int, bound: float = 90.0) -> dict[str, Any]:
    """One chaos run (``plan``, or the plan of that seed); returns its figures, ``ok`` whether it passed
    and ``failures`` why not."""
    plan = plan_run(plan) if isinstance(plan, int) else plan
    workdir.mkdir(parents=True, exist_ok=True)
    cast = Cast(workdir, plan)
    watch = Watch(cast.state)
    failures: list[str] = []
    t0 = time.monotonic()
    deadline = t0 + bound
    events = list(plan.events)
    hung = False
    chief_code: int | None = None
    worker_codes: dict[str, int | str | None] = {}
    try:
        cast.setup(timeout=bound / 2)
        while True:
            now = time.monotonic() - t0
            if now > bound:
                hung = True
                break
            watch.poll()
            over = len(metrics_rows(cast.state)) >= plan.rounds
            cast.due(now, over)
            assert cast.chief is not None
            if cast.chief.poll() is not None and not any(a == "restart_chief" for _, a, _ in cast.later):
                chief_code = cast.chief.returncode
                break
            while events and events[0].at <= now:
                ev = events.pop(0)
                if over:
                    cast.skipped.append({**ev.describe(), "why": "the last round was recorded"})
                else:
                    cast.carry_out(ev, now)
            time.sleep(0.05)
        cast.skipped += [{**e.describe(), "why": "the run ended first"} for e in events]
        cast.due(time.monotonic() - t0, True, final=True)  # every stopped process continues
        for i, p in cast.workers.items():
            if p is None:
                worker_codes[f"w{i}"] = "late"
                continue
            joined = "joined as worker" in cast.log_of(i)  # else it may retry a chief that is gone
            try:
                worker_codes[f"w{i}"] = p.wait(max(0.1, min(15.0 if joined else 3.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                joined = "joined as worker" in cast.log_of(i)
                worker_codes[f"w{i}"] = None if joined else "late"
                hung = hung or (joined and time.monotonic() >= deadline)
    except Exception as exc:  # noqa: BLE001 - a run that cannot even start fails, the campaign goes on
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        stats = {k: sum(getattr(p.stats, k) for p in cast.proxies.values())
                 for k in ("connections", "cuts_up", "cuts_down", "stalls", "delayed")}
        pending = sum(p.pending() for p in cast.proxies.values())
        cast.teardown()
    seconds = time.monotonic() - t0
    verdict = check_run(cast.state, cast.updates, plan.rounds, [plan.shape], plan.secure, watch)
    if hung:
        failures.append(f"hung: not finished within the bound of {bound:g} s")
    if chief_code not in (0, None) or (chief_code is None and not hung and not failures):
        failures.append(f"the chief exited with code {chief_code}")
    for name, code in worker_codes.items():
        if code not in (0, "late"):
            failures.append(f"worker {name} " + ("did not finish" if code is None else f"exited with code {code}"))
    failures += verdict["problems"]
    kinds = [str(d["kind"]) for d in cast.done]
    return {
        **plan.describe(), "seconds": round(seconds, 2), "bound": bound,
        "events_done": cast.done, "events_skipped": len(cast.skipped),
        "kills": {k: kinds.count(f"kill_{k}") for k in ("worker", "chief")},
        "stops": {k: kinds.count(f"stop_{k}") for k in ("worker", "chief")},
        "faults": {k: kinds.count(k) for k in PROXY_EVENTS}, "faults_pending_at_end": pending,
        "proxy": stats, "netns": "netns" in plan.links,
        "reconnects": sum(_reconnects(f.read_text(errors="replace")) for f in workdir.glob("w*-*.log")),
        "rounds_completed": verdict["rounds_completed"], "rounds_lost": len(verdict["lost"]),
        "rounds_repeated": len(verdict["repeated"]), "corrupted_rounds": len(verdict["corrupted"]),
        "chief_exit": chief_code, "worker_exits": worker_codes,
        "ok": not failures, "failures": failures,
    }
