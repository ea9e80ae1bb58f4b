"""Each stage's options are the fields of one dataclass; its command-line flags are built from it.

A field is a flag: ``vocab_size`` is ``--vocab-size``, its type and default are the flag's, and
``option(help=...)`` gives its help. Booleans are switches, ``list[int]`` and ``list[str]``
fields take comma-separated values, ``X | None`` fields are optional, fields without a default are
required. ``option(positional=True)`` makes a positional argument, ``option(remainder=True)`` one
that takes every word after it (after a ``--``). Torch-free: the CLI builds a parser before it
imports a stage.
"""

import argparse
import dataclasses
import types
import typing


def option(default=dataclasses.MISSING, *, help="", choices=None, positional=False, remainder=False):
    """A config field with what its flag needs besides its type and default (lists are copied)."""
    metadata = {"help": help, "choices": choices, "positional": positional, "remainder": remainder}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(kw_only=True)
class Tracked:
    """Options of a stage that logs what it measured to MLflow."""

    tracking_uri: str = option("none", help="MLflow URI to log into; none: do not log")
    experiment: str = option("seqarena", help="the MLflow experiment")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _words(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def _argument(f: dataclasses.Field, hint) -> tuple[list[str], dict]:
    """The name(s) and ``add_argument`` options of one field."""
    if isinstance(hint, types.UnionType):  # int | None -> int
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    meta = f.metadata
    options = {"help": meta.get("help", "")}
    if meta.get("remainder"):
        return [f.name], options | {"nargs": argparse.REMAINDER}
    if meta.get("positional"):
        return [f.name], options | ({"nargs": "+"} if hint == list[str] else {})
    if f.default_factory is not dataclasses.MISSING:
        options["default"] = f.default_factory()
    elif f.default is dataclasses.MISSING:
        options["required"] = True
    else:
        options["default"] = f.default
    shown = options.get("default")
    if shown is not None and shown is not False and shown not in ("", []):  # 0 is shown
        shown = ",".join(map(str, shown)) if isinstance(shown, list) else shown
        options["help"] = f"{options['help']} (default: {shown})".lstrip()
    if hint is bool:
        if f.default is not False:
            raise TypeError(f"{f.name}: a switch must default to False")
        options["action"] = "store_true"
    else:
        options["type"] = {list[int]: _ints, list[str]: _words}.get(hint, hint)
        if meta.get("choices"):
            options["choices"] = meta["choices"]
    return ["--" + f.name.replace("_", "-")], options | {"dest": f.name}


def add_config_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """One argument per field of ``config_cls`` (the dataclass is the one source of truth)."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        names, options = _argument(f, hints[f.name])
        parser.add_argument(*names, **options)


def config_from_args(config_cls, args: argparse.Namespace):
    """The config that parsed arguments describe; a remainder drops the ``--`` that opens it."""
    values = {}
    for f in dataclasses.fields(config_cls):
        value = getattr(args, f.name)
        if f.metadata.get("remainder") and value[:1] == ["--"]:
            value = value[1:]
        values[f.name] = value
    return config_cls(**values)


def narrowed(cfg, config_cls):
    """The part of ``cfg`` that ``config_cls`` has fields for (a stage's job config -> its recipe)."""
    return config_cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(config_cls)})
