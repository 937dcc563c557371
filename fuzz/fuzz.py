"""Coverage-guided fuzzing of fedsock's untrusted inputs (atheris, i.e. libFuzzer for Python).

    python fuzz/fuzz.py TARGET [CORPUS_DIR ...] [libFuzzer flags]
    make fuzz FUZZ_TARGET=secagg FUZZ_SECONDS=600

TARGET is one of ``protocol``, ``secagg``, ``status``, ``checkpoint`` (fuzz/targets.py says
what each feeds and which errors it may raise); seed it with its corpus (``fuzz/corpus`` for
protocol, ``fuzz/corpus-TARGET`` for the others), copied to a work directory where the
fuzzer adds what it finds. Any exception other than the target's documented errors is a
crash: libFuzzer prints it with the input, writes ``crash-<sha1>`` and exits non-zero.
``-print_final_stats=1`` prints the executions; the ``cov:`` figures are edges covered.

``FUZZ_PLANTED_BUG=1`` plants a bug, for showing that the fuzzer finds one (docs/reliability.md):
a shim, defined here and never in fedsock, around the decoder of the ``[id, bytes]`` pairs of
SecAggShares, SecAggInbox and SecAggReveal that raises ZeroDivisionError when the bytes of an
entry begin with ``b1 7e 5a``. It is instrumented like fedsock's own code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["fedsock", "msgpack", "targets"]):
    import targets


def plant_bug() -> None:
    """The planted bug (FUZZ_PLANTED_BUG=1): a crash on three given bytes deep inside a decoder."""
    from fedsock.protocol import secagg

    real = secagg._pairs

    @atheris.instrument_func
    def planted(b, name, what, max_bytes):  # type: ignore[no-untyped-def]
        out = real(b, name, what, max_bytes)
        for _, data in out:
            if data[:3] == b"\xb1\x7e\x5a":
                return 1 // (len(data) - len(data))  # the planted bug
        return out

    secagg._pairs = planted


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in targets.TARGETS:
        os.environ["FUZZ_TARGET"] = sys.argv.pop(1)  # the processes libFuzzer starts (-merge, -fork) inherit it
    target = os.environ.get("FUZZ_TARGET", "")
    if target not in targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(targets.TARGETS)}}} [CORPUS_DIR ...] [libFuzzer flags]")
    if os.environ.get("FUZZ_PLANTED_BUG") == "1":
        plant_bug()
        print("FUZZ_PLANTED_BUG=1: a bug is planted in the SecAgg pairs decoder", file=sys.stderr)
    # libFuzzer starts its helper processes with a shell command made from argv[0]: this interpreter and script
    argv = [f"{sys.executable} {Path(__file__).resolve()}", *sys.argv[1:]]
    atheris.Setup(argv, lambda data: targets.run_one(target, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
