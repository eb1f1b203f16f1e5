"""Provider adapters: one sans-IO Api per provider wire format (turnout.gateway.wire.Api)."""

from __future__ import annotations

from collections.abc import Mapping

from turnout.gateway.providers.anthropic import Messages
from turnout.gateway.providers.gemini import GenerateContent
from turnout.gateway.providers.openai_chat import DIALECTS, ChatCompletions
from turnout.gateway.providers.openai_responses import Responses
from turnout.gateway.wire import Api

#: Each provider's APIs, its default first. Adapters hold no state (a stream's state lives in its
#: decoder), so one instance serves every call.
_APIS: Mapping[str, Mapping[str, Api]] = {
    "openai": {"chat_completions": ChatCompletions(DIALECTS["openai"]), "responses": Responses()},
    "anthropic": {"messages": Messages()},
    "gemini": {"generate_content": GenerateContent()},
    **{
        name: {"chat_completions": ChatCompletions(dialect)}
        for name, dialect in DIALECTS.items()
        if name != "openai"
    },
}


def default_api(provider: str) -> str:
    """The API a target of `provider` speaks when its table names none."""
    return next(iter(_apis_of(provider)))


def api_for(provider: str, api: str) -> Api:
    """The adapter of `provider`'s `api`. Raises ValueError for a pair that does not exist."""
    apis = _apis_of(provider)
    adapter = apis.get(api)
    if adapter is None:
        raise ValueError(f"provider '{provider}' has no API '{api}' (it speaks: {', '.join(apis)})")
    return adapter


def _apis_of(provider: str) -> Mapping[str, Api]:
    apis = _APIS.get(provider)
    if apis is None:
        raise ValueError(f"unknown provider '{provider}' (known: {', '.join(_APIS)})")
    return apis
