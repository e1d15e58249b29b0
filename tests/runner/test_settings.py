"""Broker credentials in ``RunnerSettings`` (issue 7): user/password, token, creds file and TLS,
each proven against a real nats-server, and never printed."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from p8fs.errors import ConfigurationError
from p8fs_runner.embedded import EmbeddedNats, NatsTls, start_nats
from p8fs_runner.settings import RunnerSettings, redact_url


def settings(**values: object) -> RunnerSettings:
    return RunnerSettings(_env_file=None, **values)  # type: ignore[call-arg]


def no_retry(options: dict[str, object]) -> dict[str, object]:
    """Connect options that fail at once instead of reconnecting forever."""
    return {**options, "allow_reconnect": False, "max_reconnect_attempts": 0}


async def test_user_and_password_from_settings(nats_server: EmbeddedNats) -> None:
    good = settings(
        nats_url=nats_server.address, nats_user=nats_server.user, nats_password=nats_server.password
    )
    nc = await nats.connect(**good.nats_connect_options())
    await nc.close()
    bad = settings(nats_url=nats_server.address, nats_user="p8fs", nats_password="nope")
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(**no_retry(bad.nats_connect_options()))


async def test_credentials_in_the_url_work_and_are_redacted(nats_server: EmbeddedNats) -> None:
    configured = settings(nats_url=nats_server.url)
    nc = await nats.connect(**configured.nats_connect_options())
    await nc.close()
    password = nats_server.password.get_secret_value()  # type: ignore[union-attr]
    shown = configured.redacted_nats_url()
    assert password not in shown and shown == f"nats://p8fs:***@127.0.0.1:{nats_server.port}"


async def test_token_from_settings(tmp_path: Path) -> None:
    with start_nats(tmp_path, token="a-long-random-token") as server:
        good = settings(nats_url=server.address, nats_token="a-long-random-token")
        nc = await nats.connect(**good.nats_connect_options())
        await nc.close()
        bad = settings(nats_url=server.address, nats_token="wrong")
        with pytest.raises(NatsError, match="Authorization Violation"):
            await nats.connect(**no_retry(bad.nats_connect_options()))


def test_secrets_never_print() -> None:
    configured = settings(
        nats_url="nats://u:pw-in-url@broker:4222",
        nats_password="pw-field",
        nats_token=None,
        s3_secret_key="s3-secret",
    )
    text = repr(configured) + str(configured) + configured.model_dump_json()
    for secret in ("pw-field", "s3-secret"):
        assert secret not in text
    assert "pw-in-url" not in configured.redacted_nats_url()
    assert redact_url("nats://only-a-token@host:4222") == "nats://***@host:4222"
    assert redact_url("nats://host:4222") == "nats://host:4222"


def test_inconsistent_broker_settings_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="P8FS_NATS_TOKEN"):
        settings(nats_token="t", nats_user="u").nats_connect_options()
    with pytest.raises(ConfigurationError, match="P8FS_NATS_CREDS"):
        settings(nats_creds=tmp_path / "missing.creds").nats_connect_options()
    with pytest.raises(ConfigurationError, match="TLS_CERT and P8FS_NATS_TLS_KEY"):
        settings(nats_tls_cert=tmp_path / "c.pem").nats_connect_options()
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="TLS"):
        settings(nats_tls_ca=tmp_path / "garbage.pem").nats_connect_options()


def test_creds_file_is_passed_to_nats(tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n...\n")
    assert settings(nats_creds=creds).nats_connect_options()["user_credentials"] == str(creds)


# -- TLS ---------------------------------------------------------------------------------------


def _write_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def save(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, stem: str) -> None:
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}-key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("p8fs test CA"))
        .issuer_name(name("p8fs test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    save(ca_key, ca, "ca")
    for stem, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(f"p8fs test {stem}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if stem == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        save(key, builder.sign(ca_key, hashes.SHA256()), stem)
    return {p.stem: p for p in folder.glob("*.pem")}


async def test_mutual_tls_from_settings(tmp_path: Path) -> None:
    pki = _write_pki(tmp_path)
    tls = NatsTls(pki["server"], pki["server-key"], ca_file=pki["ca"], verify=True)
    with start_nats(tmp_path / "nats", tls=tls) as server:
        secure = settings(
            nats_url=server.address,
            nats_user=server.user,
            nats_password=server.password,
            nats_tls_ca=pki["ca"],
            nats_tls_cert=pki["client"],
            nats_tls_key=pki["client-key"],
        )
        nc = await nats.connect(**secure.nats_connect_options())
        try:
            assert nc.is_connected
            await nc.jetstream().account_info()
        finally:
            await nc.close()

        # Without a client certificate the server refuses the handshake.
        no_cert = secure.model_copy(update={"nats_tls_cert": None, "nats_tls_key": None})
        with pytest.raises((NatsError, OSError, ssl.SSLError)):
            await nats.connect(**no_retry(no_cert.nats_connect_options()))
        # Without TLS at all the server refuses too (it requires TLS).
        plain = secure.model_copy(
            update={"nats_tls_ca": None, "nats_tls_cert": None, "nats_tls_key": None}
        )
        with pytest.raises((NatsError, OSError)):
            await nats.connect(**no_retry(plain.nats_connect_options()))


# -- a cluster: several URLs, replicas (issue 11) -----------------------------------------------


def test_several_nats_urls_are_one_server_pool_each_redacted() -> None:
    configured = settings(
        nats_url="nats://u:pw-one@n1:4222, nats://n2:4222 ,nats://a-token@n3:4222,"
    )
    assert configured.nats_servers() == [
        "nats://u:pw-one@n1:4222",
        "nats://n2:4222",
        "nats://a-token@n3:4222",
    ]
    assert configured.nats_connect_options()["servers"] == configured.nats_servers()
    shown = configured.redacted_nats_url()
    assert shown == "nats://u:***@n1:4222,nats://n2:4222,nats://***@n3:4222"
    assert "pw-one" not in shown and "a-token" not in shown
    with pytest.raises(ConfigurationError, match="P8FS_NATS_URL holds no URL"):
        settings(nats_url=" , ").nats_servers()


def test_replicas_come_from_one_setting_and_reach_every_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert {q.replicas for q in settings().queues()} == {1}
    monkeypatch.setenv("P8FS_NATS_REPLICAS", "3")
    configured = RunnerSettings(_env_file=None)  # type: ignore[call-arg]
    assert configured.nats_replicas == 3
    assert {q.name: q.replicas for q in configured.queues()} == {
        "router": 3,
        "small": 3,
        "medium": 3,
        "large": 3,
        "test": 3,
    }
    # Tier overrides and replicas combine: one does not undo the other.
    both = settings(nats_replicas=3, tier_overrides={"small": {"max_deliver": 9}})
    assert both.queue("small").replicas == 3 and both.queue("small").max_deliver == 9
    for bad in ("0", "6"):
        monkeypatch.setenv("P8FS_NATS_REPLICAS", bad)
        with pytest.raises(ValueError, match="nats_replicas"):
            RunnerSettings(_env_file=None)  # type: ignore[call-arg]
