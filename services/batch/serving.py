"""What ``/v1/files`` and ``/v1/batches`` do, for the gateway's thin routes.

Store calls run in a worker thread (the event loop never waits on the database);
creating a batch starts its run at once (``BatchLauncher``), cancelling one makes sure a
run is there to finalize it.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine

from services.batch import store
from services.batch.launcher import BatchLauncher
from services.batch.protocol import BatchCreate, BatchList, BatchObject, FileList, FileObject
from services.errors import InvalidRequest, PayloadTooLarge

FILE_PURPOSES = ("batch",)


class BatchServing:
    def __init__(self, engine: Engine, launcher: BatchLauncher, *, max_file_bytes: int) -> None:
        self._engine = engine
        self.launcher = launcher
        self.max_file_bytes = max_file_bytes

    async def upload(self, *, tenant: str, filename: str, purpose: str,
                     content: bytes) -> FileObject:
        if purpose not in FILE_PURPOSES:
            raise InvalidRequest(f"purpose must be one of {', '.join(FILE_PURPOSES)}",
                                 param="purpose")
        self.check_size(len(content))
        stored = await asyncio.to_thread(store.create_file, self._engine, tenant=tenant,
                                         filename=filename, purpose=purpose, content=content)
        return FileObject.of(stored)

    def check_size(self, size: int) -> None:
        if size > self.max_file_bytes:
            raise PayloadTooLarge(
                f"file of {size} bytes exceeds the {self.max_file_bytes}-byte limit", param="file")

    async def file(self, file_id: str, *, tenant: str) -> FileObject:
        return FileObject.of(await asyncio.to_thread(store.get_file, self._engine, file_id,
                                                     tenant=tenant))

    async def file_content(self, file_id: str, *, tenant: str) -> bytes:
        stored = await asyncio.to_thread(store.get_file, self._engine, file_id, tenant=tenant)
        return stored.content

    async def files(self, *, tenant: str, limit: int) -> FileList:
        found = await asyncio.to_thread(store.list_files, self._engine, tenant=tenant, limit=limit)
        return FileList(data=[FileObject.of(f) for f in found])

    async def create(self, request: BatchCreate, *, tenant: str) -> BatchObject:
        batch = await asyncio.to_thread(
            store.create_batch, self._engine, tenant=tenant, input_file_id=request.input_file_id,
            endpoint=request.endpoint, completion_window=request.completion_window,
            metadata=request.metadata)
        await asyncio.to_thread(self.launcher.launch, batch.id)
        return BatchObject.of(batch)

    async def get(self, batch_id: str, *, tenant: str) -> BatchObject:
        return BatchObject.of(await asyncio.to_thread(store.get_batch, self._engine, batch_id,
                                                      tenant=tenant))

    async def list(self, *, tenant: str, limit: int, after: str | None) -> BatchList:
        found = await asyncio.to_thread(store.list_batches, self._engine, tenant=tenant,
                                        limit=limit + 1, after=after)
        data = [BatchObject.of(b) for b in found[:limit]]
        return BatchList(data=data, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None, has_more=len(found) > limit)

    async def cancel(self, batch_id: str, *, tenant: str) -> BatchObject:
        batch = await asyncio.to_thread(store.request_cancel, self._engine, batch_id,
                                        tenant=tenant)
        # no live run (never started, or died): start one, it finalizes the cancel at once
        await asyncio.to_thread(self.launcher.launch, batch_id)
        return BatchObject.of(batch)
