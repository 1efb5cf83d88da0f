"""``modstream review`` (serve the page) and ``modstream review token`` (a new reviewer token).

The page's dependencies are the ``review`` extra; they are imported only when the page runs.
"""

from __future__ import annotations

import argparse
import sys

from consumer.errors import ConfigError
from consumer.review.auth import new_token
from consumer.runtime.logs import configure_logging
from consumer.runtime.settings import Settings
from consumer.runtime.signals import defer_signals, run_until_signalled


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    review = commands.add_parser(
        "review", help="serve the review page (docs/review.md); `review token` for a reviewer"
    )
    review.set_defaults(handler=_serve)
    actions = review.add_subparsers(metavar="ACTION")
    token = actions.add_parser("token", help="print a new reviewer token and its file entry")
    token.add_argument("--reviewer", required=True, help="the reviewer's id")
    token.add_argument(
        "--tenants", required=True, help="comma-separated tenants the reviewer reviews, or '*'"
    )
    token.set_defaults(handler=_token)


def _serve(args: argparse.Namespace) -> int:
    defer_signals()
    try:
        from consumer.review.service import serve_review
    except ImportError as exc:
        raise ConfigError(
            f"the review page needs the review extra ({exc.name} is missing): "
            "pip install 'modstream[review]'"
        ) from exc
    settings = Settings()
    configure_logging(settings.log)
    run_until_signalled(lambda stop: serve_review(settings, stop))
    return 0


def _token(args: argparse.Namespace) -> int:
    tenants = [tenant.strip() for tenant in args.tenants.split(",") if tenant.strip()]
    if not tenants:
        raise ConfigError("--tenants names no tenant; give e.g. --tenants marketplace,tickets")
    token, digest = new_token()
    sys.stdout.write(
        f"token (give it to {args.reviewer}; it is not stored anywhere): {token}\n"
        "add to the reviewers file:\n"
        f"  - id: {args.reviewer}\n"
        f"    token_sha256: {digest}\n"
        f"    tenants: [{', '.join(repr(t) if t == '*' else t for t in tenants)}]\n"
    )
    return 0
