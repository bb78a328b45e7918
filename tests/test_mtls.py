"""TLS on the internal listener and client certificates (mTLS) as an alternative to API keys.

A throwaway CA, server and client certificates are made here with `cryptography`; a second CA plays the
attacker who can mint certificates with any name but is not trusted.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keysvc.config import parse_settings
from keysvc.errors import ConfigError
from keysvc.tls import identities
from tests.helpers import KeysvcProcess, api_key, base_config, wait_for

Start = Callable[..., KeysvcProcess]
SIGN = {"keyset": "zapier", "claims": {"sub": "u-1", "aud": "connect.zapier.com"}}
SPIFFE = "spiffe://cluster.local/ns/ops/sa/admin"
BILLING = "spiffe://cluster.local/ns/billing/sa/api"  # a workload's own SPIFFE ID, mapped to no client here
OTHER = "spiffe://cluster.local/ns/other/sa/api"  # mapped to the client `other`


@dataclass
class Pki:
    dir: Path
    ca: Path
    server: tuple[Path, Path]
    certs: dict[str, tuple[Path, Path]]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    crt, pem = directory / f"{stem}.crt", directory / f"{stem}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


def _issue(subject: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           sans: list[x509.GeneralName], *, ca: bool = False, server: bool = False,
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
    return builder.sign(signer, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA; a server certificate for 127.0.0.1; client certificates mapped (CN, SAN URI) and unmapped;
    and one for a mapped name but issued by an untrusted CA."""
    import ipaddress

    d = tmp_path_factory.mktemp("pki")
    ca = _issue("keysvc test CA", None, [], ca=True)
    rogue = _issue("rogue CA", None, [], ca=True)
    ca_crt, _ = _write(d, "ca", *ca)
    server = _write(d, "server", *_issue("keysvc", ca, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                                         server=True))
    certs = {
        "signer": _write(d, "signer", *_issue("signer.internal", ca, [])),
        "admin-san": _write(d, "admin-san", *_issue("ops", ca, [x509.UniformResourceIdentifier(SPIFFE)])),
        "unmapped": _write(d, "unmapped", *_issue("stranger.internal", ca, [x509.DNSName("stranger.internal")])),
        "rogue-signer": _write(d, "rogue-signer", *_issue("signer.internal", rogue, [])),
        # the attack: a CA that checks SANs lets the requester choose the CN, here the admin's SPIFFE ID
        "cn-attack": _write(d, "cn-attack", *_issue(SPIFFE, ca, [x509.UniformResourceIdentifier(BILLING)])),
        "cn-attack-other": _write(d, "cn-attack-other", *_issue(SPIFFE, ca, [x509.UniformResourceIdentifier(OTHER)])),
        # SANs naming two different clients (signer by DNS name, admin by URI)
        "two-clients": _write(d, "two-clients", *_issue("x", ca, [x509.DNSName("signer.internal"),
                                                                   x509.UniformResourceIdentifier(SPIFFE)])),
        "dns-upper": _write(d, "dns-upper", *_issue("x", ca, [x509.DNSName("Signer.Internal")])),
    }
    return Pki(d, ca_crt, server, certs)


def tls_config(tmp_path: Path, pki: Pki, *, require: bool) -> dict[str, object]:
    config = base_config(tmp_path / "keys")
    config["listen"]["tls"] = {"cert_file": str(pki.server[0]), "key_file": str(pki.server[1]),
                               "client_ca_file": str(pki.ca), "require_client_cert": require}
    config["clients"]["signer"]["cert_subjects"] = ["cn:signer.internal", "dns:signer.internal"]
    # cn: next to uri: on purpose: a CN counts only for a certificate without SANs, so the attack
    # certificates (CN = this string, plus a SAN) still never authenticate as admin
    config["clients"]["admin"]["cert_subjects"] = [f"uri:{SPIFFE}", f"cn:{SPIFFE}"]
    config["clients"]["other"]["cert_subjects"] = [f"uri:{OTHER}"]
    return config


