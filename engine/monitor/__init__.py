"""Monitoring state and its export (Prometheus)."""
