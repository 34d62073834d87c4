"""Connection security settings of Redis (recstack/redis_client.py) and Kafka
(recstack/events/kafka_security.py): what reaches the client libraries, and errors naming the
variable. Real connections: Redis ACL users in tests/integration/test_security_stream.py; the
embedded broker (Tansu) and redis-server have no SASL/TLS to test against here (docs/operations.md)."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from recstack import redis_client
from recstack.events.kafka_security import KafkaSecurity, KafkaSecurityError, aiokafka_kwargs
from recstack.rpc.certs import dev_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return dev_pki(tmp_path_factory.mktemp("pki"))


def test_redis_plain_urls_get_nothing_extra() -> None:
    assert redis_client.connection_kwargs("redis://user:pw@host:6379/0", {}) == {}


def test_rediss_verifies_against_the_ca(pki) -> None:
    kwargs = redis_client.connection_kwargs(
        "rediss://app:pw@redis:6380/0", {"RECSTACK_REDIS_CA": str(pki.ca)}
    )
    assert kwargs == {"ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_ca_certs": str(pki.ca)}
    client = redis_client.sync_redis("rediss://app:pw@redis:6380/0")  # no CA: the system store
    conn = client.connection_pool.connection_kwargs
    assert (conn["username"], conn["password"], conn["ssl_cert_reqs"]) == ("app", "pw", "required")
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"


def test_redis_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(redis_client.RedisConfigError, match="RECSTACK_REDIS_CA=/nope"):
        redis_client.connection_kwargs("rediss://h:1/0", {"RECSTACK_REDIS_CA": "/nope"})
    junk = tmp_path / "junk"
    junk.write_text("x")
    with pytest.raises(redis_client.RedisConfigError, match="not a PEM"):
        redis_client.connection_kwargs("rediss://h:1/0", {"RECSTACK_REDIS_CA": str(junk)})
    with pytest.raises(redis_client.RedisConfigError, match="REDIS_URL must start with") as err:
        redis_client.connection_kwargs("http://user:secret@h:1", {})
    assert "secret" not in str(err.value)


def test_kafka_plaintext_is_the_default() -> None:
    assert aiokafka_kwargs({}) == {} and KafkaSecurity.from_env({}).faust_credentials() is None


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
async def test_kafka_sasl_ssl(pki, mechanism: str) -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": mechanism,
        "KAFKA_SASL_USERNAME": "recstack-stream",
        "KAFKA_SASL_PASSWORD": "pw",
        "KAFKA_SSL_CA": str(pki.ca),
    }
    kwargs = aiokafka_kwargs(env)
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == mechanism
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("recstack-stream", "pw")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    creds = KafkaSecurity.from_env(env).faust_credentials()
    assert isinstance(creds, faust.SASLCredentials) and creds.mechanism.value == mechanism
    assert creds.protocol.value == "SASL_SSL"
    from aiokafka import AIOKafkaProducer

    AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", **kwargs)  # aiokafka accepts the arguments


def test_kafka_sasl_plaintext_and_mtls(pki) -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_USERNAME": "u",
        "KAFKA_SASL_PASSWORD": "p",
    }
    kwargs = aiokafka_kwargs(env)
    assert "ssl_context" not in kwargs and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert KafkaSecurity.from_env(env).faust_credentials().protocol.value == "SASL_PLAINTEXT"
    ssl_env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA": str(pki.ca),
        "KAFKA_SSL_CERT": str(pki.client.cert),
        "KAFKA_SSL_KEY": str(pki.client.key),
    }
    assert aiokafka_kwargs(ssl_env)["security_protocol"] == "SSL"
    assert isinstance(KafkaSecurity.from_env(ssl_env).faust_credentials(), faust.SSLCredentials)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
            },
            "KAFKA_SASL_MECHANISM must be one of",
        ),  # fmt: skip
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA": "/nope.pem"},
            "KAFKA_SSL_CA=/nope.pem: no such file",
        ),
        ({"KAFKA_SSL_CA": "/x"}, "KAFKA_SSL_CA is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT": "/x"}, "KAFKA_SSL_CERT and KAFKA_SSL_KEY"),
    ],
)
def test_kafka_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(KafkaSecurityError, match=message):
        KafkaSecurity.from_env(env)
