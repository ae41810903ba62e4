"""The supervisor's table (engine/processes/control.py): when workers may say ready."""

from engine.processes.control import UP, Control


def test_no_worker_says_ready_before_the_whole_server_was_ready_once():
    # A client waiting for ServerReady must not connect while only the first worker listens:
    # its connections would all stay there.
    control = Control.create(2)
    try:
        control.table[:3, UP] = 1  # both workers and the observer up, the server still starting
        assert not control.all_up()
        control.started = True
        assert control.all_up()
        control.table[1, UP] = 0  # a worker down: the others say not ready
        assert not control.all_up()
    finally:
        control.close()
