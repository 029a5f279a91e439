"""Profiles: switch params.yaml between the CPU default and the paper settings per dataset in one command.

    python -m pipeline.profiles list
    python -m pipeline.profiles show market1501
    python -m pipeline.profiles apply market1501 --root /data/Market-1501-v15.09.15
    python -m pipeline.profiles apply cpu-default

A profile is a partial params.yaml under profiles/: only the keys it sets, possibly none. Defaults live in
one place, the dataclasses behind `pipeline.params.Params()`. Applying any profile first resets every key
that some profile under profiles/ sets, and the local paths dataset.root and model.pretrained (they
belong to one dataset / architecture), to that default, then sets the profile's own
values (and dataset.root from --root): profiles are order-independent, and `apply cpu-default` (no keys)
returns whatever a paper profile set to the default. Keys no profile sets are never touched.

params.yaml is edited in ruamel.yaml's round-trip mode, so only changed values are rewritten and every
comment, the key order and blank lines stay (params.yaml documents each setting, and DVC diffs it). The
new text is read back through the typed params loader, then written atomically: an error leaves
params.yaml byte for byte as it was.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.representer import RoundTripRepresenter

from dsfnet.atomic import write_text
from pipeline.params import Params, ParamsError, flatten, params_from_dict

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
DEFAULT_PARAMS = Path("params.yaml")
# local paths that belong to one dataset / architecture: a profile switch resets them (--root sets the first)
PATH_KEYS = ("dataset.root", "model.pretrained")
Changes = dict[str, tuple[Any, Any]]  # dotted key -> (old, new) typed value, for each value that changes


class ProfileError(ValueError):
    """A profile cannot be applied: unknown name, a key params.yaml does not hold, a bad value or path."""


@dataclass(frozen=True)
class Setting:
    """One key applying a profile sets: its current typed value in params.yaml and the one it will hold."""

    key: str
    current: Any
    value: Any

    @property
    def changes(self) -> bool:
        return self.current != self.value


class _Representer(RoundTripRepresenter):
    """Round-trip output that writes null as `null` (params.yaml's style), not as an empty value."""


_Representer.add_representer(type(None), lambda self, _: self.represent_scalar("tag:yaml.org,2002:null", "null"))


def _round_trip() -> YAML:
    rt = YAML()  # typ="rt": keeps comments, key order, blank lines and each scalar's text
    rt.Representer, rt.preserve_quotes, rt.width = _Representer, True, 4096  # never fold a long line
    return rt


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
    lines = (line.strip() for line in profile_path(name, profiles_dir).read_text().splitlines())
    return next((line.lstrip("#").strip() for line in lines if line.startswith("#")), "")


def _load(path: Path) -> tuple[str, Any]:
    """A YAML file's text and its round-trip document (YAML 1.2, as DVC and load_params read it)."""
    try:
        text = path.read_bytes().decode("utf-8")
        return text, _round_trip().load(text)
    except YAMLError as error:
        raise ProfileError(f"{path} is not valid YAML: {error}") from None


def _check(data: dict, where: str) -> Params:
    """Params from a mapping, through the typed loader (types, unknown keys, DSFNet's ranges)."""
    try:
        return params_from_dict(data)
    except ParamsError as error:
        raise ProfileError(f"{where}: {error}") from None


def load_profile(name: str, profiles_dir: str | Path = PROFILES_DIR) -> dict[str, Any]:
    """The dotted keys a profile sets and their values (round-trip scalars: `3.5e-4` stays written so).

    A typo (`train.epoch`) or a wrong type is an error naming the file and the dotted key, before
    params.yaml is touched. A profile of comments only sets nothing.
    """
    path = profile_path(name, profiles_dir)
    data = _load(path)[1]
    if not isinstance(data, dict | None):
        raise ProfileError(f"{path}: expected a mapping of params.yaml sections, got {data!r}")
    _check(data or {}, str(path))
    return flatten(data or {})


def profile_params(name: str, profiles_dir: str | Path = PROFILES_DIR) -> Params:
    """What a profile trains with: the params defaults with the profile's keys on top (for benchmarks, which
    run its settings on a dataset of their own, without touching params.yaml)."""
    flat = load_profile(name, profiles_dir)
    tree: dict = {}
    for key, value in flat.items():
        _put(tree, key, value)
    return _check(tree, str(profile_path(name, profiles_dir)))


def _relative_root(root: str | Path, params_path: Path) -> str:
    """--root as written into params.yaml: relative to the project when inside it, else absolute."""
    path = Path(os.path.abspath(Path(root).expanduser()))
    if not path.exists():
        raise ProfileError(f"--root {root}: no such file or directory")
    project = Path(os.path.abspath(params_path.parent))
    return path.relative_to(project).as_posix() if path.is_relative_to(project) else str(path)


def _read_params(params_path: Path) -> tuple[str, Any, Params]:
    """params.yaml as text, as a round-trip document and typed."""
    if not params_path.is_file():
        raise ProfileError(f"{params_path} does not exist (run from the project root or pass --params)")
    text, doc = _load(params_path)
    return text, doc, _check(doc or {}, str(params_path))


def _put(tree: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _locate(tree: Any, key: str) -> tuple[dict, str] | None:
    """The mapping holding dotted `key` and the key's last part, or None where `tree` does not hold it."""
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return (tree, last) if isinstance(tree, dict) and last in tree else None


def _edit(values: dict[str, Any], params_path: Path, where: str, origins: dict[str, str],
          required: set[str]) -> tuple[list[Setting], str, Changes]:
    """The settings, the new text and {key: (old, new)}: only changed values go into the round-trip document.

    Keys not in `required` that params.yaml does not hold are dropped: they read as the default already.
    """
    text, doc, current = _read_params(params_path)
    values = {key: value for key, value in values.items() if key in required or _locate(doc, key)}
    planned = copy.deepcopy(doc) or {}
    for key, value in values.items():
        _put(planned, key, value)
    target = _check(planned, f"{params_path} with {where}")
    for key in values:
        held = _locate(doc, key)
        if held is None or isinstance(held[0][held[1]], dict):
            what = "is a section" if held else "does not hold it (add the key there first)"
            raise ProfileError(f"{origins.get(key, where)} sets {key}, but {params_path} {what}")
    old, new = flatten(current), flatten(target)
    settings = [Setting(key, old[key], new[key]) for key in values]
    changes = {s.key: (s.current, s.value) for s in settings if s.changes}
    if not changes:
        return settings, text, changes
    for key in changes:
        _put(doc, key, values[key])  # ruamel quotes a string only where YAML would read something else
    stream = io.StringIO()
    _round_trip().dump(doc, stream)
    if _check(_round_trip().load(stream.getvalue()), str(params_path)) != target:  # pragma: no cover
        raise ProfileError(f"editing {params_path} would not read back as planned; nothing written")
    return settings, stream.getvalue(), changes


def _apply_plan(name: str, params_path: Path, root: str | Path | None,
                profiles_dir: str | Path) -> tuple[list[Setting], str, Changes]:
    """Every key any profile sets (and the paths) at its default, then the profile's own values and --root."""
    own = load_profile(name, profiles_dir)
    origins = {key: str(profile_path(other, profiles_dir))
               for other in available_profiles(profiles_dir) for key in load_profile(other, profiles_dir)}
    origins.update(dict.fromkeys(own, str(profile_path(name, profiles_dir))))
    values = {key: value for key, value in flatten(Params()).items() if key in origins or key in PATH_KEYS}
    values.update(own)
    if root is not None:
        values["dataset.root"], origins["dataset.root"] = _relative_root(root, params_path), "--root"
    required = set(own) | ({"dataset.root"} if root is not None else set())
    return _edit(values, params_path, f"profile {name}", origins, required)


def plan_profile(name: str, params_path: str | Path = DEFAULT_PARAMS, root: str | Path | None = None,
                 profiles_dir: str | Path = PROFILES_DIR) -> list[Setting]:
    """Every key applying the profile sets (the reset ones too), with its current and its new typed value."""
    return _apply_plan(name, Path(params_path), root, profiles_dir)[0]


def render_profile(name: str, params_path: str | Path = DEFAULT_PARAMS, root: str | Path | None = None,
                   profiles_dir: str | Path = PROFILES_DIR) -> tuple[str, Changes]:
    """The new params.yaml text and what changes, without writing."""
    return _apply_plan(name, Path(params_path), root, profiles_dir)[1:]


def set_params(values: dict[str, Any], params_path: str | Path = DEFAULT_PARAMS,
               source: str = "overrides") -> Changes:
    """Set dotted keys in params.yaml in place (like `dvc exp run -S key=value`), comments kept; validated
    before an atomic write. Returns {dotted key: (old, new)} for each value that changed."""
    params_path = Path(params_path)
    _, new_text, changes = _edit(dict(values), params_path, source, {}, set(values))
    if changes:
        write_text(params_path, new_text)
    return changes


def apply_profile(name: str, params_path: str | Path = DEFAULT_PARAMS, root: str | Path | None = None,
                  profiles_dir: str | Path = PROFILES_DIR) -> Changes:
    """Apply a profile to params.yaml in place (comments kept, validated, atomic); {key: (old, new)} of changes."""
    new_text, changes = render_profile(name, params_path, root, profiles_dir)
    if changes:
        write_text(params_path, new_text)
    return changes


def pretrained_warning(params_path: str | Path = DEFAULT_PARAMS) -> str | None:
    """Why a paper setting from scratch will not reach the published numbers, or None."""
    params = _read_params(Path(params_path))[2]
    arch = params.model.arch
    if arch in ("resnet50", "mobilenet_v2") and params.model.pretrained is None:
        provide = " (`make imagenet-weights` provides it)" if arch == "mobilenet_v2" else ""
        return (f"WARNING: model.pretrained is null; the published numbers use ImageNet-initialised weights. "
                f"Set model.pretrained: imagenet (torchvision's {arch} file in the torch hub cache{provide}) "
                f"or a local torchvision {arch} state_dict file (nothing is downloaded).")
    return None


def _show(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return (str(value) or "''") if isinstance(value, int | float | str) else repr(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.profiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles-dir", default=str(PROFILES_DIR), help="folder of profile files")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the profiles and what each is for")
    show = commands.add_parser("show", help="the keys applying a profile sets and which differ from params.yaml")
    apply = commands.add_parser("apply", help="rewrite params.yaml in place with a profile's values")
    apply.add_argument("--root", help="also set dataset.root to this local dataset folder (or CSV manifest)")
    for command in (show, apply):
        command.add_argument("name")
        command.add_argument("--params", default=str(DEFAULT_PARAMS), help="the params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            names = available_profiles(args.profiles_dir)
            width = max((len(n) for n in names), default=0)
            for name in names:
                print(f"{name:<{width}}  {describe(name, args.profiles_dir)}")
        elif args.command == "show":
            settings = plan_profile(args.name, args.params, profiles_dir=args.profiles_dir)
            width = max((len(f"{s.key} = {_show(s.value)}") for s in settings), default=0)
            file = profile_path(args.name, args.profiles_dir)
            print(f"{args.name} ({file}): {describe(args.name, args.profiles_dir)}")
            for s in settings:
                note = f"now {_show(s.current)} in {args.params}" if s.changes else "same"
                print(f"  {f'{s.key} = {_show(s.value)}':<{width}}  ({note})")
            print(f"{sum(s.changes for s in settings)} of {len(settings)} values differ from {args.params}")
        else:
            changes = apply_profile(args.name, args.params, args.root, args.profiles_dir)
            for key, (old, new) in changes.items():
                print(f"{key}: {_show(old)} → {_show(new)}")
            print(f"applied profile {args.name} to {args.params}: {len(changes)} value(s) changed")
            if warning := pretrained_warning(args.params):
                print(warning, file=sys.stderr)
    except ProfileError as error:
        print(f"ERROR [profiles]: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
