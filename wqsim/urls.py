"""What a Redis URL must say, checked before any connection: never a silent default.

redis-py reads ``redis://`` as localhost:6379 and a db path of ``/abc`` as
db 0; a worker then talks to some other Redis, or another database, without
a word. ``check_url`` refuses those, and names what is wrong.

Accepted: ``redis://[user[:password]@]host[:port][/db][?option=value...]``,
the same with ``rediss://`` (TLS; e.g. ``?ssl_ca_certs=/path/ca.pem`` to trust
a private CA), and ``unix:///path/to/socket[?db=N]``.

A Redis Cluster's startup nodes are a list of hosts in one URL, sharing its
credentials, database and options: ``redis://h1:7000,h2:7001,h3:7002/0``
(``startup_urls`` gives one URL per host). Any one that answers will do, so a
process that starts while one of them is down still finds the cluster.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

SCHEMES = ("redis", "rediss", "unix")
FILE_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")  # must name existing paths


def startup_urls(url: str) -> list[str]:
    """One URL per host that ``url`` lists (``redis://h1:7000,h2:7001/0``), in order; ``[url]`` for one host."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return [url]
    return [urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}")) for host in hosts.split(",")]


def check_url(url: str) -> None:
    """Raise ValueError naming the problem if ``url`` is not a complete Redis URL (each host of a list)."""
    urls = startup_urls(url)
    if len(urls) > 1 and urlsplit(url).scheme == "unix":
        raise ValueError("a list of hosts names a Redis Cluster's nodes: not a unix:// socket")
    for one in urls:
        if len(urls) > 1 and not urlsplit(one).hostname:
            raise ValueError("the list of hosts has an empty entry (hosts are separated by single commas)")
        _check_one(one)


def _check_one(url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"the scheme must be one of {', '.join(s + '://' for s in SCHEMES)} "
            f"(got {parts.scheme + '://' if parts.scheme else 'none'})"
        )
    options = parse_qs(parts.query)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path, e.g. unix:///run/redis.sock")
    else:
        if not parts.hostname:
            raise ValueError("no host: say which Redis, e.g. redis://127.0.0.1:6379/0")
        if port == 0:
            raise ValueError("port 0 is not a port to connect to")
        db = unquote(parts.path).strip("/")
        if db and not (db.isdigit() and db.isascii()):
            raise ValueError(f"the path must be a database number, e.g. /0 (got {parts.path!r})")
    for db in options.get("db", []):
        if not (db.isdigit() and db.isascii()):
            raise ValueError(f"db must be a database number (got {db!r})")
    for name in FILE_OPTIONS:
        for path in options.get(name, []):
            if not os.path.exists(path):
                raise ValueError(f"{name} names a file that does not exist: {path}")
