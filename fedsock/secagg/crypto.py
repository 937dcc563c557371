"""The cryptographic primitives of secure aggregation (pyca ``cryptography``).

- Key agreement: X25519, the shared secret stretched by HKDF-SHA256 with a
  purpose label, the round and the attempt (so no key serves two purposes or
  two rounds).
- Share transport: AES-256-GCM under the pairwise share key; the additional
  data binds round, attempt, sender and receiver.
- Masks: the AES-256-CTR keystream of a 32-byte key (nonce 0), read as
  little-endian uint64 words: a cryptographic PRG, generated block by block.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from fedsock.errors import CryptoError as CryptoError  # defined with the others, importable from here

KEY_BYTES = 32
NONCE_BYTES = 12
#: Mask words generated per block (8 MiB of keystream).
BLOCK_WORDS = 1 << 20

MASK_LABEL = b"fedsock secagg v1 mask"
SHARE_LABEL = b"fedsock secagg v1 share"


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def private_from_bytes(data: bytes) -> X25519PrivateKey:
    if len(data) != KEY_BYTES:
        raise CryptoError("an X25519 private key is 32 bytes")
    return X25519PrivateKey.from_private_bytes(data)


def agree(own: X25519PrivateKey, peer_public: bytes, label: bytes, round_: int, attempt: int,
          context: bytes = b"") -> bytes:
    """A 32-byte key shared with the owner of ``peer_public``, for one purpose, round and attempt
    (and ``context``, appended to the HKDF info: the digest of the roster's metric names for masks).

    Raises:
        CryptoError: ``peer_public`` is not a usable X25519 public key.
    """
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # wrong length, or a low-order point (all-zero shared secret)
        raise CryptoError(f"unusable public key: {exc}") from None
    info = label + struct.pack(">QI", round_, attempt) + context
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def check_public(peer_public: bytes) -> None:
    """A trial agreement with a throw-away key: refuses what ``agree`` would refuse.

    Raises:
        CryptoError: not 32 bytes, or a low-order point (the shared secret would be all zeros).
    """
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise CryptoError(f"unusable public key: {exc}") from None


def share_aad(round_: int, attempt: int, sender: int, receiver: int) -> bytes:
    return struct.pack(">QIQQ", round_, attempt, sender, receiver)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce || AES-256-GCM(plaintext) with its 16-byte tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext of ``seal``.

    Raises:
        CryptoError: wrong key, tampered bytes or other additional data.
    """
    if len(sealed) < NONCE_BYTES + 16:
        raise CryptoError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag:
        raise CryptoError("ciphertext does not authenticate") from None


def mask_blocks(key: bytes, total: int, block: int = BLOCK_WORDS) -> Iterator[np.ndarray]:
    """The mask of ``total`` uint64 words for ``key``, as consecutive blocks.

    Each yielded array is reused for the next block: consume it before
    advancing.
    """
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    words = min(block, max(total, 1))
    zeros = bytes(words * 8)
    raw = np.empty(words * 8 + 16, dtype=np.uint8)  # update_into wants room for one more AES block
    done = 0
    while done < total:
        n = min(words, total - done)
        enc.update_into(zeros[: n * 8], raw.data)
        yield raw[: n * 8].view("<u8")
        done += n


def mask(key: bytes, total: int) -> np.ndarray:
    """The whole mask of ``total`` words (tests and small vectors)."""
    out = np.empty(total, dtype="<u8")
    pos = 0
    for blk in mask_blocks(key, total):
        out[pos:pos + len(blk)] = blk
        pos += len(blk)
    return out
