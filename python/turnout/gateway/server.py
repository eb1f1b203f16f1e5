"""The OpenAI-compatible front door (``turnout gateway``): workers in any language call a scenario
as if it were an OpenAI model, over HTTP, through the same worker SDK (one :class:`Gateway`, its
``acall``; never a second call loop).

Routes: ``POST /v1/chat/completions`` (the scenario named by ``model``; whole or streamed),
``POST /v1/messages`` (the same in Anthropic's Messages shape), ``GET /v1/models`` (the
scenarios), ``GET /healthz``, and with an in-process Router ``GET /v1/turnout/counters`` (its
ledger, read-only). Errors are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``;
Anthropic-shaped on /v1/messages), each from the one table :data:`ERRORS`.

A stream commits when its first text is ready: only then are the response headers sent, so a
failure before it is a proper HTTP error. A failure after it (:class:`StreamInterruptedError`)
sends one error event and closes without the end marker (``data: [DONE]``; Anthropic's
``message_stop``): an OpenAI or Anthropic SDK client raises, never sees a silently truncated
success.

aiohttp is the ``gateway`` extra: this module imports it, ``import turnout`` never does.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from aiohttp import web

from turnout import _core, _errors
from turnout.gateway.call import AsyncStream, Gateway, loopback_literal
from turnout.gateway.credentials import MissingKey, private_text
from turnout.gateway.wire import Attempt, Response

_log = logging.getLogger("turnout.gateway")

#: The largest request body taken (aiohttp's client_max_size); a larger one is a 413.
MAX_BODY_BYTES = 4 * 1024 * 1024


# ----------------------------------------------------------------------------------- the errors


@dataclass(frozen=True)
class HttpError:
    """How one reason is answered: HTTP status, OpenAI error ``type`` and ``code``."""

    status: int
    type: str
    code: str
    why: str  # for the docs' table: what it means to the caller


#: Every error the front door answers, by reason: a ProviderError's ``.failure`` (the last
#: attempt's failure class), a Turnout error's ``.code``, or the front door's own check.
ERRORS: dict[str, HttpError] = {
    # The request itself.
    "invalid_json": HttpError(400, "invalid_request_error", "invalid_json", "the body is not JSON"),
    "invalid_field": HttpError(
        400, "invalid_request_error", "invalid_value", "a field is missing or has a bad value"
    ),
    "unsupported": HttpError(
        400,
        "invalid_request_error",
        "unsupported_parameter",
        "a field, role or content part the gateway cannot honour (never silently ignored)",
    ),
    "invalid_argument": HttpError(
        400, "invalid_request_error", "invalid_value", "the SDK refused an argument"
    ),
    "too_large": HttpError(
        413, "invalid_request_error", "request_too_large", "the body is over the bound (4 MiB)"
    ),
    "unauthorized": HttpError(
        401, "invalid_request_error", "invalid_api_key", "no or a wrong `Authorization: Bearer`"
    ),
    "unknown_scenario": HttpError(
        404, "invalid_request_error", "model_not_found", "`model` names no scenario"
    ),
    "no_route": HttpError(404, "invalid_request_error", "not_found", "no such path"),
    "browser_refused": HttpError(
        403,
        "permission_error",
        "forbidden_origin",
        "without callers' keys, a request from a browser page (Origin), to another host name "
        "(Host) or not JSON",
    ),
    "method_not_allowed": HttpError(
        405, "invalid_request_error", "method_not_allowed", "wrong HTTP method for the path"
    ),
    # The providers, by the last attempt's failure class (every candidate failed, or the policy
    # passed the failure through).
    "rate_limited": HttpError(
        429, "rate_limit_error", "rate_limit_exceeded", "the providers are rate limiting"
    ),
    "transient": HttpError(
        502, "upstream_error", "upstream_error", "the providers failed (5xx, overloaded, cut)"
    ),
    "timeout": HttpError(504, "upstream_error", "upstream_timeout", "no answer in time"),
    "context_overflow": HttpError(
        400, "invalid_request_error", "context_length_exceeded", "the prompt is too long"
    ),
    "content_filter": HttpError(
        400, "invalid_request_error", "content_filter", "the provider refused the prompt"
    ),
    "invalid_request": HttpError(
        400, "invalid_request_error", "upstream_invalid_request", "the provider refused the request"
    ),
    "auth": HttpError(
        502,
        "upstream_error",
        "upstream_auth",
        "the gateway's own provider key is missing or refused (not the caller's fault)",
    ),
    "billing": HttpError(
        502,
        "upstream_error",
        "upstream_billing",
        "the gateway's provider account is out of credit (not the caller's fault)",
    ),
    "not_found": HttpError(
        502,
        "upstream_error",
        "upstream_not_found",
        "no candidate has the model or path (a 404 or a redirect from each)",
    ),
    # Routing.
    "budget_exhausted": HttpError(
        429, "budget_exceeded", "budget_exhausted", "the scenario's daily budget is spent"
    ),
    "no_eligible_target": HttpError(
        503, "service_unavailable", "no_eligible_target", "no target can take it now"
    ),
    "unavailable": HttpError(
        503, "service_unavailable", "sidecar_unavailable", "the sidecar does not answer"
    ),
    "internal": HttpError(
        500, "server_error", "internal_error", "a bug in the gateway: see its log"
    ),
}


class RequestError(Exception):
    """A request the front door refuses itself: its reason (a key of :data:`ERRORS`) and the
    field it names."""

    def __init__(self, reason: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.param = param


def _reason(e: Exception) -> str:
    """The key of :data:`ERRORS` for an exception."""
    if isinstance(e, RequestError):
        return e.reason
    if isinstance(e, _errors.ProviderError):
        return e.failure if e.failure in ERRORS else "transient"
    if isinstance(e, _errors.TurnoutError) and e.code in ERRORS:
        return e.code
    return "internal"


def _error_body(e: Exception) -> tuple[HttpError, dict[str, Any]]:
    reason = _reason(e)
    err = ERRORS[reason]
    message = str(e) if reason != "internal" else f"internal error: {type(e).__name__}"
    body: dict[str, Any] = {
        "error": {
            "message": message,
            "type": err.type,
            "param": e.param if isinstance(e, RequestError) else None,
            "code": err.code,
        }
    }
    if isinstance(e, _errors.ProviderError):
        body["turnout"] = {"failure": e.failure, "attempts": [_attempt(a) for a in e.attempts]}
    return err, body


def _error_response(
    e: Exception,
    body_of: Callable[[Exception], tuple[HttpError, dict[str, Any]]] = _error_body,
) -> web.Response:
    err, body = body_of(e)
    headers = {}
    if err.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(e, _errors.ProviderError) and e.attempts:
        wait = e.attempts[-1].retry_after_ms
        if err.status == 429 and wait:
            headers["Retry-After"] = str(math.ceil(wait / 1000))
    return _json(body, status=err.status, headers=headers)


# ----------------------------------------------------------------------------------- JSON out


def _money(value: Any) -> str | None:
    return None if value is None else str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _dumps(obj: Any) -> str:
    # ASCII escapes: a lone surrogate echoed from a request or a reply stays valid JSON and UTF-8.
    return json.dumps(obj, default=_json_default, separators=(",", ":"), ensure_ascii=True)


def _json(obj: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        text=_dumps(obj), status=status, content_type="application/json", headers=headers
    )


def _attempt(a: Attempt) -> dict[str, Any]:
    return {
        "target": a.target,
        "endpoint": a.endpoint,
        "status": a.status,
        "failure": a.failure,
        "error": a.error,
        "http_status": a.http_status,
        "cost_usd": _money(a.cost_usd),
    }


#: The SDK's finish reasons in OpenAI's words ("other": a reason OpenAI has no word for; the
#: native truth stays in ``turnout.finish_reason``).
_FINISH = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "other": "stop",
}


def _usage(r: Response) -> dict[str, Any] | None:
    """OpenAI's usage object from the SDK's normalized tokens (None: the provider sent none)."""
    u = r.usage
    if not u:
        return None
    prompt = (
        u["uncached_input_tokens"]
        + u["cache_read_tokens"]
        + u["cache_write_5m_tokens"]
        + u["cache_write_1h_tokens"]
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": u["output_tokens"],  # reasoning included, as OpenAI counts it
        "total_tokens": prompt + u["output_tokens"],
        "prompt_tokens_details": {"cached_tokens": u["cache_read_tokens"]},
        "completion_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
    }


def _turnout(r: Response) -> dict[str, Any]:
    """The answer's Turnout extras: who answered, what it cost, every attempt."""
    return {
        "target": r.target,
        "endpoint": r.endpoint,
        "provider": r.provider,
        "model": r.model,
        "decision_id": r.decision_id,
        "finish_reason": r.finish_reason,
        "cost_usd": _money(r.cost_usd),
        "usage": dict(r.usage) if r.usage else None,
        "attempts": [_attempt(a) for a in r.attempts],
    }


