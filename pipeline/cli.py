"""What every stage's `main` shares: argument parsing, logging, and clean errors for users."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from dsfnet.data import DatasetError
from pipeline.params import Params, ParamsError, load_params


class StageFailed(RuntimeError):
    """A stage checked its input and refused it; the message says what and where."""


USER_ERRORS = (DatasetError, ParamsError, StageFailed, FileNotFoundError)


def run_stage(name: str, body: Callable[[Params], None], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{name}", description=body.__doc__)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{name}] %(levelname)s %(message)s")
    for chatty in ("faiss.loader", "great_expectations"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        body(load_params(args.params))
    except USER_ERRORS as error:
        print(f"ERROR [{name}]: {error}", file=sys.stderr)
        return 1
    return 0
