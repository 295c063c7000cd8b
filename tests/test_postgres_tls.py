"""PostgresBackend over TLS (issue 13), against a second PostgreSQL that takes
TLS only (the ``pg_tls`` fixture, ``tests/pg_tls_server.py``) and the shared
plaintext one on 5432. libpq's ``sslmode`` / ``sslrootcert`` / ``sslcert`` /
``sslkey``; psycopg (libpq) judges the server's view of foxtive's sessions
(``pg_stat_ssl``). Passwords never show in errors or reprs (trust auth: the
password is sent and ignored)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import foxtive

from .contract.kits.postgres import POSTGRES_URL, postgres_answers
from .pg_tls_server import TlsPostgres

PASSWORD = "s3cret-tls-pw"


@pytest.fixture
def schema(pg_tls: TlsPostgres) -> Iterator[str]:
    name = f"fxtls_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        pg_tls.admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def foxtive_sessions_ssl(pg_tls: TlsPostgres) -> list[bool]:
    """Whether each of foxtive's sessions on the TLS server is encrypted."""
    rows = pg_tls.admin(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.application_name = 'foxtive'")
    return [bool(r[0]) for r in rows]


async def publish_and_drain(backend: foxtive.PostgresBackend, n: int = 3,
                            judge: TlsPostgres | None = None) -> list[bytes]:
    """Publish ``n`` jobs, drain them. With ``judge``: foxtive's sessions on
    that server, open after the publish, must all be encrypted."""
    await backend.publish_many([f"job-{i}".encode() for i in range(n)])
    if judge is not None:
        ssl = foxtive_sessions_ssl(judge)
        assert ssl and all(ssl), ssl
    seen: list[bytes] = []

    async def handler(m: foxtive.Message) -> None:
        seen.append(m.body)

    pool = foxtive.WorkerPoolBuilder("tls").add_worker(handler, id="h").build()
    assert await pool.run_until_idle_async(backend, timeout=30)
    return sorted(seen)


async def connect_error(url: str, schema: str) -> str:
    """The error of connecting to ``url``; it must not show the password."""
    backend = foxtive.PostgresBackend(url, "tls", schema=schema)
    assert PASSWORD not in repr(backend)
    with pytest.raises(foxtive.FoxtiveError) as caught:
        await backend.connect()
    text = str(caught.value)
    assert PASSWORD not in text, text
    return text


async def test_verify_full_with_the_ca_drains_jobs(pg_tls: TlsPostgres, schema: str) -> None:
    url = pg_tls.url(password=PASSWORD, sslmode="verify-full", sslrootcert=str(pg_tls.ca))
    backend = foxtive.PostgresBackend(url, "tls", schema=schema)
    assert PASSWORD not in repr(backend) and PASSWORD not in backend.url
    assert await publish_and_drain(backend, judge=pg_tls) == [b"job-0", b"job-1", b"job-2"]
    await backend.close()


async def test_backend_from_url_and_migrate_take_the_tls_settings(
        pg_tls: TlsPostgres, schema: str) -> None:
    url = pg_tls.url(password=PASSWORD, sslmode="verify-ca", sslrootcert=str(pg_tls.ca),
                     schema=schema)
    got, before, after = await foxtive._core.postgres_migrate(url, None)
    assert (got, before) == (schema, 0) and after > 0
    backend = foxtive.backend_from_url(url, "tls")
    assert await publish_and_drain(backend, 2) == [b"job-0", b"job-1"]
    await backend.close()


async def test_verify_full_refuses_a_wrong_host_name(pg_tls: TlsPostgres, schema: str) -> None:
    # The name the certificate is checked against is `host`; `hostaddr` is
    # where the connection goes (libpq's rule): the right server, wrong name.
    url = pg_tls.url(password=PASSWORD, host="db.not-this-server.test", hostaddr="127.0.0.1",
                     sslmode="verify-full", sslrootcert=str(pg_tls.ca))
    text = await connect_error(url, schema)
    assert "not valid for name" in text and "db.not-this-server.test" in text, text
    assert "sslmode=verify-full" in text, text
    # verify-ca checks the chain only: the same URL connects.
    ca_url = url.replace("verify-full", "verify-ca")
    backend = foxtive.PostgresBackend(ca_url, "tls", schema=schema)
    await backend.connect()
    await backend.close()


async def test_verify_full_without_the_ca_fails(pg_tls: TlsPostgres, schema: str,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # No sslrootcert and no ~/.postgresql/root.crt: a config error saying so.
    monkeypatch.setenv("HOME", str(tmp_path))
    text = await connect_error(pg_tls.url(password=PASSWORD, sslmode="verify-full"), schema)
    assert "sslrootcert" in text and "root.crt" in text, text
    # libpq's default file is read when it exists.
    (tmp_path / ".postgresql").mkdir()
    (tmp_path / ".postgresql" / "root.crt").write_bytes(pg_tls.ca.read_bytes())
    backend = foxtive.PostgresBackend(pg_tls.url(sslmode="verify-full"), "tls", schema=schema)
    await backend.connect()
    await backend.close()
    # Another CA: the server's certificate is not trusted.
    text = await connect_error(
        pg_tls.url(password=PASSWORD, sslmode="verify-full", sslrootcert=str(pg_tls.other_ca)),
        schema)
    assert "UnknownIssuer" in text and str(pg_tls.other_ca) in text, text
    # The system's store does not hold the test CA either.
    text = await connect_error(
        pg_tls.url(password=PASSWORD, sslmode="verify-full", sslrootcert="system"), schema)
    assert "invalid peer certificate" in text or "trust store" in text, text


async def test_require_encrypts_without_the_ca(pg_tls: TlsPostgres, schema: str,
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    backend = foxtive.PostgresBackend(pg_tls.url(password=PASSWORD, sslmode="require"), "tls",
                                      schema=schema)
    assert await publish_and_drain(backend, 1, judge=pg_tls) == [b"job-0"]
    await backend.close()
    # With a root certificate, require checks the chain (libpq: verify-ca).
    text = await connect_error(
        pg_tls.url(password=PASSWORD, sslmode="require", sslrootcert=str(pg_tls.other_ca)),
        schema)
    assert "UnknownIssuer" in text, text


async def test_disable_is_rejected_by_a_tls_only_server(pg_tls: TlsPostgres,
                                                        schema: str) -> None:
    text = await connect_error(pg_tls.url(password=PASSWORD, sslmode="disable"), schema)
    assert "pg_hba.conf rejects connection" in text and "no encryption" in text, text


async def test_prefer_works_on_both_servers(pg_tls: TlsPostgres, pg_plain: TlsPostgres,
                                           schema: str) -> None:
    # The default is prefer: TLS where offered...
    backend = foxtive.PostgresBackend(pg_tls.url(password=PASSWORD), "tls", schema=schema)
    assert await publish_and_drain(backend, 2, judge=pg_tls) == [b"job-0", b"job-1"]
    await backend.close()
    # ...plaintext where not (ssl = off).
    assert pg_plain.admin("SHOW ssl") == [("off",)]
    plain = foxtive.PostgresBackend(pg_plain.url(password=PASSWORD, sslmode="prefer"), "tls",
                                    schema=schema)
    await plain.publish(b"plain")
    assert foxtive_sessions_ssl(pg_plain) == [False]
    await plain.close()
    # require refuses the server without TLS, and says so.
    text = await connect_error(pg_plain.url(password=PASSWORD, sslmode="require"), schema)
    assert "server does not support TLS" in text, text


@pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))
async def test_the_default_follows_the_shared_server(schema: str) -> None:
    """On 5432 (whatever its ssl setting) foxtive's sessions are encrypted
    exactly when the server offers TLS, as psycopg's are."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        offered = conn.execute("SHOW ssl").fetchone() == ("on",)
    backend = foxtive.PostgresBackend(POSTGRES_URL, "tls", schema=schema)
    try:
        await backend.publish(b"x")
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.application_name = 'foxtive' AND a.datname = current_database() "
                "AND a.query ILIKE %s", (f"%{schema}%",)).fetchall()
        assert rows and all(r[0] == offered for r in rows), (offered, rows)
        await backend.close()
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_a_client_certificate_logs_in(pg_tls: TlsPostgres, schema: str) -> None:
    base = {"sslmode": "verify-full", "sslrootcert": str(pg_tls.ca)}
    url = pg_tls.url(user="certuser", sslcert=str(pg_tls.client_cert),
                     sslkey=str(pg_tls.client_key), **base)
    backend = foxtive.PostgresBackend(url, "tls", schema=schema)
    assert await publish_and_drain(backend, 1) == [b"job-0"]
    await backend.close()
    text = await connect_error(pg_tls.url(user="certuser", password=PASSWORD, **base), schema)
    assert "requires a valid client certificate" in text, text


def test_tls_settings_are_checked_before_connecting(pg_tls: TlsPostgres) -> None:
    with pytest.raises(foxtive.ConfigError, match="sslmode"):
        foxtive.PostgresBackend(pg_tls.url(sslmode="verify-everything"), "tls")
    with pytest.raises(foxtive.ConfigError) as caught:
        foxtive.PostgresBackend(pg_tls.url(password=PASSWORD, sslpassword="k3y-pw"), "tls")
    assert "sslpassword" in str(caught.value)
    assert "k3y-pw" not in str(caught.value) and PASSWORD not in str(caught.value)
