"""`agft node-token` and `agft token`: the tokens agents and API clients authenticate with."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


def _when(value: object) -> str:
    return "-" if value is None else str(value)[:19]


@contextmanager
def _database(args: argparse.Namespace) -> Iterator[sessionmaker[Session]]:
    """The token table's database (AGFT_DATABASE_URL or --database-url), migrated first."""
    # Imported here: the parser is built for every command, `agft agent` included, and
    # a GPU node has none of the server's dependencies.
    from server.settings import Settings
    from server.store.database import make_engine, make_session_factory
    from server.store.migrate import upgrade_to_head

    url = args.database_url or Settings().database_url
    upgrade_to_head(url)  # a fresh database works too
    engine = make_engine(url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def run_node_token(args: argparse.Namespace) -> int:
    from server.auth.store import create_node_token, list_tokens, revoke

    with _database(args) as factory:
        if args.action == "create":
            try:
                info, plaintext = create_node_token(factory, args.node_id)
            except ValueError as err:
                print(f"agft node-token: {err}")
                return 2
            print(plaintext)
            print(
                f"# token {info.token_id} for node {info.node_id!r}: shown once, stored hashed."
                " Put it in the agent's token_file (readable by the agent's user only).",
            )
            return 0
        if args.action == "revoke":
            revoked = revoke(factory, args.what)
            if not revoked:
                print(
                    f"agft node-token: no live token matches {args.what!r} (a token id or node id)"
                )
                return 1
            for info in revoked:
                print(f"revoked token {info.token_id} of node {info.node_id!r}")
            print("# a connected agent using it is disconnected within a few seconds")
            return 0
        rows = list_tokens(factory, "node")
        print(f"{'TOKEN':<14}{'NODE':<28}{'CREATED':<21}{'LAST USED':<21}REVOKED")
        for info in rows:
            print(
                f"{info.token_id:<14}{(info.node_id or '')[:27]:<28}{_when(info.created_at):<21}"
                f"{_when(info.last_used_at):<21}{_when(info.revoked_at)}"
            )
        if not rows:
            print("(no node tokens yet: `agft node-token create NODE_ID`)")
        return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "node-token",
        help="create, revoke or list the node tokens agents authenticate with",
        description="Node tokens: each agent presents its node's token on the gRPC stream; "
        "the server stores only a hash. Works on AGFT_DATABASE_URL (or --database-url).",
    )
    parser.add_argument("--database-url", help="SQLAlchemy URL (default AGFT_DATABASE_URL)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a token for a node and print it once")
    create.add_argument("node_id", metavar="NODE_ID", help="the node id the agent says in Hello")
    rev = actions.add_parser("revoke", help="revoke a token (by token id) or all of a node's")
    rev.add_argument("what", metavar="TOKEN_ID|NODE_ID")
    actions.add_parser("list", help="list node tokens (never their secrets)")


def run_api_token(args: argparse.Namespace) -> int:
    from server.auth.store import create_api_token, list_tokens, revoke

    with _database(args) as factory:
        if args.action == "create":
            try:
                info, plaintext = create_api_token(factory, args.role, args.name or "")
            except ValueError as err:
                print(f"agft token: {err}")
                return 2
            print(plaintext)
            print(
                f"# {info.role} token {info.token_id} ({info.name}): shown once, stored hashed."
                " Use it as `Authorization: Bearer <token>` or to log in to the dashboard."
            )
            return 0
        if args.action == "revoke":
            revoked = revoke(factory, args.token_id, kind="api")
            if not revoked:
                print(f"agft token: no live API token {args.token_id!r}")
                return 1
            print(f"revoked token {revoked[0].token_id} ({revoked[0].name}); its logins end now")
            return 0
        rows = list_tokens(factory, "api")
        print(f"{'TOKEN':<14}{'ROLE':<8}{'NAME':<28}{'CREATED':<21}{'LAST USED':<21}REVOKED")
        for info in rows:
            print(
                f"{info.token_id:<14}{info.role or '':<8}{info.name[:27]:<28}"
                f"{_when(info.created_at):<21}{_when(info.last_used_at):<21}"
                f"{_when(info.revoked_at)}"
            )
        if not rows:
            print("(no API tokens yet: `agft token create --role admin`)")
        return 0


def add_api_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "token",
        help="create, revoke or list REST API / dashboard tokens (roles viewer, admin)",
        description="API tokens: `Authorization: Bearer <token>` on the REST API, or a "
        "dashboard login. Viewers read; admins also change. Stored hashed.",
    )
    parser.add_argument("--database-url", help="SQLAlchemy URL (default AGFT_DATABASE_URL)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a token and print it once")
    create.add_argument("--role", choices=("viewer", "admin"), required=True)
    create.add_argument("--name", help="who or what it is for (shown in lists and the audit)")
    rev = actions.add_parser("revoke", help="revoke a token; its dashboard logins end too")
    rev.add_argument("token_id", metavar="TOKEN_ID")
    actions.add_parser("list", help="list API tokens (never their secrets)")
