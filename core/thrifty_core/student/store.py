"""The dataset store: append-only shards of capture records (one JSON object per line).

`DatasetStore` is the contract (a file store on a PVC here; an object store fits it too:
shards are written whole by one writer and never modified once rotated). Each writer (gateway
process) appends to its own shard, so replicas sharing a ReadWriteMany volume never
interleave lines; a shard rotates after `shard_records` lines.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

SHARD_PREFIX = "capture-"
SHARD_SUFFIX = ".jsonl"


class DatasetStore(Protocol):
    """Where captured pairs go and where the export reads them back."""

    def append(self, lines: Sequence[bytes]) -> None:
        """Append serialised records (no trailing newline) to this writer's shard."""
        ...

    def count(self) -> int:
        """Records stored so far (all writers, as of the last scan plus own appends)."""
        ...

    def refresh(self) -> int:
        """Scan again (what other writers appended or dropped since); the new count."""
        ...

    def shards(self) -> list[str]:
        """Shard names, oldest first."""
        ...

    def read(self, shard: str) -> Iterator[bytes]:
        """The lines of one shard (a partly written last line is skipped; a shard rotated
        away meanwhile reads as empty)."""
        ...

    def drop_oldest(self) -> int:
        """Delete the oldest shard no writer of this process appends to; the records it held
        (0 when there is none to drop)."""
        ...


def writer_id() -> str:
    """A name unique to this process on this host (pod)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class FileDatasetStore:
    """Shards as files under `root`: capture-<writer>-<seq>.jsonl."""

    def __init__(self, root: Path, *, shard_records: int = 10_000, writer: str | None = None):
        self.root = root
        self.shard_records = shard_records
        self.writer = writer or writer_id()
        self._lock = threading.Lock()
        self._seq = 0
        self._in_shard = 0
        self._count: int | None = None
        # shard -> (inode, bytes read, lines in them): a shard dropped and made again under its
        # name (by its idle writer) is another file, counted from its start
        self._counted: dict[str, tuple[int, int, int]] = {}

    def _shard_path(self) -> Path:
        return self.root / f"{SHARD_PREFIX}{self.writer}-{self._seq:06d}{SHARD_SUFFIX}"

    def append(self, lines: Sequence[bytes]) -> None:
        if not lines:
            return
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            if self._count is None:
                self._count = self._scan()
            if self._in_shard >= self.shard_records:
                self._seq += 1
                self._in_shard = 0
            path = self._shard_path()
            while self._in_shard == 0 and path.exists():  # never reuse an older shard
                self._seq += 1
                path = self._shard_path()
            with path.open("ab") as fh:
                fh.write(b"".join(line + b"\n" for line in lines))
            self._in_shard += len(lines)
            self._count += len(lines)

    def _scan(self) -> int:
        """Lines in every shard, reading only what was appended since the last scan (shards
        are append-only until dropped)."""
        total = 0
        seen: dict[str, tuple[int, int, int]] = {}
        for name in self.shards():
            inode, done, lines = self._counted.get(name, (-1, 0, 0))
            try:
                with (self.root / name).open("rb") as fh:
                    stat = os.fstat(fh.fileno())
                    if stat.st_ino != inode or stat.st_size < done:
                        inode, done, lines = stat.st_ino, 0, 0
                    fh.seek(done)
                    pos = done
                    while chunk := fh.read(1 << 20):
                        if (found := chunk.count(b"\n")) > 0:
                            lines += found
                            done = pos + chunk.rfind(b"\n") + 1  # a partial last line waits
                        pos += len(chunk)
            except FileNotFoundError:  # dropped by another writer meanwhile
                continue
            seen[name] = (inode, done, lines)
            total += lines
        self._counted = seen
        return total

    def refresh(self) -> int:
        with self._lock:
            self._count = self._scan()
            return self._count

    def count(self) -> int:
        with self._lock:
            if self._count is None:
                self._count = self._scan()
            return self._count

    def shards(self) -> list[str]:
        if not self.root.is_dir():
            return []
        stamped = []
        for p in self.root.iterdir():
            if p.name.startswith(SHARD_PREFIX) and p.name.endswith(SHARD_SUFFIX):
                try:
                    stamped.append((p.stat().st_mtime, p.name))
                except FileNotFoundError:  # dropped by another writer since the listing
                    continue
        return [name for _, name in sorted(stamped)]

    def read(self, shard: str) -> Iterator[bytes]:
        try:
            fh = (self.root / shard).open("rb")
        except FileNotFoundError:  # rotated away by a writer since it was listed
            return
        with fh:
            for line in fh:
                if line.endswith(b"\n") and line.strip():
                    yield line.rstrip(b"\n")

    def drop_oldest(self) -> int:
        with self._lock:
            current = self._shard_path().name if self._in_shard else None
            for name in self.shards():
                if name == current:
                    continue
                path = self.root / name
                try:
                    with path.open("rb") as fh:
                        lines = sum(1 for line in fh if line.endswith(b"\n"))
                    path.unlink()
                except FileNotFoundError:  # another writer dropped it first
                    continue
                self._counted.pop(name, None)
                if self._count is not None:
                    self._count = max(self._count - lines, 0)
                return lines
            return 0
