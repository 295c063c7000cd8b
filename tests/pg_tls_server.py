"""A throwaway PostgreSQL with TLS for the TLS tests (the shared server on
127.0.0.1:5432 has no TLS and is left alone).

``initdb`` into a temporary directory, a CA, a server certificate (for
``localhost`` and ``127.0.0.1``) and a client certificate (``certuser``)
made with the openssl CLI, ``ssl=on`` on a free port of 127.0.0.1 only, and
a ``pg_hba.conf`` that takes TLS only:

* ``hostssl ... certuser ... cert``: that role logs in with its client
  certificate and nothing else;
* ``hostssl ... trust`` for everyone else;
* ``hostnossl ... reject``: a plaintext connection fails.

Run as root, the server runs as the ``postgres`` user (PostgreSQL refuses
root). :meth:`TlsPostgres.stop` stops it and removes the directory.
``TlsPostgres(tls=False)`` is the same server without TLS (``sslmode=prefer``
must fall back to plaintext there; the shared server on 5432 may have TLS:
Debian's default configuration turns it on with a snakeoil certificate).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def _pg(tool: str) -> str:
    path = PG_BIN / tool
    return str(path) if path.exists() else (shutil.which(tool) or tool)


def missing_tools() -> str | None:
    """Why the server cannot be made here, or None."""
    for tool in (_pg("initdb"), _pg("pg_ctl"), OPENSSL):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TlsPostgres:
    """A PostgreSQL server with TLS only, on 127.0.0.1:``port``; with
    ``tls=False``, one without TLS (``ssl = off``, plaintext trusted)."""

    def __init__(self, tls: bool = True) -> None:
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix="foxtive-pgtls-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.ca = self.dir / "ca.crt"
        self.other_ca = self.dir / "other-ca.crt"
        self.client_cert = self.dir / "certuser.crt"
        self.client_key = self.dir / "certuser.key"
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.started = False

    def url(self, user: str = "postgres", password: str | None = None,
            host: str = "127.0.0.1", **params: str) -> str:
        auth = user if password is None else f"{user}:{password}"
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{auth}@{host}:{self.port}/postgres" + (f"?{query}" if query else "")

    def _run(self, *args: str, as_postgres: bool = False) -> None:
        cmd = [*self._as_postgres, *args] if as_postgres else list(args)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.dir)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}")

    def _certificates(self) -> None:
        d = self.dir
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for name in ("ca", "other-ca"):
            self._run(OPENSSL, "req", "-x509", *ec, "-keyout", f"{d}/{name}.key",
                      "-out", f"{d}/{name}.crt", "-days", "2",
                      "-subj", f"/CN=foxtive test {name}",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        leaves = {
            "server": ("localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                    "extendedKeyUsage=serverAuth\n"),
            "certuser": ("certuser", "extendedKeyUsage=clientAuth\n"),
        }
        for name, (cn, ext) in leaves.items():
            (d / f"{name}.ext").write_text("basicConstraints=CA:FALSE\n" + ext)
            self._run(OPENSSL, "req", "-new", *ec, "-keyout", f"{d}/{name}.key",
                      "-out", f"{d}/{name}.csr", "-subj", f"/CN={cn}")
            self._run(OPENSSL, "x509", "-req", "-in", f"{d}/{name}.csr", "-CA", str(self.ca),
                      "-CAkey", f"{d}/ca.key", "-CAcreateserial", "-days", "2",
                      "-out", f"{d}/{name}.crt", "-extfile", f"{d}/{name}.ext")
        for key in d.glob("*.key"):
            key.chmod(0o600)

    def start(self) -> TlsPostgres:
        self._certificates()
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
            for f in self.dir.iterdir():
                if f.name.startswith("server."):
                    shutil.chown(f, "postgres", "postgres")
        self._run(_pg("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8", as_postgres=True)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.dir}'\n"
                f"ssl = {'on' if self.tls else 'off'}\n"
                f"ssl_cert_file = '{self.dir}/server.crt'\n"
                f"ssl_key_file = '{self.dir}/server.key'\n"
                f"ssl_ca_file = '{self.ca}'\n"
                "fsync = off\n"
                "max_connections = 40\n"
                "shared_buffers = 16MB\n"
            )
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all certuser 127.0.0.1/32 cert\n"
            "hostssl all all 127.0.0.1/32 trust\n"
            "hostnossl all all 127.0.0.1/32 reject\n"
            if self.tls else
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        self._run(_pg("pg_ctl"), "-D", str(self.data), "-l", f"{self.dir}/server.log",
                  "-w", "-t", "60", "start", as_postgres=True)
        self.started = True
        self.admin("CREATE ROLE certuser LOGIN SUPERUSER")
        return self

    def admin(self, sql: str) -> list[tuple[object, ...]]:
        """Run ``sql`` as postgres over the Unix socket (psycopg judges)."""
        import psycopg

        with psycopg.connect(host=str(self.dir), port=self.port, user="postgres",
                             dbname="postgres", autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        try:
            if self.started:
                self._run(_pg("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop",
                          as_postgres=True)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