# ----------------------------------------------------------------------------------- JSON in


@dataclass(frozen=True)
class CallRequest:
    """A checked request body (either wire), as Gateway.acall takes it."""

    scenario: str
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float | None
    stop: list[str] | None
    stream: bool
    include_usage: bool
    key: str | None


#: Fields the gateway cannot honour, accepted only at the value that asks nothing of it (OpenAI's
#: own default): a client library that always sends ``n: 1`` or ``presence_penalty: 0`` works,
#: one that asks for more gets a 400 naming the field.
_NO_OP_VALUES: dict[str, Any] = {
    "n": 1,
    "top_p": 1,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logprobs": False,
    "logit_bias": {},
    "tools": [],
    "functions": [],
    "response_format": {"type": "text"},
    "store": False,
    "parallel_tool_calls": True,  # meaningless without tools, which are refused
}
_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "stop",
        "stream",
        "stream_options",
        "user",
    }
)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: Keys an echoed assistant message carries that ask nothing when empty.
_EMPTY_MESSAGE_KEYS = frozenset({"refusal", "tool_calls", "function_call", "audio", "annotations"})


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in the JSON)
        return False
    return True


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:200]


def _bad(message: str, param: str) -> RequestError:
    return RequestError("invalid_field", message, param)


def _unsupported(message: str, param: str) -> RequestError:
    return RequestError("unsupported", message, param)


