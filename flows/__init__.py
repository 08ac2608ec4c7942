"""Prefect flows: the control loops that read the metrics store and write decisions.

One module per flow; each task is a few lines around a ``services`` function, so the
logic is tested without Prefect. Deployments (schedules) are declared in ``deployments``.
"""
