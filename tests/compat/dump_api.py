"""Describe the public API of an installed ``slimta`` (names and parameters only).

Run with python-slimta's interpreter to refresh the reference file::

    bench/peers/python-slimta/bin/python tests/compat/dump_api.py > tests/compat/python_slimta_api.json

Only facts are recorded: module paths, exported names, parameter names and
kinds, and simple defaults.  No code or text is copied.  The compat test
imports :func:`describe` to describe our own package the same way.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import sys
from typing import Any

_SIMPLE = (int, str, float, bool, type(None), tuple)


def plain_signature(func: Any) -> str:
    """``(a, b=None, *args, kw:c=1, **kw)``: parameters without annotations."""
    parts = []
    for param in inspect.signature(func).parameters.values():
        text = {param.VAR_POSITIONAL: "*", param.VAR_KEYWORD: "**"}.get(param.kind, "") + param.name
        if param.kind is param.KEYWORD_ONLY:
            text = "kw:" + text
        if param.default is not inspect.Parameter.empty:
            text += "=" + (repr(param.default) if isinstance(param.default, _SIMPLE) else "<obj>")
        parts.append(text)
    return "(" + ", ".join(parts) + ")"


def describe_object(obj: Any) -> dict[str, Any]:
    if inspect.isclass(obj):
        methods = {}
        for name, member in vars(obj).items():
            if name.startswith("_") or not callable(member):
                continue
            try:
                methods[name] = plain_signature(member)
            except (TypeError, ValueError):
                continue
        return {"init": plain_signature(obj.__init__), "methods": methods}
    if callable(obj):
        return {"sig": plain_signature(obj)}
    return {"value": type(obj).__name__}


def describe(package: str = "slimta") -> dict[str, dict[str, Any]]:
    """Every public module of ``package`` -> {exported name -> description}."""
    root = importlib.import_module(package)
    names = sorted({info.name for info in pkgutil.walk_packages(root.__path__, package + ".")})
    out: dict[str, dict[str, Any]] = {}
    for modname in [package, *names]:
        if any(part.startswith("_") for part in modname.split(".")[1:]):
            continue
        try:
            module = importlib.import_module(modname)
        except Exception as exc:  # a peer module may need an absent extra
            out[modname] = {"__error__": {"value": repr(exc)}}
            continue
        entry: dict[str, Any] = {}
        for attr in getattr(module, "__all__", ()):
            if hasattr(module, attr):
                try:
                    entry[attr] = describe_object(getattr(module, attr))
                except (TypeError, ValueError):
                    entry[attr] = {"value": "?"}
        out[modname] = entry
    return out


if __name__ == "__main__":
    json.dump(describe(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
