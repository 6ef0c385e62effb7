"""ZeroMQ notifications as bitcoind publishes them with -zmqpubhashblock, -zmqpubrawblock
and -zmqpubrawtx: one PUB socket, messages [topic, body, 4-byte little-endian sequence].
"""

from __future__ import annotations

import contextlib
import struct

import zmq

__all__ = ["ZmqPublisher"]

TOPICS = ("hashblock", "rawblock", "rawtx")


class ZmqPublisher:
    """Publishes block and transaction events; `enabled = False` silences the socket
    while sequence numbers keep counting, as a stalled stream would look to a subscriber
    that reconnects (the gap shows what it missed).

    Not thread-safe: the node calls it under its own lock.
    """

    def __init__(self, host: str, port: int, *, high_water_mark: int = 1000) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, high_water_mark)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(f"tcp://{host}:{port or '*'}")
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.high_water_mark = high_water_mark
        self.enabled = True
        self._sequence = dict.fromkeys(TOPICS, 0)

    def _send(self, topic: str, body: bytes) -> None:
        sequence = self._sequence[topic]
        self._sequence[topic] = (sequence + 1) & 0xFFFFFFFF
        if self.enabled:
            message = [topic.encode(), body, struct.pack("<I", sequence)]
            # bitcoind drops what a full queue cannot take, too.
            with contextlib.suppress(zmq.Again):
                self._socket.send_multipart(message, flags=zmq.NOBLOCK)

    def transaction(self, raw: bytes) -> None:
        self._send("rawtx", raw)

    def block(self, block_hash: bytes, raw: bytes) -> None:
        """`block_hash` in internal byte order; subscribers get it reversed, like bitcoind."""
        self._send("hashblock", block_hash[::-1])
        self._send("rawblock", raw)

    def close(self) -> None:
        self._socket.close()
        self._context.term()
