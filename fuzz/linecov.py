"""Line coverage of the targeted modules by a corpus: run every input through its target, print the table.

    python fuzz/linecov.py                      # each target over its corpus in the repo
    python fuzz/linecov.py secagg=fuzz/work/secagg status=fuzz/work/status   # or over grown corpora

The lines counted are those of the functions and methods of each module (module-level
statements and class bodies run at import and are left out), found from the compiled code objects; a line is
covered when some input executed it (``sys.settrace``, stdlib only). For modules of which a
target exercises only a part (the checkpoint loader, not the writer), only the named
functions count. Prints one JSON object per module, then the totals.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import targets  # noqa: E402

CORPUS = {"protocol": HERE / "corpus", "secagg": HERE / "corpus-secagg", "status": HERE / "corpus-status",
          "checkpoint": HERE / "corpus-checkpoint"}
P = "fedsock/protocol/"
#: target -> [(module file, functions counted (None: all of them))]
MODULES: dict[str, list[tuple[str, tuple[str, ...] | None]]] = {
    "protocol": [(P + m, None) for m in ("connection.py", "direct.py", "frames.py", "messages.py", "handshake.py",
                                          "specs.py", "tensors.py", "chunking.py", "compression.py", "fields.py",
                                          "identity.py")] + [("fedsock/chief/intake.py", ("decode_update",))],
    "secagg": [(P + "secagg.py", None), ("fedsock/secagg/chief.py", None), ("fedsock/secagg/worker.py", None),
               ("fedsock/secagg/shamir.py", None), ("fedsock/secagg/crypto.py", None)],
    "status": [(P + "status.py", None), ("fedsock/status.py", ("format_status", "status_json", "_ago", "_num"))],
    "checkpoint": [("fedsock/checkpoint.py", ("decode", "_no_ext", "_field", "_array", "bad")),
                   ("fedsock/chief/records.py", ("read_resume",))],
}


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield c
            yield from _code_objects(c)


def executable_lines(path: Path, functions: tuple[str, ...] | None) -> dict[int, set[int]]:
    """The lines with bytecode of each of the module's functions (those named, and what they
    define), keyed by the function's first line."""
    module = compile(path.read_text(), str(path), "exec")
    out: dict[int, set[int]] = {}
    for code in _code_objects(module):
        if not code.co_flags & inspect.CO_OPTIMIZED:  # a class body: it ran at import, like the module
            continue
        top = code.co_qualname.split(".<locals>.")[0].split(".")[-1]
        if functions is None or top in functions:
            out[code.co_firstlineno] = {ln for _, _, ln in code.co_lines()
                                        if ln is not None and ln != code.co_firstlineno}
    return out


def run_corpus(target: str, corpus: Path) -> tuple[dict[str, set[int]], dict[str, set[int]], int]:
    """Lines executed and functions entered (their first lines) per file by every input of
    ``corpus``, and how many inputs there were."""
    hit: dict[str, set[int]] = {}
    entered: dict[str, set[int]] = {}
    wanted = {str((ROOT / m).resolve()) for m, _ in MODULES[target]}

    def tracer(frame: types.FrameType, event: str, arg: object):  # type: ignore[no-untyped-def]
        if frame.f_code.co_filename not in wanted:
            return None
        lines = hit.setdefault(frame.f_code.co_filename, set())
        entered.setdefault(frame.f_code.co_filename, set()).add(frame.f_code.co_firstlineno)

        def local(frame: types.FrameType, event: str, arg: object):  # type: ignore[no-untyped-def]
            if event == "line":
                lines.add(frame.f_lineno)
            return local
        return local

    inputs = sorted(p for p in corpus.iterdir() if p.is_file())
    sys.settrace(tracer)
    try:
        for p in inputs:
            targets.run_one(target, p.read_bytes())
    finally:
        sys.settrace(None)
    return hit, entered, len(inputs)


def main(argv: list[str]) -> None:
    corpora = dict(CORPUS)
    for item in argv:
        name, _, path = item.partition("=")
        corpora[name] = Path(path)
    chosen = [t for t in corpora if not argv or any(a.startswith(t + "=") for a in argv)]
    total_hit = total_lines = 0
    for target in chosen:
        hit, entered, n = run_corpus(target, corpora[target])
        for module, functions in MODULES[target]:
            path = (ROOT / module).resolve()
            per_function = executable_lines(path, functions)
            lines = set().union(*per_function.values())
            covered = lines & hit.get(str(path), set())
            reached = set().union(*(ls for first, ls in per_function.items() if first in entered.get(str(path), ())))
            total_hit, total_lines = total_hit + len(covered), total_lines + len(lines)
            print(json.dumps({
                "target": target, "inputs": n, "module": module, "functions": list(functions) if functions else "all",
                "lines": len(lines), "covered": len(covered),
                "percent": round(100 * len(covered) / max(len(lines), 1), 1),
                # the same, counting only the functions some input entered (the rest are e.g. the encoders)
                "functions_entered": len(entered.get(str(path), set()) & set(per_function)),
                "functions_total": len(per_function),
                "percent_of_entered": round(100 * len(covered & reached) / max(len(reached), 1), 1)}))
    print(json.dumps({"total_lines": total_lines, "covered": total_hit,
                      "percent": round(100 * total_hit / max(total_lines, 1), 1)}))


if __name__ == "__main__":
    main(sys.argv[1:])
