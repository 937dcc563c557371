"""Protocol v1, sans-I/O: frames, messages, tensor codec, connection state.

This package imports no socket, ssl, asyncio or tensorflow. Every message
class, the connection state machine, the error codes and the identity functions
(worker names, reconnect proofs) are importable from here.
"""

from fedsock.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from fedsock.protocol import frames
from fedsock.protocol.chunking import message_bytes
from fedsock.protocol.compression import Compression, Encoding, parse_compression
from fedsock.protocol.connection import (
    NEED_DATA,
    AnyMessage,
    Connection,
    ConnectionClosed,
    Event,
    NeedData,
    make_error,
)
from fedsock.protocol.frames import Kind
from fedsock.protocol.handshake import (
    FEATURES,
    SECAGG_METRICS_FEATURE,
    Auth,
    Challenge,
    Hello,
    Plan,
    Welcome,
    required_features,
)
from fedsock.protocol.identity import check_name, is_valid_name, loggable, reconnect_proof, verify_reconnect_proof
from fedsock.protocol.messages import (
    ACK_CAPABILITY,
    ERROR_CODES,
    EVAL_CAPABILITY,
    Ack,
    Chunk,
    Done,
    EndOfMessage,
    Error,
    EvalRequest,
    EvalResult,
    Global,
    Heartbeat,
    Message,
    Update,
)
from fedsock.protocol.secagg import (
    Peer,
    SecAggAbort,
    SecAggInbox,
    SecAggKeys,
    SecAggMasked,
    SecAggMessage,
    SecAggReveal,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
)
from fedsock.protocol.specs import TensorSpec
from fedsock.protocol.states import Phase, Role
from fedsock.protocol.status import STATUS_CAPABILITY, Status, WorkerStatus
from fedsock.protocol.tensors import (
    TensorAssembler,
    check_signature,
    first_nonfinite,
    iter_chunks,
    specs_of,
)

__all__ = [
    "ACK_CAPABILITY", "ERROR_CODES", "EVAL_CAPABILITY", "FEATURES", "NEED_DATA", "SECAGG_METRICS_FEATURE",
    "STATUS_CAPABILITY",
    "Ack", "AnyMessage", "Auth", "Challenge", "Chunk", "Compression", "Connection", "ConnectionClosed", "Done",
    "Encoding", "EndOfMessage", "Error", "ErrorCode", "EvalRequest", "EvalResult", "Event", "Global", "Heartbeat",
    "Hello", "Kind",
    "LocalProtocolError", "Message", "NeedData", "Peer", "Phase", "Plan", "RemoteProtocolError", "Role",
    "SecAggAbort", "SecAggInbox", "SecAggKeys", "SecAggMasked", "SecAggMessage", "SecAggReveal",
    "SecAggRoster", "SecAggShares", "SecAggUnmask", "Status", "TensorAssembler", "TensorSpec", "Update",
    "Welcome", "WorkerStatus",
    "check_name", "check_signature", "first_nonfinite", "frames", "is_valid_name", "iter_chunks", "loggable",
    "make_error", "message_bytes", "parse_compression", "reconnect_proof", "required_features", "specs_of",
    "verify_reconnect_proof",
]
