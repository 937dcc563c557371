"""Protocol v1, sans-I/O: frames, messages, tensor codec, connection state.

This package imports no socket, ssl, asyncio or tensorflow.
"""

from fedsock.protocol.connection import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Event,
    Phase,
    Role,
    make_error,
)
from fedsock.protocol.frames import Kind
from fedsock.protocol.messages import (
    Auth,
    Challenge,
    Chunk,
    Done,
    EndOfMessage,
    Error,
    Global,
    Heartbeat,
    Hello,
    Message,
    Plan,
    TensorSpec,
    Update,
    Welcome,
)
from fedsock.protocol.status import STATUS_CAPABILITY, Status, WorkerStatus
from fedsock.protocol.tensors import (
    TensorAssembler,
    check_signature,
    first_nonfinite,
    iter_chunks,
    specs_of,
)

__all__ = [
    "NEED_DATA", "Auth", "Challenge", "Chunk", "Connection", "ConnectionClosed", "Done",
    "EndOfMessage", "Error", "Event", "Global", "Heartbeat", "Hello", "Kind", "Message",
    "Phase", "Plan", "Role", "STATUS_CAPABILITY", "Status", "TensorAssembler", "TensorSpec", "Update",
    "Welcome", "WorkerStatus",
    "check_signature", "first_nonfinite", "iter_chunks", "make_error", "specs_of",
]