def _int(body: Mapping[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= _MAX_INT:
        raise _bad(f"'{name}' must be an integer within 1..{_MAX_INT}, got {v!r:.40}", name)
    return v


#: The largest count a request may carry (the core's bound on tokens of one call, 2^31).
_MAX_INT = 2**31


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{where}' must be text or a list of text parts", where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise _unsupported(
                f"'{where}[{j}]': content part type {kind!r} is not supported (text only)",
                f"{where}[{j}].type",
            )
        if not isinstance(part.get("text"), str):
            raise _bad(f"'{where}[{j}].text' must be a string", f"{where}[{j}].text")
        texts.append(part["text"])
    return "".join(texts)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _bad("'messages' must be a non-empty array", "messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{where}' must be an object", where)
        role = m.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _unsupported(
                f"'{where}.role' {role!r} is not supported (system, developer, user, assistant)",
                f"{where}.role",
            )
        for k, v in m.items():
            if k in ("role", "content") or (k in _EMPTY_MESSAGE_KEYS and not v):
                continue
            raise _unsupported(f"'{where}.{k}' is not supported", f"{where}.{k}")
        if m.get("content") is None:
            raise _bad(f"'{where}.content' must be text", f"{where}.content")
        out.append({"role": _ROLES[role], "content": _content(m["content"], f"{where}.content")})
    return out


def parse_chat_request(body: Any) -> CallRequest:
    """Checks a ``/v1/chat/completions`` body; raises RequestError naming the first bad field."""
    if not isinstance(body, dict):
        raise RequestError("invalid_json", "the body must be a JSON object")
    for name, value in body.items():
        if name in _FIELDS or value is None:
            continue
        if name in _NO_OP_VALUES and value == _NO_OP_VALUES[name]:
            continue
        raise _unsupported(f"'{name}' is not supported by the Turnout gateway", name)
    model = body.get("model")
    if not isinstance(model, str) or not model or not _utf8(model):
        raise _bad("'model' must name a scenario", "model")
    max_tokens = _int(body, "max_tokens")
    max_completion = _int(body, "max_completion_tokens")
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise _bad("give 'max_completion_tokens' or 'max_tokens', not both", "max_tokens")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= 2
    ):
        raise _bad(
            f"'temperature' must be a number from 0 to 2, got {temperature!r}", "temperature"
        )
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)
    ):
        raise _bad("'stop' must be a string or a list of non-empty strings", "stop")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("'stream_options' must be an object", "stream_options")
        for k in options:
            if k != "include_usage":
                raise _unsupported(f"'stream_options.{k}' is not supported", f"stream_options.{k}")
        include_usage = options.get("include_usage") is True
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string", "user")
    return CallRequest(
        scenario=model,
        messages=_messages(body.get("messages")),
        max_tokens=max_completion if max_completion is not None else max_tokens,
        temperature=float(temperature) if temperature is not None else None,
        stop=stop or None,
        stream=bool(stream),
        include_usage=include_usage,
        key=user or None,
    )


