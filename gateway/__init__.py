"""What every stage agrees on: endpoints, topic names, the telemetry contract, device identity.

A library: it reads no environment and does no I/O at import time.
"""
