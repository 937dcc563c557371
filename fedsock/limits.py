"""Every limit fedsock enforces, and its tuning constants, in one place.

protocol.md lists the same numbers (section 9); a test checks that the two agree.
Limits on peer input are checked *before* memory is allocated for it. The
tuning constants at the end are no part of the protocol: they set how fedsock
itself behaves (chunk size, heartbeats, reconnection, I/O), and a peer must
not rely on them.
"""

from __future__ import annotations

# --- framing -------------------------------------------------------------
#: Largest frame body a peer may announce, in bytes. Checked on the 8-byte
#: header, before a single byte of the body is buffered.
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Frames a peer sends before the chief has received its Auth (Hello, Auth) are
#: at most this many bytes; a larger header is refused before its body is buffered.
MAX_PREAUTH_FRAME_BYTES = 4096

#: Largest frame body other than a Chunk that the chief accepts from a worker after Auth,
#: in bytes: the largest legitimate one is an Update header with MAX_TENSORS specs, each
#: with a name of MAX_TENSOR_NAME_BYTES, rank MAX_TENSOR_RANK and an int8 encoding
#: (6,000,058 bytes), leaving 2 MiB for its metrics; secure aggregation's are smaller
#: (SecAggMasked 5,540,044, SecAggShares with MAX_WORKERS sealed shares 537,643).
MAX_WORKER_MESSAGE_BYTES = 8 * 1024 * 1024
#: Bytes of frames the chief holds partly received (announced, body not complete) from all
#: connections together, and from the connections of one IP address. A frame of at most
#: BUFFERED_FRAME_FREE_BYTES needs none of it; a larger one waits, unread, until it fits.
MAX_BUFFERED_FRAME_BYTES = 64 * 1024 * 1024
MAX_BUFFERED_FRAME_BYTES_PER_ADDRESS = 16 * 1024 * 1024

# --- message bodies (msgpack) -------------------------------------------
#: Longest string in any message body (names, messages, JSON model configs).
MAX_STR_BYTES = 4 * 1024 * 1024
#: Most items in any msgpack array in a message body.
MAX_ARRAY_ITEMS = 100_000
#: Most keys in any msgpack map in a message body.
MAX_MAP_ITEMS = 10_000
#: Most values in one message body: the items of all its arrays, the entries of all its maps
#: and the containers themselves, counted as they are decoded. 8 MiB of one-byte empty
#: arrays would otherwise be 8 million Python objects (600 MiB and seconds of decoding).
MAX_BODY_ITEMS = 1_000_000
#: Deepest nesting of arrays/maps in a message body.
MAX_NESTING = 32
#: Longest worker name in Hello. Names are 1-64 characters of letters, digits
#: and ``_ . @ -`` (no spaces, newlines or escapes: they appear in logs).
MAX_NAME_BYTES = 64
#: Longest tensor name in a tensor spec.
MAX_TENSOR_NAME_BYTES = 512
#: Most workers listed in one Status message (connected ones first).
MAX_STATUS_WORKERS = 10_000
#: Most validation metrics of one worker in a Status message.
MAX_STATUS_METRICS = 8

# --- tensors -------------------------------------------------------------
#: Most tensors in one set of weights.
MAX_TENSORS = 10_000
#: Most elements in one tensor.
MAX_TENSOR_ELEMENTS = 2**31
#: Most dimensions of one tensor.
MAX_TENSOR_RANK = 8
#: Most bytes in one set of weights (all tensors together).
MAX_MODEL_BYTES = 64 * 1024**3

#: Most bytes a worker lets the chief's model take by default (its weights in the Welcome, and
#: the model its config describes, counted before anything is built): the default of the
#: worker's ``--max-model-bytes``; larger is ``limit_exceeded`` on the worker's side.
WORKER_MAX_MODEL_BYTES = 2 * 1024**3
#: Deepest nesting a worker accepts in the chief's Keras model config (a Functional model nested
#: in another is about 20 levels deep).
MAX_MODEL_CONFIG_DEPTH = 100

