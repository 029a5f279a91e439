"""The offline settings (`pipeline.OFFLINE_ENV`) for processes that do not import `pipeline`.

    python -m pipeline.env             KEY=VALUE lines: `env $(python -m pipeline.env) mlflow ui ...`, $GITHUB_ENV
    python -m pipeline.env --export    `export KEY=VALUE` lines: `eval "$(python -m pipeline.env --export)"`

A value already set in the environment wins, as it does for `import pipeline`.
"""

from __future__ import annotations

import argparse
import os
import shlex

from pipeline import OFFLINE_ENV


def offline_env() -> dict[str, str]:
    """OFFLINE_ENV with this environment's values where it has them (importing `pipeline` set the rest)."""
    return {key: os.environ.get(key, value) for key, value in OFFLINE_ENV.items()}


def lines(export: bool = False) -> list[str]:
    if export:
        return [f"export {key}={shlex.quote(value)}" for key, value in offline_env().items()]
    return [f"{key}={value}" for key, value in offline_env().items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.env", description=__doc__.splitlines()[0])
    parser.add_argument("--export", action="store_true", help="print `export KEY=VALUE` lines for a shell")
    args = parser.parse_args(argv)
    print("\n".join(lines(export=args.export)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
