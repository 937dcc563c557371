"""Federated metrics with real processes: inside the secure-aggregation sum, and --share-metrics aggregate-only."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from fedsock.secagg import metrics as sm
from tests.conftest import finish, start_worker, worker_token

pytestmark = pytest.mark.integration

NUMPY_WORKER = "fedsock/testing/numpy_worker.py"
FLOATS = ("val_accuracy", "val_loss", "train_accuracy")  # per-worker values (train_loss is the round, for all)
#: Fields whose numbers are timings, which could equal a 4-digit worker value by chance.
TIMING = re.compile(r'("?(seconds|time|unmask_s|uptime|last_seen)"?:? ?)-?[\d.e+-]+|[\d.]+ s ago')


def numpy_worker(tmp_path, chief, name: str, examples: int, val: int, *extra: str, token: str | None = None):
    return start_worker(tmp_path, name, "--chief", chief.address, "--name", name, "--shape", "4,3", "--work", "0.3",
                        "--examples", str(examples), "--val-examples", str(val), "--train-accuracy",
                        "--print-metrics", *extra, token=token or worker_token(chief.state_dir, name),
                        script=NUMPY_WORKER)


def sent_metrics(out: str) -> dict[int, dict[str, float]]:
    """What a numpy worker's updates carried, by round (its ``--print-metrics`` lines)."""
    return {int(r): json.loads(m) for r, m in re.findall(r"^METRICS (\d+) (.*)$", out, re.M)}


def rows(chief) -> list[dict]:
    return [json.loads(line) for line in (chief.state_dir / "metrics.jsonl").read_text().splitlines()]


def printed(value: float) -> set[str]:
    """The ways the chief prints a number: metrics.jsonl (repr), the table (.4f), status (.4g), %g."""
    return {repr(value), f"{value:.4f}", f"{value:.4g}", f"{value:g}"}


def leaked(values: dict[str, dict[int, dict[str, float]]], haystacks: dict[str, str],
           public: frozenset[float] = frozenset()) -> list[str]:
    """Each worker value (as the chief would print it) found in a haystack, timings taken out first;
    ``public``: values that are no secret (every worker's is the same, e.g. 1.0 for the initial zero model)."""
    found = []
    for where, text in haystacks.items():
        text = TIMING.sub(" ", text)
        for name, by_round in values.items():
            for r, m in by_round.items():
                for key in FLOATS:
                    if m[key] in public:
                        continue
                    for s in printed(m[key]):
                        if re.search(rf"(?<![\d.]){re.escape(s)}(?!\d)", text):
                            found.append(f"{name} round {r} {key} {s} in {where}")
    return found


def same_for_all(sent: dict[str, dict[int, dict[str, float]]]) -> frozenset[float]:
    """The values every worker reported alike (no secret of any one): only the initial zero model's
    accuracy, 1.0 for all."""
    some = next(iter(sent.values()))
    public = frozenset(some[r][k] for r in some for k in FLOATS if len({s[r][k] for s in sent.values()}) == 1)
    assert public <= {1.0}
    return public


