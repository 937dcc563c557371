"""Turn ``reproduce_fedavg.py``'s JSON into ``docs/results.md`` and plots."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

# McMahan et al. 2017, Table 2: MNIST CNN, rounds to 99% (IID, pathological non-IID).
PAPER = {"FedSGD": (626, 483), "FedAvg E=5 B=10": (20, 229), "FedAvg E=20 B=10": (18, 173)}
PARTITION_TITLES = {"iid": "IID", "labels:2": "non-IID labels:2", "dirichlet:0.3": "Dirichlet(0.3)"}
INF = float("inf")
LOW = 0.90  # a second, lower target read off the same runs


def med(rounds: list[int | None]) -> float:
    """Median of rounds-to-target, a run that never got there counting as infinitely many."""
    return statistics.median([INF if r is None else r for r in rounds])


def fmt_rounds(rounds: list[int | None], cap: int) -> str:
    m = med(rounds)
    done = [r for r in rounds if r is not None]
    if m == INF:
        return f"> {cap} ({len(done)}/{len(rounds)} reached)"
    hi = f"> {cap}" if len(done) < len(rounds) else str(max(done))
    text = f"{m:g} [{min(done)}–{hi}]"
    return text if len(done) == len(rounds) else f"{text} ({len(done)}/{len(rounds)})"


def fmt_b(b: int | None) -> str:
    return "∞" if b is None else str(b)


def updates_per_round(e: int, b: int | None, n: float) -> str:
    """The paper's u = E n / B (n = mean examples per worker)."""
    return str(e) if b is None else f"{e * n / b:.0f}"


def hyper_text(cell: dict[str, Any]) -> str:
    extra = ", ".join(f"{'server lr' if k == 'server_lr' else k} {v:g}" for k, v in cell["hyper"].items())
    return f"lr {cell['lr']:g}" + (f", {extra}" if extra else "")


def rounds_at(cell: dict[str, Any], target: float) -> list[int | None]:
    """Rounds to ``target`` of each seed (runs stop at the study's target, so only lower ones)."""
    return [next((i for i, a in enumerate(c) if a >= target), None) for c in cell["curves"]]


