"""A bounded run of the fuzz targets (fuzz/targets.py): each over its corpus plus seeded random
mutations of it, in this process; and the property can fail: a bug planted in each target's
decoding path escapes the harness instead of being taken for a documented error."""

from __future__ import annotations

import importlib.util
import random
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("fuzz_targets", ROOT / "fuzz" / "targets.py")
assert spec is not None and spec.loader is not None
targets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(targets)

CORPUS = {"protocol": ROOT / "fuzz" / "corpus", "secagg": ROOT / "fuzz" / "corpus-secagg",
          "status": ROOT / "fuzz" / "corpus-status", "checkpoint": ROOT / "fuzz" / "corpus-checkpoint"}
SECONDS = {"protocol": 1.5, "secagg": 1.5, "status": 0.7, "checkpoint": 0.7}  # of random mutations each


def seeds(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS[target].iterdir()) if p.is_file()]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        pos = rng.randrange(len(buf)) if buf else 0
        if op < 0.4 and buf:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op < 0.6 and buf:
            buf[pos] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op < 0.75:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op < 0.9 and buf:
            del buf[pos:pos + rng.randint(1, 16)]
        else:
            del buf[pos:]
    return bytes(buf)


@pytest.mark.parametrize("target", list(CORPUS))
def test_corpus_and_random_mutations_raise_only_documented_errors(target):
    corpus = seeds(target)
    assert corpus, f"no seeds for {target}: run fuzz/make_corpus.py"
    for data in corpus:
        targets.run_one(target, data)  # anything but the target's documented errors fails the test
    rng, n = random.Random(f"fedsock-{target}"), 0
    deadline = time.monotonic() + SECONDS[target]
    while time.monotonic() < deadline or n < 50:
        targets.run_one(target, mutate(rng, rng.choice(corpus)))
        n += 1


def test_honest_seeds_go_all_the_way():
    """The seeds are real conversations, not noise: an honest secure-aggregation attempt unmasks,
    a checkpoint seed decodes and resumes (they raise nothing at all)."""
    for name in ("chief-all", "chief-dropout-3", "worker-all"):
        targets.secagg((CORPUS["secagg"] / name).read_bytes())
    for name in ("fedavg", "fedadam"):
        targets.checkpoint((CORPUS["checkpoint"] / name).read_bytes())
    for name in ("counts", "full"):
        targets.status((CORPUS["status"] / name).read_bytes())


PLANTED = {  # a function on each target's path, and where its corpus reaches it
    "protocol": ("fedsock.protocol.messages", "Update", "from_body"),
    "secagg": ("fedsock.secagg.chief", "ChiefRound", "add_shares"),
    "status": ("fedsock.protocol.status", "WorkerStatus", "from_wire"),
    "checkpoint": ("fedsock.chief.records", None, "read_resume"),
}


@pytest.mark.parametrize("target", list(PLANTED))
def test_a_bug_planted_on_the_path_escapes_the_harness(target, monkeypatch):
    import importlib

    module_name, cls_name, fn = PLANTED[target]
    module = importlib.import_module(module_name)

    def planted(*args, **kwargs):
        return 1 // 0

    if cls_name is None:  # a function the target imported by name: patch it where the target calls it
        monkeypatch.setattr(targets, fn, planted)
    else:
        owner = getattr(module, cls_name)
        monkeypatch.setattr(owner, fn, classmethod(planted) if isinstance(owner.__dict__[fn], classmethod)
                            else planted)
    with pytest.raises(ZeroDivisionError):
        for data in seeds(target):
            targets.run_one(target, data)
