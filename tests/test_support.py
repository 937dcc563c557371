"""Token, HMAC, certificates, data shards and checkpoints."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from fedsock import checkpoint, tls
from fedsock.data import Partition, load_shard, partition_indices, save_shard, split_digits
from fedsock.errors import ConfigError
from fedsock.protocol import specs_of


def test_token_roundtrip_and_errors():
    t = tls.JoinToken(b"f" * 32, b"s" * 32)
    assert tls.JoinToken.parse(str(t)) == t
    named = tls.JoinToken(b"f" * 32, b"s" * 32, "hospital-a")
    assert tls.JoinToken.parse(str(named)) == named and str(named).endswith(".hospital-a")
    for bad in ("", "fs1.abc.def", "fs2." + "00" * 32 + "." + "00" * 32, str(t) + ".bad name!"):
        with pytest.raises(ConfigError, match="malformed join token"):
            tls.JoinToken.parse(bad)


def test_mac_binds_nonce_name_and_fingerprint():
    s, n, fp = b"k" * 32, b"n" * 32, b"f" * 32
    mac = tls.auth_mac(s, n, fp, "w1")
    assert tls.verify_mac(s, n, fp, "w1", mac)
    assert not tls.verify_mac(s, b"m" * 32, fp, "w1", mac)
    assert not tls.verify_mac(s, n, fp, "w2", mac)
    assert not tls.verify_mac(s, n, b"g" * 32, "w1", mac)
    assert not tls.verify_mac(b"x" * 32, n, fp, "w1", mac)


def test_identity_created_once_with_private_files(tmp_path):
    a = tls.ensure_identity(tmp_path, ["127.0.0.1"])
    assert a.created
    for name in ("chief.key", "token"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
    b = tls.ensure_identity(tmp_path, ["127.0.0.1"])
    assert not b.created and b.token == a.token
    (tmp_path / "token").write_text(str(tls.JoinToken(b"x" * 32, b"y" * 32)))
    with pytest.raises(ConfigError, match="another certificate"):
        tls.ensure_identity(tmp_path, [])


def test_tls13_only_contexts(tmp_path):
    import ssl

    ident = tls.ensure_identity(tmp_path, [])
    assert tls.server_context(ident.cert_path, ident.key_path).minimum_version is ssl.TLSVersion.TLSv1_3
    assert tls.client_context().minimum_version is ssl.TLSVersion.TLSv1_3


def test_partitions():
    y = np.repeat(np.arange(10), 50)
    iid = partition_indices(y, 5, Partition.parse("iid"), 0)
    assert sorted(np.concatenate(iid)) == list(range(500))
    labels = partition_indices(y, 5, Partition.parse("labels:2"), 0)
    assert all(len(np.unique(y[i])) <= 2 for i in labels)
    assert sorted(np.concatenate(labels)) == list(range(500))
    dirich = partition_indices(y, 4, Partition.parse("dirichlet:0.3"), 1)
    assert sorted(np.concatenate(dirich)) == list(range(500))
    assert all(len(i) >= 10 for i in dirich)
    for bad in ("dirichlet:0", "labels:x", "zipf", "iid:3"):
        with pytest.raises(ConfigError):
            Partition.parse(bad)


def test_split_digits_writes_loadable_shards(tmp_path):
    sizes = split_digits(tmp_path, 3, Partition.parse("dirichlet:0.5"), seed=0)
    assert sum(sizes.values()) == 1797
    x, y = load_shard(tmp_path / "worker-0")
    assert x.shape[1:] == (64,) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert len(x) == sizes["worker-0"]


def test_load_shard_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_shard(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no .npz"):
        load_shard(tmp_path)
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="lacks"):
        load_shard(tmp_path)
    save_shard(tmp_path / "b", np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ConfigError, match="3 rows"):
        load_shard(tmp_path / "b")


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    w = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float64)]
    ck = checkpoint.Checkpoint(4, specs_of(w), w, [np.zeros(3)], {"metrics_lines": 4})
    p = checkpoint.round_path(tmp_path, 4)
    checkpoint.save(p, ck)
    back = checkpoint.load(p)
    assert back.round == 4 and back.meta == {"metrics_lines": 4}
    for a, b in zip(back.weights, w):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="corrupt"):
        checkpoint.load(p)
    p.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(ConfigError, match="not a fedsock checkpoint"):
        checkpoint.load(p)
    assert not list(tmp_path.glob(".*tmp*"))


def test_final_weights_npz_is_written_from_the_arrays_not_packed_in_memory(tmp_path):
    """The chief's final_weights.npz streams to its file: packing it in memory first cost another
    1.25 x the model at the end of a run (a multi-GiB model's chief then peaked above 3 x its size)."""
    import tracemalloc

    w = [np.arange(1 << 24, dtype=np.float32).reshape(4096, 4096), np.ones(3, np.float64)]  # 64 MiB
    path = tmp_path / "final_weights.npz"
    tracemalloc.start()
    try:
        checkpoint.weights_to_npz(path, specs_of(w), w)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < w[0].nbytes / 2, peak
    with np.load(path) as back:
        assert sorted(back.files) == ["0000:t0", "0001:t1"]
        for got, want in zip((back[k] for k in sorted(back.files)), w):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype
    assert not list(tmp_path.glob(".*tmp*"))


def test_prune_keeps_newest(tmp_path):
    w = [np.zeros(1, np.float32)]
    for r in range(6):
        checkpoint.save(checkpoint.round_path(tmp_path, r), checkpoint.Checkpoint(r, specs_of(w), w, [], {}))
    checkpoint.prune(tmp_path, 2)
    assert [p.name for p in sorted(tmp_path.glob("round-*"))] == ["round-000004.fsck", "round-000005.fsck"]


def test_keeping_one_checkpoint_never_overwrites_it_before_the_next_is_in_place(tmp_path, monkeypatch):
    """With keep_checkpoints 1 the only checkpoint is not recycled: a crash while the next one is
    written (here: its fsync fails) leaves it intact, and a restart resumes from it."""
    w = [np.full(100, 0.0, np.float32)]
    checkpoint.save(checkpoint.round_path(tmp_path, 0), checkpoint.Checkpoint(0, specs_of(w), w, [], {}))
    spare = checkpoint.prunable(tmp_path, 1)
    assert spare is None

    def crash(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(checkpoint.os, "fsync", crash)
    w1 = [np.full(100, 1.0, np.float32)]
    with pytest.raises(OSError, match="disk gone"):
        checkpoint.save(checkpoint.round_path(tmp_path, 1), checkpoint.Checkpoint(1, specs_of(w1), w1, [], {}),
                        recycle=spare)
    monkeypatch.undo()
    back = checkpoint.load(checkpoint.round_path(tmp_path, 0))
    assert back.round == 0
    np.testing.assert_array_equal(back.weights[0], w[0])


def test_checkpoint_overwrites_the_one_it_pushes_out(tmp_path):
    """A new checkpoint reuses the file of the one about to be pruned; every kept one stays intact."""
    for r in range(6):
        w = [np.full(1000 - 100 * r, r, np.float32)]  # shrinking: the reused file must be cut to size
        spare = checkpoint.prunable(tmp_path, 2)
        assert (spare is None) == (r < 2)
        inode = spare.stat().st_ino if spare is not None else None
        path = checkpoint.round_path(tmp_path, r)
        checkpoint.save(path, checkpoint.Checkpoint(r, specs_of(w), w, [], {}), recycle=spare)
        checkpoint.prune(tmp_path, 2)
        assert inode is None or path.stat().st_ino == inode
        assert spare is None or not spare.exists()
    assert [p.name for p in sorted(tmp_path.glob("round-*"))] == ["round-000004.fsck", "round-000005.fsck"]
    for r in (4, 5):
        back = checkpoint.load(checkpoint.round_path(tmp_path, r))
        np.testing.assert_array_equal(back.weights[0], np.full(1000 - 100 * r, r, np.float32))
    assert not list(tmp_path.glob(".*tmp*"))
