"""What runs on the Dask workers, and the interface the flows hand it to. No Prefect here.

Jobs (simulate whole chunks, train one estimator), process isolation of a simulator, the executor
interface (serial and Dask behind one protocol), the local Dask cluster, worker preload, seeds and
progress events. The flows (:mod:`mfsbi.flows`) sit above this layer; it never imports them.
"""
