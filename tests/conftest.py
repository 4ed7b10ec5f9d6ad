import os

# Keep every test offline and quiet, and one torch thread per process (no oversubscription on 2 cores).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY", "false")
os.environ.setdefault("NEURON_MODULE_OPTIONS", "-nogui")
