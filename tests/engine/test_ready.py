"""The ready file: written whole, read back, and refused when it is not one."""

from __future__ import annotations

import pytest

from engine.ready import Ready, read, remove, write


def test_written_whole_and_read_back(tmp_path):
    path = tmp_path / "ready.json"
    assert read(path) is None
    write(path, Ready(pid=42, grpc_port=8001, http_port=8000, metrics_port=8002))
    assert read(path) == Ready(42, 8001, 8000, 8002)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready.json"]  # no temporary file left
    remove(path)
    remove(path)  # gone already: nothing to do
    assert read(path) is None


@pytest.mark.parametrize("text", ['{"format": 2, "pid": 1, "grpc_port": 1, "http_port": 1, "metrics_port": 1}',
                                  '{"format": 1, "pid": 1}', "[]", "ready"])
def test_another_format_or_a_broken_file_is_refused(tmp_path, text):
    (tmp_path / "ready.json").write_text(text)
    with pytest.raises(ValueError, match="is not a scorewire ready file"):
        read(tmp_path / "ready.json")
