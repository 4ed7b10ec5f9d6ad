"""The Prefect flows: amortised, sequential and MF-ABC, their steps, the run and its summary.

Above :mod:`mfsbi.runtime` (what runs on the Dask workers) and below :mod:`mfsbi.app` (the CLI and
the service stack). The method registry (:mod:`mfsbi.flows.methods`) says which flow runs which
method; :class:`~mfsbi.flows.run.Run` owns a run's names, seeds and steps.
"""
