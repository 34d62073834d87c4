"""The committed stubs in recstack/v1 must equal what scripts/gen_protos.py generates from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    _load_generator().generate(tmp_path)
    fresh_dir = tmp_path / "recstack" / "v1"
    committed_dir = ROOT / "recstack" / "v1"
    fresh = {p.name: p.read_text() for p in fresh_dir.iterdir() if p.is_file()}
    committed = {p.name: p.read_text() for p in committed_dir.iterdir() if p.is_file() and p.suffix != ".pyc"}
    assert sorted(fresh) == sorted(committed), "stub files differ from protos: run `make protos`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run `make protos` and commit recstack/v1"


def test_every_service_proto_has_a_stub() -> None:
    protos = {p.stem for p in (ROOT / "protos" / "recstack" / "v1").glob("*.proto")}
    assert {"common", "gateway", "retrieval", "ranking", "rerank", "bandit"} <= protos
    for name in protos:
        assert (ROOT / "recstack" / "v1" / f"{name}_pb2.py").exists()
