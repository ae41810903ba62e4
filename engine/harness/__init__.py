"""What the demo, the tests and the benches share: the demo's models and data (models.py),
configs built from parameters (config.py), and `scorewire serve` started as a subprocess whose
ports come from its ready file (server.py). Not imported by the server itself."""
