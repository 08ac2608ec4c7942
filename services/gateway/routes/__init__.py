"""HTTP routes: each parses, calls a service, returns."""

from services.gateway.routes.admin import router as admin_router
from services.gateway.routes.batches import router as batches_router
from services.gateway.routes.experiments import router as experiments_router
from services.gateway.routes.feedback import router as feedback_router
from services.gateway.routes.flow_runs import router as flow_runs_router
from services.gateway.routes.keys import router as keys_router
from services.gateway.routes.openai import router as openai_router
from services.gateway.routes.ops import router as ops_router

__all__ = [
    "admin_router", "batches_router", "experiments_router", "feedback_router",
    "flow_runs_router", "keys_router", "openai_router", "ops_router",
]
