"""Type stubs for turnout._core (the pybind11 module over the C++ core)."""

from collections.abc import Sequence
from decimal import Decimal
from types import ModuleType
from typing import Any

__version__: str
LATENCY_BUCKETS_MS: list[int]
# The wire protocol's names: VERSION, MAX_MESSAGE_BYTES, OPS, RING_OPS, FIELD, ERROR_CODES.
protocol: ModuleType

class Config:
    @property
    def source(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def scenarios(self) -> list[str]: ...
    @property
    def targets(self) -> list[str]: ...
    def target_info(self, name: str) -> dict[str, Any]: ...

def load_config(path: str) -> Config: ...
def load_config_text(text: str, source: str = "<string>") -> Config: ...
def error_codes() -> dict[str, str]: ...

class Decision:
    @property
    def id(self) -> int: ...
    @property
    def scenario(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def endpoint(self) -> str | None: ...
    @property
    def fallbacks(self) -> list[str]: ...
    @property
    def reasons(self) -> list[str]: ...
    @property
    def predicted_cost_usd(self) -> Decimal: ...
    @property
    def reserved_cost_usd(self) -> Decimal: ...
    @property
    def expected_cached_tokens(self) -> int: ...
    @property
    def cache_key(self) -> str | None: ...
    @property
    def config_version(self) -> str: ...
    @property
    def at(self) -> float: ...
    def to_dict(self) -> dict[str, Any]: ...
    @staticmethod
    def _detached(
        id: int,
        scenario: str,
        target: str,
        endpoint: str | None,
        fallbacks: list[str],
        reasons: list[str],
        predicted_cost_usd: str,
        reserved_cost_usd: str,
        expected_cached_tokens: int,
        cache_key: str | None,
        config_version: str,
        at: float,
    ) -> Decision: ...

class Router:
    def __init__(
        self,
        config: Config,
        seed: int = 0,
        decision_ttl_s: float = 3600.0,
        max_pending: int = 262144,
    ) -> None: ...
    def route(
        self,
        scenario: str,
        *,
        key: str | None = None,
        data_class: str | None = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        token_ids: Sequence[int] | None = None,
        text: str | None = None,
        now: float | None = None,
    ) -> Decision: ...
    def explain(
        self,
        scenario: str,
        *,
        key: str | None = None,
        data_class: str | None = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        token_ids: Sequence[int] | None = None,
        text: str | None = None,
        now: float | None = None,
    ) -> Decision: ...
    def report(
        self,
        decision_id: int,
        *,
        target: str,
        status: str,
        usage: dict[str, Any] | list[Any] | None = None,
        ttft_ms: float | None = None,
        latency_ms: float | None = None,
        accepted: bool | None = None,
        now: float | None = None,
    ) -> dict[str, Any]: ...
    def verdict(self, decision_id: int, accepted: bool, *, now: float | None = None) -> None: ...
    def counters(self) -> list[dict[str, Any]]: ...
    def breakers(self, *, now: float | None = None) -> list[dict[str, Any]]: ...
    def budgets(self, *, now: float | None = None) -> list[dict[str, Any]]: ...
    def self_hosted_costs(self, period_s: float) -> list[dict[str, Any]]: ...
    def apply_kv_events(
        self, target: str, replica: int | str, payload: bytes, *, now: float | None = None
    ) -> dict[str, int]: ...
    def reset_kv(self, target: str, replica: int | str) -> None: ...
    def directory_stats(self) -> list[dict[str, Any]]: ...
    @property
    def pending_decisions(self) -> int: ...
    @property
    def config(self) -> Config: ...

class KvSubscription:
    def stop(self) -> None: ...
    def stats(self) -> list[dict[str, Any]]: ...
    def __enter__(self) -> KvSubscription: ...
    def __exit__(self, *args: object) -> None: ...

def _subscribe_kv_events(
    router: Router, topic: str = "", replay_timeout_s: float = 0.5
) -> KvSubscription: ...
def canonical_prompt(messages: Sequence[tuple[str, str]], tools: Sequence[str] = ...) -> str: ...
def prefix_hashes(
    *,
    token_ids: Sequence[int] | None = None,
    text: str | None = None,
    block_size: int = 16,
    model: str = "",
    lora: str = "",
    salt: str = "",
) -> list[int]: ...
def _price_usage(
    config: Config, target: str, usage: Any, provider: str | None = None, batch: bool = False
) -> dict[str, Any]: ...
def _noop_route(
    scenario: str,
    *,
    key: str | None = None,
    data_class: str | None = None,
    input_tokens: int | None = None,
    max_output_tokens: int | None = None,
    token_ids: Sequence[int] | None = None,
    text: str | None = None,
    now: float | None = None,
) -> None: ...

class SegmentView:
    @property
    def name(self) -> str: ...
    def counters(self, timeout_s: float = 1.0) -> list[dict[str, Any]]: ...
    def info(self) -> dict[str, Any]: ...

def attach_segment(name: str) -> SegmentView: ...
def counter_fields() -> list[dict[str, Any]]: ...
def counter_columns() -> list[tuple[str, str]]: ...

class FastPath:
    def route(
        self,
        scenario: str,
        *,
        key: str | None = None,
        data_class: str | None = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        token_ids: Sequence[int] | None = None,
        text: str | None = None,
        now: float | None = None,
    ) -> Decision: ...
    def receipt(
        self,
        decision_id: int,
        *,
        target: str,
        status: str,
        usage: dict[str, Any] | list[Any] | None = None,
        ttft_ms: float | None = None,
        latency_ms: float | None = None,
        accepted: bool | None = None,
        now: float | None = None,
    ) -> dict[str, Any]: ...
    def explain(
        self,
        scenario: str,
        *,
        key: str | None = None,
        data_class: str | None = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        token_ids: Sequence[int] | None = None,
        text: str | None = None,
        now: float | None = None,
    ) -> Decision: ...
    def post(self, message: bytes) -> bool: ...
    @property
    def config(self) -> Config | None: ...
    @property
    def generation(self) -> int: ...
    @property
    def ring(self) -> int: ...

def attach_fast_path(shm: str, ring: bool = True) -> FastPath: ...
