"""RS256/ES256 tokens verified with public keys from an issuer's JWKS URL.

The JWKS is served by a real aiohttp server on 127.0.0.1 that each test
starts and stops. The verifier's clock is a parameter (`now`), so the cache's
refresh and refetch bounds are tested without waiting for them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from dataclasses import dataclass, field

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from chaos.eventually import eventually
from chaos.rawws import RawWebSocket, UpgradeRefused
from common.settings import SettingsError
from node.admission import UNAUTHORIZED, Admission, Refusal
from node.auth import AuthError, JwksSettings, JwksSource, TokenVerifier
from node.config import NodeConfig
from tests.security.tokens import KEY1, bearer, flag, token
from tests.wsclient import WsClient

NOW = 2_000_000_000.0  # Unix seconds at which tokens are judged
HANG_GUARD_S = 60.0  # a test stuck this long has lost its timeout; not a latency bound


@dataclass
class Signer:
    kid: str
    algorithm: str
    private_key: object

    def jwk(self, **extra) -> dict:
        to_jwk = RSAAlgorithm.to_jwk if self.algorithm == "RS256" else ECAlgorithm.to_jwk
        return {**to_jwk(self.private_key.public_key(), as_dict=True), "kid": self.kid, "use": "sig", **extra}

    def token(self, at: float = NOW, algorithm: str | None = None, kid: str | None = "same", **claims) -> str:
        body = {"sub": "alice", "exp": int(at) + 600, "rooms": ["chat:*"], "publish": ["chat:*"], **claims}
        headers = {} if kid is None else {"kid": self.kid if kid == "same" else kid}
        return jwt.encode(body, self.private_key, algorithm=algorithm or self.algorithm, headers=headers)


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {
        "rsa": Signer("rsa-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ec": Signer("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1())),
        "rsa2": Signer("rsa-2", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "stranger": Signer("rsa-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    }


@dataclass
class JwksServer:
    """A JWKS endpoint on 127.0.0.1: serves `document`, counts requests, can hang until released."""

    document: dict = field(default_factory=lambda: {"keys": []})
    hits: int = 0
    hang: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    url: str = ""

    async def _serve(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.hang:
            await self.released.wait()
        return web.json_response(self.document)

    async def start(self) -> "JwksServer":
        app = web.Application()
        app.router.add_get("/jwks.json", self._serve)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"
        return self

    async def stop(self) -> None:
        self.released.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def jwks_server():
    server = await JwksServer().start()
    try:
        yield server
    finally:
        await server.stop()


def _source(url: str, **limits) -> JwksSource:
    return JwksSource(JwksSettings(url, **{"timeout_s": 5.0, "refresh_interval_s": 300.0,
                                            "min_refetch_interval_s": 30.0, **limits}))


async def _verify(verifier: TokenVerifier, token_text: str, now_monotonic: float = 0.0):
    """What a worker does at an upgrade: prepare (may fetch), then the pure verify."""
    await verifier.prepare(f"Bearer {token_text}", None, now_monotonic)
    return verifier.verify(token_text, NOW)


def _unused_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- keys from the JWKS ------------------------------------------------------------------

async def test_rs256_and_es256_tokens_verify_with_keys_fetched_once(jwks_server, signers):
    jwks_server.document = {"keys": [signers["rsa"].jwk(), signers["ec"].jwk()]}
    verifier = TokenVerifier({}, jwks=_source(jwks_server.url), audience="ringcast")
    for name in ("rsa", "ec"):
        identity = await _verify(verifier, signers[name].token(aud="ringcast", sub=f"user-{name}"))
        assert identity.user == f"user-{name}" and identity.may_join("chat:x") and identity.expires_at == NOW + 600
    assert jwks_server.hits == 1  # both keys came in one document
    with pytest.raises(AuthError, match="aud"):
        await _verify(verifier, signers["rsa"].token(aud="someone-else"))


async def test_a_wrong_key_or_algorithm_is_refused(jwks_server, signers):
    rsa_signer, ec_signer = signers["rsa"], signers["ec"]
    jwks_server.document = {"keys": [rsa_signer.jwk(), ec_signer.jwk()]}
    verifier = TokenVerifier({}, jwks=_source(jwks_server.url))
    refused = [
        (signers["stranger"].token(), "signature"),  # right kid, another private key
        (ec_signer.token(kid=rsa_signer.kid), "does not match"),  # an ES256 token naming the RSA key
        (rsa_signer.token(algorithm="RS512"), "algorithm"),
        (rsa_signer.token(algorithm="PS256"), "algorithm"),
        (rsa_signer.token(kid=None), "kid"),
        (rsa_signer.token(kid="rsa-9"), "unknown key id"),
        (jwt.encode({"sub": "a", "exp": int(NOW) + 60}, KEY1[1], algorithm="HS256", headers={"kid": "rsa-1"}),
         "algorithm"),  # no HS256 secrets configured: HS256 is not accepted at all
    ]
    for token_text, why in refused:
        with pytest.raises(AuthError, match=why):
            await _verify(verifier, token_text)


def _hs256_by_hand(secret: bytes, header: dict, claims: dict) -> str:
    """An HS256 token signed with any bytes (PyJWT refuses to use a PEM public key as an HMAC secret)."""
    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    signing_input = part(json.dumps(header).encode()) + "." + part(json.dumps(claims).encode())
    return signing_input + "." + part(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


@pytest.mark.parametrize("with_secrets", [False, True], ids=["jwks-only", "jwks-and-hs256-secrets"])
async def test_alg_confusion_an_hs256_token_signed_with_the_public_key_is_refused(jwks_server, signers, with_secrets):
    rsa_signer = signers["rsa"]
    jwks_server.document = {"keys": [rsa_signer.jwk()]}
    secrets = {KEY1[0]: KEY1[1].encode()} if with_secrets else {}
    verifier = TokenVerifier(secrets, jwks=_source(jwks_server.url))
    await _verify(verifier, rsa_signer.token())  # the key is cached
    claims = {"sub": "mallory", "exp": int(NOW) + 600, "rooms": ["*"], "publish": ["*"]}
    public_pem = rsa_signer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_der = rsa_signer.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public_pem, public_der, json.dumps(rsa_signer.jwk()).encode()):
        for header in ({"alg": "HS256", "typ": "JWT", "kid": rsa_signer.kid}, {"alg": "HS256", "typ": "JWT"}):
            with pytest.raises(AuthError):
                await _verify(verifier, _hs256_by_hand(secret, header, claims))


async def test_a_new_kid_is_fetched_once_and_unknown_kids_cannot_force_more_fetches(jwks_server, signers):
    old, new = signers["rsa"], signers["rsa2"]
    jwks_server.document = {"keys": [old.jwk()]}
    source = _source(jwks_server.url, min_refetch_interval_s=30.0)
    verifier = TokenVerifier({}, jwks=source)
    assert (await _verify(verifier, old.token(), now_monotonic=0.0)).user == "alice"
    assert jwks_server.hits == 1

    # The issuer rotates: the new key appears, and many clients arrive with it at once.
    jwks_server.document = {"keys": [old.jwk(), new.jwk()]}
    with pytest.raises(AuthError, match="unknown key id"):  # too soon after the last fetch: not fetched
        await _verify(verifier, new.token(), now_monotonic=10.0)
    assert jwks_server.hits == 1
    identities = await asyncio.gather(*(_verify(verifier, new.token(), now_monotonic=31.0) for _ in range(20)))
    assert {identity.user for identity in identities} == {"alice"}
    assert jwks_server.hits == 2  # twenty upgrades, one fetch
    await _verify(verifier, old.token(), now_monotonic=32.0)
    assert jwks_server.hits == 2  # cached

    # A flood of made-up kids costs at most one fetch per min_refetch_interval_s.
    for n in range(50):
        with pytest.raises(AuthError, match="unknown key id"):
            await _verify(verifier, new.token(kid=f"made-up-{n}"), now_monotonic=61.0 + n * 0.1)
    assert jwks_server.hits == 3


async def test_keys_are_refreshed_after_the_interval_and_a_removed_key_stops_verifying(jwks_server, signers):
    jwks_server.document = {"keys": [signers["rsa"].jwk(), signers["ec"].jwk()]}
    verifier = TokenVerifier({}, jwks=_source(jwks_server.url, refresh_interval_s=300.0))
    await _verify(verifier, signers["ec"].token(), now_monotonic=0.0)
    jwks_server.document = {"keys": [signers["rsa"].jwk()]}  # the issuer withdraws the EC key
    await _verify(verifier, signers["ec"].token(), now_monotonic=299.0)  # still cached
    assert jwks_server.hits == 1
    await _verify(verifier, signers["rsa"].token(), now_monotonic=300.0)  # due: refreshed
    assert jwks_server.hits == 2
    with pytest.raises(AuthError, match="unknown key id"):
        await _verify(verifier, signers["ec"].token(), now_monotonic=301.0)


async def test_the_cache_keeps_at_most_max_keys_and_refuses_unusable_keys(jwks_server, signers):
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    unusable = [
        {"kty": "oct", "kid": "shared", "k": base64.urlsafe_b64encode(b"s" * 32).decode().rstrip("=")},
        Signer("small", "RS256", small_rsa).jwk(),
        Signer("p384", "ES256", ec.generate_private_key(ec.SECP384R1())).jwk(),
        signers["ec"].jwk(use="enc"),
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
    ]
    many = [Signer(f"k{n}", "RS256", signers["rsa"].private_key).jwk() for n in range(20)]
    jwks_server.document = {"keys": unusable + many}
    source = _source(jwks_server.url, max_keys=4)
    verifier = TokenVerifier({}, jwks=source)
    await _verify(verifier, signers["rsa"].token(kid="k0"))
    assert sorted(source.keys.keys) == ["k0", "k1", "k2", "k3"]
    assert len(source.keys.ignored) == len(unusable) + 1  # + "keys past the first 4"
    with pytest.raises(AuthError, match="unknown key id"):
        await _verify(verifier, signers["rsa"].token(kid="k4"), now_monotonic=1.0)
    shared = jwt.encode({"sub": "a", "exp": int(NOW) + 60}, b"s" * 32, algorithm="HS256", headers={"kid": "shared"})
    with pytest.raises(AuthError, match="algorithm"):
        await _verify(verifier, shared)


async def test_an_oversized_document_is_a_failed_fetch(jwks_server, signers):
    jwks_server.document = {"keys": [signers["rsa"].jwk()], "padding": "x" * 10_000}
    verifier = TokenVerifier({}, jwks=_source(jwks_server.url, max_bytes=4096))
    with pytest.raises(AuthError, match="could not be fetched"):
        await _verify(verifier, signers["rsa"].token())
    assert "larger than 4096 bytes" in verifier.jwks.keys.last_error


# --- an issuer that is down or slow ------------------------------------------------------

def _admission(verifier: TokenVerifier) -> Admission:
    return Admission(allowed_origins=(), max_connections_per_ip=10, accept_rate_per_s=100.0, accept_burst=100,
                     verifier=verifier, now=0.0)


async def _admit(admission: Admission, token_text: str, now_monotonic: float = 0.0):
    await admission.verifier.prepare(f"Bearer {token_text}", None, now_monotonic)
    return admission.check(ip="127.0.0.1", origin=None, authorization=f"Bearer {token_text}", query_token=None,
                           now_monotonic=now_monotonic, now_unix=NOW)


async def test_a_jwks_server_that_is_down_gives_a_clear_401(signers):
    down_url = f"http://127.0.0.1:{_unused_loopback_port()}/jwks.json"
    admission = _admission(TokenVerifier({}, jwks=_source(down_url)))
    decision = await _admit(admission, signers["rsa"].token())
    assert isinstance(decision, Refusal)
    assert (decision.status, decision.code) == (401, UNAUTHORIZED)
    assert "could not be fetched" in decision.message and "127.0.0.1" not in decision.message  # the URL stays in the log
    assert "unreachable" in admission.verifier.jwks.keys.last_error


async def test_a_slow_jwks_server_is_cut_at_the_timeout_without_blocking_the_event_loop(jwks_server, signers):
    jwks_server.document = {"keys": [signers["rsa"].jwk()]}
    jwks_server.hang = True
    admission = _admission(TokenVerifier({}, jwks=_source(jwks_server.url, timeout_s=0.5)))
    turns = 0

    async def count_loop_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.ensure_future(count_loop_turns())
    try:
        # The guard only keeps a broken timeout from hanging the suite; nothing here measures time.
        decision = await asyncio.wait_for(_admit(admission, signers["rsa"].token()), HANG_GUARD_S)
    finally:
        counter.cancel()
    assert isinstance(decision, Refusal) and decision.code == UNAUTHORIZED and "could not be fetched" in decision.message
    assert jwks_server.hits == 1 and not jwks_server.released.is_set()  # the server never answered: the timeout ended it
    assert "did not answer within 0.5 s" in admission.verifier.jwks.keys.last_error
    assert turns > 1  # other work ran on the loop while the fetch waited

    # The issuer recovers; the next attempt, one min_refetch_interval_s later, loads the keys.
    jwks_server.hang = False
    assert isinstance(await _admit(admission, signers["rsa"].token(), now_monotonic=29.0), Refusal)  # not retried yet
    assert jwks_server.hits == 1
    admitted = await _admit(admission, signers["rsa"].token(), now_monotonic=30.0)
    assert not isinstance(admitted, Refusal) and admitted.identity.user == "alice"


async def test_a_client_that_leaves_does_not_cancel_the_fetch_others_wait_for(jwks_server, signers):
    jwks_server.document = {"keys": [signers["rsa"].jwk()]}
    jwks_server.hang = True
    verifier = TokenVerifier({}, jwks=_source(jwks_server.url))
    leaving = asyncio.ensure_future(verifier.prepare(f"Bearer {signers['rsa'].token()}", None, 0.0))
    staying = asyncio.ensure_future(verifier.prepare(f"Bearer {signers['rsa'].token()}", None, 0.0))
    await eventually(lambda: jwks_server.hits, equals=1, what="the fetch reached the JWKS server")
    leaving.cancel()
    jwks_server.released.set()
    await staying
    assert verifier.verify(signers["rsa"].token(), NOW).user == "alice"
    assert jwks_server.hits == 1


# --- settings ----------------------------------------------------------------------------------

def test_the_jwt_settings_build_the_verifier_and_bad_ones_are_refused():
    config = NodeConfig(
        auth="required", jwt_jwks_url="https://issuer.example/jwks.json", jwt_audience="ringcast",
        jwt_issuer="https://issuer.example", jwt_jwks_timeout_s=2.0, jwt_jwks_refresh_interval_s=600.0,
        jwt_jwks_min_refetch_interval_s=60.0, jwt_jwks_max_keys=8, jwt_jwks_max_bytes=1000,
    )
    config.validate()  # a JWKS URL is enough for --auth required
    verifier = config.token_verifier()
    assert (verifier.algorithms, verifier.audience, verifier.issuer) == (("RS256", "ES256"), "ringcast", "https://issuer.example")
    assert verifier.jwks.keys.settings == JwksSettings("https://issuer.example/jwks.json", 2.0, 600.0, 60.0, 8, 1000)
    both = NodeConfig(jwt_secret=[flag(KEY1)], jwt_jwks_url="http://127.0.0.1:1/jwks.json").token_verifier()
    assert both.algorithms == ("HS256", "RS256", "ES256") and both.audience is None and both.issuer is None
    assert NodeConfig(jwt_jwks_url="https://issuer.example/jwks.json").auth_enabled  # auto: on
    assert NodeConfig().token_verifier() is None
    for bad in (
        dict(auth="required"), dict(jwt_jwks_url="ftp://issuer.example/jwks.json"),
        dict(jwt_jwks_url="https://i.example/k", jwt_jwks_timeout_s=0.0),
        dict(jwt_jwks_url="https://i.example/k", jwt_jwks_max_keys=0),
        dict(jwt_jwks_url="https://i.example/k", jwt_jwks_min_refetch_interval_s=600.0),  # > the refresh interval
    ):
        with pytest.raises(SettingsError):
            NodeConfig(**bad).validate()


# --- a real worker ---------------------------------------------------------------------------

async def test_a_worker_verifies_rs256_tokens_from_a_jwks_url_and_checks_the_audience(start_node, jwks_server, signers):
    jwks_server.document = {"keys": [signers["rsa"].jwk(), signers["ec"].jwk()]}
    node = start_node(1, "--auth", "required", "--jwt-jwks-url", jwks_server.url, "--jwt-audience", "ringcast",
                      "--jwt-secret", flag(KEY1))
    at = time.time()
    for token_text in (signers["rsa"].token(at=at, aud="ringcast"), signers["ec"].token(at=at, aud="ringcast"),
                       token(KEY1, aud="ringcast")):
        client = await WsClient.connect(node.ws_url(), headers=bearer(token_text))
        assert (await client.join("chat:general"))["room"] == "chat:general"
        await client.close()
    assert jwks_server.hits == 1
    for refused in (signers["rsa"].token(at=at, aud="other"), signers["stranger"].token(at=at, aud="ringcast"),
                    token(KEY1)):
        with pytest.raises(UpgradeRefused) as answer:
            await RawWebSocket.connect(node.host, node.port, "/ws", bearer(refused))
        assert answer.value.answer.status == 401
