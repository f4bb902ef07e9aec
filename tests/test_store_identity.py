"""Store identities in control requests: which database URLs name the same store."""

import json
import os

import pytest

from callguard.daemon.operator import same_store, store_identity

PG = "postgresql+psycopg://callguard@db.example.net:5432/callguard"
PG_ENVIRONMENT = ("PGHOST", "PGPORT", "PGOPTIONS")


@pytest.fixture(autouse=True)
def no_pg_environment(monkeypatch):
    for name in PG_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


# fmt: off
POSTGRESQL_PAIRS = [
    # ours,                                                   theirs,                                                          same
    (PG,                                                      "postgresql+psycopg://callguard:secret@db.example.net:5432/callguard", True),
    (PG,                                                      "postgresql+psycopg://admin@db.example.net/callguard",             True),
    (PG,                                                      "postgresql+psycopg://callguard@DB.example.net:5432/callguard",    True),
    (PG,                                                      "postgresql+psycopg://callguard@db.example.net:5433/callguard",    False),
    (PG,                                                      "postgresql+psycopg://callguard@db2.example.net:5432/callguard",   False),
    (PG,                                                      "postgresql+psycopg://callguard@db.example.net:5432/other",        False),
    ("postgresql+psycopg://cg@localhost/cg",                  "postgresql+psycopg://cg@127.0.0.1:5432/cg",                       True),
    ("postgresql+psycopg://cg@[::1]/cg",                      "postgresql+psycopg://cg@127.0.0.1/cg",                            True),
    ("postgresql+psycopg://cg@/cg?host=/run/postgresql",      "postgresql+psycopg://cg@/cg?host=/run/postgresql",               True),
    ("postgresql+psycopg://cg@/cg?host=/run/postgresql",      "postgresql+psycopg://cg@127.0.0.1/cg",                            False),
    ("postgresql+psycopg://cg@h/cg?options=-csearch_path%3Da", "postgresql+psycopg://cg@h/cg?options=-c%20search_path%3Da",     True),
    ("postgresql+psycopg://cg@h/cg?options=-csearch_path%3Da", "postgresql+psycopg://cg@h/cg?options=-csearch_path%3Db",        False),
    ("postgresql+psycopg://cg@h/cg?options=-csearch_path%3Da", "postgresql+psycopg://cg@h/cg",                                   False),
]
# fmt: on


@pytest.mark.parametrize("ours, theirs, same", POSTGRESQL_PAIRS)
def test_postgresql_same_store(ours, theirs, same):
    assert same_store(store_identity(ours), store_identity(theirs)) is same


def test_postgresql_environment_defaults(monkeypatch):
    monkeypatch.setenv("PGHOST", "db.example.net")
    monkeypatch.setenv("PGPORT", "5433")

    identity = store_identity("postgresql+psycopg://callguard@/callguard")

    assert identity["host"] == "db.example.net"
    assert identity["port"] == 5433


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://callguard:s3cret-pw@db.example.net/callguard",
    "postgresql+psycopg://callguard@db.example.net/callguard?password=s3cret-pw",
])
def test_identity_hides_password(url):
    identity = store_identity(url)

    assert "s3cret-pw" not in json.dumps(identity)
    assert identity["url"].startswith("postgresql+psycopg://callguard")


def test_sqlite_same_file_other_spellings(tmp_path, monkeypatch):
    database = tmp_path / "callguard.db"
    database.write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path)
    monkeypatch.chdir(tmp_path / "sub")
    ours = store_identity(f"sqlite:///{database}")

    for theirs in (f"sqlite:///{tmp_path}/sub/../callguard.db", "sqlite:///../callguard.db",
                   f"sqlite:///{tmp_path / 'link' / 'callguard.db'}"):
        assert same_store(ours, store_identity(theirs)), theirs


def test_sqlite_hard_link_same(tmp_path):
    database = tmp_path / "callguard.db"
    database.write_bytes(b"")
    os.link(database, tmp_path / "linked.db")

    assert same_store(store_identity(f"sqlite:///{database}"),
                      store_identity(f"sqlite:///{tmp_path / 'linked.db'}"))


def test_sqlite_other_file_differs(tmp_path):
    for name in ("callguard.db", "other.db"):
        (tmp_path / name).write_bytes(b"")

    assert not same_store(store_identity(f"sqlite:///{tmp_path / 'callguard.db'}"),
                          store_identity(f"sqlite:///{tmp_path / 'other.db'}"))
    # Without the files, the resolved paths decide.
    assert not same_store(store_identity(f"sqlite:///{tmp_path / 'missing.db'}"),
                          store_identity(f"sqlite:///{tmp_path / 'absent.db'}"))


def test_sqlite_and_postgresql_differ(tmp_path):
    assert not same_store(store_identity(f"sqlite:///{tmp_path / 'callguard.db'}"),
                          store_identity(PG))
