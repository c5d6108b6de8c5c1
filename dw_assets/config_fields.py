"""Dagster run config built from the domain dataclasses: each default lives in one place.

An asset's ``Config`` class is not written field by field: :func:`config_fields` builds it from the
dataclass that the domain code takes (``Item2VecConfig``, ``RankerConfig``, ...), with each field's
type and default, so a field added to the dataclass is in the asset's run config (and the
launchpad) without another edit, and a default changed there is changed here. ``to_domain`` builds
the dataclass back from the run config. It imports no asset module (only ``dagster.Config`` and pydantic).

    class Item2VecAssetConfig(config_fields(Item2VecConfig)):
        def settings(self) -> Item2VecConfig:
            return self.to_domain(Item2VecConfig)

Types as Dagster's config accepts them: int, float, str, bool and ``X | None`` as they are; a tuple
(``tuple[int, ...]``, ``tuple[int, int]``) becomes a list in the run config and a tuple again in
the dataclass. A field of any other type (a union such as ``int | tuple[int, int]``, a nested
dataclass) raises when the class is built, naming the field: the asset names it in ``exclude``
(and sets it itself, or exposes it under another name as a field of its own).

What an asset config may add, each declared where the class is built: ``exclude`` (fields the asset
computes or another asset owns) and fields of its own written on the subclass (an alias kept for run
configs that already pass it, or a setting of the asset itself such as ``vector_files``). It has no
defaults of its own for the dataclass's fields: a default the asset runs with is the dataclass's, with
the measurement that chose it beside it there (``test_config_fields`` fails on a field redeclared with
another default). A run-config field for a domain function's keyword, with no dataclass behind it,
takes its default from the function: :func:`parameter_default`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from dagster import Config
from pydantic import Field, create_model

T = TypeVar("T")
SCALARS = (int, float, str, bool)


class DomainConfig(Config):
    """Base of the classes :func:`config_fields` builds; ``to_domain`` builds a dataclass from the fields."""

    # Filled by config_fields (ClassVars: not run config).
    __domains__: typing.ClassVar[tuple[type, ...]] = ()
    __prefixes__: typing.ClassVar[Mapping[type, str]] = {}
    __excluded__: typing.ClassVar[frozenset[str]] = frozenset()
    __included__: typing.ClassVar[frozenset[str] | None] = None

    @classmethod
    def field_name(cls, domain: type, name: str) -> str:
        """The run-config name of ``domain``'s field ``name`` (its prefix added)."""
        return cls.__prefixes__.get(domain, "") + name

    def to_domain(self, domain: type[T], **values: Any) -> T:
        """``domain`` (one of the dataclasses this class was built from) with the run config's values of
        its fields; ``values`` (by the dataclass's names) sets the others (excluded or renamed fields)
        or overrides one."""
        hints = typing.get_type_hints(domain)
        kwargs = {}
        for f in dataclasses.fields(domain):
            key = self.field_name(domain, f.name)
            if f.name in values or key not in type(self).model_fields or key in self.__excluded__:
                continue
            value = getattr(self, key)
            kwargs[f.name] = tuple(value) if isinstance(value, list) and _is_tuple(hints[f.name]) else value
        return domain(**{**kwargs, **values})


def _is_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(hint))


def config_type(hint: Any, where: str) -> Any:
    """The run-config type of a dataclass field's type (``where`` names the field in the error)."""
    if hint in SCALARS:
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return config_type(rest[0], where) | None
    if origin is tuple:
        items = {a for a in args if a is not Ellipsis}
        if len(items) == 1 and (item := items.pop()) in SCALARS:
            return list[item]
    raise TypeError(f"{where}: the run config cannot hold {hint!r}; exclude it (the asset sets it) or give the "
                    "asset config a field of its own for it")


def field_comments(domain: type) -> dict[str, str]:
    """{field: the comment that explains it in ``domain``'s source}: the comment lines just above the
    field and the one after it on its line (the launchpad shows it). {} when the source is unavailable."""
    try:
        source = textwrap.dedent(inspect.getsource(domain))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT
                and not tok.string.lstrip("# ").startswith(("fmt:", "noqa", "type:"))}
    whole_line = {n for n in comments if lines[n - 1].lstrip().startswith("#")}
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, n = [], node.lineno - 1
        while n in whole_line:
            above.insert(0, comments[n])
            n -= 1
        trailing = [comments[node.end_lineno]] if node.end_lineno in comments and node.end_lineno not in whole_line else []
        text = " ".join(c for c in above + trailing if c)
        if text:
            out[node.target.id] = text
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ...  # required in the run config too
    return list(value) if isinstance(value, tuple) else value