# ----------------------------------------------------------------------------------- safety


def load_api_keys(env_name: str | None, keys_file: str | None) -> frozenset[str]:
    """The callers' keys: the variable ``env_name`` holds one, ``keys_file`` one per line (blank
    lines and ``#`` comments skipped; the file owned by this user, mode 0600 or stricter, the
    same check as a target's key file). Raises ValueError when one is named but unusable."""
    keys: set[str] = set()
    if env_name:
        value = os.environ.get(env_name, "").strip()
        if not value:
            raise ValueError(f"--api-key-env: the variable {env_name} is not set or empty")
        keys.add(value)
    if keys_file:
        try:
            _, text = private_text(keys_file, keys_file)
        except MissingKey as e:
            raise ValueError(f"--api-keys-file: {e}") from None
        keys.update(
            line.strip() for line in (text or "").splitlines() if line.strip()[:1] not in ("", "#")
        )
        if not keys:
            raise ValueError(f"--api-keys-file: {keys_file} holds no key")
    return frozenset(keys)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_bind(host: str, api_keys: Iterable[str]) -> None:
    """Refuses (ValueError) to serve a non-loopback host without callers' keys: the gateway
    spends its provider keys for whoever can reach it."""
    if not is_loopback(host) and not any(True for _ in api_keys):
        raise ValueError(
            f"refusing to serve {host}, which is not loopback, without callers' keys: give "
            "--api-key-env NAME or --api-keys-file PATH (everyone who can reach it would spend "
            "the gateway's provider keys)"
        )


