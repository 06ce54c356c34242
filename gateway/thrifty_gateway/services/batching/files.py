"""The file store behind `/v1/files`: a filesystem directory (a PVC shared by the gateway and
the workers) with a total size limit. `FileStore` is the protocol an object store satisfies."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson
from pydantic import BaseModel

from .model import new_id


class StoreFullError(Exception):
    """Storing the file would exceed the store's size limit."""


class FileObject(BaseModel):
    """OpenAI's file object."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    tenant: str = "anonymous"

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"tenant"})


class FileStore(Protocol):
    async def put(
        self,
        data: bytes,
        *,
        filename: str,
        purpose: str,
        tenant: str,
        file_id: str | None = None,
        over_cap: bool = False,
    ) -> FileObject:
        """Store `data`; `over_cap` writes it even past `maxTotalBytes` (a batch's output: its
        lines were run and paid for, and uploads alone are what the cap limits)."""
        ...

    async def put_stream(
        self, source: BinaryIO, *, filename: str, purpose: str, tenant: str
    ) -> FileObject:
        """Store what `source` holds from its start, copied in chunks (not read whole)."""
        ...

    async def get(self, file_id: str) -> FileObject | None: ...

    async def read(self, file_id: str) -> bytes | None: ...

    async def delete(self, file_id: str) -> bool: ...

    async def list(self, tenant: str, purpose: str | None = None) -> list[FileObject]: ...


def _valid_id(file_id: str) -> bool:
    return file_id.startswith("file-") and all(c.isalnum() or c in "-_" for c in file_id)


class FilesystemStore:
    """`<root>/<id>.data` and `<root>/<id>.json` (metadata); writes are atomic renames."""

    def __init__(self, root: str | Path, max_total_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_total_bytes = max_total_bytes
        self._lock = asyncio.Lock()

    def _used(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.data"))

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    async def put(
        self,
        data: bytes,
        *,
        filename: str,
        purpose: str,
        tenant: str,
        file_id: str | None = None,
        over_cap: bool = False,
    ) -> FileObject:
        file_id = file_id or new_id("file").replace("_", "-", 1)
        meta = FileObject(
            id=file_id,
            bytes=len(data),
            created_at=int(time.time()),
            filename=filename,
            purpose=purpose,
            tenant=tenant,
        )

        def write() -> None:
            data_path = self.root / f"{file_id}.data"
            existing = data_path.stat().st_size if data_path.exists() else 0
            if not over_cap and self._used() - existing + len(data) > self.max_total_bytes:
                raise StoreFullError(
                    f"the file store is full ({self.max_total_bytes} bytes); delete files first"
                )
            self._write(data_path, data)
            self._write(self.root / f"{file_id}.json", orjson.dumps(meta.model_dump()))

        async with self._lock:
            await asyncio.to_thread(write)
        return meta

    async def put_stream(
        self, source: BinaryIO, *, filename: str, purpose: str, tenant: str
    ) -> FileObject:
        file_id = new_id("file").replace("_", "-", 1)
        data_path = self.root / f"{file_id}.data"

        def write() -> FileObject:
            tmp = data_path.with_suffix(f".data.{os.getpid()}.tmp")
            try:
                source.seek(0)
                with tmp.open("wb") as out:
                    shutil.copyfileobj(source, out, 1024 * 1024)
                size = tmp.stat().st_size
                if self._used() + size > self.max_total_bytes:
                    raise StoreFullError(
                        f"the file store is full ({self.max_total_bytes} bytes); delete files first"
                    )
                meta = FileObject(
                    id=file_id,
                    bytes=size,
                    created_at=int(time.time()),
                    filename=filename,
                    purpose=purpose,
                    tenant=tenant,
                )
                tmp.replace(data_path)
            finally:
                tmp.unlink(missing_ok=True)
            self._write(self.root / f"{file_id}.json", orjson.dumps(meta.model_dump()))
            return meta

        async with self._lock:
            return await asyncio.to_thread(write)

    async def get(self, file_id: str) -> FileObject | None:
        if not _valid_id(file_id):
            return None
        path = self.root / f"{file_id}.json"
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        return FileObject.model_validate(orjson.loads(raw))

    async def read(self, file_id: str) -> bytes | None:
        if not _valid_id(file_id):
            return None
        try:
            return await asyncio.to_thread((self.root / f"{file_id}.data").read_bytes)
        except FileNotFoundError:
            return None

    async def delete(self, file_id: str) -> bool:
        if not _valid_id(file_id):
            return False

        def remove() -> bool:
            found = False
            for suffix in (".json", ".data"):
                try:
                    (self.root / f"{file_id}{suffix}").unlink()
                    found = True
                except FileNotFoundError:
                    pass
            return found

        return await asyncio.to_thread(remove)

    async def list(self, tenant: str, purpose: str | None = None) -> list[FileObject]:
        def scan() -> list[FileObject]:
            out = []
            for path in self.root.glob("file-*.json"):
                try:
                    meta = FileObject.model_validate(orjson.loads(path.read_bytes()))
                except (OSError, ValueError):
                    continue
                if meta.tenant == tenant and (purpose is None or meta.purpose == purpose):
                    out.append(meta)
            return sorted(out, key=lambda f: f.created_at, reverse=True)

        return await asyncio.to_thread(scan)