def config_fields(
    *domains: type,
    exclude: Iterable[str] = (),
    include: Iterable[str] | None = None,
    descriptions: Mapping[str, str] | None = None,
    prefix: Mapping[type, str] | None = None,
) -> type[DomainConfig]:
    """A ``Config`` base class with the fields of the dataclasses ``domains`` (in their order), their
    types as run config takes them and their defaults.

    ``exclude``: fields left out; ``include``: only these (an asset that takes one setting of a larger
    dataclass, e.g. ``cold_neighbours`` of ``TwoTowerConfig``); ``descriptions``: launchpad help per field (default: the field's comment in the dataclass); ``prefix``: {dataclass: prefix} of its fields' run-config
    names (``{EvaluationSample: "sample_"}``: ``users`` is ``sample_users``). Names are run-config names.
    A name in two dataclasses, or an unknown name in ``exclude`` / ``include`` / ``descriptions``, raises."""
    exclude, prefix = frozenset(exclude), dict(prefix or {})
    wanted = None if include is None else frozenset(include)
    fields: dict[str, tuple[Any, Any]] = {}
    known: set[str] = set()
    for domain in domains:
        if not dataclasses.is_dataclass(domain):
            raise TypeError(f"{domain!r} is not a dataclass")
        hints, explained = typing.get_type_hints(domain), field_comments(domain)
        for f in dataclasses.fields(domain):
            key = prefix.get(domain, "") + f.name
            if key in known:
                raise TypeError(f"{key} is a field of more than one of {[d.__name__ for d in domains]}")
            known.add(key)
            if key in exclude or (wanted is not None and key not in wanted):
                continue
            default = _default(f)
            description = (descriptions or {}).get(key) or explained.get(f.name)
            fields[key] = (config_type(hints[f.name], f"{domain.__name__}.{f.name}"),
                           Field(default=default, description=description) if description else default)
    unknown = (exclude | (wanted or set()) | set(descriptions or {})) - known
    if unknown:
        raise TypeError(f"not fields of {[d.__name__ for d in domains]}: {sorted(unknown)}")
    name = "".join(d.__name__ for d in domains) + "Fields"
    base = create_model(name, __base__=DomainConfig, __module__=__name__, **fields)
    base.__domains__, base.__prefixes__ = tuple(domains), types.MappingProxyType(prefix)
    base.__excluded__, base.__included__ = exclude, wanted
    return base


def domain_defaults(config_class: type[DomainConfig]) -> dict[str, Any]:
    """{run-config name: default} of every dataclass field ``config_class`` takes (its dataclasses'
    fields, less ``exclude``, within ``include``), as the dataclasses define them (tuples as lists):
    what a test compares the class's fields and defaults with."""
    out = {}
    for domain in config_class.__domains__:
        for f in dataclasses.fields(domain):
            key = config_class.field_name(domain, f.name)
            included = config_class.__included__ is None or key in config_class.__included__
            if key not in config_class.__excluded__ and included:
                out[key] = _default(f)
    return out


def parameter_default(function: Any, name: str) -> Any:
    """The default of ``function``'s keyword ``name``: a run-config field for a domain function's
    keyword (no dataclass behind it) takes its default from the function, not a copy."""
    import inspect

    default = inspect.signature(function).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{function.__qualname__}({name}=...) has no default")
    return default


def joined_config(cls: type[DomainConfig]) -> type[DomainConfig]:
    """Class decorator of a ``DomainConfig`` subclassing several: ``to_domain`` (and ``domain_defaults``) know
    every base's dataclasses, prefixes and exclusions. Their run-config names must not overlap."""
    bases = [b for b in cls.__bases__ if issubclass(b, DomainConfig)]
    seen: set[str] = set()
    shared = set()
    for base in bases:
        shared |= seen & set(base.model_fields)
        seen |= set(base.model_fields)
    if shared:
        raise TypeError(f"{cls.__name__}: {sorted(shared)} are fields of more than one base")
    cls.__domains__ = tuple(d for b in bases for d in b.__domains__)
    cls.__prefixes__ = types.MappingProxyType({d: p for b in bases for d, p in b.__prefixes__.items()})
    cls.__excluded__ = frozenset().union(*(b.__excluded__ for b in bases))
    return cls
