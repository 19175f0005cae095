"""PostgreSQL settings checked before Dagster or MLflow use them: a wrong URL is one line naming the setting and the
fix, not a driver traceback from deep inside a run."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from dspark_core.errors import DsparkError

_DRIVER = re.compile(r"^postgres(?:ql)?(\+\w+)?://")


def is_postgres_url(url: str) -> bool:
    return bool(_DRIVER.match(url or ""))


def masked(url: str) -> str:
    """`url` with its password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def check_postgres(url: str, setting: str, *, timeout_s: int = 5) -> None:
    """Connect once to `url` (given by `setting`, e.g. an environment variable); raise a one-line DsparkError saying
    what is wrong and how to fix it when the server does not answer, refuses the credentials or lacks the database."""
    import psycopg2

    shown = f"{setting}={masked(url)}"
    if not is_postgres_url(url):
        raise DsparkError(f"{shown} is not a PostgreSQL URL; write postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        raise DsparkError(f"{shown}: the port is not a number; write postgresql://USER:PASSWORD@HOST:PORT/DATABASE") from None
    where = f"{parts.hostname or 'localhost'}:{port}"
    database = parts.path.lstrip("/") or parts.username or "postgres"
    try:
        psycopg2.connect(_DRIVER.sub("postgresql://", url), connect_timeout=timeout_s).close()
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split())
        if "does not exist" in reason and "database" in reason:
            raise DsparkError(f"{shown}: database '{database}' does not exist on {where}; create it (createdb -h "
                              f"{parts.hostname} -p {port} -U {parts.username} {database}) or fix the "
                              f"database name at the end of the URL") from None
        if any(text in reason for text in ("password authentication failed", "no password supplied",
                                           "role", "authentication")):
            raise DsparkError(f"{shown}: the server at {where} refused user '{parts.username}' ({reason.split(':')[-1].strip()}); "
                              f"fix the user name and password in the URL") from None
        raise DsparkError(f"{shown}: no PostgreSQL server answers at {where} ({reason}); start it, or fix the "
                          f"host and port in the URL") from None
    except psycopg2.ProgrammingError as exc:  # an unparsable connection string
        raise DsparkError(f"{shown} is not a usable PostgreSQL URL ({exc}); write "
                          f"postgresql://USER:PASSWORD@HOST:PORT/DATABASE") from None


def lost_database(exc: BaseException) -> str | None:
    """The driver's reason when `exc` (or what caused it) is a PostgreSQL connection that failed or dropped mid-run,
    else None: a stopped server, a network cut, a restart."""
    import psycopg2
    import sqlalchemy.exc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        driver = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc  # SQLite's errors are not this
        if isinstance(driver, (psycopg2.OperationalError, psycopg2.InterfaceError)):
            return " ".join(str(driver).split())[:300]
        exc = exc.__cause__ or exc.__context__
    return None