class _Keys:
    """Checks ``Authorization: Bearer <key>`` against every key in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def allows(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        token = given.strip().encode()
        ok = False
        for key in self._keys:  # no early exit: the time does not say which key is near
            ok |= hmac.compare_digest(token, key)
        return ok


# ----------------------------------------------------------------------------------- the app


@dataclass
class _Source:
    """What the front door serves: the one Gateway, the routing table, the ledger if local."""

    gateway: Gateway
    config_of: Callable[[], _core.Config]
    counters: Callable[[], list[dict[str, Any]]] | None


_SOURCE = web.AppKey("source", _Source)
_STARTED = web.AppKey("started", int)
_MAX_BODY = web.AppKey("max_body", int)


def _browser_request(request: web.Request) -> str | None:
    """Why a request looks like a browser's or another host's (None: it does not)."""
    if "Origin" in request.headers:
        return "a request with an Origin header (a browser page) needs callers' keys"
    host = request.host.rsplit(":", 1)[0] if not request.host.startswith("[") else request.host
    host = host.split("]")[0].lstrip("[")
    if not loopback_literal(host):
        return f"Host {request.host!r} is not a loopback address: configure callers' keys"
    if request.method == "POST" and request.content_type != "application/json":
        return "the body must be application/json"
    return None


def build_app(
    gateway: Gateway,
    config_of: Callable[[], _core.Config],
    *,
    api_keys: Iterable[str] = (),
    counters: Callable[[], list[dict[str, Any]]] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> web.Application:
    """The front door over one Gateway. ``config_of`` gives the routing table (its scenarios are
    the models); ``counters`` (an in-process Router's) serves ``/v1/turnout/counters``;
    ``api_keys`` non-empty requires ``Authorization: Bearer <key>`` (or ``x-api-key``) on every
    path but /healthz."""
    keys = _Keys(api_keys)

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        resp = await checked(request, handler)
        if resp.status >= 400 and not resp.prepared:
            # The gateway's policy already retried: a client SDK's own retries would stack.
            resp.headers["x-should-retry"] = "false"
        return resp

    async def checked(request: web.Request, handler: Any) -> web.StreamResponse:
        error = _anthropic_error_response if request.path == "/v1/messages" else _error_response
        if not keys:
            # Loopback is then the only lock: a web page the user visits (it sends Origin, or a
            # form's text/plain) or a DNS-rebound host name must not spend the provider keys.
            refused = _browser_request(request)
            if refused:
                return error(RequestError("browser_refused", refused))
        if keys and request.path != "/healthz":
            # OpenAI clients send Authorization: Bearer, Anthropic clients x-api-key.
            given = request.headers.get("x-api-key")
            auth = f"Bearer {given}" if given else request.headers.get("Authorization")
            if not keys.allows(auth):
                return error(
                    RequestError(
                        "unauthorized",
                        "a valid key is required ('Authorization: Bearer <key>' or 'x-api-key')",
                    )
                )
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return error(RequestError("too_large", f"the body is over {max_body_bytes} bytes"))
        except web.HTTPNotFound:
            return error(RequestError("no_route", f"no route {request.path}"))
        except web.HTTPMethodNotAllowed:
            return error(
                RequestError("method_not_allowed", f"{request.method} {request.path} not allowed")
            )

    app = web.Application(client_max_size=max_body_bytes, middlewares=[errors])
    app[_SOURCE] = _Source(gateway, config_of, counters)
    app[_STARTED] = int(time.time())
    app[_MAX_BODY] = max_body_bytes
    app.router.add_post("/v1/chat/completions", _handler(_OPENAI))
    app.router.add_post("/v1/messages", _handler(_ANTHROPIC))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model}", _model)
    app.router.add_get("/v1/turnout/counters", _counters)
    app.router.add_get("/healthz", _healthz)

    async def close_gateway(app: web.Application) -> None:
        await gateway.aclose()

    app.on_cleanup.append(close_gateway)
    return app


def _model_object(app: web.Application, config: _core.Config, name: str) -> dict[str, Any]:
    owner = config.scenario_info(name).get("owner") or "turnout"
    return {"id": name, "object": "model", "created": app[_STARTED], "owned_by": owner}


async def _models(request: web.Request) -> web.Response:
    config = request.app[_SOURCE].config_of()
    data = [_model_object(request.app, config, s) for s in config.scenarios]
    return _json({"object": "list", "data": data})


async def _model(request: web.Request) -> web.Response:
    config = request.app[_SOURCE].config_of()
    name = request.match_info["model"]
    if name not in config.scenarios:
        return _error_response(RequestError("unknown_scenario", f"no scenario '{name}'", "model"))
    return _json(_model_object(request.app, config, name))


async def _healthz(request: web.Request) -> web.Response:
    return _json({"ok": True})


async def _counters(request: web.Request) -> web.Response:
    counters = request.app[_SOURCE].counters
    if counters is None:
        return _error_response(
            RequestError(
                "no_route",
                "the ledger lives in the sidecar with --sidecar: read it with `turnout stats`",
            )
        )
    return _json({"counters": counters()})


@dataclass(frozen=True)
class _Wire:
    """One API shape the front door speaks: its request check, answer, stream events, errors."""

    parse: Callable[[Any], CallRequest]
    answer: Callable[[CallRequest, Response], web.Response]
    events: Callable[[CallRequest, int], _Events]
    error: Callable[[Exception], web.Response]


def _handler(wire: _Wire) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await _call(request, wire)
        except web.HTTPException:
            raise
        except Exception as e:
            if _reason(e) == "internal":  # a bug: the caller gets a 500, the log the traceback
                _log.exception("turnout gateway: %s %s failed", request.method, request.path)
            return wire.error(e)

    return handle


async def _call(request: web.Request, wire: _Wire) -> web.StreamResponse:
    limit = request.app[_MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        # Refused before reading it (aiohttp would read up to the bound first).
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise RequestError("invalid_json", f"the body is not JSON: {_short(e)}") from None
    req = wire.parse(body)
    answer = await request.app[_SOURCE].gateway.acall(
        req.scenario,
        req.messages,
        stream=req.stream,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        stop=req.stop,
        key=req.key,
    )
    if isinstance(answer, AsyncStream):
        return await _stream(request, lambda decision_id: wire.events(req, decision_id), answer)
    assert isinstance(answer, Response)
    return wire.answer(req, answer)


def _completion(req: CallRequest, r: Response) -> web.Response:
    body = {
        "id": f"chatcmpl-{r.decision_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.scenario,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": r.text, "refusal": None},
                "logprobs": None,
                "finish_reason": _FINISH[r.finish_reason],
            }
        ],
        "usage": _usage(r),
        "turnout": _turnout(r),
    }
    headers = {"x-turnout-target": r.target, "x-turnout-decision-id": str(r.decision_id)}
    return _json(body, headers=headers)


class _Events(Protocol):
    """One stream's events in a wire's shape: the opening ones, a text delta, the closing ones
    (the answer's end marker last), or the error that ends it without that marker."""

    def start(self) -> bytes: ...

    def text(self, text: str) -> bytes: ...

    def end(self, r: Response) -> bytes: ...

    def error(self, e: Exception) -> bytes: ...


class _Chunks:
    """The ``chat.completion.chunk`` events of one stream."""

    def __init__(self, req: CallRequest, decision_id: int) -> None:
        self.req = req
        self.head = {
            "id": f"chatcmpl-{decision_id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": req.scenario,
        }

    def _event(self, choices: list[Any], **extra: Any) -> bytes:
        chunk = {**self.head, "choices": choices, **extra}
        if self.req.include_usage and "usage" not in extra:
            chunk["usage"] = None
        return f"data: {_dumps(chunk)}\n\n".encode()

    def delta(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._event([choice], **extra)

    def start(self) -> bytes:
        return self.delta({"role": "assistant", "content": ""})

    def text(self, text: str) -> bytes:
        return self.delta({"content": text})

    def end(self, r: Response) -> bytes:
        out = self.delta({}, _FINISH[r.finish_reason], turnout=_turnout(r))
        if self.req.include_usage:
            out += self._event([], usage=_usage(r))
        return out + b"data: [DONE]\n\n"

    @staticmethod
    def error(e: Exception) -> bytes:
        _, body = _error_body(e)
        return f"data: {_dumps(body)}\n\n".encode()


async def _stream(
    request: web.Request, events_of: Callable[[int], _Events], stream: AsyncStream
) -> web.StreamResponse:
    """Sends a stream once its first text is ready (its commit point); a failure before it is
    raised to the handler (an HTTP error), one after it ends the stream with an error event."""
    deltas: AsyncIterator[str] = stream.__aiter__()
    try:
        first = await anext(deltas, None)
    except BaseException:
        await _close(deltas, stream)
        raise
    decision = stream.decision
    assert decision is not None
    chunks = events_of(decision.id)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-turnout-decision-id": str(decision.id),
        }
    )
    try:
        await resp.prepare(request)
        await _write(resp, chunks.start())
        if first is not None:
            await _write(resp, chunks.text(first))
            async for text in deltas:
                await _write(resp, chunks.text(text))
    except (ConnectionError, TimeoutError):
        # The caller left: closing the SDK's stream reports the attempt (once).
        await _close(deltas, stream)
        return resp
    except asyncio.CancelledError:
        await _close(deltas, stream)
        raise
    except _errors.ProviderError as e:  # committed: an error event, and no end marker
        await _send_last(resp, chunks.error(e))
        return resp
    except Exception as e:
        _log.exception("turnout gateway: a stream failed after its first text")
        await _close(deltas, stream)
        await _send_last(resp, chunks.error(e))
        return resp
    assert stream.response is not None
    if await _send_last(resp, chunks.end(stream.response)):
        await resp.write_eof()
    return resp


#: The longest a caller may take to read one event: one that stops reading is gone (its attempt
#: and its pool slot must not be held for it).
WRITE_TIMEOUT_S = 30.0


async def _write(resp: web.StreamResponse, data: bytes) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT_S):
        await resp.write(data)


