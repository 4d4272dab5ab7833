"""Test PKI for the local secured broker: a CA, a broker certificate, a client certificate.

Made with openssl (keys, certificates, the broker's PKCS12 keystore) and the JDK's keytool
(the broker's PKCS12 truststore holding the CA), in a directory of the caller's. Every
password is generated here at run time and never written to a log.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

DAYS = "3"  # test material: short-lived on purpose


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA: (certificate PEM, key PEM)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", DAYS,
            "-subj", f"/CN=waxstreams test {name}", "-keyout", str(key), "-out", str(cert),
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ]
    )  # fmt: skip
    return cert, key


def _signed(
    directory: Path, name: str, subject: str, ca: tuple[Path, Path], ext: str, key_password: str | None
) -> tuple[Path, Path]:
    cert, key, csr, extfile = (directory / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
    key_args = ["-passout", f"pass:{key_password}"] if key_password else ["-nodes"]
    _run(
        [
            "openssl", "req", "-new", "-newkey", "rsa:2048", "-sha256", "-subj", subject,
            "-keyout", str(key), "-out", str(csr), *key_args,
        ]
    )  # fmt: skip
    extfile.write_text(ext)
    _run(
        [
            "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-days", DAYS, "-sha256", "-extfile", str(extfile), "-out", str(cert),
        ]
    )  # fmt: skip
    csr.unlink()
    extfile.unlink()
    return cert, key


@dataclass
class TestPki:
    """The CA, the broker's keystore and truststore, and a client certificate for mTLS."""

    directory: Path
    store_password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    client_key_password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.directory / "broker.p12"

    @property
    def truststore(self) -> Path:
        return self.directory / "truststore.p12"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    def create(self) -> TestPki:
        if shutil.which("openssl") is None or shutil.which("keytool") is None:
            msg = "openssl and keytool (JDK) are needed for the secured broker: apt-get install openssl openjdk-17-jdk"
            raise RuntimeError(msg)
        ca = make_ca(self.directory)
        server_ext = (
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
        )
        cert, key = _signed(self.directory, "broker", "/CN=localhost", ca, server_ext, None)
        _run(
            [
                "openssl", "pkcs12", "-export", "-in", str(cert), "-inkey", str(key), "-certfile", str(ca[0]),
                "-name", "broker", "-out", str(self.keystore), "-passout", f"pass:{self.store_password}",
            ]
        )  # fmt: skip
        _run(
            [
                "keytool", "-importcert", "-noprompt", "-storetype", "PKCS12", "-alias", "test-ca",
                "-file", str(ca[0]), "-keystore", str(self.truststore), "-storepass", self.store_password,
            ]
        )  # fmt: skip
        client_ext = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        # The client key is encrypted: ssl.key.password is one of the secrets the job must not log.
        _signed(self.directory, "client", "/CN=waxstreams-client", ca, client_ext, self.client_key_password)
        ca[1].unlink()  # nothing else is ever signed with it
        return self