def main_table(r: dict[str, Any], n: float, target: float, paper: bool = True) -> list[str]:
    table = r["table"]
    base = {p: med(rounds_at(table["FedSGD"][p], target)) for p in table["FedSGD"] if p not in ("E", "B")}
    parts = [p for p in PARTITION_TITLES if p in base]
    head = ["", "E", "B", "u"] + [PARTITION_TITLES[p] for p in parts]
    head += ["paper IID", "paper non-IID"] if paper else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table.items():
        e, b = row["E"], row["B"]
        cells = [name.split(" E=")[0], str(e), fmt_b(b), updates_per_round(e, b, n)]
        for p in parts:
            if p not in row:
                cells.append("—")
                continue
            cap = r["fedsgd_rounds"] if name == "FedSGD" else r["max_rounds"]
            rounds = rounds_at(row[p], target)
            m = med(rounds)
            speed = f" ({base[p] / m:.1f}×)" if m not in (0, INF) and base[p] != INF else ""
            cells.append(fmt_rounds(rounds, cap) + speed)
        if paper:
            cells += [str(x) for x in PAPER[name]] if name in PAPER else ["—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def hyper_table(r: dict[str, Any]) -> list[str]:
    parts = [p for p in PARTITION_TITLES]
    lines = ["| | " + " | ".join(PARTITION_TITLES[p] for p in parts) + " |", "|---|" + "---|" * len(parts)]
    for name, row in r["table"].items():
        cells = [hyper_text(row[p]) if p in row else "—" for p in parts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def byzantine_table(r: dict[str, Any]) -> list[str]:
    b = r["byzantine"]
    attacks = list(b["attacks"])
    lines = ["| rule | " + " | ".join(f"attack: {a}" for a in attacks) + " |",
             "|---|" + "---|" * len(attacks)]
    for rule, cells in b["results"].items():
        row = []
        for a in attacks:
            c = cells[a]
            final = statistics.median(c["final"])
            div = f", diverged {c['diverged']}/{len(c['final'])}" if c["diverged"] else ""
            row.append(f"{fmt_rounds(c['rounds'], b['rounds'])}; acc {final:.3f}{div}")
        lines.append(f"| `{rule}` | " + " | ".join(row) + " |")
    return lines


def plot(r: dict[str, Any], docs: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for p, title in PARTITION_TITLES.items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, row in r["table"].items():
            if p in row:
                curve = row[p]["curve"]
                ax.plot(range(1, len(curve)), curve[1:], label=f"{name} ({hyper_text(row[p])})")
        ax.axhline(r["target"], color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_ylim(0.5, 1.0)
        ax.set_xlabel("round")
        ax.set_ylabel("holdout accuracy")
        ax.set_title(f"digits, {r['workers']} workers, {title} (seed 0)")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fname = f"fedavg-{p.replace(':', '-')}.png"
        fig.savefig(docs / fname, dpi=110)
        plt.close(fig)
        names.append(fname)
    return names


def compare(a_name: str, a: float, b_name: str, b: float, target: float) -> str:
    """A sentence comparing median rounds ``a`` and ``b`` to ``target``."""
    t = f"{target:.2f}"
    if a == INF and b == INF:
        return f"neither {a_name} nor {b_name} reaches {t} within the cap"
    if a == INF:
        return f"{a_name} does not reach {t} within the cap; {b_name} does in {b:g} rounds"
    if b == INF:
        return f"{a_name} reaches {t} in {a:g} rounds; {b_name} does not within the cap"
    if abs(a - b) <= 0.05 * max(a, b):
        return f"{a_name} needs about as many rounds as {b_name} to reach {t} ({a:g} vs {b:g})"
    if a < b:
        return f"{a_name} needs {b / a:.1f}× fewer rounds than {b_name} to reach {t}"
    return f"{a_name} needs {a / b:.1f}× more rounds than {b_name} to reach {t}"


def observations(r: dict[str, Any], low: float) -> list[str]:
    t, target = r["table"], r["target"]
    out = []
    for p in PARTITION_TITLES:
        e5, sgd = t["FedAvg E=5 B=10"][p], t["FedSGD"][p]
        parts = [compare("FedAvg E=5 B=10", med(e5["rounds"]), "FedSGD", med(sgd["rounds"]), target),
                 compare("FedAvg E=5 B=10", med(rounds_at(e5, low)), "FedSGD", med(rounds_at(sgd, low)), low)]
        for name in ("FedProx E=5 B=10", "FedAdam E=5 B=10"):
            if p in t.get(name, {}):
                parts.append(compare(name.split()[0], med(t[name][p]["rounds"]), "FedAvg E=5 B=10",
                                     med(e5["rounds"]), target))
        out.append(f"- {PARTITION_TITLES[p]} (medians over seeds): "
                   + " ".join(x[0].upper() + x[1:] + "." for x in parts))
    return out


def write_docs(r: dict[str, Any], docs: Path) -> None:
    """Write ``results.md`` and the plots into ``docs``."""
    docs.mkdir(parents=True, exist_ok=True)
    n = (1797 - round(1797 * 0.2)) / r["workers"]
    pngs = plot(r, docs)
    t = r["table"]
    iid_speed = med(t["FedSGD"]["iid"]["rounds"]) / med(t["FedAvg E=5 B=10"]["iid"]["rounds"])
    b = r["byzantine"]
    text = [
        "# Results: FedAvg on real handwriting, after McMahan et al. 2017",
        "",
        "Generated by `python bench/reproduce_fedavg.py --write-docs` "
        f"({r['seconds']:.0f} s on this machine); do not edit by hand. "
        "The simulation runs in-process: each simulated worker trains a numpy copy of "
        "`fedsock.models.digits_mlp` (64 → 64 ReLU → 10 softmax) with plain SGD, and the rounds are "
        "combined by the chief's own pure aggregation code (`fedsock.aggregation`, the same reducer and "
        "server transform `chief.py --strategy ...` runs). Only the sockets are left out.",
        "",
        "## Setup",
        "",
        f"- Data: scikit-learn's bundled digits (1797 8×8 images); per seed a 20% holdout for the chief, "
        f"the rest split among **{r['workers']} workers** (≈{n:.0f} examples each): IID, pathological "
        "non-IID (`labels:2`, two label shards per worker, as in the paper) and Dirichlet(0.3) over labels.",
        "- All workers take part in every round (C = 1). FedSGD = E 1, B ∞: one full-batch gradient step "
        "per worker per round. u = E·n/B local updates per round.",
        f"- **Target: {r['target']:.2f} holdout accuracy** (the model peaks around 0.97–0.98 here). "
        "Cell: rounds until the holdout accuracy first reaches it, median [min–max] over "
        f"{r['seeds']} seeds (0–{r['seeds'] - 1}; each redraws holdout, partition, initial model and batch "
        "order), and the speedup over FedSGD's median in parentheses. `> N` = not reached within the cap "
        f"({r['fedsgd_rounds']} rounds for FedSGD, {r['max_rounds']} otherwise).",
        f"- Learning rates: each row's client lr is the best of {r['lr_grid']} on a separate tuning seed "
        f"({r['tuning_seed']}), as the paper tunes each row. FedProx and FedAdam reuse FedAvg E=5 B=10's lr "
        f"and tune mu over {r['mu_grid']} (Li et al.'s grid) and the server lr over {r['server_lr_grid']} "
        "(beta1 0.9, beta2 0.99, tau 1e-3).",
        "- Paper columns: MNIST CNN to 99%, 100 clients with C = 0.1 (McMahan et al. 2017, Table 2), for "
        "reference only — a different data set, model, client count and target.",
        "",
        "## Rounds to the target (shaped like the paper's Table 2)",
        "",
        *main_table(r, n, r["target"]),
        "",
        f"The same runs, rounds to **{LOW:.2f}**:",
        "",
        *main_table(r, n, LOW, paper=False),
        "",
        "Observations (computed from the tables):",
        "",
        *observations(r, LOW),
        "",
        f"On IID data FedAvg E=5 B=10 needs {iid_speed:.1f}× fewer rounds than FedSGD (the paper: "
        f"{626 / 20:.1f}× on MNIST). FedSGD does not depend on the partition at all: the weighted mean "
        "of full-batch gradient steps is one full-batch gradient step on the union of the data. With every "
        "worker in every round (C = 1) it is exact gradient descent on all 1438 training examples, a "
        "stronger baseline than the paper's FedSGD, which sees 10 of 100 clients per round. On the "
        "pathological split, local training drifts towards each worker's two classes: FedAvg climbs much "
        f"faster than FedSGD at first (see the {LOW:.2f} table and the plot) but then creeps towards "
        f"{r['target']:.2f}, while the server's adaptive step (FedAdam) keeps the fast start and gets "
        "there. The spread between seeds is large on the non-IID splits: which labels land on which "
        "worker matters as much as the algorithm.",
        "",
        "Hyperparameters chosen on the tuning seed:",
        "",
        *hyper_table(r),
        "",
        *[f"![{p}]({p})" for p in pngs],
        "",
        "## Byzantine workers",
        "",
        f"{b['workers']} workers, IID, E = {b['E']}, B = {b['B']}, lr {b['lr']}; worker 0 is Byzantine. "
        "`scaled` sends `w_global - 10 (w_trained - w_global)` (its update flipped and scaled ten times); "
        "`random` sends `w_global` plus Gaussian noise of standard deviation 10. "
        f"Cell: rounds to **{b['target']:.2f}** holdout accuracy (median [range] over {r['seeds']} seeds, "
        f"{b['rounds']} rounds) and the median holdout accuracy after round {b['rounds']}. "
        "The bar is lower than the main study's because "
        "Krum adopts one worker's model per round and plateaus near 0.95 on this data even without an "
        "attack (see its `none` column). `trimmed:0.15` trims floor(0.15 · 7) = 1 update at each end; "
        "`krum:1` and `multikrum:1,6` tolerate f = 1 (n = 7 ≥ 2f + 3).",
        "",
        *byzantine_table(r),
        "",
    ]
    (docs / "results.md").write_text("\n".join(text))
