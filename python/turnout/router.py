"""The in-process Router, with pandas views of its ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from turnout import _core
from turnout.ledger import MoneyType, counters_frame

if TYPE_CHECKING:
    import pandas as pd

    from turnout.gateway.call import AsyncStream, Gateway, Stream
    from turnout.gateway.wire import Response


class Router(_core.Router):
    """Routes requests of named scenarios and accounts their outcomes.

    ``route``/``report``/``verdict`` are the C++ core's own methods (no Python in the hot path);
    this subclass only adds conveniences.
    """

    def gateway(self, **options: Any) -> Gateway:
        """The worker SDK over this Router (``call``/``acall`` use a default one): ``options`` are
        :class:`turnout.gateway.call.Gateway`'s (``retry``, ``credentials``,
        ``max_connections``)."""
        from turnout.gateway.call import Gateway

        return Gateway(self, lambda: self.config, **options)

    def call(self, scenario: str, messages: Any, **kwargs: Any) -> Response | Stream:
        """Routes ``scenario``, calls the target in its own API, falls back by the retry policy,
        reports every attempt here and returns one Response (``stream=True``: a Stream of text).
        See :meth:`turnout.gateway.call.Gateway.call`."""
        return self._default_gateway().call(scenario, messages, **kwargs)

    async def acall(self, scenario: str, messages: Any, **kwargs: Any) -> Response | AsyncStream:
        """The asyncio twin of :meth:`call`."""
        return await self._default_gateway().acall(scenario, messages, **kwargs)

    def close(self) -> None:
        """Closes the HTTP connections ``call`` keeps (``acall``'s: :meth:`aclose`)."""
        gw = self.__dict__.pop("_gateway", None)
        if gw is not None:
            gw.close()

    async def aclose(self) -> None:
        """Closes every HTTP connection ``call`` and ``acall`` keep, from the event loop that
        ran ``acall`` (an asyncio app that ends its loop calls it first)."""
        gw = self.__dict__.pop("_gateway", None)
        if gw is not None:
            await gw.aclose()

    def _default_gateway(self) -> Gateway:
        gw = self.__dict__.get("_gateway")
        if gw is None:
            gw = self.__dict__["_gateway"] = self.gateway()
        return gw

    def subscribe_kv_events(
        self, *, topic: str = "", replay_timeout_s: float = 0.5
    ) -> _core.KvSubscription:
        """Subscribes to every replica's ``kv_events`` publisher (vLLM / SGLang) on a background
        thread and applies the events to the pool directories (precise mode). Sequence gaps are
        healed through ``kv_replay`` when configured; a gap that cannot be filled or an engine
        restart drops that replica's blocks. Use as a context manager, or call ``.stop()``."""
        return _core._subscribe_kv_events(self, topic, replay_timeout_s)

    def counters_frame(self, money: MoneyType = "decimal") -> pd.DataFrame:
        """The ledger as a DataFrame, one row per scenario x target (needs pandas).

        ``money="decimal"``: exact ``Decimal`` amounts; ``money="float"``: float64 money columns,
        for plotting. See :func:`turnout.ledger.counters_frame`."""
        return counters_frame(self.counters(), money)

    def scenario_summary(self) -> list[dict[str, Any]]:
        """Per-scenario totals: cost, accepted outcomes and the cost per accepted outcome."""
        totals: dict[str, dict[str, Any]] = {}
        for row in self.counters():
            t = totals.setdefault(
                row["scenario"],
                {
                    "scenario": row["scenario"],
                    "requests": 0,
                    "outcomes": 0,
                    "ok": 0,
                    "accepted": 0,
                    "cost_usd": 0,
                },
            )
            for key in ("requests", "outcomes", "ok", "accepted", "cost_usd"):
                t[key] += row[key]
        for t in totals.values():
            t["cost_per_accepted_usd"] = t["cost_usd"] / t["accepted"] if t["accepted"] else None
        return list(totals.values())
