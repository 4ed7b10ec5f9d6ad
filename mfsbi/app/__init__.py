"""The application: the ``mfsbi`` CLI, input checks, config files, deployments and the service stack.

The top layer: it imports :mod:`mfsbi.flows` and :mod:`mfsbi.runtime`, and nothing imports it.
"""
