"""Resolving ``--fn MODULE:ATTR`` for ``wellfed precompute``."""

from __future__ import annotations

from typing import Any

from wellfed.errors import TargetError

__all__ = ["resolve_fn"]


def resolve_fn(text: str) -> Any:
    """Import ``pkg.module:attr`` or ``path/to/file.py:attr`` and return the transform.

    A torch.nn.Module subclass is instantiated with no arguments; a callable (function,
    Module instance, callable object) is returned as it is.

    Raises:
        TargetError: bad syntax (WF006), module or file missing (WF001, WF007), import failed
            (WF008), attribute missing or not callable (WF411).
    """
    import torch

    from wellfed.target import _import_file, _import_module, _split_target

    module_text, attr = _split_target(text)
    if module_text.endswith(".py") or "/" in module_text:
        module = _import_file(module_text, text)
    else:
        module = _import_module(module_text, text)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TargetError(
                f"--fn not found: {text!r}: {getattr(obj, '__name__', module_text)!r} has no "
                f"attribute {part!r}. Name a function, a torch.nn.Module instance or class in "
                "that module.",
                code="WF411",
                target=text,
                value=text,
            )
        obj = getattr(obj, part)
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        try:
            obj = obj()
        except Exception as exc:
            raise TargetError(
                f"--fn cannot be built: {text!r} is a Module class whose constructor raised "
                f"{type(exc).__name__}: {exc}. Name an instance or a zero-argument class.",
                code="WF411",
                target=text,
                value=text,
            ) from exc
    if not callable(obj):
        raise TargetError(
            f"--fn not callable: {text!r} is a {type(obj).__name__}. Name a function or a "
            "torch.nn.Module that maps a batch to a batch of outputs.",
            code="WF411",
            target=text,
            value=text,
        )
    return obj
