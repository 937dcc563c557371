"""Benchmark: the same round workload through Flower's legacy gRPC server and NumPyClient.

    python bench/flower_round.py --workers 4 --params 1000000 [--rounds 5]

Needs ``flwr`` (``pip install -e '.[bench]'``); prints ``{"skipped": ...}``
without it. gRPC on 127.0.0.1, insecure (Flower's legacy default, its best
case) or with ``--tls`` over TLS (Flower's ``certificates`` option: a
throw-away CA and a server certificate for 127.0.0.1, made with
``cryptography``; the clients pin that CA), FedAvg, no evaluation. A round's time is the
interval between a client's successive ``fit`` calls (the slowest client's); the first is a warm-up.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MIB, median, reap, shape_for, spawn  # noqa: E402


def make_certificates(out: Path) -> None:
    """A CA (ca.pem) and a server key and certificate for 127.0.0.1 (server.key, server.pem) in ``out``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))


def run_server(port: int, workers: int, params: int, rounds: int, tls_dir: str = "") -> None:
    import logging

    import flwr as fl
    import numpy as np

    logging.getLogger("flwr").setLevel(logging.WARNING)
    init = fl.common.ndarrays_to_parameters([np.zeros(s, np.float32) for s in shape_for(params)])
    strategy = fl.server.strategy.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=workers,
                                         min_available_clients=workers, initial_parameters=init)
    certs = None
    if tls_dir:
        d = Path(tls_dir)
        certs = ((d / "ca.pem").read_bytes(), (d / "server.pem").read_bytes(), (d / "server.key").read_bytes())
    fl.server.start_server(server_address=f"127.0.0.1:{port}", config=fl.server.ServerConfig(num_rounds=rounds),
                           strategy=strategy, grpc_max_message_length=2**31 - 1, certificates=certs)


def run_client(port: int, params: int, name: str, tls_dir: str = "") -> None:
    import logging

    import flwr as fl
    import numpy as np

    logging.getLogger("flwr").setLevel(logging.WARNING)
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    mine = [rng.standard_normal(s, dtype=np.float32) for s in shape_for(params)]
    starts: list[float] = []

    class C(fl.client.NumPyClient):  # type: ignore[misc]
        def get_parameters(self, config):  # type: ignore[no-untyped-def]
            return mine

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            starts.append(time.perf_counter())
            return mine, 10, {}

    tls = {"root_certificates": (Path(tls_dir) / "ca.pem").read_bytes()} if tls_dir else {"insecure": True}
    fl.client.start_client(server_address=f"127.0.0.1:{port}", client=C().to_client(),
                           grpc_max_message_length=2**31 - 1, **tls)
    print(json.dumps([b - a for a, b in zip(starts, starts[1:])]), flush=True)


def bench(workers: int, params: int, rounds: int, tls: bool = False, python: str | None = None) -> dict[str, object]:
    """Run one configuration; returns the JSON-able result (or why it was skipped).

    ``python``: the interpreter that has ``flwr`` (default: this one), e.g. a venv of its own,
    since Flower's pins of protobuf and grpcio may not agree with TensorFlow's."""
    system = "flower-tls" if tls else "flower"
    exe = python or sys.executable
    if subprocess.run([exe, "-c", "import flwr"], capture_output=True).returncode != 0:
        return {"system": system, "workers": workers, "params": params, "skipped": f"flwr is not installed for {exe}"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="flower-bench-") as tls_dir:
        if tls:
            make_certificates(Path(tls_dir))
        arg = tls_dir if tls else ""
        server = spawn([__file__, "_server", str(port), str(workers), str(params), str(rounds + 1), arg],
                       python=exe, stdout=-3, stderr=-3)
        time.sleep(3)
        procs = [spawn([__file__, "_client", str(port), str(params), f"w{i}", arg], python=exe, stdout=-1,
                       stderr=-3)
                 for i in range(workers)]
        outs = [p.communicate()[0] for p in procs]
        peak, cpu = reap(server, timeout=600)
    per = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    n = min(len(t) for t in per)
    times = [max(t[r] for t in per) for r in range(n)]
    return {"system": system, "tls": tls, "workers": workers, "params": params, "model_mib": round(params * 4 / MIB, 1),
            "rounds": len(times), "round_s_median": round(median(times), 4), "round_s": [round(t, 4) for t in times],
            "server_peak_rss_mib": round(peak, 1), "server_cpu_s": round(cpu, 2)}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        run_server(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        run_client(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
        return 0
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tls", action="store_true", help="gRPC over TLS (Flower's certificates option)")
    p.add_argument("--flower-python", help="an interpreter that has flwr (default: this one)")
    a = p.parse_args()
    print(json.dumps(bench(a.workers, a.params, a.rounds, a.tls, a.flower_python)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
