"""The one check every door shares: the Python API, the engine and the HTTP server refuse the same
bad settings with the same words (the HTTP cases, end to end, are in test_serve.py)."""

from __future__ import annotations

import math

import pytest

from labkit.chat_request import (
    InvalidRequest,
    SamplingParams,
    check_generation,
    check_messages,
    parse_chat_completion,
)
from labkit.serve import RequestError, parse_chat_request

HI = [{"role": "user", "content": "hi"}]

BAD_SETTINGS = [  # (setting, value, words every door says)
    ("temperature", math.nan, "'temperature' must be a finite number, got NaN"),
    ("temperature", math.inf, "'temperature' must be a finite number, got Infinity"),
    ("temperature", 2.5, "'temperature' must be between 0 and 2, got 2.5"),
    ("temperature", True, "'temperature' must be a number, got true"),
    ("top_p", 0, "'top_p' must be in (0, 1], got 0"),
    ("top_p", "0.9", "'top_p' must be a number, got \"0.9\""),
    ("seed", 2**32, "'seed' must be between 0 and 4294967295"),
    ("seed", 1.0, "'seed' must be an integer, got 1.0"),
    ("max_tokens", 2.5, "'max_tokens' must be an integer, got 2.5"),
    ("max_tokens", 0, "'max_tokens' must be a positive integer, got 0"),
    ("max_tokens", math.inf, "'max_tokens' must be an integer, got Infinity"),
]


@pytest.mark.parametrize("name, value, words", BAD_SETTINGS)
def test_every_door_refuses_a_bad_setting_with_the_same_words(name, value, words):
    with pytest.raises(InvalidRequest) as direct:
        SamplingParams(**{name: value})
    assert str(direct.value).startswith(words) and direct.value.param == name

    with pytest.raises(RequestError) as http:
        parse_chat_request({"messages": HI, name: value}, max_tokens_limit=64, default_max_tokens=16)
    assert str(http.value).startswith(words) and http.value.param == name and http.value.status == 400

    python_name = {"max_tokens": "max_new_tokens"}.get(name, name)
    kwargs = {"max_new_tokens": 8, python_name: value}
    with pytest.raises(ValueError) as python_api:
        check_generation(**kwargs)
    assert str(python_api.value).startswith(words.replace("'max_tokens'", "'max_new_tokens'"))


def test_good_settings_pass_and_defaults_come_from_the_server():
    req = parse_chat_completion({"messages": HI, "temperature": 1, "seed": 7, "model": "ignored", "user": "x"})
    params = req.sampling(default_max_tokens=16, max_tokens_limit=64)
    assert params == SamplingParams(max_tokens=16, temperature=1.0, seed=7)
    assert isinstance(params.temperature, float)
    newer = parse_chat_completion({"messages": HI, "max_completion_tokens": 5, "max_tokens": 50})
    assert newer.sampling(default_max_tokens=16, max_tokens_limit=64).max_tokens == 5
    with pytest.raises(InvalidRequest, match="'max_tokens' must be between 1 and 64 on this server, got 65"):
        parse_chat_completion({"messages": HI, "max_tokens": 65}).sampling(default_max_tokens=16, max_tokens_limit=64)
    with pytest.raises(InvalidRequest, match="must not exceed"):
        parse_chat_completion({"messages": HI, "max_tokens": 4, "min_tokens": 5}).sampling(
            default_max_tokens=16, max_tokens_limit=64)


def test_settings_are_frozen_and_unknown_ones_named():
    params = SamplingParams(max_tokens=4)
    with pytest.raises(Exception, match="frozen"):
        params.max_tokens = 5  # type: ignore[misc]
    with pytest.raises(InvalidRequest, match="unknown setting 'temprature'"):
        SamplingParams(temprature=0.5)


@pytest.mark.parametrize("messages, words", [
    ([], "'messages' must be a non-empty list"),
    ("hello", "'messages' must be a non-empty list"),
    (["hello"], "messages[0] must be an object with 'role' and 'content'"),
    ([{"role": "wizard", "content": "hi"}], "messages[0].role needs a 'role' of system, user, assistant"),
    ([{"role": "user", "content": "  "}], "messages[0].content must be a non-empty string"),
    ([{"role": "user", "content": 5}], "messages[0].content must be a non-empty string"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "last message must come from"),
    ([{"role": "user", "content": "hi"}] * 65, "at most 64 messages"),
])
def test_bad_conversations_are_named_precisely(messages, words):
    with pytest.raises(InvalidRequest) as exc:
        check_messages(messages)
    assert words in str(exc.value)
    with pytest.raises(RequestError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_chat_request({"messages": messages}, max_tokens_limit=64, default_max_tokens=16)


def test_a_good_conversation_keeps_only_role_and_content():
    turns = [{"role": "system", "content": "Be brief.", "name": "rules"}, {"role": "user", "content": "你好"}]
    assert check_messages(turns) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}]