async def _send_last(resp: web.StreamResponse, data: bytes) -> bool:
    """Writes a stream's last events; False when the caller has gone (the call is over and
    reported either way)."""
    try:
        await _write(resp, data)
    except (ConnectionError, TimeoutError):
        return False
    return True


async def _close(deltas: AsyncIterator[str], stream: AsyncStream) -> None:
    aclose = getattr(deltas, "aclose", None)
    if aclose is not None:
        await aclose()
    await stream.aclose()


# ----------------------------------------------------------------------------------- Anthropic

#: The SDK's finish reasons in Anthropic's words (a stop sequence is not told apart: end_turn).
_STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
    "other": "end_turn",
}
_ANTHROPIC_FIELDS = frozenset(
    {"model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "stream"}
)


def _blocks(content: Any, where: str) -> str:
    """Anthropic content: text, or text blocks (joined in order)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{where}' must be text or a list of text blocks", where)
    texts = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind != "text":
            raise _unsupported(f"'{at}': block type {kind!r} is not supported (text only)", at)
        for k in block:
            if k not in ("type", "text"):
                why = " (the gateway marks cache breakpoints itself)" * (k == "cache_control")
                raise _unsupported(f"'{at}.{k}' is not supported{why}", f"{at}.{k}")
        if not isinstance(block.get("text"), str):
            raise _bad(f"'{at}.text' must be a string", f"{at}.text")
        texts.append(block["text"])
    return "".join(texts)


def parse_messages_request(body: Any) -> CallRequest:
    """Checks a ``/v1/messages`` (Anthropic Messages) body; raises RequestError naming the first
    field it cannot take."""
    if not isinstance(body, dict):
        raise RequestError("invalid_json", "the body must be a JSON object")
    for name, value in body.items():
        if name not in _ANTHROPIC_FIELDS and name != "metadata" and value is not None:
            raise _unsupported(f"'{name}' is not supported by the Turnout gateway", name)
    model = body.get("model")
    if not isinstance(model, str) or not model or not _utf8(model):
        raise _bad("'model' must name a scenario", "model")
    messages: list[dict[str, str]] = []
    if body.get("system") is not None:
        messages.append({"role": "system", "content": _blocks(body["system"], "system")})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty array", "messages")
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{where}' must be an object", where)
        if m.get("role") not in ("user", "assistant"):
            raise _unsupported(
                f"'{where}.role' {m.get('role')!r} is not supported", f"{where}.role"
            )
        for k in m:
            if k not in ("role", "content"):
                raise _unsupported(f"'{where}.{k}' is not supported", f"{where}.{k}")
        messages.append(
            {"role": m["role"], "content": _blocks(m.get("content"), f"{where}.content")}
        )
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= 1
    ):
        raise _bad(
            f"'temperature' must be a number from 0 to 1, got {temperature!r}", "temperature"
        )
    stop = body.get("stop_sequences")
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop)
    ):
        raise _bad("'stop_sequences' must be a list of non-empty strings", "stop_sequences")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _bad("'metadata' must be an object", "metadata")
    for k in metadata:
        if k != "user_id":
            raise _unsupported(f"'metadata.{k}' is not supported", f"metadata.{k}")
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise _bad("'metadata.user_id' must be a string", "metadata.user_id")
    return CallRequest(
        scenario=model,
        messages=messages,
        max_tokens=_int(body, "max_tokens"),
        temperature=float(temperature) if temperature is not None else None,
        stop=stop or None,
        stream=bool(stream),
        include_usage=True,
        key=user or None,
    )


def _anthropic_usage(r: Response) -> dict[str, Any]:
    """Anthropic's usage from the SDK's normalized tokens (zeros when the provider sent none:
    Anthropic's shape has no null usage; ``turnout.usage`` is null then)."""
    u = r.usage or {}
    w5, w1 = u.get("cache_write_5m_tokens", 0), u.get("cache_write_1h_tokens", 0)
    return {
        "input_tokens": u.get("uncached_input_tokens", 0),
        "cache_creation_input_tokens": w5 + w1,
        "cache_read_input_tokens": u.get("cache_read_tokens", 0),
        "output_tokens": u.get("output_tokens", 0),
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
    }


def _anthropic_message(req: CallRequest, r: Response) -> web.Response:
    body = {
        "id": f"msg_{r.decision_id}",
        "type": "message",
        "role": "assistant",
        "model": req.scenario,
        "content": [{"type": "text", "text": r.text}],
        "stop_reason": _STOP_REASON[r.finish_reason],
        "stop_sequence": None,
        "usage": _anthropic_usage(r),
        "turnout": _turnout(r),
    }
    headers = {"x-turnout-target": r.target, "x-turnout-decision-id": str(r.decision_id)}
    return _json(body, headers=headers)


def _anthropic_error_body(e: Exception) -> tuple[HttpError, dict[str, Any]]:
    err, body = _error_body(e)
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
    }.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")
    error = body["error"]
    extra = {"code": err.code, "param": error["param"], **body.get("turnout", {})}
    return err, {
        "type": "error",
        "error": {"type": kind, "message": error["message"]},
        "turnout": extra,
    }


def _anthropic_error_response(e: Exception) -> web.Response:
    return _error_response(e, _anthropic_error_body)


class _AnthropicEvents:
    """The Messages stream events of one stream."""

    def __init__(self, req: CallRequest, decision_id: int) -> None:
        self.req = req
        self.id = f"msg_{decision_id}"

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {_dumps({'type': name, **data})}\n\n".encode()

    def start(self) -> bytes:
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.req.scenario,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # known at the end (message_delta)
        }
        block = {"index": 0, "content_block": {"type": "text", "text": ""}}
        return self._event("message_start", {"message": message}) + self._event(
            "content_block_start", block
        )

    def text(self, text: str) -> bytes:
        delta = {"index": 0, "delta": {"type": "text_delta", "text": text}}
        return self._event("content_block_delta", delta)

    def end(self, r: Response) -> bytes:
        delta = {
            "delta": {"stop_reason": _STOP_REASON[r.finish_reason], "stop_sequence": None},
            "usage": _anthropic_usage(r),
            "turnout": _turnout(r),
        }
        return (
            self._event("content_block_stop", {"index": 0})
            + self._event("message_delta", delta)
            + self._event("message_stop", {})
        )

    def error(self, e: Exception) -> bytes:
        _, body = _anthropic_error_body(e)
        return f"event: error\ndata: {_dumps(body)}\n\n".encode()


