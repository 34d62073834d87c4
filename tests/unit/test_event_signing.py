"""Per-producer event signatures (recstack/events/signing.py): signer and verifier, the keys file,
the producer adding the headers, and the stream's BatchProcessor dead-lettering unsigned and forged
records as ``unauthenticated``. The same path with a real worker, Kafka and Redis is in
tests/integration/test_security_stream.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from recstack.events import UserEvent, event_to_json, new_event
from recstack.events.producer import EventProducer
from recstack.events.signing import (
    PRODUCER_HEADER,
    SIGNATURE_HEADER,
    Signer,
    SigningConfigError,
    Verifier,
    load_keys,
    new_secret,
)
from recstack.features.writer import ApplyResult
from services.feature_stream.processor import BatchProcessor, RawMessage, dead_letter_headers, record_headers

GATEWAY, CLI = new_secret(), new_secret()


def keys_file(tmp_path: Path, producers: dict[str, str]) -> str:
    path = tmp_path / "event-keys.yaml"
    path.write_text(yaml.safe_dump({"producers": producers}))
    return str(path)


def test_sign_and_verify(tmp_path: Path) -> None:
    verifier = Verifier(load_keys(keys_file(tmp_path, {"gateway": GATEWAY, "cli": CLI})))
    value = event_to_json(new_event("u1", "click", "i1"))
    headers = Signer("gateway", GATEWAY.encode()).headers(value)
    assert verifier.check(value, headers) is None
    assert verifier.check(value, dict(headers)) is None  # Faust may hand over a mapping
    assert "unsigned" in verifier.check(value, [])
    assert "bad signature" in verifier.check(value + b" ", headers)  # tampered value
    assert "bad signature" in verifier.check(value, Signer("gateway", CLI.encode()).headers(value))
    assert "unknown producer 'mallory'" in verifier.check(
        value, Signer("mallory", CLI.encode()).headers(value)
    )


def test_keys_file_and_env_errors(tmp_path: Path) -> None:
    with pytest.raises(SigningConfigError, match="RECSTACK_EVENT_KEYS_FILE=/nope"):
        load_keys("/nope")
    with pytest.raises(SigningConfigError, match="at least 32"):
        load_keys(keys_file(tmp_path, {"gateway": "short"}))
    path = keys_file(tmp_path, {"gateway": GATEWAY})
    env = {"RECSTACK_EVENT_KEYS_FILE": path, "RECSTACK_EVENT_PRODUCER_ID": "cli"}
    with pytest.raises(SigningConfigError, match="RECSTACK_EVENT_PRODUCER_ID=cli: no key"):
        Signer.from_env(env)
    assert Signer.from_env({"RECSTACK_EVENT_KEYS_FILE": path}) is None  # no producer id: unsigned
    assert Signer.from_env({**env, "RECSTACK_EVENT_PRODUCER_ID": "gateway"}).producer_id == "gateway"
    assert Verifier.from_env({}) is None


def test_event_producer_signs_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTACK_EVENT_KEYS_FILE", keys_file(tmp_path, {"gateway": GATEWAY}))
    monkeypatch.setenv("RECSTACK_EVENT_PRODUCER_ID", "gateway")
    producer = EventProducer("127.0.0.1:9", "t")
    value = b"{}"
    headers = dict(producer._headers(value))
    assert headers[PRODUCER_HEADER] == b"gateway" and len(headers[SIGNATURE_HEADER]) == 64
    assert EventProducer("127.0.0.1:9", "t", signer=None)._headers(value) is None


class Writer:
    def __init__(self) -> None:
        self.applied: list[UserEvent] = []

    async def apply(self, events: Sequence[UserEvent], sources=None) -> ApplyResult:  # noqa: ANN001
        self.applied.extend(events)
        return ApplyResult(len(events), 0, 0)


async def test_processor_dead_letters_unsigned_and_forged_events(tmp_path: Path) -> None:
    dead: list[tuple[RawMessage, str, str]] = []

    async def sink(message: RawMessage, reason: str, detail: str) -> None:
        dead.append((message, reason, detail))

    good, unsigned, forged = (new_event(u, "click", "i1") for u in ("u1", "u2", "u3"))
    signer, forger = Signer("gateway", GATEWAY.encode()), Signer("gateway", CLI.encode())

    def raw(event: UserEvent, offset: int, s: Signer | None) -> RawMessage:
        value = event_to_json(event)
        headers = record_headers(s.headers(value)) if s else ()
        return RawMessage(value, event.user_id.encode(), "user-events", 0, offset, headers)

    writer = Writer()
    processor = BatchProcessor(writer, sink, verifier=Verifier({"gateway": GATEWAY.encode()}))  # type: ignore[arg-type]
    outcome = await processor.process([raw(good, 0, signer), raw(unsigned, 1, None), raw(forged, 2, forger)])
    assert writer.applied == [good]
    assert (outcome.valid, outcome.invalid) == (1, 2)
    assert [(m.offset, reason) for m, reason, _ in dead] == [(1, "unauthenticated"), (2, "unauthenticated")]
    assert "bad signature for producer 'gateway'" in dead[1][2]
    assert dead_letter_headers(*dead[1])[PRODUCER_HEADER] == b"gateway"  # who it claimed to be

    # without a verifier, nothing is checked
    writer = Writer()
    await BatchProcessor(writer, sink).process([raw(unsigned, 3, None)])  # type: ignore[arg-type]
    assert writer.applied == [unsigned]
