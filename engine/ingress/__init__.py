"""Ingresses translate a transport's messages to Pipeline.submit() calls and back."""
