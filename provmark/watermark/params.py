"""Scheme parameters as declared by the config dataclasses: the single source the CLI's options and
the API's key-parameter schema are derived from.

A parameter is a dataclass field of a registered scheme's config: its type comes from the field's
annotation, its default from the field, its help from the docstring under the field (read from
the source, as Sphinx reads attribute docstrings), and its validation from the config's
``__post_init__``, which every front end runs by building the config. A parameter shared by
several schemes (``context_width``, ``gamma``, ...) is one entry with each scheme's default and
doc.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
import typing
from dataclasses import MISSING, dataclass, fields

from provmark.watermark.schemes import SCHEMES

__all__ = ["Param", "attribute_docs", "scheme_params"]


@functools.cache
def _own_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (a class made at run time): no docs
        return {}
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstring under each annotated attribute of ``cls`` and its bases (the nearest wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_own_docs(klass))
    return docs


def _sentences(doc: str, count: int) -> str:
    """The first ``count`` sentences of ``doc`` on one line."""
    text = " ".join(doc.replace("``", "").split())
    end = -1
    for _ in range(count):
        end = text.find(". ", end + 1)
        if end < 0:
            return text
    return text[: end + 1]


@dataclass(frozen=True)
class Param:
    """One scheme parameter across the schemes that have it."""

    name: str
    """The config field's name (``context_width``); the CLI option is ``--context-width``."""
    type: type
    """``int``, ``float`` or ``str``."""
    choices: tuple | None
    """The allowed values of a ``Literal`` field, else None."""
    schemes: tuple[tuple[str, object, str], ...]
    """(scheme, default, doc) of every scheme whose config has the field, in registry order."""

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def help(self) -> str:
        """Each scheme's doc and default, schemes with the same doc and default grouped."""
        groups: dict[tuple[str, str], list[str]] = {}
        sentences = 2 if len(self.schemes) == 1 else 1
        for scheme, default, doc in self.schemes:
            groups.setdefault((_sentences(doc, sentences).rstrip("."), repr(default)), []).append(scheme)
        return "; ".join(f"{', '.join(names)}: {doc} (default {default})".replace(":  (", ": (")
                         for (doc, default), names in groups.items())


def _param_type(annotation) -> tuple[type, tuple | None]:
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices
    if annotation in (int, float, str):
        return annotation, None
    raise TypeError(f"scheme parameters are int, float, str or Literal, got {annotation!r}")


def scheme_params() -> dict[str, Param]:
    """Every parameter of every registered scheme, by name, in first-declared order."""
    found: dict[str, dict] = {}
    for scheme in SCHEMES.values():
        config = scheme.config
        hints = typing.get_type_hints(config)
        docs = attribute_docs(config)
        for f in fields(config):
            kind, choices = _param_type(hints[f.name])
            entry = found.setdefault(f.name, {"type": kind, "choices": choices, "schemes": []})
            if (entry["type"], entry["choices"]) != (kind, choices):
                raise TypeError(f"parameter {f.name} has two types: {entry['type']} and {kind} ({scheme.name})")
            default = None if f.default is MISSING else f.default
            entry["schemes"].append((scheme.name, default, docs.get(f.name, "")))
    return {name: Param(name, e["type"], e["choices"], tuple(e["schemes"])) for name, e in found.items()}
