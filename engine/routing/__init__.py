"""Champion/challenger routing, A/B and canary splits."""
