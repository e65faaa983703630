"""The bridge's one root exception; MQTT and Kafka library errors are translated into it."""

from __future__ import annotations


class BridgeError(Exception):
    """Anything the bridge cannot recover from on its own (bad config, fatal producer state)."""
