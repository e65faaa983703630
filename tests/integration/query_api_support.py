"""Moved to harness.query_api; this name stays until the benchmarks that still use it move."""

from harness.query_api import insert_windows, password_token, register, running_api

__all__ = ["insert_windows", "password_token", "register", "running_api"]
