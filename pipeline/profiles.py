"""Profiles: switch params.yaml between the CPU default and the paper settings per dataset in one command.

    python -m pipeline.profiles list
    python -m pipeline.profiles show market1501
    python -m pipeline.profiles apply market1501 --root /data/Market-1501-v15.09.15
    python -m pipeline.profiles apply cpu-default

A profile is a partial params.yaml under profiles/ (only the keys it sets). Applying one edits params.yaml
in place, line by line: only the values of the keys the profile sets change, while every comment, the key
order and blank lines stay, because params.yaml is also the documentation of each setting and DVC diffs it.
The edited text is parsed and validated before it is written, and written atomically, so a bad profile
never leaves a half-written params.yaml.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.io import write_text
from pipeline.params import Params, ParamsError, params_from_dict

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
DEFAULT_PARAMS = Path("params.yaml")

# `key: rest` at some indentation; the rest (value and comment) is split off by `_split_value`.
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*)[ \t]*:(?:[ \t]+|$)(?P<rest>.*)$")
# A comment starts at a `#` that begins the rest of the line or follows whitespace (YAML's rule).
_COMMENT = re.compile(r"(?:^|[ \t])#")
# Values a line-level edit cannot replace safely: block scalars, flow collections, anchors, aliases, tags.
_NOT_EDITABLE = ("|", ">", "[", "{", "&", "*", "!")


class ProfileError(ValueError):
    """A profile cannot be applied: unknown name, a key params.yaml does not hold, a bad value or path."""


@dataclass(frozen=True)
class _Leaf:
    """Where one `key: value` line of params.yaml keeps its value, so only that span is rewritten."""

    line: int  # index into the file's lines
    start: int  # column where the value starts
    raw: str  # the value as written (without the whitespace and comment after it)
    editable: bool


@dataclass(frozen=True)
class Setting:
    """One key a profile sets: its current typed value in params.yaml and the profile's."""

    key: str
    current: Any
    value: Any

    @property
    def changes(self) -> bool:
        return self.current != self.value


def available_profiles(profiles_dir: str | Path = PROFILES_DIR) -> list[str]:
    """The profile names (file stems of profiles/*.yaml), sorted, so errors can list what exists."""
    return sorted(path.stem for path in Path(profiles_dir).glob("*.yaml"))


def profile_path(name: str, profiles_dir: str | Path = PROFILES_DIR) -> Path:
    """The file of profile `name`; an unknown name is an error that lists the available ones."""
    names = available_profiles(profiles_dir)
    if name not in names:
        listed = ", ".join(names) if names else f"none (no *.yaml in {profiles_dir})"
        raise ProfileError(f"unknown profile {name!r}; available: {listed}")
    return Path(profiles_dir) / f"{name}.yaml"


def describe(name: str, profiles_dir: str | Path = PROFILES_DIR) -> str:
    """The first comment line of a profile: what it is for, shown by `list`."""
    for line in profile_path(name, profiles_dir).read_text().splitlines():
        if line.strip().startswith("#"):
            return line.strip().lstrip("#").strip()
    return ""


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _nest(flat: dict[str, Any]) -> dict:
    nested: dict = {}
    for dotted, value in flat.items():
        *parents, last = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def _typed(params: Params, dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _check(data: dict, where: str) -> Params:
    """Build and check Params from a mapping: the loader's types plus DSFNet's own range checks."""
    try:
        params = params_from_dict(data)
        params.dsfnet.check()
    except (ParamsError, ValueError) as error:
        raise ProfileError(f"{where}: {error}") from None
    return params


def load_profile(name: str, profiles_dir: str | Path = PROFILES_DIR) -> dict[str, Any]:
    """The dotted keys a profile sets and their YAML values, checked against the params schema.

    A typo (`train.epoch`) or a wrong type is an error naming the file and the dotted key, before
    params.yaml is touched.
    """
    path = profile_path(name, profiles_dir)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ProfileError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict) or not data:
        raise ProfileError(f"{path}: expected a non-empty mapping of params.yaml sections")
    _check(data, str(path))
    return _flatten(data)


def _split_value(rest: str) -> tuple[str, str]:
    """Split `value   # comment` into the value and what follows it (whitespace and comment, kept as is)."""
    end = len(rest)
    if rest[:1] in ("'", '"'):
        quote, i = rest[0], 1
        while i < len(rest):
            if rest[i] == quote:
                if quote == "'" and rest[i + 1 : i + 2] == "'":  # '' escapes a quote in single quotes
                    i += 2
                    continue
                break
            i += 2 if quote == '"' and rest[i] == "\\" else 1
        search_from = i + 1
    else:
        search_from = 0
    match = _COMMENT.search(rest, search_from)
    if match:
        end = match.start() if rest[match.start()] == "#" else match.start() + 1
    value = rest[:end].rstrip()
    return value, rest[len(value) :]


