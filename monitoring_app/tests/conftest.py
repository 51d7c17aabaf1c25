"""Fixtures shared by the monitoring tests."""

import pytest

from monitoring_app import sweep


@pytest.fixture(params=["one pass", "lock first"])
def sweep_plan(request, monkeypatch):
    """The sweep as the planner runs it (one id-ordered pass), and with a plan of another
    shape, when it locks every row first (sweep.LOCKING_SWEEP_SQL). Yields the statements
    the sweeps ran and the one expected."""
    if request.param == "lock first":
        monkeypatch.setattr(sweep, "_locks_in_id_order", lambda plan: False)
    chosen, choose = [], sweep.sweep_statement

    def recorded(cursor, params):
        chosen.append(choose(cursor, params))
        return chosen[-1]

    monkeypatch.setattr(sweep, "sweep_statement", recorded)
    return chosen, sweep.SWEEP_SQL if request.param == "one pass" else sweep.LOCKING_SWEEP_SQL
