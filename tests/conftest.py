"""Shared fixtures: database URLs for SQLite and for the local PostgreSQL server."""

import os
import uuid

import pytest
import sqlalchemy

from callguard.store import Store
from support import PostgresProxy

PG_BASE_URL = os.environ.get(
    "CALLGUARD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'callguard.db'}"


@pytest.fixture
def pg_url():
    """Yield a URL whose connections use a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(PG_BASE_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_BASE_URL} is not reachable: {exc}")
    url = sqlalchemy.engine.make_url(PG_BASE_URL).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request):
    """Yield a database URL for each supported backend in turn."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url):
    """Yield an open store on each supported backend in turn."""
    opened = Store(db_url)
    opened.open()
    yield opened
    opened.close()


@pytest.fixture
async def proxy(pg_url):
    url = sqlalchemy.engine.make_url(pg_url)
    started = PostgresProxy(url.host, url.port)
    await started.listen()
    yield started
    if started.listening:
        await started.refuse()