# --- secure aggregation --------------------------------------------------
#: Bytes of each X25519 public key in SecAggKeys and SecAggRoster.
SECAGG_PUBLIC_KEY_BYTES = 32
#: Longest sealed share (nonce + two Shamir shares + GCM tag, with room to spare)
#: in SecAggShares and SecAggInbox.
SECAGG_MAX_SEALED_BYTES = 512
#: Bytes of one Shamir share value (a big-endian integer below 2**521 - 1).
SECAGG_SHARE_BYTES = 66
#: Longest share in SecAggReveal (exactly SECAGG_SHARE_BYTES is checked when it is used).
SECAGG_MAX_SHARE_BYTES = 128
#: Key pairs a worker keeps of the SecAggKeys it sent in a round since its last SecAggRoster (an
#: Abort and fresh keys can cross, so the roster may name earlier ones); the oldest go first.
SECAGG_PENDING_KEYS = 4
#: Most metric names a SecAggRoster may announce (each puts 3 words into the masked vector).
SECAGG_MAX_METRICS = 32
#: Longest metric name in a SecAggRoster, in UTF-8 bytes.
SECAGG_METRIC_NAME_BYTES = 64
#: A worker puts a metric into the masked vector only with |value| below this (2**30) and a
#: weight of at most SECAGG_METRIC_MAX_WEIGHT; with MAX_WORKERS workers no sum can overflow
#: (fedsock.secagg.metrics). Otherwise it sends weight 0 for that metric.
SECAGG_METRIC_MAX_ABS = 2**30
#: Largest weight (validation or training examples) beside a metric in the masked vector (2**30).
SECAGG_METRIC_MAX_WEIGHT = 2**30

# --- time ----------------------------------------------------------------
#: Seconds a new connection has for the TLS handshake, and then again for
#: Hello/Challenge/Auth (sending Welcome's weights is bounded by SEND_TIMEOUT_S).
HANDSHAKE_TIMEOUT_S = 10.0
#: Seconds of silence after which a peer is considered gone (both sides send a
#: Heartbeat every HEARTBEAT_INTERVAL_S while they have nothing else to say).
IDLE_TIMEOUT_S = 60.0
#: Seconds each secure-aggregation phase (shares, masked updates, reveals)
#: waits for the workers it expects before going on without them.
SECAGG_PHASE_TIMEOUT_S = 60.0
#: Slowest average rate, in bytes per second, at which the chief receives the chunks of a
#: worker's Update (or SecAggMasked): all of them must be in within the idle timeout plus
#: their size at this rate (2 Mbit/s), counted from the first byte the chief reads of them,
#: else ``timeout``. A staged update holds room in the chief's staging budget, which other
#: workers' updates may be waiting for: trickling one byte just inside the idle timeout holds
#: it for no longer than this allows.
MIN_UPLOAD_BYTES_PER_S = 256 * 1024
#: Seconds any single send (one message, with its chunks) may take before the
#: connection is dropped; a peer that stops reading costs one send slot for
#: at most this long. The default of the chief's ``--send-timeout``.
SEND_TIMEOUT_S = 60.0
#: Seconds an Error on its way out (with the close that follows) may take; the peer gets it or
#: the connection is simply closed.
ERROR_SEND_TIMEOUT_S = 5.0
#: Seconds the chief waits, after sending Done, for the workers' final evaluation reports
#: (EvalResult with ``final``) before it writes final_evaluation.json without the missing ones.
#: The default of the chief's ``--final-eval-timeout``.
FINAL_EVAL_TIMEOUT_S = 60.0

