"""Benchmark: rounds of a multi-GiB model through a fedsock chief, every average checked.

    python bench/huge_model.py [--layout even|gpt2-large|gpt2-small] [--gib 4.5] [--tensors 3]
                               [--workers 1] [--rounds 1]

The chief is the real ``fedsock.Chief`` (own process, TLS 1.3 on 127.0.0.1,
checkpoints and final model written as usual) with a float32 accumulator
(``Strategy(weighted_mean(np.float32), fedavg())``: a float64 sum would double
its memory). The model is ``--tensors`` float32 tensors totalling ``--gib``
GiB (``even``), or the 437 tensors of GPT-2 Large as a Hugging Face state dict
lists them, ``lm_head`` included (838,359,040 parameters, 3.35 GB; see
``gpt2_layout``). It travels in 1 MiB chunks: the frame limit bounds each
frame, not the model.

Each worker is a streaming protocol worker (the sans-I/O ``Connection`` over a
TLS socket): it sends its weights from a read-only memory-mapped file that all
workers of its kind share, and checks every byte of the models it receives
chunk by chunk without keeping them, so the chief, not the workers, is what
is measured on one machine. Even-numbered workers send file A, odd ones file
B (two periodic patterns of multiples of 1/8), with per-round example counts
that sum to 64: every average is exact in float32, so each round's model must
equal ``(n_A A + n_B B) / 64`` bit for bit; worker 0 proposes A as round 0 and
the others join once the chief holds it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MIB, reap, spawn  # noqa: E402

from fedsock.demo import wait_for_address  # noqa: E402

GIB = 1024**3
PERIOD = 4093  # elements of the weight patterns (a prime: a chunk put at the wrong offset shows)
TOTAL_EXAMPLES = 64  # per round: a power of two, so the average of multiples of 1/8 is exact
SHARE_A = (16, 40, 24, 56, 8)  # examples of the A workers in rounds 1, 2, ... (the B workers: the rest)
MEMORY_FLOOR = 3 * GIB  # stop everything if the machine's available memory falls below this


def gpt2_layout(layers: int = 36, d: int = 1280, vocab: int = 50257,
                ctx: int = 1024) -> list[tuple[str, tuple[int, ...]]]:
    """GPT-2's tensors as ``GPT2LMHeadModel.state_dict()`` lists them, ``lm_head`` (tied to ``wte``) included.

    The defaults are GPT-2 Large (openai-community/gpt2-large config.json: n_embd 1280, n_layer 36,
    n_positions 1024, vocab_size 50257): 437 tensors, 838,359,040 parameters, 3,353,436,160 bytes in
    float32, the "3.35 GB, 437 tensors" that NVFlare's tensor-stream comparison sends.
    """
    out = [("transformer.wte.weight", (vocab, d)), ("transformer.wpe.weight", (ctx, d))]
    for i in range(layers):
        p = f"transformer.h.{i}."
        out += [(p + "ln_1.weight", (d,)), (p + "ln_1.bias", (d,)),
                (p + "attn.c_attn.weight", (d, 3 * d)), (p + "attn.c_attn.bias", (3 * d,)),
                (p + "attn.c_proj.weight", (d, d)), (p + "attn.c_proj.bias", (d,)),
                (p + "ln_2.weight", (d,)), (p + "ln_2.bias", (d,)),
                (p + "mlp.c_fc.weight", (d, 4 * d)), (p + "mlp.c_fc.bias", (4 * d,)),
                (p + "mlp.c_proj.weight", (4 * d, d)), (p + "mlp.c_proj.bias", (d,))]
    return out + [("transformer.ln_f.weight", (d,)), ("transformer.ln_f.bias", (d,)), ("lm_head.weight", (vocab, d))]


def layout(name: str, gib: float = 4.5, tensors: int = 3) -> list[tuple[str, tuple[int, ...]]]:
    """The named model layout: ``gpt2-large``, ``gpt2-small`` (GPT-2's structure, d=256, 4 layers:
    for a quick try) or ``even`` (``tensors`` equal tensors totalling ``gib`` GiB)."""
    if name == "gpt2-large":
        return gpt2_layout()
    if name == "gpt2-small":
        return gpt2_layout(layers=4, d=256)
    total = int(gib * GIB) // 4
    sizes = [total // tensors] * tensors
    sizes[-1] += total - sum(sizes)
    return [(f"t{i}", (n,)) for i, n in enumerate(sizes)]


def pattern(kind: int, tensor: int) -> Any:
    """One period of weight file ``kind`` (0: A, 1: B) in tensor ``tensor``: multiples of 1/8 in [0, 1.875]."""
    import numpy as np

    i = np.arange(PERIOD)
    k = (7 * i + tensor) % 16 if kind == 0 else (3 * i + 5 * tensor + 1) % 16
    return (k / 8).astype(np.float32)


def write_weights(path: Path, kind: int, shapes: Sequence[tuple[int, ...]]) -> None:
    """The weights file of ``kind``: each tensor's pattern repeated over its elements."""
    import numpy as np

    with open(path, "wb") as f:
        for t, shape in enumerate(shapes):
            n = math.prod(shape)
            block = np.tile(pattern(kind, t), max(1, (4 * MIB) // (4 * PERIOD))).tobytes()
            left = 4 * n
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)


def examples(workers: int, rnd: int) -> list[int]:
    """Each worker's num_examples in round ``rnd`` (>= 1): the A workers share SHARE_A's entry, the B workers
    the rest of TOTAL_EXAMPLES (a single worker: all of it)."""
    if workers == 1:
        return [TOTAL_EXAMPLES]
    share = {0: SHARE_A[(rnd - 1) % len(SHARE_A)]}
    share[1] = TOTAL_EXAMPLES - share[0]
    out = []
    for i in range(workers):
        kind, members = i % 2, len(range(i % 2, workers, 2))
        base, extra = divmod(share[kind], members)
        out.append(base + (1 if i // 2 < extra else 0))
    return out


def expected_average(workers: int, rnd: int, tensor: int) -> Any:
    """One period of the model every worker must receive after round ``rnd`` (0: worker 0's A)."""
    import numpy as np

    if rnd == 0:
        return pattern(0, tensor)
    n = examples(workers, rnd)
    na, nb = sum(n[0::2]), sum(n[1::2])
    return ((na * pattern(0, tensor).astype(np.float64) + nb * pattern(1, tensor)) / TOTAL_EXAMPLES).astype(np.float32)


class MemorySampler:
    """Samples ``/proc/PID/status`` (VmRSS, RssAnon, RssFile, VmHWM) of a live process; keeps the peaks
    and a coarse timeline (``every`` seconds) of where its memory is."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")

    def __init__(self, pid: int | str, interval: float = 0.2, every: float = 2.0) -> None:
        self.pid, self.interval, self.every = pid, interval, every
        self.peak = {f: 0 for f in self.FIELDS}  # KiB
        self.timeline: list[tuple[float, int, int]] = []  # (s since start, RssAnon MiB, RssFile MiB)
        self.minor_faults = 0  # the last count read: each a page of fresh memory touched, or a page cache hit
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def read(self) -> dict[str, int] | None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        got = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key in self.FIELDS:
                got[key] = int(rest.split()[0])
        return got

    def _run(self) -> None:
        last = -math.inf
        while not self._stop.is_set():
            got = self.read()
            if got is None:
                return
            for k, v in got.items():
                self.peak[k] = max(self.peak[k], v)
            try:  # /proc/PID/stat: minflt is the 10th field, counted after the ")" that ends the name
                self.minor_faults = int(Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()[7])
            except (OSError, IndexError, ValueError):
                pass
            now = time.monotonic() - self._t0
            if now - last >= self.every:
                last = now
                self.timeline.append((round(now, 1), got.get("RssAnon", 0) // 1024, got.get("RssFile", 0) // 1024))
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        """Stop sampling; the peaks in MiB (VmHWM: the kernel's own high-water mark)."""
        self._stop.set()
        self._t.join()
        return {**{f"{k}_peak_mib": round(v / 1024, 1) for k, v in self.peak.items()},
                "minor_faults": self.minor_faults}


class MemoryGuard:
    """Kills ``procs`` (the ones this script started) if the machine's MemAvailable falls below MEMORY_FLOOR."""

    def __init__(self, procs: list[Any]) -> None:
        self.procs, self.tripped, self.lowest = procs, False, math.inf
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    self.lowest = min(self.lowest, avail)
                    if avail < MEMORY_FLOOR and not self.tripped:
                        self.tripped = True
                        print(f"available memory {avail / GIB:.1f} GiB < {MEMORY_FLOOR / GIB:.0f} GiB: stopping",
                              file=sys.stderr, flush=True)
                        for p in self.procs:
                            if p.poll() is None:
                                p.kill()

    def stop(self) -> float:
        """Stop watching; the lowest MemAvailable seen, in GiB."""
        self._stop.set()
        self._t.join()
        return round(self.lowest / GIB, 2) if self.lowest != math.inf else float("nan")


def run_chief(state: str, workers: int, rounds: int) -> None:
    import logging

    import numpy as np

    import fedsock
    from fedsock.aggregation import Strategy, fedavg, weighted_mean

    logging.basicConfig(level=logging.WARNING)
    strategy = Strategy(weighted_mean(np.float32), fedavg(), name="fedavg")
    chief = fedsock.Chief(host="127.0.0.1", port=0, state_dir=Path(state), rounds=rounds, min_workers=workers,
                          round_timeout=3600, idle_timeout=3600, send_timeout=3600, done_grace=2.0,
                          keep_checkpoints=2, strategy=strategy)  # from round 2, each overwrites the oldest
    chief.run()


def run_worker(addr: str, token: str, index: int, weights_file: str, shapes: list[tuple[int, ...]],
               workers: int, rounds: int) -> None:
    import numpy as np

    from fedsock import tls
    from fedsock.protocol import (
        NEED_DATA,
        Auth,
        Challenge,
        Chunk,
        Connection,
        Done,
        EndOfMessage,
        Global,
        Heartbeat,
        Hello,
        Role,
        Update,
        Welcome,
        iter_chunks,
    )
    from fedsock.protocol.messages import TensorSpec
    from fedsock.transport.credentials import parse_address

    memory = MemorySampler("self", interval=0.2, every=math.inf)
    tok = tls.JoinToken.parse(token)
    host, port = parse_address(addr)
    sock = tls.client_context().wrap_socket(socket.create_connection((host, port)), server_hostname=host)
    tls.check_pinned(sock, tok.fingerprint)
    conn = Connection(Role.WORKER)
    buf = bytearray(1 << 20)
    sizes = [4 * math.prod(s) for s in shapes]
    name = f"w{index}"

    def events():  # type: ignore[no-untyped-def]
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA:
                n = sock.recv_into(buf)
                conn.receive_data(memoryview(buf)[:n] if n else b"")
                continue
            yield ev

    def send(msg, arrays=()):  # type: ignore[no-untyped-def]
        sock.sendall(conn.send(msg))
        for chunk in iter_chunks(arrays):
            for part in conn.send_parts(chunk):
                sock.sendall(part)

    def read_and_check(it, rnd: int) -> None:  # type: ignore[no-untyped-def]
        """The chunks of one weights message: every byte equals the expected model's (in any chunking)."""
        got = [0] * len(sizes)
        tile, tile_of = np.zeros(0, np.uint8), -1
        for ev in it:
            if isinstance(ev, Chunk):
                data = np.frombuffer(ev.data, np.uint8)
                start = ev.offset % (4 * PERIOD)
                if ev.tensor != tile_of or start + len(data) > len(tile):
                    period = expected_average(workers, rnd, ev.tensor)
                    reps = (start + len(data)) // (4 * PERIOD) + 2
                    tile, tile_of = np.frombuffer(np.tile(period, reps).tobytes(), np.uint8), ev.tensor
                if not np.array_equal(data, tile[start : start + len(data)]):
                    bad = np.frombuffer(ev.data[: len(ev.data) // 4 * 4], np.float32)[:4]
                    raise AssertionError(f"{name}: round {rnd} tensor {ev.tensor} offset {ev.offset}: "
                                         f"got {bad}, expected a period starting {period[:4]}")
                got[ev.tensor] += len(data)
            elif isinstance(ev, EndOfMessage):
                assert got == sizes, f"{name}: round {rnd}: {sum(got)} of {sum(sizes)} bytes"
                return
            elif not isinstance(ev, Heartbeat):
                raise AssertionError(f"{name}: unexpected {ev!r}")
        raise AssertionError(f"{name}: no end of message")

    it = events()
    t_join = time.monotonic()
    send(Hello(name=name, instance=os.urandom(16)))
    ch = next(it)
    assert isinstance(ch, Challenge)
    send(Auth(tls.auth_mac(tok.secret, ch.nonce, tok.fingerprint, name)))
    welcome = next(it)
    assert isinstance(welcome, Welcome), welcome
    mm = np.memmap(weights_file, np.float32, mode="r")
    arrays, off = [], 0
    for shape in shapes:
        n = math.prod(shape)
        arrays.append(mm[off : off + n].reshape(shape))
        off += n
    assert off == mm.size, (off, mm.size)
    specs = tuple(TensorSpec(f"t{i}", "float32", s) for i, s in enumerate(shapes))
    if welcome.has_weights:  # joined after worker 0's proposal: the Welcome carries round 0
        read_and_check(it, 0)
    else:
        assert index == 0, "only worker 0 proposes the initial model"
        assert isinstance(next(it), EndOfMessage)
        send(Update(0, 0, specs), arrays)
        ev = next(e for e in it if not isinstance(e, Heartbeat))
        assert isinstance(ev, Global) and ev.round == 0, ev
        read_and_check(it, 0)
    out: dict[str, Any] = {"worker": index, "join_s": round(time.monotonic() - t_join, 2), "rounds": []}
    n = 0
    for rnd in range(1, rounds + 1):
        n = examples(workers, rnd)[index]
        t0 = time.monotonic()
        send(Update(rnd, n, specs), arrays)
        t1 = time.monotonic()
        ev = next(e for e in it if not isinstance(e, Heartbeat))
        assert isinstance(ev, (Global, Done)) and ev.round == rnd, ev
        assert isinstance(ev, Done) == (rnd == rounds), ev
        read_and_check(it, rnd)
        out["rounds"].append({"round": rnd, "start": t0, "sent": t1, "end": time.monotonic(), "examples": n})
    sock.close()
    out.update(memory.stop())
    print(json.dumps(out), flush=True)


def bench(shapes: list[tuple[int, ...]], workers: int, rounds: int, files: Sequence[Path], tmp: Path) -> dict[str, Any]:
    """One run: a chief, ``workers`` workers (worker i sends ``files[i % 2]``), ``rounds`` rounds.

    Returns the JSON-able result; raises if any worker's check failed or the machine ran short of memory.
    """
    model = sum(4 * math.prod(s) for s in shapes)
    state = tmp / f"chief-{workers}"
    chief = spawn([__file__, "_chief", str(state), str(workers), str(rounds)], stdout=sys.stderr)  # its round table
    procs = [chief]
    guard = MemoryGuard(procs)
    memory = MemorySampler(chief.pid)
    try:
        addr = wait_for_address(state, chief)
        token = (state / "token").read_text().strip()
        shapes_json = json.dumps(shapes)

        def worker(i: int) -> Any:
            p = spawn([__file__, "_worker", addr, token, str(i), str(files[i % 2]), shapes_json, str(workers),
                       str(rounds)], stdout=-1)
            procs.append(p)
            return p

        t0 = time.monotonic()
        first = worker(0)
        round0 = state / "checkpoints" / "round-000000.fsck"
        while not round0.exists():  # the chief adopted worker 0's proposal: the others get it in their Welcome
            if first.poll() is not None or chief.poll() is not None or guard.tripped:
                raise RuntimeError("worker 0's initial model was not adopted")
            time.sleep(0.1)
        rest = [worker(i) for i in range(1, workers)]
        outs = []
        for p in [first, *rest]:
            text = p.communicate()[0]
            if p.returncode != 0:
                raise RuntimeError(f"worker exited with {p.returncode}: {text[-500:]}")
            outs.append(json.loads(text.strip().splitlines()[-1]))
        wall = time.monotonic() - t0
        peak_mib, cpu_s = reap(chief, timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        lowest = guard.stop()
        sampled = memory.stop()
    if guard.tripped:
        raise RuntimeError("stopped: the machine's available memory fell below 3 GiB")
    lines = [json.loads(x) for x in (state / "metrics.jsonl").read_text().splitlines()]
    disk = sum(f.stat().st_size for f in state.rglob("*") if f.is_file())
    spans, ups = [], []
    for r in range(rounds):  # a round: from its first worker's send to its last worker's whole model
        spans.append(max(o["rounds"][r]["end"] for o in outs) - min(o["rounds"][r]["start"] for o in outs))
        ups.append(max(o["rounds"][r]["sent"] - o["rounds"][r]["start"] for o in outs))
    return {
        "system": "fedsock", "workers": workers, "rounds": rounds, "tensors": len(shapes),
        "params": model // 4, "model_gb": round(model / 1e9, 3), "model_gib": round(model / GIB, 3),
        "largest_tensor_mib": round(max(4 * math.prod(s) for s in shapes) / MIB, 1),
        # round 1 also waits for the other workers' joins (each downloads the model in its Welcome)
        "round_s": [round(s, 2) for s in spans], "round_s_median": round(statistics.median(spans[1:] or spans), 2),
        "upload_s_slowest": [round(s, 2) for s in ups],
        "chief_round_s": [round(x["seconds"], 2) for x in lines[-rounds:]],
        "checked": f"every byte of every model received, rounds 0..{rounds}, all workers",
        "chief_peak_rss_gib": round(peak_mib / 1024, 2), "chief_peak_rss_x_model": round(peak_mib * MIB / model, 3),
        "chief_sampled": sampled, "chief_cpu_s": round(cpu_s, 1),
        "chief_rss_anon_timeline_mib": memory.timeline,
        "worker_peak_rss_gib": round(max(o["VmHWM_peak_mib"] for o in outs) / 1024, 2),
        "worker_peak_rss_anon_mib": max(o["RssAnon_peak_mib"] for o in outs),
        "worker_peak_rss_file_gib": round(max(o["RssFile_peak_mib"] for o in outs) / 1024, 2),
        "join_s": [o["join_s"] for o in outs], "wall_s": round(wall, 1),
        "chief_state_dir_gib": round(disk / GIB, 2), "lowest_mem_available_gib": lowest,
        "loadavg_end": os.getloadavg()[0],
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_chief":
        run_chief(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        a = sys.argv[2:]
        run_worker(a[0], a[1], int(a[2]), a[3], [tuple(s) for s in json.loads(a[4])], int(a[5]), int(a[6]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", choices=("even", "gpt2-large", "gpt2-small"), default="even")
    p.add_argument("--gib", type=float, default=4.5, help="model size with --layout even")
    p.add_argument("--tensors", type=int, default=3, help="tensors with --layout even")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args()
    if not 1 <= a.workers <= 16:
        p.error("--workers must be 1..16 (the examples of a round are split among them)")
    shapes = [s for _, s in layout(a.layout, a.gib, a.tensors)]
    with tempfile.TemporaryDirectory(prefix="fedsock-huge-") as tmp:
        files = [Path(tmp) / "a.f32", Path(tmp) / "b.f32"]
        for kind, f in enumerate(files[: min(a.workers, 2)]):
            write_weights(f, kind, shapes)
        print(json.dumps({"layout": a.layout, **bench(shapes, a.workers, a.rounds, files, Path(tmp))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
