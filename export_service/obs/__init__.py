"""Observability: JSON or text log lines, the loggers' names (logs) and the
Prometheus metrics (metrics). Nothing else of the service."""
