"""Surrogate credentials: what the agent sees instead of a masked secret.

Same length, same known prefix (`sk-ant-`, `ghp_`, `github_pat_`, `xoxb-`, ...), and
each character drawn from the class of the one it replaces (lower, upper, digit;
anything else kept), so tools that check a token's shape accept it. Fresh for every
task: a surrogate that leaks is worth nothing once the task ends.
"""

from __future__ import annotations

import secrets
import string

PREFIXES = sorted((
    "sk-ant-api03-", "sk-ant-oat01-", "sk-ant-", "sk-proj-", "sk-", "github_pat_", "ghp_",
    "gho_", "ghu_", "ghs_", "ghr_", "glpat-", "xoxb-", "xoxp-", "xoxa-", "xapp-", "AKIA",
    "ASIA", "hf_", "npm_", "pypi-",
), key=len, reverse=True)
CLASSES = (string.ascii_lowercase, string.ascii_uppercase, string.digits)


def surrogate(value: str) -> str:
    prefix = next((p for p in PREFIXES if value.startswith(p)), "")
    rest = value[len(prefix):]
    if not any(c in cls for cls in CLASSES for c in rest):
        raise ValueError("a masked secret needs letters or digits after its prefix")
    while True:
        made = prefix + "".join(_like(c) for c in rest)
        if made != value:
            return made


def _like(c: str) -> str:
    for cls in CLASSES:
        if c in cls:
            return secrets.choice(cls)
    return c
