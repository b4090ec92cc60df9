"""The compose stack and the image, checked without a Docker engine.

``docker-compose config`` (Debian's docker-compose, which ``make test`` installs) validates the file
and prints it resolved; the tests read that output, so they see what Compose would run: the Qdrant
pin against the installed qdrant-client, the health check, the named volume, the one-shot ingest
profile, the models root and the API key passed through.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHELFSIGHT_SERVICES = ("api", "ui", "ingest")


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is not installed: run `make test` (it installs Debian's docker-compose)")
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("QDRANT", "SHELFSIGHT", "MODELS", "CATALOG", "STACK"))
    }
    return subprocess.run(
        [tool, "-f", str(REPO / "docker-compose.yml"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean | (env or {}),
    )


def _resolved(env: dict[str, str] | None = None) -> dict:
    proc = _compose("--profile", "ingest", "config", env=env)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_compose_file_is_valid():
    proc = _compose("config", "-q")
    assert proc.returncode == 0, f"docker-compose config -q failed:\n{proc.stderr}"


def test_qdrant_is_pinned_to_the_clients_minor_version_with_volume_and_health_check():
    qdrant = _resolved()["services"]["qdrant"]
    match = re.fullmatch(r"qdrant/qdrant:v(\d+)\.(\d+)\.(\d+)", qdrant["image"])
    assert match, f"qdrant image {qdrant['image']!r} is not pinned to a version"
    client = importlib.metadata.version("qdrant-client").split(".")[:2]
    assert list(match.groups()[:2]) == client, f"server {qdrant['image']} vs qdrant-client {client}"
    resolved = _resolved()
    named = set(resolved.get("volumes") or {})
    storage = [v.split(":")[0] for v in qdrant["volumes"] if v.split(":")[1] == "/qdrant/storage"]
    assert storage and storage[0] in named, f"/qdrant/storage should be a named volume: {qdrant['volumes']}"
    assert "/readyz" in " ".join(qdrant["healthcheck"]["test"])


def test_shelfsight_services_reach_qdrant_when_healthy_and_mount_the_models_root():
    services = _resolved()["services"]
    assert services["ingest"]["profiles"] == ["ingest"]
    assert services["ingest"]["restart"] == "no"
    for name in SHELFSIGHT_SERVICES:
        service = services[name]
        assert service["depends_on"]["qdrant"]["condition"] == "service_healthy", name
        assert service["environment"]["QDRANT_URL"] == "http://qdrant:6333", name
        root = service["environment"]["SHELFSIGHT_MODELS"]
        assert any(str(v).split(":")[1] == root for v in service["volumes"]), (name, service["volumes"])
    assert any(str(v).endswith(":/catalog:ro") for v in services["ingest"]["volumes"])


def test_api_key_reaches_the_server_and_every_service():
    services = _resolved(env={"QDRANT_API_KEY": "s3cret"})["services"]
    assert services["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"] == "s3cret"
    for name in SHELFSIGHT_SERVICES:
        assert services[name]["environment"]["QDRANT_API_KEY"] == "s3cret", name


def test_services_can_point_at_another_qdrant():
    services = _resolved(env={"STACK_QDRANT_URL": "https://cluster.example:6333"})["services"]
    for name in SHELFSIGHT_SERVICES:
        assert services[name]["environment"]["QDRANT_URL"] == "https://cluster.example:6333", name


def test_models_and_catalog_folders_come_from_the_environment():
    services = _resolved(env={"MODELS_DIR": "/srv/models", "CATALOG_DIR": "/srv/catalog", "MODEL": "demo"})["services"]
    assert "/srv/models:/models:rw" in services["api"]["volumes"]
    assert "/srv/catalog:/catalog:ro" in services["ingest"]["volumes"]
    assert services["ingest"]["command"][-2:] == ["--model", "demo"]


def test_image_installs_the_built_wheel_rather_than_copied_folders():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip wheel" in dockerfile and "COPY --from=wheel /wheels" in dockerfile
    copies = re.findall(r"^COPY (?!--from)(.+)$", dockerfile, flags=re.M)
    assert copies == [". ."], f"the runtime image should get the package only from the wheel, found COPY {copies}"
    assert "SHELFSIGHT_MODELS=/models" in dockerfile
