"""Starting and following Prefect flow runs through a Prefect server's REST API.

The gateway's ``/admin/flows`` routes and the batch launcher use it; the flows
themselves stay in ``flows/`` (this package never imports them: it only knows the
deployments the server has).
"""

from services.orchestration.prefect_api import FlowRun, FlowRuns

__all__ = ["FlowRun", "FlowRuns"]