def _scan(lines: list[str]) -> tuple[dict[str, _Leaf], set[str]]:
    """Map each dotted key of a block-style YAML file to its value's line and column; also the sections."""
    leaves: dict[str, _Leaf] = {}
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = _KEY_LINE.match(line.rstrip("\r\n"))
        if not match:
            continue  # blank, comment, or a line this editor does not touch (list items, continuations)
        indent, key, rest = len(match["indent"]), match["key"], match["rest"]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([*(k for _, k in stack), key])
        value, _ = _split_value(rest)
        leaves[dotted] = _Leaf(number, match.start("rest"), value, not value.startswith(_NOT_EDITABLE))
        if not value:
            stack.append((indent, key))
    # `key:` with nothing after it is a section when deeper keys follow, else a leaf holding null
    sections = {key.rpartition(".")[0] for key in leaves} - {""}
    return {key: leaf for key, leaf in leaves.items() if key not in sections}, sections


def _scalar(value: Any) -> str:
    """A YAML scalar that reads back as `value` (quoted only when it must be)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    text = text.removesuffix("\n").removesuffix("\n...").removesuffix("...")
    return text.strip()


def _profile_raw(path: Path) -> dict[str, str]:
    """The values as the profile writes them (`3.5e-4`, not `0.00035`), so edits read like the profile."""
    leaves, _ = _scan(path.read_text().splitlines())
    return {key: leaf.raw for key, leaf in leaves.items()}


def _relative_root(root: str | Path, params_path: Path) -> str:
    """--root as written into params.yaml: relative to the project when inside it, else absolute."""
    path = Path(root).expanduser()
    if not path.exists():
        raise ProfileError(f"--root {root}: no such file or directory")
    absolute = Path(os.path.abspath(path))
    project = Path(os.path.abspath(params_path.parent))
    try:
        return absolute.relative_to(project).as_posix()
    except ValueError:
        return str(absolute)


def _read_params(params_path: Path) -> tuple[str, dict, Params]:
    if not params_path.is_file():
        raise ProfileError(f"{params_path} does not exist (run from the project root or pass --params)")
    text = params_path.read_bytes().decode("utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ProfileError(f"{params_path} is not valid YAML: {error}") from None
    return text, data, _check(data, str(params_path))


@dataclass
class _Plan:
    values: dict[str, Any]  # dotted key -> YAML value, as the profile (and --root) set it
    settings: list[Setting]
    text: str  # params.yaml as it is now
    data: dict


def _plan(name: str, params_path: Path, root: str | Path | None, profiles_dir: str | Path) -> _Plan:
    values = load_profile(name, profiles_dir)
    if root is not None:
        values["dataset.root"] = _relative_root(root, params_path)
    text, data, current = _read_params(params_path)
    merged = _flatten(data)
    merged.update(values)
    target = _check(_nest(merged), f"{params_path} with profile {name}")
    return _Plan(values, [Setting(key, _typed(current, key), _typed(target, key)) for key in values], text, data)


def plan_profile(name: str, params_path: str | Path = DEFAULT_PARAMS, root: str | Path | None = None,
                 profiles_dir: str | Path = PROFILES_DIR) -> list[Setting]:
    """Every key the profile sets (plus dataset.root for --root), with its current and its new typed value."""
    return _plan(name, Path(params_path), root, profiles_dir).settings


def render_profile(name: str, params_path: str | Path = DEFAULT_PARAMS, root: str | Path | None = None,
                   profiles_dir: str | Path = PROFILES_DIR) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """The new params.yaml text and what changes, without writing: only changed values' spans are replaced."""
    plan = _plan(name, Path(params_path), root, profiles_dir)
    raw = _profile_raw(profile_path(name, profiles_dir))
    if root is not None:
        raw.pop("dataset.root", None)
    return _render(plan, Path(params_path), raw, str(profile_path(name, profiles_dir)),
                   "--root" if root is not None else None)


def _render(plan: _Plan, params_path: Path, raw: dict[str, str], source: str,
            root_source: str | None = None) -> tuple[str, dict[str, tuple[Any, Any]]]:
    lines = plan.text.splitlines(keepends=True)
    leaves, sections = _scan(lines)
    changes: dict[str, tuple[Any, Any]] = {}
    for setting in plan.settings:
        key, value = setting.key, plan.values[setting.key]
        leaf = leaves.get(key)
        if leaf is None:
            what = "is a section" if key in sections else "does not hold it (add the key there first)"
            origin = root_source if (key == "dataset.root" and root_source) else source
            raise ProfileError(f"{origin} sets {key}, but {params_path} {what}")
        if not setting.changes:
            continue
        if not leaf.editable:
            raise ProfileError(f"{params_path}: {key} is not a plain `key: value` line ({leaf.raw!r}); edit it by hand")
        new_raw = raw.get(key)
        if new_raw is None or yaml.safe_load(new_raw) != value:
            new_raw = _scalar(value)
        line = lines[leaf.line]
        body = line.rstrip("\r\n")
        head, (_, after) = body[: leaf.start], _split_value(body[leaf.start :])
        if head.endswith(":"):  # `key:` with an empty (null) value
            head += " "
        if after.strip():  # keep an inline comment in its column where the new value leaves room
            gap = len(after) - len(after.lstrip(" \t"))
            after = " " * max(1, gap - (len(new_raw) - len(leaf.raw))) + after.lstrip(" \t")
        lines[leaf.line] = head + new_raw + after + line[len(body) :]
        changes[key] = (setting.current, setting.value)
    new_text = "".join(lines)
    _verify(new_text, plan.data, plan.values, changes, params_path)
    return new_text, changes


