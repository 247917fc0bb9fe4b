"""``kernelfarm tenant add|list|remove|rotate``: who may use the farm, changed live.

``add`` and ``rotate`` print the new token alone on the last line of stdout, once: the
farm keeps only its hash, so a lost token is replaced with ``rotate``, never shown again.
These calls need the admin token (found as every client command finds its token).
"""

from __future__ import annotations

import argparse
from typing import Any

from kernelfarm.cli.common import add_client_options, connect


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("tenant", help="add, list, remove tenants or rotate a token")
    verbs = parser.add_subparsers(dest="tenant_command", required=True, metavar="VERB")
    p = verbs.add_parser("add", help="add a tenant; prints its token on the last line")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--volume", nargs="+", default=[], metavar="PATTERN",
                   help="volumes it may use: names or globs (alice, alice-*)")
    p.add_argument("--namespace", nargs="+", default=[], metavar="PATTERN",
                   help="net namespaces it may use: names or globs")
    p.set_defaults(handler=run_add)
    p = verbs.add_parser("list", help="list tenants and their grants")
    p.set_defaults(handler=run_list)
    p = verbs.add_parser("remove", help="remove a tenant; its connections are cut")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=run_remove)
    p = verbs.add_parser("rotate", help="give a tenant a new token; the old one stops "
                         "working; prints the token on the last line")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=run_rotate)
    for verb in verbs.choices.values():
        add_client_options(verb)


def _call(args: argparse.Namespace, method: str, *params: Any) -> Any:
    with connect(args) as client:
        return client.control_call(method, *params)


def run_add(args: argparse.Namespace) -> int:
    result = _call(args, "tenant.add", args.name, args.volume, args.namespace)
    print(f"tenant {result['tenant']} added; its token (shown once):")
    print(result["token"])
    return 0


def run_list(args: argparse.Namespace) -> int:
    for tenant in _call(args, "tenant.list"):
        role = "admin" if tenant["admin"] else "tenant"
        print(f"{tenant['name']:<20} {role:<6} volumes: {' '.join(tenant['volumes']) or '-'}"
              f"  namespaces: {' '.join(tenant['namespaces']) or '-'}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    result = _call(args, "tenant.remove", args.name)
    print(f"tenant {result['tenant']} removed")
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    result = _call(args, "tenant.rotate", args.name)
    print(f"tenant {result['tenant']} has a new token (shown once):")
    print(result["token"])
    return 0
