"""Ports for minicloud's servers and the test tiers' (`layout.free_ports`)."""

from __future__ import annotations

from orchestrator.minicloud.layout import free_ports


def test_no_port_is_handed_out_twice_by_one_process() -> None:
    """A port is free only until its asker binds it: a second call before
    that (the next server of the same cloud) must not pick it too. Drawn at
    random from ~27,000 ports, 1,500 of them used to repeat one almost
    surely (seen as haproxy's 'Address already in use' in CI)."""
    seen: list[int] = []
    for _ in range(150):
        seen += free_ports(10)
    assert len(set(seen)) == len(seen)


def test_it_goes_on_when_most_ports_were_handed_out() -> None:
    for _ in range(40):
        assert len(set(free_ports(1000))) == 1000
