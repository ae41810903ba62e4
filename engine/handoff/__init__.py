"""The hand-off from serving processes to the observer: a shared-memory ring and its records."""
