"""The flow-control helper both sides of ``_h1`` share."""

from __future__ import annotations

import asyncio

import pytest

from awstoken.proxy._h1 import ClientConnection, Frontend

from .fakes import FakeTransport, no_requests, run, settle


def Side(transport: FakeTransport) -> ClientConnection:
    """A protocol that mixes FlowControl in, on ``transport`` (a client connection: the
    helper is a trait, and a compiled trait takes no subclass defined in a test)."""
    conn = Frontend(no_requests)()
    conn.connection_made(transport)
    return conn


def test_reading_resumes_only_when_every_reason_is_withdrawn() -> None:
    async def main() -> None:
        transport = FakeTransport()
        side = Side(transport)
        side.pause_reading("body")
        side.pause_reading("pipeline")
        side.pause_reading("body")  # the same reason twice: one pause
        assert transport.calls == ["pause_reading"] and side.read_paused
        assert side.resume_reading("body") is False
        assert not transport.reading
        assert side.resume_reading("unknown") is False
        assert side.resume_reading("pipeline") is True
        assert transport.calls == ["pause_reading", "resume_reading"]
        assert side.resume_reading("pipeline") is False  # nothing left to resume
    run(main)


def test_a_closed_side_never_touches_its_transport() -> None:
    async def main() -> None:
        transport = FakeTransport()
        side = Side(transport)
        side.closed = True
        side.pause_reading("x")
        side.resume_reading("x")
        assert transport.calls == []
        with pytest.raises(ConnectionResetError):
            await side.drain()
    run(main)


def test_drain_waits_for_resume_writing_which_also_resumes_the_peer() -> None:
    async def main() -> None:
        side = Side(FakeTransport())
        await side.drain()  # not paused: returns at once
        peer = FakeTransport()
        other = Side(peer)
        other.pause_reading("client")
        def resume_other() -> None:
            other.resume_reading("client")

        side.on_resume = resume_other
        side.pause_writing()
        waiting = asyncio.ensure_future(side.drain())
        await settle()
        assert not waiting.done() and not peer.reading
        side.resume_writing()
        await settle()
        assert waiting.done() and peer.reading
        side.pause_writing()
        lost = asyncio.ensure_future(side.drain())
        await settle()
        side._drain_lost()
        await settle()
        assert isinstance(lost.exception(), ConnectionResetError)
    run(main)
