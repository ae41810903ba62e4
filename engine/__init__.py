"""scorewire: a streaming scoring and monitoring engine for ONNX models."""

__version__ = "0.1.0"
