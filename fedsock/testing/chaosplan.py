"""What one chaos run does, drawn from its seed (pure: no processes, no I/O).

A ``RunPlan`` fixes the run's shape (workers, their example counts, secure
aggregation or not, how each worker reaches the chief) and its ``Event``s:
at ``at`` seconds after the start, one of

* ``kill_worker`` / ``kill_chief``: SIGKILL, then a restart after ``pause`` s
  (the chief on the same state dir and port, the worker under the same name);
* ``stop_worker`` / ``stop_chief``: SIGSTOP, SIGCONT ``pause`` s later;
* ``cut_up`` / ``cut_down``: the fault proxy cuts (RST) the connection that
  next forwards its ``size``-th byte toward the chief / toward the worker,
  from that moment: mostly inside an update or a model (64 KiB by default);
* ``stall``: the proxy stops forwarding the connection that passes ``size``
  more bytes and holds it silent for ``pause`` s before cutting it;
* ``delay``: every piece the proxy forwards waits ``size`` ms more for
  ``pause`` s.

A worker's link is ``direct`` (127.0.0.1), ``proxy`` (through the fault
proxy on 127.0.0.1) or ``netns`` (its own network namespace behind a veth
pair shaped with ``tbf`` at ``rate_kbit``, through a fault proxy on the
host end of that pair).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PROCESS_EVENTS = ("kill_worker", "stop_worker", "kill_chief", "stop_chief")
PROXY_EVENTS = ("cut_up", "cut_down", "stall", "delay")
#: Relative frequency of each kind of event in a plan.
WEIGHTS = {"kill_worker": 2.0, "stop_worker": 1.5, "kill_chief": 1.2, "stop_chief": 0.8,
           "cut_up": 1.2, "cut_down": 1.2, "stall": 0.8, "delay": 0.8}


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    target: int = -1  # the worker (kill_worker, stop_worker) or the proxy (proxy events)
    pause: float = 0.0
    size: int = 0

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {"at": round(self.at, 2), "kind": self.kind}
        if self.target >= 0:
            d["target"] = self.target
        if self.pause:
            d["pause"] = round(self.pause, 2)
        if self.size:
            d["size"] = self.size
        return d


@dataclass(frozen=True)
class RunPlan:
    seed: int
    rounds: int
    examples: tuple[int, ...]  # per worker; worker i is called f"w{i}"
    links: tuple[str, ...]  # per worker: direct | proxy | netns
    rate_kbit: tuple[int, ...]  # per worker (netns links only; 0 otherwise)
    secure: bool
    events: tuple[Event, ...] = field(default=())
    shape: tuple[int, ...] = (128, 128)
    work: float = 0.5

    @property
    def workers(self) -> int:
        return len(self.examples)

    @property
    def update_bytes(self) -> int:
        n = 4
        for d in self.shape:
            n *= d
        return n

    def proxies(self) -> list[int]:
        """The run's fault proxies: -1 is the shared one on 127.0.0.1, i >= 0 worker i's netns link's."""
        out = [-1] if "proxy" in self.links else []
        return out + [i for i, link in enumerate(self.links) if link == "netns"]

    def describe(self) -> dict[str, object]:
        return {"seed": self.seed, "rounds": self.rounds, "workers": self.workers, "secure": self.secure,
                "links": list(self.links), "rate_kbit": [r for r in self.rate_kbit if r],
                "events": [e.describe() for e in self.events]}


def plan_run(seed: int, rounds: int = 12, secure: bool | None = None, netns: bool | None = None,
             events: int | None = None, kinds: tuple[str, ...] | None = None) -> RunPlan:
    """The run of ``seed``: a third secure (seed % 3 == 0), a fifth in namespaces (seed % 5 == 2),
    3 to 6 events at random moments of the run's expected length.

    Args:
        secure, netns, events: override what the seed says.
        kinds: draw the events from these kinds only (default: all).
    """
    rng = random.Random(seed)
    secure = seed % 3 == 0 if secure is None else secure
    netns = seed % 5 == 2 if netns is None else netns
    n = 4 if secure else rng.choice((3, 4))
    examples = tuple(rng.choice((5, 10, 20, 30, 40, 60)) for _ in range(n))
    links = ["proxy" if rng.random() < 0.6 else "direct" for _ in range(n)]
    if netns:
        for i in rng.sample(range(n), 2):
            links[i] = "netns"
    if "proxy" not in links and "netns" not in links:
        links[rng.randrange(n)] = "proxy"
    rates = tuple(rng.choice((2_000, 8_000, 30_000)) if link == "netns" else 0 for link in links)
    plan = RunPlan(seed, rounds, examples, tuple(links), rates, secure)
    span = rounds * (plan.work + 0.3)
    pool = list(kinds or WEIGHTS)
    drawn = []
    for _ in range(rng.randint(3, 6) if events is None else events):
        kind = rng.choices(pool, [WEIGHTS[k] for k in pool])[0]
        at = rng.uniform(0.5, span)
        if kind in ("kill_worker", "stop_worker"):
            drawn.append(Event(at, kind, rng.randrange(n), rng.uniform(0.2, 4.0)))
        elif kind in ("kill_chief", "stop_chief"):
            drawn.append(Event(at, kind, -1, rng.uniform(0.2, 4.0)))
        elif kind == "delay":
            drawn.append(Event(at, kind, rng.choice(plan.proxies()), rng.uniform(1.0, 4.0), rng.randint(20, 300)))
        else:
            pause = rng.uniform(1.0, 6.0) if kind == "stall" else 0.0
            drawn.append(Event(at, kind, rng.choice(plan.proxies()), pause,
                               rng.randint(1, 2 * plan.update_bytes)))
    return RunPlan(seed, rounds, examples, tuple(links), rates, secure, tuple(sorted(drawn, key=lambda e: e.at)))
