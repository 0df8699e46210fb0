"""One check for what callers ask a chat model for: the messages and the sampling settings.

Three doors lead to the same model: the Python API (``ChatModel.generate``, ``chat``, ``stream``),
the continuous-batching engine (``labkit.engine``), and the HTTP server (``labkit.serve``, with
Ray Data batch jobs calling the Python API). They all check inputs here, with pydantic, so a
request that one door refuses is refused by every door with the same words: a NaN temperature, a
fractional or boolean ``max_tokens``, a seed over 32 bits, an empty message.

Each door turns ``InvalidRequest`` (a ``ValueError`` naming the field) into its own form: the
Python API raises it; the server answers HTTP 400 with OpenAI's error body and ``param``.

Example:
    >>> SamplingParams(max_tokens=32, temperature=0.7, seed=1).temperature
    0.7
    >>> SamplingParams(temperature=float("nan"))
    Traceback (most recent call last):
    ...
    labkit.chat_request.InvalidRequest: 'temperature' must be a finite number, got NaN
    >>> check_messages([{"role": "user", "content": "你好"}])
    [{'role': 'user', 'content': '你好'}]
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_MESSAGES = 64
ROLES = ("system", "user", "assistant")
SEED_MAX = 2**32 - 1

# What each bound means, in words, for the error message (pydantic's own says "greater than or equal to 0").
_RANGES = {"max_tokens": "a positive integer", "min_tokens": "an integer >= 0", "temperature": "between 0 and 2",
           "top_p": "in (0, 1]", "seed": f"between 0 and {SEED_MAX}", "n": "1 (one reply per request)"}


class InvalidRequest(ValueError):
    """A caller's mistake. ``param`` names the field (OpenAI's error body carries it)."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class Message(BaseModel):
    """One turn of a conversation. Other keys an OpenAI client sends (``name``, ...) are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value


_Messages = Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
_Float = Annotated[float, Field(allow_inf_nan=False)]


class SamplingParams(BaseModel):
    """One request's sampling settings. ``temperature == 0`` is greedy; a ``seed`` makes sampling
    repeatable; ``min_tokens`` holds back the end-of-turn token that long (vLLM's option;
    benchmarks use it for exact reply lengths). Frozen, and checked when made."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
    max_tokens: Annotated[int, Field(ge=1)] = 128
    temperature: Annotated[_Float, Field(ge=0, le=2)] = 0.0
    top_p: Annotated[_Float, Field(gt=0, le=1)] = 1.0
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] = 0

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise explain(exc) from None

    @model_validator(mode="after")
    def _min_within_max(self) -> SamplingParams:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"'min_tokens' ({self.min_tokens}) must not exceed 'max_tokens' ({self.max_tokens})")
        return self


class _StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class Conversation(BaseModel):
    """Messages to reply to: 1 to ``MAX_MESSAGES`` turns, the last not the assistant's."""

    model_config = ConfigDict(strict=True, extra="ignore")
    messages: _Messages

    @field_validator("messages")
    @classmethod
    def _ends_with_a_question(cls, messages: list[Message]) -> list[Message]:
        if messages[-1].role == "assistant":
            raise ValueError("the last message must come from the user (or system), not the assistant")
        return messages

    def message_dicts(self) -> list[dict]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


class ChatCompletionRequest(Conversation):
    """The body of OpenAI's ``POST /v1/chat/completions`` as labkit serves it; unknown keys
    (``model``, ``user``, ...) are ignored, as OpenAI-compatible servers do."""

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # OpenAI's newer name for max_tokens
    min_tokens: Annotated[int, Field(ge=0)] = 0
    temperature: Annotated[_Float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[_Float, Field(gt=0, le=1)] | None = None
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: _StreamOptions | None = None

    def sampling(self, *, default_max_tokens: int, max_tokens_limit: int) -> SamplingParams:
        """The settings to run with; ``max_tokens`` within the server's limit."""
        name = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
        max_tokens = getattr(self, name) or default_max_tokens
        if max_tokens > max_tokens_limit:
            raise InvalidRequest(f"'{name}' must be between 1 and {max_tokens_limit} on this server, got {max_tokens}",
                                 param=name)
        return SamplingParams(max_tokens=max_tokens, min_tokens=self.min_tokens,
                              temperature=0.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p, seed=self.seed)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def parse_chat_completion(body: object) -> ChatCompletionRequest:
    """A decoded JSON body as a checked request, or ``InvalidRequest`` saying what to fix."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise explain(exc) from None


def check_messages(messages: object) -> list[dict]:
    """A conversation (list of ``{"role", "content"}``) as plain dicts, or ``InvalidRequest``."""
    try:
        return Conversation.model_validate({"messages": messages}).message_dicts()
    except ValidationError as exc:
        raise explain(exc) from None


_TRANSFORMERS_NAMES = {"max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens"}


def check_generation(*, max_new_tokens: object, temperature: object = 0.0, top_p: object = 1.0,
                     seed: object = None, min_new_tokens: object = 0) -> SamplingParams:
    """The same check for the Python API, which takes transformers' names (``max_new_tokens``...)."""
    try:
        return SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                              min_tokens=min_new_tokens)
    except InvalidRequest as exc:
        message = str(exc)
        for ours, theirs in _TRANSFORMERS_NAMES.items():
            message = message.replace(f"'{ours}'", f"'{theirs}'")
        raise InvalidRequest(message, param=_TRANSFORMERS_NAMES.get(exc.param, exc.param)) from None


def check_prompt(text: object, what: str = "prompt") -> str:
    """A prompt must be a string with something in it."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{what} must be a string, got {type(text).__name__}", param=what)
    if not text.strip():
        raise InvalidRequest(f"{what} is empty: give the model something to respond to", param=what)
    return text


def explain(exc: ValidationError) -> InvalidRequest:
    """pydantic's first complaint, in words a workshop attendee can act on."""
    err = exc.errors()[0]
    loc = [p for p in err["loc"] if p not in ("function-after", "constrained-int", "constrained-float")]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    field = str(loc[0]) if loc else ""
    got = _show(err.get("input"))
    kind = err["type"]
    if field == "messages" and len(loc) == 1 and kind in ("too_short", "list_type", "missing"):
        msg = "'messages' must be a non-empty list of {role, content} objects"
    elif field == "messages" and kind == "too_long":
        msg = f"at most {MAX_MESSAGES} messages per request"
    elif field == "messages" and loc[-1] == "role":
        msg = f"{param} needs a 'role' of {', '.join(ROLES)}"
    elif field == "messages" and loc[-1] == "content":
        msg = f"{param} must be a non-empty string"
    elif field == "messages" and kind in ("model_type", "dict_type"):
        msg = f"{param} must be an object with 'role' and 'content', got {got}"
    elif kind == "extra_forbidden":
        msg = f"unknown setting '{param}' (the settings are {', '.join(SamplingParams.model_fields)})"
    elif kind == "missing":
        msg = f"'{param}' is required"
    elif kind == "int_type":
        msg = f"'{param}' must be an integer, got {got}"
    elif kind == "float_type":
        msg = f"'{param}' must be a number, got {got}"
    elif kind == "bool_type":
        msg = f"'{param}' must be true or false, got {got}"
    elif kind == "finite_number":
        msg = f"'{param}' must be a finite number, got {got}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error"):
        msg = f"'{param}' must be {_RANGES.get(field, 'in range')}, got {got}"
    elif kind in ("model_type", "dict_type"):
        msg = f"'{param}' must be an object, got {got}"
    else:  # our own validators: their message is already written for people
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
    return InvalidRequest(msg, param=param)


def _show(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