# --- admission -----------------------------------------------------------
#: Most connections that have not yet authenticated (including those still in
#: the TLS handshake), at once; more are closed before TLS.
MAX_UNAUTHENTICATED = 64
#: Most connections from one IP address that have not yet authenticated; more
#: from that address are closed before TLS (others are unaffected).
MAX_UNAUTHENTICATED_PER_ADDRESS = 8
#: Most replies (Welcome, a stale update's Global, Done to a late joiner) in flight at
#: once to the connections of one IP address; further ones wait. A round's fan-out to
#: the workers that took part has its own pool, without a per-address cap.
MAX_SENDS_PER_ADDRESS = 8
#: Most weights messages in flight at once to one worker identity.
MAX_SENDS_PER_WORKER = 1
#: Replies (a Global) the chief sends to one worker's stale updates per round;
#: further stale updates in that round are dropped without an answer.
MAX_STALE_REPLIES_PER_ROUND = 1
#: EvalRequests outstanding at once to one worker (each is answered by exactly one EvalResult;
#: another for the same request, or one never asked for, is refused as out_of_order).
MAX_EVAL_REQUESTS_PER_WORKER = 1
#: Default of ``--max-examples``: the largest ``num_examples`` one update may
#: claim (a larger claim is refused as ``limit_exceeded``).
MAX_EXAMPLES = 1_000_000_000
#: Most authenticated workers at once.
MAX_WORKERS = 1024
#: Failed authentications from one address within 60 s after which its new
#: connections are closed at once until the window has passed.
MAX_AUTH_FAILURES_PER_MINUTE = 10
#: Seconds over which failed authentications of an address are counted (MAX_AUTH_FAILURES_PER_MINUTE).
AUTH_FAILURE_WINDOW_S = 60.0
#: Most addresses whose failures are remembered (oldest forgotten first).
MAX_TRACKED_ADDRESSES = 100_000
#: Longest wait before reconnecting that a worker takes from an Error's ``retry_after_ms``, in ms;
#: a longer hint is cut to this (it is a chief's request, not a command to stay away for good).
MAX_RETRY_AFTER_MS = 60_000

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

# === tuning constants (fedsock's own behaviour, not limits of the protocol) ===
#: Tensor data is sent in chunks of at most this many bytes (< MAX_FRAME_BYTES,
#: leaving room for the chunk's msgpack envelope; small enough to stay in cache).
CHUNK_BYTES = 1024 * 1024
#: Seconds without sending after which a side sends a Heartbeat.
HEARTBEAT_INTERVAL_S = 10.0
#: First pause between a worker's reconnection attempts; it doubles after each.
RECONNECT_BACKOFF_START_S = 0.25
#: Longest pause between a worker's reconnection attempts (before +-20% jitter).
RECONNECT_BACKOFF_MAX_S = 5.0
#: Seconds a chief that stops because it cannot write its state dir goes on answering new
#: connections with Error ``shutdown``: workers whose model it cut off reconnect at once and
#: learn that it will be back (so their ``--gone-timeout`` does not apply).
STOP_NOTICE_S = 2.0
#: Reconnections per second a stopping chief asks its workers to spread themselves at: it gives
#: the k-th of its connected workers (in random order) ``retry_after_ms`` = k * 1000 / this.
RESTART_RECONNECTS_PER_S = 100
#: Each pause between reconnection attempts is multiplied by a random factor in [1 - this, 1 + this].
RECONNECT_JITTER = 0.2
#: Most characters of a peer's own text (an Error's message and code) the chief writes to its
#: log; control characters are escaped, so the text cannot forge log lines or drive a terminal.
LOGGED_TEXT_CHARS = 200
#: Seconds a chief told to stop gives the fan-out of a round it has recorded to finish.
STOP_GRACE_S = 5.0
#: Seconds a worker waits beyond the chief's idle timeout before a held name counts as another
#: worker's (its own old connection may be half-open until then).
NAME_HOLD_MARGIN_S = 5.0
#: Longest a worker's TCP connect takes per attempt, in seconds (the handshake then has its own).
CONNECT_ATTEMPT_S = 10.0
#: Bytes asked of the socket per read (chief sessions and the worker's Client).
READ_BYTES = 256 * 1024
#: Most bytes of a weights message the chief reads without letting other tasks run.
YIELD_BYTES = 16 * 1024 * 1024
#: Most weights messages (Global, Done) the chief writes at once; each takes an I/O
#: thread and its connection's kernel buffers, bounding threads and memory.
MAX_CONCURRENT_SENDS = 16
#: Frames up to this many bytes are buffered without taking from MAX_BUFFERED_FRAME_BYTES
#: (every Heartbeat and small message; an Update header of about 1,000 tensors).
BUFFERED_FRAME_FREE_BYTES = 64 * 1024
#: The chief's threads that send weights messages (TLS and copies, off the event loop).
IO_THREADS = 64
#: Most metrics the chief keeps from one update (the first by name), and the longest name it keeps;
#: the others are dropped before they reach metrics.jsonl, so a worker cannot bloat the run's record.
KEPT_METRICS = 32
KEPT_METRIC_NAME_BYTES = 64
#: Most workers given a TensorBoard run of their own (validation metrics); later ones are not written.
TENSORBOARD_WORKER_RUNS = 100
