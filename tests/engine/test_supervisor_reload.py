"""The supervisor says a reload is done only once every process has made it."""

from __future__ import annotations

import multiprocessing

from engine.processes.messages import Kind, Message
from engine.processes.supervisor import Child, Supervisor


class _Process:
    pid = 0

    def terminate(self) -> None:
        self.terminated = True


def supervisor_with(slots: int) -> tuple[Supervisor, dict[int, multiprocessing.connection.Connection]]:
    """A supervisor (its message handling only) with `slots` children: workers 0..slots-2 and
    the observer last; and the children's ends of their pipes."""
    sup = Supervisor.__new__(Supervisor)
    sup.children, ends = {}, {}
    for slot in range(slots):
        ours, theirs = multiprocessing.Pipe()
        sup.children[slot] = Child(slot, _Process(), ours, 0.0)
        ends[slot] = theirs
    sup.workers, sup.observer_slot, sup.challengers_slot = slots - 1, slots - 1, slots
    sup.stopping, sup.started = False, True
    sup.reloading, sup.held = dict.fromkeys(sup.children, 1), []  # a reload was just sent to every child
    return sup, ends


def test_the_reloaded_line_waits_for_every_process(capsys):
    sup, ends = supervisor_with(3)

    def tell(slot: int, kind: Kind, value) -> None:
        ends[slot].send(Message(kind, value))
        assert sup._message(sup.children[slot])

    tell(0, Kind.SAY, "reloaded: route mlp: champion 1 -> 2; loaded mlp:2")
    tell(0, Kind.RELOADED, None)
    tell(2, Kind.RELOADED, None)  # the observer
    assert capsys.readouterr().out == ""  # worker 1 still answers with the old routes
    tell(1, Kind.SAY, "reloaded: route mlp: champion 1 -> 2; loaded mlp:2")  # said once, for all
    tell(1, Kind.RELOADED, None)
    assert capsys.readouterr().out == "scorewire: reloaded: route mlp: champion 1 -> 2; loaded mlp:2\n"


def test_a_process_that_failed_the_reload_is_restarted_and_the_line_still_comes(capsys):
    sup, ends = supervisor_with(3)
    sup._name = lambda slot: f"worker {slot}"
    for slot, kind, value in [(0, Kind.SAY, "reloaded: loaded mlp:2"), (0, Kind.RELOADED, None),
                              (2, Kind.RELOADED, None), (1, Kind.RELOADED, "out of memory")]:
        ends[slot].send(Message(kind, value))
        assert sup._message(sup.children[slot])
    assert sup.children[1].process.terminated  # restarted: it starts on the new settings
    assert capsys.readouterr().out == "scorewire: reloaded: loaded mlp:2\n"


def test_two_reloads_in_a_row_are_said_once_both_are_made_everywhere(capsys):
    sup, ends = supervisor_with(2)
    sup.reloading = {0: 2, 1: 2}  # two SIGHUPs: each process has two reloads to make
    for slot, kind, value in [(0, Kind.SAY, "reloaded: loaded mlp:2"), (0, Kind.RELOADED, None),
                              (1, Kind.RELOADED, None), (0, Kind.SAY, "reloaded: loaded mlp:3"),
                              (0, Kind.RELOADED, None)]:
        ends[slot].send(Message(kind, value))
        assert sup._message(sup.children[slot])
    assert capsys.readouterr().out == ""  # the observer (slot 1) has not made the second one yet
    ends[1].send(Message(Kind.RELOADED, None))
    assert sup._message(sup.children[1])
    assert capsys.readouterr().out == "scorewire: reloaded: loaded mlp:2\nscorewire: reloaded: loaded mlp:3\n"