def client(pki: Pki, cert: str | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        crt, key = pki.certs[cert]
        context.load_cert_chain(str(crt), str(key))
    return httpx.Client(verify=context, timeout=10)


def https(proc: KeysvcProcess) -> str:
    return proc.internal.replace("http://", "https://")


@pytest.mark.system
def test_a_chosen_cn_next_to_a_san_never_authenticates(tmp_path: Path, keysvc: Start, pki: Pki) -> None:
    """The identity-confusion attack: a certificate whose only SAN is a workload's own SPIFFE ID and whose
    CN is the admin's SPIFFE string. Its CN is ignored (it has a SAN), so it is not admin: with its SAN
    mapped to no client it gets 401 on every route; with its SAN mapped to `other` it is `other` (403 on
    the admin route, and logged as `other`, never as admin). SANs naming two clients get 401; DNS SANs
    match case-insensitively."""
    proc = keysvc(tls_config(tmp_path, pki, require=True))
    base = https(proc)
    with client(pki, "cn-attack") as http:
        keys = http.get(f"{base}/v1/keys", headers={"X-Request-ID": "cn-attack"})
        assert keys.status_code == 401, keys.text
        assert keys.json()["error"] == "invalid_client"
        assert http.post(f"{base}/v1/sign", json=SIGN).status_code == 401
    with client(pki, "cn-attack-other") as http:
        keys = http.get(f"{base}/v1/keys", headers={"X-Request-ID": "cn-attack-other"})
        assert keys.status_code == 403, keys.text
    with client(pki, "two-clients") as http:
        both = http.get(f"{base}/v1/keys", headers={"X-Request-ID": "two-clients"})
        assert both.status_code == 401 and "more than one client" in both.json()["error_description"]
    with client(pki, "dns-upper") as http:
        assert http.post(f"{base}/v1/sign", json=SIGN).status_code == 200

    def access(rid: str) -> dict[str, object] | None:
        return next((line for line in proc.lines() if line.get("event") == "access"
                     and line.get("request_id") == rid), None)

    attack = wait_for(lambda: access("cn-attack"), 10, "the attack's access line")
    assert (attack["status"], attack["client"]) == (401, None)
    other = wait_for(lambda: access("cn-attack-other"), 10, "the second attack's access line")
    assert (other["status"], other["client"]) == (403, "other")
    assert wait_for(lambda: access("two-clients"), 10, "the two-client access line")["client"] is None


@pytest.mark.system
def test_client_certificates_map_to_clients_when_required(tmp_path: Path, keysvc: Start, pki: Pki) -> None:
    """require_client_cert: a certificate whose CN (it has no SANs) or SAN URI is in a client's
    cert_subjects authenticates as that client with no API key; a verified but unmapped certificate gets 401; a
    certificate from an untrusted CA, or none, fails the TLS handshake; a certificate and an API key of
    different clients get 401; plain HTTP is not served."""
    proc = keysvc(tls_config(tmp_path, pki, require=True))
    base = https(proc)
    with client(pki, "signer") as http:
        signed = http.post(f"{base}/v1/sign", json=SIGN)
        assert signed.status_code == 200, signed.text
        assert http.get(f"{base}/v1/keys").status_code == 403  # signer is not an admin
        mixed = http.post(f"{base}/v1/sign", json=SIGN, headers={"Authorization": f"Bearer {api_key('admin')}"})
        assert mixed.status_code == 401
        same = http.post(f"{base}/v1/sign", json=SIGN, headers={"Authorization": f"Bearer {api_key('signer')}"})
        assert same.status_code == 200
    with client(pki, "admin-san") as http:
        assert http.get(f"{base}/v1/keys").status_code == 200
    with client(pki, "unmapped") as http:
        refused = http.post(f"{base}/v1/sign", json=SIGN)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    for cert in ("rogue-signer", None):
        with client(pki, cert) as http, pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            http.post(f"{base}/v1/sign", json=SIGN).raise_for_status()
    with pytest.raises(httpx.HTTPError):
        httpx.get(proc.internal + "/healthz", timeout=5).raise_for_status()


@pytest.mark.system
def test_optional_client_certificate_falls_back_to_api_keys(tmp_path: Path, keysvc: Start, pki: Pki) -> None:
    """Without require_client_cert, TLS clients without a certificate authenticate with API keys as
    before (and with neither get 401); mapped certificates still work."""
    proc = keysvc(tls_config(tmp_path, pki, require=False))
    base = https(proc)
    with client(pki, None) as http:
        assert http.post(f"{base}/v1/sign", json=SIGN,
                         headers={"Authorization": f"Bearer {api_key('signer')}"}).status_code == 200
        assert http.post(f"{base}/v1/sign", json=SIGN).status_code == 401
    with client(pki, "signer") as http:
        assert http.post(f"{base}/v1/sign", json=SIGN).status_code == 200


@pytest.mark.unit
def test_tls_config_refusals(tmp_path: Path, pki: Pki) -> None:
    """cert_subjects need a client CA; require_client_cert needs a client CA; files must exist; a subject
    may name one client only; unknown keys are refused; an untyped subject is refused with the prefix
    to write; typed subjects are kept (DNS names lower-cased)."""
    def refused(mutate: Callable[[dict[str, object]], None]) -> str:
        config = tls_config(tmp_path, pki, require=True)
        mutate(config)
        with pytest.raises(ConfigError) as err:
            parse_settings(config)
        return err.value.field

    assert refused(lambda c: c["listen"]["tls"].pop("client_ca_file")) == "listen.tls.require_client_cert"  # type: ignore[index, attr-defined]
    assert refused(lambda c: c["listen"].pop("tls")) == "clients.signer.cert_subjects"  # type: ignore[attr-defined]
    assert refused(lambda c: c["listen"]["tls"].update(cert_file="/nope")) == "listen.tls.cert_file"  # type: ignore[index, attr-defined]
    assert refused(lambda c: c["listen"]["tls"].update(ciphers="ALL")) == "listen.tls.ciphers"  # type: ignore[index, attr-defined]
    assert refused(
        lambda c: c["clients"]["other"].update(cert_subjects=["dns:Signer.internal"])  # type: ignore[index, attr-defined]
    ) == "clients.other.cert_subjects"
    settings = parse_settings(tls_config(tmp_path, pki, require=True))
    assert settings.tls is not None and settings.tls.require_client_cert
    assert settings.clients["signer"].cert_subjects == ("cn:signer.internal", "dns:signer.internal")
    for untyped, suggested in [("signer.internal", "dns:signer.internal"), (SPIFFE, f"uri:{SPIFFE}"),
                               ("ops@example.com", "email:ops@example.com"), ("Ops Team", "cn:Ops Team"),
                               ("DNS:a.example", "dns:a.example")]:
        config = tls_config(tmp_path, pki, require=True)
        config["clients"]["signer"]["cert_subjects"] = [untyped]  # type: ignore[index]
        with pytest.raises(ConfigError) as err:
            parse_settings(config)
        assert err.value.field == "clients.signer.cert_subjects"
        assert f"{untyped!r} has no type: write {suggested} " in err.value.message
    assert refused(lambda c: c["clients"]["signer"].update(cert_subjects=["dns:"])) == (  # type: ignore[index, attr-defined]
        "clients.signer.cert_subjects")


@pytest.mark.unit
def test_identities_of_a_peer_certificate() -> None:
    """Typed DNS/URI/e-mail SANs, in order, without duplicates, DNS lower-cased; the CN only when the
    certificate has no SAN at all (an IP SAN alone is enough to drop it); nothing for an unverified peer."""
    subject = ((("commonName", SPIFFE),), (("organizationName", "x"),))
    peer = {"subject": subject, "subjectAltName": (("DNS", "A.internal"), ("URI", BILLING), ("DNS", "a.internal"),
                                                   ("email", "ops@example.com"), ("IP Address", "10.0.0.1"))}
    assert identities(peer) == ("dns:a.internal", f"uri:{BILLING}", "email:ops@example.com")
    assert identities({"subject": subject, "subjectAltName": (("IP Address", "10.0.0.1"),)}) == ()
    assert identities({"subject": subject}) == (f"cn:{SPIFFE}",)
    assert identities({}) == () and identities(None) == ()
