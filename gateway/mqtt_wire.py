"""MQTT wire encoding shared by the emulator's device client and the bridge's subscriber.

Both speak a few packet types over asyncio themselves (paho's per-message overhead was half of
their CPU); the encodings every packet type uses are defined once here.
"""

from __future__ import annotations

import struct


def remaining_length(length: int) -> bytes:
    """MQTT's variable-length integer."""
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def string(raw: bytes) -> bytes:
    """A length-prefixed MQTT string or binary field."""
    return struct.pack("!H", len(raw)) + raw
