"""What ``mfsbi tasks`` and ``mfsbi status`` show: their rows as data (``--json``), then as tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from mfsbi.app.console import name_column, print_table

if TYPE_CHECKING:
    from mfsbi.storage import SimulationStore

__all__ = ["print_store_tables", "print_tasks", "store_tables", "task_records"]

# "LF uses" lists the LF's parameters up to this length, else says how many of θ it uses.
_LF_USES_WIDTH = 30


def task_records() -> list[dict[str, Any]]:
    """Every available task: dimensions, parameter names, references, costs, description."""
    from mfsbi.simulators import available_tasks, get_task  # deferred: torch, 1.5 s at every CLI start

    records = []
    for name in available_tasks():
        task = get_task(name)
        records.append({
            "name": name,
            "theta_dim": task.theta_dim,
            "x_dim": task.x_dim,
            "parameter_names": list(task.parameter_names),
            "low_fidelity_parameters": [task.parameter_names[i] for i in task.low_fidelity_parameters],
            "references": list(task.references),
            "fidelities": list(task.fidelities),
            "coupled": task.coupled,
            "cost_seconds": {fidelity: task.cost_seconds.get(fidelity) for fidelity in task.fidelities},
            "description": task.description,
        })
    return records


def _lf_uses(record: dict[str, Any]) -> str:
    names = ", ".join(record["low_fidelity_parameters"])
    if len(names) < _LF_USES_WIDTH:
        return names
    return f"{len(record['low_fidelity_parameters'])} of {record['theta_dim']}"


def print_tasks(records: list[dict[str, Any]]) -> None:
    """The tasks as a table; task and reference names are never broken."""
    table = Table(title="mfsbi tasks (costs: seconds per simulation measured on 2 cores, see docs/)")
    name_column(table, "task")
    for column in ("θ", "x size", "LF uses"):
        table.add_column(column, overflow="fold")
    name_column(table, "references")  # one per line: each stays whole, and the column narrow
    for column in ("LF s/sim", "between (s/sim)", "HF s/sim"):
        table.add_column(column, overflow="fold")
    for record in records:
        costs = record["cost_seconds"]

        def cost(fidelity: str) -> str:
            return "-" if costs.get(fidelity) is None else f"{costs[fidelity]:.2g}"

        # The intermediate levels of a chain of fidelities, cheapest first.
        between = "\n".join(f"{level} {cost(level)}" for level in record["fidelities"][1:-1]) or "-"
        table.add_row(record["name"], str(record["theta_dim"]), str(record["x_dim"]), _lf_uses(record),
                      "\n".join(record["references"]) or "-", cost("lf"), between, cost("hf"))
    print_table(table)


def store_tables(handle: SimulationStore) -> list[dict[str, Any]]:
    """Every table of a store: its rows by status and its HF budget (None: no budget set)."""
    rows = []
    for task_name, fidelity in handle.tables():
        sim_table = handle.table(task_name, fidelity)
        counts = sim_table.counts()
        budget = sim_table.budget()
        rows.append({"task": task_name, "fidelity": fidelity, "ok": counts["ok"], "failed": counts["failed"],
                     "pending": counts["pending"], "role": _role(task_name, fidelity, budget),
                     "budget": None if budget is None else {"reserved": budget.reserved, "total": budget.total}})
    return rows


def _role(table: str, fidelity: str, budget: Any) -> str:
    """What a table's simulations are for: a budget's, evaluation outside any budget, a predictive check, or LF."""
    # `mfsbi ppc`'s draws: the name's mark is mfsbi.flows.ppc_plan.PPC_MARK, not imported (it imports
    # the simulators: seconds for `mfsbi status`). HF under the check's own budget, LF twins under none.
    if "-ppc." in table:
        return "ppc (own budget, outside the run's)" if budget is not None else "ppc (outside the budget)"
    if table.endswith("-test") and budget is None:  # the held-out test pairs (RunPlan.test_table)
        return "evaluation (outside the budget)"
    if budget is not None:
        return "budget"
    return "LF" if fidelity == "lf" else "-"


def print_store_tables(store: str, rows: list[dict[str, Any]]) -> None:
    """A store's tables, as :func:`store_tables` gives them."""
    table = Table(title=f"store {store}")
    name_column(table, "task")
    name_column(table, "fidelity")
    table.add_column("role")
    for column in ("ok", "failed", "pending", "HF budget used / total"):
        table.add_column(column, justify="right")
    for row in rows:
        budget = row["budget"]
        table.add_row(row["task"], row["fidelity"], row["role"], str(row["ok"]), str(row["failed"]),
                      str(row["pending"]), f"{budget['reserved']} / {budget['total']}" if budget else "-")
    print_table(table)