_OPENAI = _Wire(parse_chat_request, _completion, _Chunks, _error_response)
_ANTHROPIC = _Wire(
    parse_messages_request, _anthropic_message, _AnthropicEvents, _anthropic_error_response
)


# ----------------------------------------------------------------------------------- serving


def open_source(
    config: str, *, sidecar: str | None = None, shm: str | None = None
) -> tuple[Gateway, Callable[[], _core.Config], Callable[[], list[dict[str, Any]]] | None]:
    """The one Gateway of a server process: over an in-process Router built from ``config``
    (its ledger served at /v1/turnout/counters), or with ``sidecar`` over a Client of the local
    sidecar (reports go there; ``config`` is the client's table when no ``shm`` maps one)."""
    import turnout

    if sidecar is None:
        router = turnout.Router(turnout.load_config(config))
        return router.gateway(), lambda: router.config, router.counters
    client = turnout.Client(sidecar, shm=shm, config=config)
    return client.gateway(), client.table, None


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    announce: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
) -> None:
    """Serves ``app`` on host:port until SIGINT/SIGTERM (or ``stop`` is set); ``announce``
    gets one line with the URL once it listens."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        # "[::1]" as URLs write it; the socket takes the bare address.
        site = web.TCPSite(runner, host.strip("[]"), port, backlog=1024)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        announce(f"turnout gateway: serving http://{shown}:{bound_port}/v1")
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
