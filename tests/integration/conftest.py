"""Fixtures of the integration tests (the session's models and server: tests/conftest.py)."""

from __future__ import annotations

import pytest

from engine.mock_kafka import MockCluster
from tests.integration.kafka_helpers import PARTITIONS


@pytest.fixture
def cluster():
    """librdkafka's built-in cluster on loopback with the topics events, scores and scores-dlq
    of PARTITIONS partitions each."""
    with MockCluster() as c:
        for topic in ("events", "scores", "scores-dlq"):
            c.create_topic(topic, PARTITIONS)
        yield c
