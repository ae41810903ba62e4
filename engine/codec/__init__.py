"""Wire formats <-> numpy arrays, and validation against a model's schema."""
