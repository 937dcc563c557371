"""Every limit fedsock enforces, in one place.

protocol.md lists the same numbers; a test checks that the two agree.
Limits on peer input are checked *before* memory is allocated for it.
"""

from __future__ import annotations

# --- framing -------------------------------------------------------------
#: Largest frame body a peer may announce, in bytes. Checked on the 8-byte
#: header, before a single byte of the body is buffered.
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Tensor data is sent in chunks of at most this many bytes (< MAX_FRAME_BYTES,
#: leaving room for the chunk's msgpack envelope).
CHUNK_BYTES = 1024 * 1024

# --- message bodies (msgpack) -------------------------------------------
#: Longest string in any message body (names, messages, JSON model configs).
MAX_STR_BYTES = 4 * 1024 * 1024
#: Most items in any msgpack array in a message body.
MAX_ARRAY_ITEMS = 100_000
#: Most keys in any msgpack map in a message body.
MAX_MAP_ITEMS = 10_000
#: Deepest nesting of arrays/maps in a message body.
MAX_NESTING = 32
#: Longest worker name in Hello. Names are 1-64 characters of letters, digits
#: and ``_ . @ -`` (no spaces, newlines or escapes: they appear in logs).
MAX_NAME_BYTES = 64
#: Frames a peer sends before it has authenticated (Hello, Auth) are at most
#: this many bytes; a larger header is refused before its body is buffered.
MAX_PREAUTH_FRAME_BYTES = 4096
#: Longest tensor name in a tensor spec.
MAX_TENSOR_NAME_BYTES = 512
#: Most workers listed in one Status message (connected ones first).
MAX_STATUS_WORKERS = 10_000

# --- tensors -------------------------------------------------------------
#: Most tensors in one set of weights.
MAX_TENSORS = 10_000
#: Most elements in one tensor.
MAX_TENSOR_ELEMENTS = 2**31
#: Most dimensions of one tensor.
MAX_TENSOR_RANK = 8
#: Most bytes in one set of weights (all tensors together).
MAX_MODEL_BYTES = 64 * 1024**3

# --- time ----------------------------------------------------------------
#: Seconds a new connection has for the TLS handshake, and then again for
#: Hello/Challenge/Auth (sending Welcome's weights is bounded by IDLE_TIMEOUT_S).
HANDSHAKE_TIMEOUT_S = 10.0
#: Seconds of silence after which a peer is considered gone. Both sides send
#: a Heartbeat every HEARTBEAT_INTERVAL_S while they have nothing else to say.
IDLE_TIMEOUT_S = 60.0
HEARTBEAT_INTERVAL_S = 10.0

#: Seconds each secure-aggregation phase (shares, masked updates, reveals)
#: waits for the workers it expects before going on without them.
SECAGG_PHASE_TIMEOUT_S = 60.0

#: Longest pause between a worker's reconnection attempts (before +-20% jitter);
#: attempts start 0.25 s apart and double.
RECONNECT_BACKOFF_MAX_S = 5.0

#: Seconds any single send (one message, with its chunks) may take before the
#: connection is dropped; a peer that stops reading costs one send slot for
#: at most this long.
SEND_TIMEOUT_S = 60.0

# --- admission -----------------------------------------------------------
#: Most connections that have not yet authenticated (including those still in
#: the TLS handshake), at once; more are closed before TLS.
MAX_UNAUTHENTICATED = 64
#: Most connections from one IP address that have not yet authenticated; more
#: from that address are closed before TLS (others are unaffected).
MAX_UNAUTHENTICATED_PER_ADDRESS = 8
#: Most weights messages (Welcome, Global, Done) in flight at once to the
#: connections of one IP address; further replies to that address wait.
MAX_SENDS_PER_ADDRESS = 8
#: Most weights messages in flight at once to one worker identity.
MAX_SENDS_PER_WORKER = 1
#: Replies (a Global) the chief sends to one worker's stale updates per round;
#: further stale updates in that round are dropped without an answer.
MAX_STALE_REPLIES_PER_ROUND = 1
#: Default of ``--max-examples``: the largest ``num_examples`` one update may
#: claim (a larger claim is refused as ``limit_exceeded``).
MAX_EXAMPLES = 1_000_000_000
#: Most authenticated workers at once.
MAX_WORKERS = 1024
#: Failed authentications from one address within 60 s after which its new
#: connections are closed at once until the window has passed.
MAX_AUTH_FAILURES_PER_MINUTE = 10
#: Most addresses whose failures are remembered (oldest forgotten first).
MAX_TRACKED_ADDRESSES = 100_000

# --- authentication ------------------------------------------------------
#: Bytes of the chief's random challenge nonce.
NONCE_BYTES = 32
#: Bytes of the join secret in a token.
SECRET_BYTES = 32
#: Bytes of Auth's HMAC-SHA256 (``mac``, and ``resume`` when present).
MAC_BYTES = 32
#: Bytes of the per-process instance id a worker sends in Hello.
INSTANCE_ID_BYTES = 16
#: Bytes of the reconnect secret the chief issues in Welcome.
RECONNECT_SECRET_BYTES = 32