def set_params(values: dict[str, Any], params_path: str | Path = DEFAULT_PARAMS,
               source: str = "overrides") -> dict[str, tuple[Any, Any]]:
    """Set dotted keys in params.yaml in place (like `dvc exp run -S key=value`), comments kept; validated
    before an atomic write. Returns {dotted key: (old, new)} for each value that changed."""
    params_path = Path(params_path)
    text, data, current = _read_params(params_path)
    merged = _flatten(data)
    merged.update(values)
    target = _check(_nest(merged), f"{params_path} with {source}")
    plan = _Plan(dict(values), [Setting(k, _typed(current, k), _typed(target, k)) for k in values], text, data)
    new_text, changes = _render(plan, params_path, {}, source)
    if changes:
        write_text(params_path, new_text)
    return changes


def _verify(new_text: str, old_data: dict, values: dict[str, Any], changes: dict, params_path: Path) -> None:
    """Parse the edited text: the profile's keys hold its values and no other key changed."""
    try:
        new_data = yaml.safe_load(new_text) or {}
    except yaml.YAMLError as error:  # pragma: no cover - a line edit that breaks YAML is a bug here
        raise ProfileError(f"editing {params_path} would make it invalid YAML: {error}") from None
    new_flat, old_flat = _flatten(new_data), _flatten(old_data)
    for key in set(new_flat) | set(old_flat):
        expected = values[key] if key in changes else old_flat.get(key)
        if new_flat.get(key) != expected:  # pragma: no cover - guards the line editor
            raise ProfileError(f"editing {params_path} would set {key} to {new_flat.get(key)!r}, "
                               f"not {expected!r}; nothing written")
    _check(new_data, str(params_path))


def apply_profile(name: str, params_path: str | Path = DEFAULT_PARAMS, root: str | Path | None = None,
                  profiles_dir: str | Path = PROFILES_DIR) -> dict[str, tuple[Any, Any]]:
    """Apply a profile to params.yaml in place; returns {dotted key: (old, new)} for each value that changed.

    Comments, key order and blank lines are kept; the file is replaced atomically, and only after the
    edited text has been validated, so an error leaves params.yaml byte for byte as it was.
    """
    new_text, changes = render_profile(name, params_path, root, profiles_dir)
    if changes:
        write_text(params_path, new_text)
    return changes


def pretrained_warning(params_path: str | Path = DEFAULT_PARAMS) -> str | None:
    """Why a paper setting from scratch will not reach the published numbers, or None."""
    _, _, params = _read_params(Path(params_path))
    if params.model.arch == "resnet50" and params.model.pretrained is None:
        return ("WARNING: model.pretrained is null; the published numbers use ImageNet-initialised weights. "
                "Set model.pretrained to a local torchvision resnet50 state_dict file (nothing is downloaded).")
    return None


def _show(value: Any) -> str:
    return _scalar(value) if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.profiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles-dir", default=str(PROFILES_DIR), help="folder of profile files")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the profiles and what each is for")
    show = commands.add_parser("show", help="the keys a profile sets and which differ from params.yaml")
    show.add_argument("name")
    show.add_argument("--params", default=str(DEFAULT_PARAMS), help="the params file (default: params.yaml)")
    apply = commands.add_parser("apply", help="rewrite params.yaml in place with a profile's values")
    apply.add_argument("name")
    apply.add_argument("--root", help="also set dataset.root to this local dataset folder (or CSV manifest)")
    apply.add_argument("--params", default=str(DEFAULT_PARAMS), help="the params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            names = available_profiles(args.profiles_dir)
            width = max((len(n) for n in names), default=0)
            for name in names:
                print(f"{name:<{width}}  {describe(name, args.profiles_dir)}")
        elif args.command == "show":
            settings = plan_profile(args.name, args.params, profiles_dir=args.profiles_dir)
            width = max(len(f"{s.key} = {_show(s.value)}") for s in settings)
            file = profile_path(args.name, args.profiles_dir)
            print(f"{args.name} ({file}): {describe(args.name, args.profiles_dir)}")
            for s in settings:
                note = f"now {_show(s.current)} in {args.params}" if s.changes else "same"
                print(f"  {f'{s.key} = {_show(s.value)}':<{width}}  ({note})")
            changed = sum(s.changes for s in settings)
            print(f"{changed} of {len(settings)} values differ from {args.params}")
        else:
            changes = apply_profile(args.name, args.params, args.root, args.profiles_dir)
            for key, (old, new) in changes.items():
                print(f"{key}: {_show(old)} → {_show(new)}")
            print(f"applied profile {args.name} to {args.params}: {len(changes)} value(s) changed")
            warning = pretrained_warning(args.params)
            if warning:
                print(warning, file=sys.stderr)
    except ProfileError as error:
        print(f"ERROR [profiles]: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
