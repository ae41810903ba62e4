"""ONNX Runtime sessions: providers, warm-up, instances; the registry of served models."""
