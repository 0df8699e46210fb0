"""Bridges over transformers API changes, so one labkit runs on every transformers the lock holds.

The lock pins transformers per Python (5.20 is the newest release for Python 3.10, 5.24 for
3.11 and 3.12), and the drift canary runs the newest 5.x. transformers 5.24 renamed the KV-cache
argument of every model's ``forward`` from ``past_key_values`` to ``cache`` (the old name warns on
every call until 5.40, then goes away). labkit passes a cache by whichever name the model's
``forward`` declares, decided once per model rather than by version number, so backports and
later renames need no new branch here.

Example:
    >>> class Old:
    ...     def forward(self, input_ids, past_key_values=None): ...
    >>> cache_argument(Old())
    'past_key_values'
"""

from __future__ import annotations

import inspect


def cache_argument(model) -> str:
    """The name under which ``model.forward`` takes its KV cache: ``cache`` (transformers >= 5.24)
    or ``past_key_values`` (earlier)."""
    parameters = inspect.signature(model.forward).parameters
    if "cache" in parameters:
        return "cache"
    if "past_key_values" in parameters:
        return "past_key_values"
    raise TypeError(f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`: "
                    "not a transformers decoder labkit knows how to drive")
