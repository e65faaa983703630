"""Native runner for the real services: fetches artifacts, renders configs, starts, checks, stops."""
