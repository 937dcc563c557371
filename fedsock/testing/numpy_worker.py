"""A TensorFlow-free worker process for fault and load tests.

    python -m fedsock.testing.numpy_worker --chief HOST:PORT --name w1 [--shape 64,10] [--work 0.2]

It proposes zero weights (bring-your-own-model chief), then every round
"trains" for ``--work`` seconds and sends the global weights plus a
deterministic step derived from its name and the round, with a fixed number of
examples. It exits 0 when the chief says ``Done``. With ``--val-examples N`` it
"evaluates" every global model it receives with ``evaluate_for`` (a
deterministic function of its name and the weights) on N pretended
validation examples, and sends that with its next update; it answers the
chief's evaluation requests the same way while it is held. ``--train-accuracy``
adds a training metric that differs between workers (``train_accuracy_for``);
``--print-metrics`` prints the metrics each update carries (before
``--share-metrics`` applies) as ``METRICS <round> <json>``. With
``--personalize`` its final report also has ``personalized_val_*``: the
final model plus one more step of its own (``step_for(name, rounds + 1)``)
evaluated the same way. ``--report-after S`` holds the final report back for
S seconds after Done (a worker that reports too late).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import time

import numpy as np

from fedsock.errors import FedsockError
from fedsock.worker.client import Client
from fedsock.worker.evaluation import validation_metrics


def step_for(name: str, round_: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The deterministic update step of worker ``name`` in ``round_``."""
    seed = int.from_bytes(hashlib.sha256(f"{name}/{round_}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.1, size=s).astype(np.float32) for s in shapes]


def evaluate_for(name: str, weights: list[np.ndarray], examples: int) -> dict[str, float]:
    """The metrics worker ``name`` reports for ``weights`` (``val_accuracy`` in (0, 1], ``val_loss``)."""
    bias = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") / 2**32
    size = float(np.mean([np.abs(np.asarray(w, np.float64)).mean() for w in weights]))
    return {"accuracy": 1.0 / (1.0 + size * (1.0 + bias)), "loss": size + bias, "examples": float(examples)}


def train_accuracy_for(name: str, round_: int) -> float:
    """The training accuracy worker ``name`` reports for ``round_`` (with ``--train-accuracy``), in (0, 1)."""
    seed = int.from_bytes(hashlib.sha256(f"{name}/train/{round_}".encode()).digest()[:8], "little")
    return 0.5 + 0.49 * seed / 2**64


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--chief", required=True)
    p.add_argument("--token", default=None)
    p.add_argument("--name", required=True)
    p.add_argument("--shape", default="64,10", help="comma-separated shapes, ';' between tensors")
    p.add_argument("--examples", type=int, default=10)
    p.add_argument("--work", type=float, default=0.0, help="seconds of simulated local training per round")
    p.add_argument("--idle-timeout", type=float, default=60.0)
    p.add_argument("--heartbeat-interval", type=float, default=10.0)
    p.add_argument("--reconnect-timeout", type=float, default=120.0)
    p.add_argument("--save-updates", default=None)
    p.add_argument("--val-examples", type=int, default=0,
                   help="evaluate every global model with evaluate_for on this many pretended examples")
    p.add_argument("--share-metrics", default="all", help="as worker.py's --share-metrics")
    p.add_argument("--train-accuracy", action="store_true", help="also send train_accuracy (train_accuracy_for)")
    p.add_argument("--print-metrics", action="store_true",
                   help="print each update's metrics (before --share-metrics) as METRICS <round> <json>")
    p.add_argument("--kill-after", default=None, metavar="KIND:ROUND",
                   help="SIGKILL this process right after sending its secure-aggregation message KIND "
                   "(shares or masked) of round ROUND (fault tests)")
    p.add_argument("--misbehave", default=None, metavar="MODE",
                   help="break secure aggregation on purpose (attack tests): low-order-key, random-shares, "
                   "bad-reveal, or late-masked:SECONDS (the masked update's chunks SECONDS after its header)")
    p.add_argument("--personalize", action="store_true",
                   help="report a personalized evaluation too: the final model plus step_for(name, rounds + 1)")
    p.add_argument("--report-after", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long after Done before sending the final report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    shapes = [tuple(int(d) for d in t.split(",") if d) for t in args.shape.split(";")]
    try:
        with Client(args.chief, token=args.token, name=args.name, idle_timeout=args.idle_timeout,
                    heartbeat_interval=args.heartbeat_interval, reconnect_timeout=args.reconnect_timeout,
                    save_updates=args.save_updates, share_metrics=args.share_metrics,
                    evaluate=(lambda w: evaluate_for(args.name, w, args.val_examples))
                    if args.val_examples else None) as client:
            print(f"{args.name}: joined as worker {client.worker_id} at round {client.round}", flush=True)
            if args.kill_after:
                kill_after(client, *args.kill_after.split(":"))
            if args.misbehave:
                misbehave(client, args.misbehave)
            w = client.join([np.zeros(s, np.float32) for s in shapes])
            while not client.finished:
                time.sleep(args.work)
                step = step_for(args.name, client.round + 1, shapes)
                metrics = {"loss": float(client.round)}
                if args.train_accuracy:
                    metrics["accuracy"] = train_accuracy_for(args.name, client.round + 1)
                if args.print_metrics:
                    sent = {**client.evaluation.last, **{f"train_{k}": v for k, v in metrics.items()}}
                    print(f"METRICS {client.round + 1} {json.dumps(sent)}", flush=True)
                w = client.sync([a + d for a, d in zip(w, step)], num_examples=args.examples, metrics=metrics)
            print(f"{args.name}: done at round {client.round} after {client.reconnects} reconnects", flush=True)
            final = dict(client.final_metrics)
            if args.personalize and args.val_examples:
                tuned = [a + d for a, d in zip(w, step_for(args.name, client.round + 1, shapes))]
                mine = validation_metrics(evaluate_for(args.name, tuned, args.val_examples), args.val_examples)
                final.update({f"personalized_{k}": v for k, v in mine.items()})
            time.sleep(args.report_after)
            print(f"{args.name}: final report {'sent' if client.report(final) else 'not asked for'}", flush=True)
    except FedsockError as exc:
        print(f"{args.name}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def kill_after(client: Client, kind: str, round_: str) -> None:
    """Make ``client`` SIGKILL its own process once it has sent SecAgg ``kind`` for ``round_``."""
    from fedsock.protocol.secagg import SecAggMasked, SecAggShares

    cls = {"shares": SecAggShares, "masked": SecAggMasked}[kind]
    send = client._send

    def send_then_die(msg: object, arrays: object = ()) -> None:
        send(msg, arrays)  # type: ignore[arg-type]
        if isinstance(msg, cls) and msg.round == int(round_):
            print(f"killing myself after {kind} of round {round_}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    client._send = send_then_die  # type: ignore[method-assign]


def misbehave(client: Client, mode: str) -> None:
    """Make ``client`` send broken secure-aggregation messages (see ``--misbehave``)."""
    from dataclasses import replace

    from fedsock.protocol import iter_chunks
    from fedsock.protocol.secagg import SecAggKeys, SecAggMasked, SecAggReveal, SecAggShares
    from fedsock.secagg import shamir

    kind, _, arg = mode.partition(":")
    if kind not in ("low-order-key", "random-shares", "bad-reveal", "late-masked"):
        raise SystemExit(f"unknown --misbehave mode {mode!r}")
    send = client._send

    def noise() -> bytes:
        return shamir.to_bytes(int.from_bytes(os.urandom(64), "big") % shamir.PRIME)

    def broken(msg: object, arrays: object = ()) -> None:
        if kind == "low-order-key" and isinstance(msg, SecAggKeys):
            msg = replace(msg, mask_key=bytes(32))
        elif kind == "random-shares" and isinstance(msg, SecAggShares):
            msg = replace(msg, shares=tuple((i, os.urandom(len(c))) for i, c in msg.shares))
        elif kind == "bad-reveal" and isinstance(msg, SecAggReveal):
            msg = replace(msg, seed_shares=tuple((u, noise()) for u, _ in msg.seed_shares),
                          key_shares=tuple((d, noise()) for d, _ in msg.key_shares))
        elif kind == "late-masked" and isinstance(msg, SecAggMasked):
            channel = client._channel
            channel._write(channel.conn.send(msg))
            print(f"holding back the masked update of round {msg.round} for {arg} s", flush=True)
            time.sleep(float(arg))
            for chunk in iter_chunks(arrays):  # type: ignore[arg-type]
                for part in channel.conn.send_parts(chunk):
                    channel._write(part)
            return
        send(msg, arrays)  # type: ignore[arg-type]

    client._send = broken  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.exit(main())
