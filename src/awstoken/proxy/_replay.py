"""A copy of a request body as it goes upstream, so a request refused for its token can be
sent once more with the refreshed one.

Up to ``memory_max`` bytes stay in memory; past that the copy moves to a private temporary
file (``tempfile.TemporaryFile``: created unlinked, mode 0600, gone when closed) up to
``spool_max``; past that the copy is dropped and the request cannot be replayed. Memory per
request stays under ``memory_max`` plus one write batch whatever the upload size. File
writes and reads run in a thread: the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from typing import IO

#: Bytes gathered before one write to the spool file (and the size of each read back).
_BATCH = 1024 * 1024
#: Defaults of ``[server] replay_max_bytes`` and ``replay_spool_max_bytes``.
REPLAY_MAX_BYTES = 1024 * 1024
REPLAY_SPOOL_MAX_BYTES = 256 * 1024 * 1024


class BodyRecorder:
    """Records a request body (bounded) for one replay."""

    def __init__(self, *, memory_max: int, spool_max: int) -> None:
        self.memory_max = memory_max
        self.spool_max = max(spool_max, memory_max)
        self.size = 0
        self.overflow = False  # the body went past the bounds: not replayable
        self.detached = False  # the upstream refused: record the rest without sending it
        self._chunks: list[bytes] = []
        self._pending = 0
        self._file: IO[bytes] | None = None

    @classmethod
    def for_length(cls, length: int | None, *, memory_max: int,
                   spool_max: int) -> BodyRecorder | None:
        """A recorder for a body of ``length`` (None: chunked), or None when it cannot fit."""
        if max(memory_max, spool_max) <= 0:
            return None
        if length is not None and length > max(memory_max, spool_max):
            return None
        return cls(memory_max=memory_max, spool_max=spool_max)

    async def add(self, data: bytes) -> None:
        if self.overflow:
            return
        size = self.size + len(data)
        if size > self.spool_max:
            self.discard()
            return
        self.size = size
        self._chunks.append(data)
        self._pending += len(data)
        if size > self.memory_max and self._pending >= _BATCH:
            await self._flush()

    async def _flush(self) -> None:
        chunks, self._chunks, self._pending = self._chunks, [], 0
        spool = self._file
        if spool is None:
            spool = self._file = await asyncio.to_thread(_spool_file)
        await asyncio.to_thread(spool.writelines, chunks)

    async def finish(self) -> None:
        """The body is complete: put what is pending into the spool file, if one is used."""
        if not self.overflow and self._file is not None and self._chunks:
            await self._flush()

    async def read(self) -> AsyncIterator[bytes]:
        """The recorded body, in order (call after :meth:`finish`)."""
        if self._file is not None:
            spool = self._file
            await asyncio.to_thread(spool.seek, 0)
            while data := await asyncio.to_thread(spool.read, _BATCH):
                yield data
        for chunk in self._chunks:
            yield chunk

    def discard(self) -> None:
        """Drop the copy (past the bounds, or done with it)."""
        self.overflow = True
        self._chunks, self._pending = [], 0
        spool, self._file = self._file, None
        if spool is not None:
            spool.close()

    def close(self) -> None:
        spool, self._file = self._file, None
        self._chunks = []
        if spool is not None:
            spool.close()


def _spool_file() -> IO[bytes]:
    # O_TMPFILE where the system has it: no name ever exists; else created 0600, unlinked.
    return tempfile.TemporaryFile(prefix="awstoken-replay-")
