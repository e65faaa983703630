"""The operator views' data, read off the event loop and cached briefly."""

from __future__ import annotations

from console.config import ConsoleSettings


class Operations:
    def __init__(self, settings: ConsoleSettings) -> None:
        self._settings = settings

    def close(self) -> None:
        """Release the Kafka and Cassandra clients opened on demand."""
