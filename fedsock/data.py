"""Shards: directories of ``.npz`` files with arrays ``x`` and ``y``.

``split_digits`` partitions scikit-learn's bundled digits data set (real
handwriting, 1797 8x8 images, shipped inside scikit-learn: no download) into
worker shards, IID, by Dirichlet(alpha) over labels, or pathologically
(K label shards per worker, as in McMahan et al. 2017), plus a holdout set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsock import datacheck
from fedsock.errors import ConfigError


@dataclass(frozen=True)
class Partition:
    """How to split: ``iid``, ``dirichlet`` with ``alpha``, or ``labels`` with ``k``."""

    kind: str
    alpha: float = 0.0
    k: int = 0

    @classmethod
    def parse(cls, text: str) -> Partition:
        """Parse ``iid``, ``dirichlet:ALPHA`` or ``labels:K``.

        Raises:
            ConfigError: anything else.
        """
        name, _, arg = text.partition(":")
        try:
            if name == "iid" and not arg:
                return cls("iid")
            if name == "dirichlet" and float(arg) > 0:
                return cls("dirichlet", alpha=float(arg))
            if name == "labels" and int(arg) > 0:
                return cls("labels", k=int(arg))
        except ValueError:
            pass
        raise ConfigError(f"bad partition {text!r}: use iid, dirichlet:ALPHA (>0) or labels:K (>0)")


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Digits as float32 features in [0, 1], shape (1797, 64), and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def partition_indices(y: np.ndarray, workers: int, part: Partition, seed: int) -> list[np.ndarray]:
    """Indices of ``y`` for each of ``workers`` shards.

    Raises:
        ConfigError: the split cannot give every worker data.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    if workers < 1 or workers > n:
        raise ConfigError(f"cannot split {n} examples among {workers} workers")
    if part.kind == "iid":
        return [np.sort(s) for s in np.array_split(rng.permutation(n), workers)]
    if part.kind == "labels":
        shards = workers * part.k
        if shards > n:
            raise ConfigError(f"labels:{part.k} needs {shards} shards, only {n} examples")
        order = np.argsort(y, kind="stable")
        pieces = np.array_split(order, shards)
        assign = rng.permutation(shards)
        return [np.sort(np.concatenate([pieces[j] for j in assign[w :: workers]])) for w in range(workers)]
    # Dirichlet over labels: each class is split among workers by Dir(alpha)
    # proportions; redraw until every worker has at least a handful.
    classes = np.unique(y)
    min_size = max(1, min(10, n // (workers * 2)))
    for _ in range(1000):
        out: list[list[np.ndarray]] = [[] for _ in range(workers)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            props = rng.dirichlet(np.full(workers, part.alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for w, piece in enumerate(np.split(idx, cuts)):
                out[w].append(piece)
        shards_ = [np.sort(np.concatenate(p)) for p in out]
        if min(len(s) for s in shards_) >= min_size:
            return shards_
    raise ConfigError(f"dirichlet:{part.alpha} left a worker nearly empty; use a larger alpha")


def split_digits(
    out_dir: Path, workers: int, part: Partition, seed: int = 0, holdout: float = 0.2
) -> dict[str, int]:
    """Write ``out_dir/worker-<i>/data.npz`` and ``out_dir/holdout/data.npz``.

    Returns:
        Number of examples per shard name.
    """
    x, y = load_digits_arrays()
    rng = np.random.default_rng(seed + 7919)
    perm = rng.permutation(len(y))
    n_hold = int(round(len(y) * holdout))
    hold, rest = perm[:n_hold], perm[n_hold:]
    sizes: dict[str, int] = {}
    if n_hold:
        save_shard(out_dir / "holdout", x[hold], y[hold])
        sizes["holdout"] = n_hold
    for i, idx in enumerate(partition_indices(y[rest], workers, part, seed)):
        save_shard(out_dir / f"worker-{i}", x[rest][idx], y[rest][idx])
        sizes[f"worker-{i}"] = len(idx)
    return sizes


def save_shard(directory: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write one shard directory."""
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "data.npz", x=x, y=y)


def shard_files(path: Path) -> list[Path]:
    """The ``.npz`` files of a shard: those in folder ``path``, or ``path`` itself.

    Raises:
        ConfigError: ``path`` does not exist, is another kind of file, or a folder without ``.npz`` files.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".npz":
            raise ConfigError(f"{path} is not a .npz file: give the shard's folder (holding .npz files with "
                              "arrays 'x' and 'y') or one .npz file")
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise ConfigError(f"no .npz files in {path} (expected arrays 'x' and 'y')")
        return files
    hint = f"; {path.parent} exists: is the shard in there?" if path.parent.is_dir() and path.parent != path else ""
    raise ConfigError(f"data {path} does not exist (give a shard folder of .npz files or one .npz file){hint}")


def load_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a shard: every ``.npz`` in directory ``path`` (concatenated), or the one ``.npz`` file ``path``.

    Each file's arrays are checked as they are read (``datacheck.check_arrays``).

    Raises:
        ConfigError: missing path, no ``.npz``, missing arrays, mismatched
            lengths, NaN/Inf or text where numbers belong, with the file named.
    """
    path = Path(path)
    xs, ys = [], []
    for f in shard_files(path):
        try:
            with np.load(f, allow_pickle=False) as z:
                if "x" not in z or "y" not in z:
                    raise ConfigError(f"{f} lacks array 'x' or 'y' (has {sorted(z.files)})")
                x, y = z["x"], z["y"]
        except (ValueError, OSError) as exc:
            why = ("it is not an .npz archive of numeric arrays (np.savez)" if "pickle" in str(exc)
                   else str(exc))  # numpy's text would suggest loading it with pickle
            raise ConfigError(f"cannot read {f}: {why}") from None
        if len(x) != len(y):
            raise ConfigError(f"{f}: {len(x)} rows in x but {len(y)} in y")
        datacheck.check_arrays(x, y, str(f))
        xs.append(x)
        ys.append(y)
    try:
        return np.concatenate(xs), np.concatenate(ys)
    except ValueError as exc:
        raise ConfigError(f"shards in {path} do not fit together: {exc}") from None