def test_a_secure_run_reports_the_weighted_means_of_what_the_workers_evaluated_and_no_worker_s_value(
        chiefs, tmp_path, capsys):
    from fedsock.chief import tokens
    from fedsock.cli import main

    rounds = 5
    sharing = {"sm-a": (10, 20), "sm-b": (25, 35), "sm-c": (40, 50)}  # examples, validation examples
    chief = chiefs("--rounds", str(rounds), "--min-workers", "4", "--secure-agg", "--round-timeout", "60",
                   "--progress", "plain")
    procs = {n: numpy_worker(tmp_path, chief, n, ex, val) for n, (ex, val) in sharing.items()}
    procs["sm-quiet"] = numpy_worker(tmp_path, chief, "sm-quiet", 30, 60, "--share-metrics", "none")
    reader = str(tokens.create(chief.state_dir, "ops", status=True))
    deadline = time.monotonic() + 60
    while not (chief.state_dir / "metrics.jsonl").exists() or not rows(chief):
        assert time.monotonic() < deadline and chief.proc.poll() is None, chief.output()
        time.sleep(0.05)
    assert main(["status", "--chief", chief.address, "--token", reader]) == 0  # during the run: names too
    assert main(["status", "--chief", chief.address, "--token", reader, "--json"]) == 0
    status = capsys.readouterr().out
    outs = {}
    for n, p in procs.items():
        code, outs[n] = finish(p, 120)
        assert code == 0, outs[n]
    assert chief.wait(60) == 0, chief.output()
    sent = {n: sent_metrics(out) for n, out in outs.items()}
    assert all(sorted(s) == list(range(1, rounds + 1)) for s in sent.values()), sent
    assert "fed_val_accuracy" in status and "sm-a" in status  # the status answer has the federated figures

    table = rows(chief)
    assert [r["round"] for r in table] == list(range(1, rounds + 1))
    for row in table:
        r = row["round"]
        per = {n: sent[n][r] for n in sharing}
        val = np.array([per[n]["val_examples"] for n in sharing])
        train = np.array([ex for ex, _ in sharing.values()], float)
        for key, weights in (("val_accuracy", val), ("val_loss", val), ("train_accuracy", train),
                             ("train_loss", train)):
            want = np.average([per[n][key] for n in sharing], weights=weights)  # sm-quiet's left out
            assert abs(row["fed_" + key] - want) <= sm.MAX_ERROR + 1e-15, (r, key, row["fed_" + key], want)
            if len({per[n][key] for n in sharing}) > 1:  # else no worker's value is a secret (public, below)
                assert min(abs(per[n][key] - row["fed_" + key]) for n in sharing) > 1e-3, (r, key)
        assert row["fed_val_examples"] == val.sum() == 105
        assert row["fed_model_round"] == r - 1 and row["secure_agg"]["attempt"] == 1
        assert "per_worker" not in row and "worst_worker" not in row and "val_accuracy_worst" not in row

    log = chief.output()
    assert "only as sums inside the masked vector: val_examples, val_loss, val_accuracy, train_loss" in log
    assert re.search(r"^\s+5\s+4\s+105\s+\d\.\d{4}\s+\d\.\d{4}\s+-\s", log, re.M), log  # fed acc, fed loss
    # no final evaluation leaves a worker either: the secure chief's Done asks for none
    final = (chief.state_dir / "final_evaluation.json").read_text()
    assert {k: v for k, v in json.loads(final).items() if k in ("secure_agg", "workers", "federated")} == \
        {"secure_agg": True, "workers": {}, "federated": None}
    assert "with --secure-agg the workers keep their evaluation of the final model to themselves" in log
    haystacks = {"chief log": log, "metrics.jsonl": (chief.state_dir / "metrics.jsonl").read_text(),
                 "status": status, "final_evaluation.json": final}
    assert not leaked(sent, haystacks, same_for_all(sent))
    for n in sharing:
        assert "reach the chief only inside the secure-aggregation sum" in outs[n]
        assert "final report not asked for" in outs[n]
    assert "sends the chief none of its metrics (--share-metrics none)" in outs["sm-quiet"]


def test_aggregate_only_sends_a_chief_without_secure_aggregation_no_metrics(chiefs, tmp_path):
    chief = chiefs("--rounds", "2", "--min-workers", "2", "--round-timeout", "60", "--progress", "plain")
    procs = {"ao-open": numpy_worker(tmp_path, chief, "ao-open", 10, 20, token=chief.token),
             "ao-agg": numpy_worker(tmp_path, chief, "ao-agg", 30, 40, "--share-metrics", "aggregate-only",
                                    token=chief.token)}
    outs = {}
    for n, p in procs.items():
        code, outs[n] = finish(p, 120)
        assert code == 0, outs[n]
    assert chief.wait(60) == 0, chief.output()
    sent = {n: sent_metrics(out) for n, out in outs.items()}
    for row in rows(chief):
        mine = sent["ao-open"][row["round"]]
        assert sorted(row["per_worker"]) == ["ao-open"]
        assert row["per_worker"]["ao-open"] == mine
        assert row["fed_val_accuracy"] == mine["val_accuracy"] and row["fed_val_examples"] == 20
    assert outs["ao-agg"].count("this chief does not run secure aggregation, so with --share-metrics "
                                "aggregate-only this worker sends it no metrics") == 1
    assert "sends its validation and training metrics with each update (--share-metrics all)" in outs["ao-open"]
    haystacks = {"chief log": chief.output(), "metrics.jsonl": (chief.state_dir / "metrics.jsonl").read_text()}
    assert not leaked({"ao-agg": sent["ao-agg"]}, haystacks, same_for_all(sent))
    assert leaked({"ao-open": sent["ao-open"]}, haystacks)  # the search finds what is there
