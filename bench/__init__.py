"""Benchmarks; they talk to servers over the wire and never import engine internals to measure."""
