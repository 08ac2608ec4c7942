"""The served gateway moves its startup heap out of the garbage collector's way."""

from __future__ import annotations

import gc
from collections.abc import Callable

from services.gateway import create_app
from services.settings import Settings


async def test_serve_freezes_what_startup_made_and_tests_leave_the_heap_alone(
    make_settings: Callable[..., Settings],
) -> None:
    gc.unfreeze()
    app = create_app(make_settings(workers=[]), freeze_heap=True)
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 1000
            services = app.state.services  # frozen: no collection walks it any more
            assert not any(obj is services for obj in gc.get_objects())
    finally:
        gc.unfreeze()
    plain = create_app(make_settings(workers=[]))
    async with plain.router.lifespan_context(plain):
        assert gc.get_freeze_count() == 0
