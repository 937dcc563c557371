"""The only sockets: TLS contexts and pinning (``tls``), credentials (``credentials``), the
worker's handshake (``handshake``), the blocking channel and its weights reader (``channel``).

Import from the submodules; ``fedsock.transport.errors`` imports no socket, so I/O-free
code can name ``ConnectionLost``.
"""
