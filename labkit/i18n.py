"""The language labkit speaks to people in: English (``en``) or Chinese (``zh``).

What reaches an attendee from labkit's own code (exercise feedback, ``labkit doctor``'s findings
and fixes) is written in both languages next to each other, ``tr("...", "...")``, so a message and
its translation are edited together. A notebook sets the language from its ``lang`` parameter
(``notebooks/zh`` sets ``"zh"``); the CLI from ``--lang``, else ``LABKIT_LANG``, else the locale
(``LANG=zh_CN.UTF-8`` means Chinese). Printed labels of numbers and plots stay in English in both
languages, as in d2l-zh: they are the terms people search for.

Why our own few lines rather than gettext: there are a few dozen messages, each written once in two
languages by the person who writes the check; a catalogue with a compile step would separate them.

Example:
    >>> set_language("zh")
    >>> tr("correct!", "答对了！")
    '答对了！'
    >>> set_language("en")
"""

from __future__ import annotations

import os

LANGUAGES = ("en", "zh")
_chosen: str | None = None


def check_language(lang: str | None) -> str:
    """``lang`` as ``"en"`` or ``"zh"`` (``None``: from the environment); anything else is an error."""
    if lang is None:
        return language_from_environment()
    norm = str(lang).strip().lower().replace("_", "-")
    if norm in ("zh", "zh-cn", "zh-hans", "cn", "chinese", "中文"):
        return "zh"
    if norm in ("en", "en-us", "en-gb", "english"):
        return "en"
    raise ValueError(f"unknown language {lang!r}: use 'en' (English) or 'zh' (中文)")


def language_from_environment() -> str:
    """``LABKIT_LANG`` if set, else Chinese when the locale (``LC_ALL``, ``LANG``) is Chinese, else English."""
    explicit = os.environ.get("LABKIT_LANG")
    if explicit:
        return check_language(explicit)
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var, "")
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


def set_language(lang: str | None) -> None:
    """Speak ``lang`` from now on in this process (``None``: back to the environment's choice)."""
    global _chosen
    _chosen = check_language(lang) if lang is not None else None


def language() -> str:
    """The language messages are in now."""
    return _chosen or language_from_environment()


def tr(en: str, zh: str) -> str:
    """The message in the current language."""
    return zh if language() == "zh" else en
