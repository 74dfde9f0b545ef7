"""Every public name of python-slimta 5.0.5 (the 4.0 API and the modules 5.x
added) exists here with compatible parameters.

The reference, ``python_slimta_api.json``, holds only names and parameter
lists, produced by ``dump_api.py`` from an installed python-slimta.  A
parameter list matches when python-slimta's parameters are a prefix of ours
and everything we add has a default (or is keyword-only).  Deliberate
differences are listed in ``EXCLUDED`` with the reason; the CHANGELOG says
the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.compat.dump_api import describe

REFERENCE = json.loads((Path(__file__).parent / "python_slimta_api.json").read_text())
OURS = describe()

EXCLUDED: dict[str, str] = {
    "slimta.cloudstorage": "AWS/Rackspace cloud storage is not provided",
    "slimta.cloudstorage.aws": "AWS/Rackspace cloud storage is not provided",
    "slimta.smtp.datareader": "internal I/O helper; DATA framing lives in slimta.smtp.protocol",
    "slimta.smtp.datasender": "internal I/O helper; dot-stuffing lives in slimta.smtp._clientcore",
    "slimta.smtp.auth.AuthSession": "pysasl glue; replaced by slimta.smtp.auth mechanisms",
    "slimta.smtp.auth.ServerAuthError": "pysasl glue; replaced by slimta.smtp.auth mechanisms",
    "slimta.smtp.io.IO": "internal I/O layer: the protocol core owns parsing and buffering",
    "slimta.smtp.reply.Reply.send": "Reply is a value; the server and client write replies",
    "slimta.smtp.reply.Reply.recv": "Reply is a value; the client core parses replies",
    "slimta.diskstorage": "python-slimta's module needs pyaio, which cannot be installed",
}


def _excluded(*parts: str) -> bool:
    name = ".".join(parts)
    return any(name == key or name.startswith(key + ".") for key in EXCLUDED)


def _params(signature: str) -> list[str]:
    inner = signature.strip()[1:-1]
    return [p.strip() for p in inner.split(", ")] if inner else []


def _split(param: str) -> tuple[str, str | None]:
    name, _, default = param.partition("=")
    return name, (default if "=" in param else None)


def _compatible(theirs: str, ours: str) -> bool:
    their_params, our_params = _params(theirs), _params(ours)
    if their_params[-2:] == ["*args", "**kwargs"]:
        return True  # a C-level or catch-all signature: nothing to compare
    # Positional parameters: theirs must be a prefix of ours, by name; a
    # default they have we must keep (an opaque object default may differ in
    # type, e.g. bytes then, str now); a default we add is harmless.
    their_pos = [p for p in their_params if not p.startswith(("kw:", "*"))]
    our_pos = [p for p in our_params if not p.startswith(("kw:", "*"))]
    if len(our_pos) < len(their_pos):
        return False
    for mine, other in zip(our_pos, their_pos, strict=False):
        (my_name, my_default), (their_name, their_default) = _split(mine), _split(other)
        if my_name != their_name:
            return False
        if their_default is not None and their_default != "<obj>" and my_default != their_default:
            return False
    if any(_split(p)[1] is None for p in our_pos[len(their_pos) :]):
        return False  # a new required positional parameter breaks callers
    # Their keyword-only and variadic parameters must still be accepted.
    ours_named = {_split(p)[0] for p in our_params}
    return all(_split(p)[0] in ours_named for p in their_params if p.startswith(("kw:", "*")))


CASES = [
    (module, name, description)
    for module, names in sorted(REFERENCE.items())
    for name, description in sorted(names.items())
    if name != "__error__" and not _excluded(module) and not _excluded(module, name)
]


def test_reference_is_substantial() -> None:
    assert len(CASES) > 90


@pytest.mark.parametrize(("module", "name", "theirs"), CASES, ids=[f"{m}.{n}" for m, n, _ in CASES])
def test_name_exists_with_compatible_parameters(module: str, name: str, theirs: dict) -> None:
    assert module in OURS, f"module {module} is missing"
    ours = OURS[module].get(name)
    assert ours is not None, f"{module}.{name} is not exported"
    for key in ("init", "sig"):
        if key in theirs:
            assert key in ours, f"{module}.{name} is not the same kind of object"
            assert _compatible(theirs[key], ours[key]), f"{module}.{name}{theirs[key]} vs ours {ours[key]}"
    for method, signature in theirs.get("methods", {}).items():
        if _excluded(module, name, method):
            continue
        assert method in ours.get("methods", {}) or method in _inherited(module, name), f"{module}.{name}.{method} missing"
        if method in ours.get("methods", {}):
            assert _compatible(signature, ours["methods"][method]), (
                f"{module}.{name}.{method}{signature} vs ours {ours['methods'][method]}"
            )


def _inherited(module: str, name: str) -> set[str]:
    import importlib

    cls = getattr(importlib.import_module(module), name)
    return {attr for attr in dir(cls) if not attr.startswith("_")}
