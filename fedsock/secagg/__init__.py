"""Secure aggregation (Bonawitz et al. 2017; SecAgg+ neighbourhoods, Bell et al. 2020), without I/O.

- ``shamir``: secret sharing over GF(2**521 - 1).
- ``crypto``: X25519 + HKDF keys, AES-GCM share transport, AES-CTR masks.
- ``fixedpoint``: weighted updates as integers mod 2**64.
- ``metrics``: the federated metrics that ride in the same vector (names, words, decoding).
- ``graph``: who masks with whom.
- ``worker.WorkerRound`` / ``chief.ChiefRound``: the two sides of one attempt.
"""
