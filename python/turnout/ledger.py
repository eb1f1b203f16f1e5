"""The ledger's field list, as the C++ core defines it (``cpp/turnout/ledger.hpp``), and the
DataFrame view of ledger rows that :meth:`turnout.Router.counters_frame` and
:meth:`turnout.SharedCounters.counters_frame` return.

Nothing here names a counter: the fields, their columns and their /metrics families come from the
core, so a counter added there reaches every view without a change here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from turnout import _core

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMNS",
    "COUNTER_FIELDS",
    "GATE_COLUMNS",
    "MONEY_COLUMNS",
    "SHARE_COLUMNS",
    "CounterField",
    "counters_frame",
]


@dataclass(frozen=True)
class CounterField:
    """One field of the ledger."""

    name: str
    kind: str  #: count, by_status, tokens, money or histogram
    help: str
    columns: tuple[str, ...]  #: the keys it fills in a row dict (and the stats reply)
    metrics: tuple[str, ...]  #: the /metrics families it is exported as (may be none)


COUNTER_FIELDS: tuple[CounterField, ...] = tuple(
    CounterField(
        name=f["name"],
        kind=f["kind"],
        help=f["help"],
        columns=tuple(f["columns"]),
        metrics=tuple(f["metrics"]),
    )
    for f in _core.counter_fields()
)
"""Every field of the ledger, in the core's order."""

_ROW_COLUMNS: tuple[tuple[str, str], ...] = tuple(_core.counter_columns())

COLUMNS: tuple[str, ...] = tuple(column for column, _ in _ROW_COLUMNS)
"""Every key of a ledger row dict, in order: the names, the fields' columns, the derived ones."""

MONEY_COLUMNS: tuple[str, ...] = tuple(column for column, kind in _ROW_COLUMNS if kind == "money")
"""The columns that hold USD amounts (exact ``Decimal`` in a row dict)."""

SHARE_COLUMNS: tuple[str, ...] = tuple(column for column, kind in _ROW_COLUMNS if kind == "share")
"""The columns derived as a share in [0, 1] against the scenario's ``slo`` and ``quality_gate``
(``ttft_slo_attainment``, ``latency_slo_attainment``, ``accept_rate``): a float, ``None`` when
undefined."""

GATE_COLUMNS: tuple[str, ...] = tuple(column for column, kind in _ROW_COLUMNS if kind == "gate")
"""The columns judged against the scenario's ``quality_gate`` (``quality_gate``): ``"pass"``,
``"fail"`` or ``None``."""

MoneyType = Literal["decimal", "float"]


def counters_frame(rows: Iterable[dict[str, Any]], money: MoneyType = "decimal") -> pd.DataFrame:
    """Ledger rows as a DataFrame, one row per scenario x target, with every column even when
    there are no rows (needs pandas).

    ``money="decimal"`` keeps the amounts exact (``Decimal``); ``money="float"`` turns the money
    columns into float64 for plotting (NaN where an amount is undefined, as
    ``cost_per_accepted_usd`` before the first accepted outcome). Sum the exact columns, not these.
    The share columns (:data:`SHARE_COLUMNS`) are float64 either way, NaN where undefined.
    """
    if money not in ("decimal", "float"):
        raise ValueError(f"money must be 'decimal' or 'float', got {money!r}")
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    for column in SHARE_COLUMNS:
        frame[column] = frame[column].astype("float64")  # None (undefined) is NaN
    if money == "float":
        for column in MONEY_COLUMNS:
            frame[column] = frame[column].map(float, na_action="ignore").astype("float64")
    return frame
