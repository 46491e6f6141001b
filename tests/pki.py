"""A throwaway PKI made with openssl for etcd TLS tests: CA, server and client certificates."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class CA:
    dir: Path
    name: str

    @property
    def cert(self) -> str:
        return str(self.dir / f"{self.name}.pem")

    @property
    def key(self) -> str:
        return str(self.dir / f"{self.name}-key.pem")

    def issue(self, name: str, cn: str, server: bool = False) -> tuple[str, str]:
        """(cert, key) signed by this CA; server certs carry SAN IP:127.0.0.1."""
        key = self.dir / f"{name}-key.pem"
        csr = self.dir / f"{name}.csr"
        cert = self.dir / f"{name}.pem"
        ext = self.dir / f"{name}.ext"
        usage = "serverAuth,clientAuth" if server else "clientAuth"
        san = "subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else ""
        ext.write_text(f"extendedKeyUsage={usage}\nkeyUsage=digitalSignature,keyEncipherment\n{san}")
        _run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}", cwd=self.dir)
        _run("x509", "-req", "-in", str(csr), "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext), cwd=self.dir)
        return str(cert), str(key)


def make_ca(directory: Path, name: str) -> CA:
    directory.mkdir(parents=True, exist_ok=True)
    ca = CA(directory, name)
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", ca.key, "-out", ca.cert, "-days", "2", "-subj", f"/CN={name}", cwd=directory)
    return ca
