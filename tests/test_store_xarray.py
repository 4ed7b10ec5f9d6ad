"""The store read with xarray: dimension names on every array, parameter names as coordinates."""

import numpy as np
import xarray as xr

from mfsbi.runtime.executor import SerialExecutor
from mfsbi.runtime.simulation import ensure_rows, run_pending
from mfsbi.simulators import get_task
from mfsbi.storage import SimulationStore, verify_store


def test_a_table_opens_with_xarray_with_parameter_names(tmp_path):
    task = get_task("ou2")
    store = SimulationStore(tmp_path / "store")
    table = ensure_rows(store, task, table="ou2", fidelity="lf", num_rows=30, chunk_size=10, seed=0,
                        config_hash="h")
    run_pending(SerialExecutor(), store.url, "ou2", table, table="ou2", fidelity="lf")

    ds = xr.open_zarr(str(tmp_path / "store"), group="ou2/lf", consolidated=False)
    assert ds.theta.dims == ("row", "theta_dim") and ds.x.dims == ("row", "x_dim")
    assert list(ds.theta_dim.values) == list(task.parameter_names)
    assert set(ds.data_vars) == {"theta", "x", "seed", "round", "status", "reason", "elapsed"}
    theta, x = table.read("ok")
    assert np.array_equal(ds.theta.sel(theta_dim=task.parameter_names[1]).values, theta[:, 1])
    assert np.array_equal(ds.x.values, x) and (ds.status.values == 1).all()
    # The coordinate is part of the layout `mfsbi verify` accepts.
    assert verify_store(str(tmp_path / "store")).ok
