"""compose.yaml fit for production, checked by `docker-compose config` (no engine needed) and by its structure.

Credentials come only from the env file (compose refuses empty ones; `migrate` refuses the samples), every
image tag is pinned, each of our images is built by one service and reused, every long-running service has a
healthcheck, and only the proxy (nginx) and MinIO's S3 port are published beyond loopback.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO

ONE_SHOT = {"createbucket", "migrate"}


def _compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed: `apt-get install docker-compose` (.ci/run installs it)"
    return subprocess.run([binary, "--env-file", str(env_file), "-f", str(REPO / "compose.yaml"), "config", *args],
                          cwd=REPO, capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    done = _compose(REPO / ".env.example")
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def test_docker_compose_validates_the_file_with_the_sample_env() -> None:
    done = _compose(REPO / ".env.example", "-q")
    assert done.returncode == 0, done.stderr


def test_empty_secrets_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = _compose(empty, "-q")
    assert done.returncode != 0
    assert "in .env" in done.stderr


def test_sample_secrets_are_refused_by_the_service_everything_waits_for(resolved: dict[str, Any]) -> None:
    migrate = resolved["services"]["migrate"]
    script = migrate["entrypoint"][2].replace("$$", "$")
    env = {"POSTGRES_PASSWORD": migrate["environment"]["POSTGRES_PASSWORD"],
           "AWS_SECRET_ACCESS_KEY": migrate["environment"]["AWS_SECRET_ACCESS_KEY"], "PATH": "/usr/bin:/bin"}
    refused = subprocess.run(["sh", "-c", script, "migrate", "true"], env=env, capture_output=True, text=True,
                             check=False, timeout=30)
    assert refused.returncode != 0 and "sample secrets" in refused.stderr
    env.update(POSTGRES_PASSWORD="s3cret-from-a-vault", AWS_SECRET_ACCESS_KEY="another-one")
    assert subprocess.run(["sh", "-c", script, "migrate", "true"], env=env, check=False, timeout=30).returncode == 0


def test_every_image_is_pinned_and_ours_are_built_once(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    builders: dict[str, list[str]] = {}
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), (name, image)
        if "build" in service:
            builders.setdefault(image, []).append(name)
    assert all(len(names) == 1 for names in builders.values()), builders
    ours = {s["image"] for s in services.values() if s["image"].startswith("unipic-")}
    assert ours == set(builders)


def test_long_running_services_have_healthchecks(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), name


def test_only_the_proxy_and_the_s3_port_are_published_beyond_loopback(resolved: dict[str, Any]) -> None:
    public = set()
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip", "") if isinstance(port, dict) else ""
            text = str(port)
            if host_ip not in ("127.0.0.1",) and "127.0.0.1" not in text:
                public.add((name, int(port["target"]) if isinstance(port, dict) else text))
    assert public == {("proxy", 80), ("proxy", 443), ("minio", 9000)}, public
    assert "ports" not in resolved["services"]["api"]  # the API is reachable only through the proxy


def test_prometheus_loads_the_alert_rules_and_scrapes_every_kind_of_target(resolved: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO / "deploy/prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} >= {"unipic-api", "unipic-worker", "unipic-cpu"}
    mounts = resolved["services"]["prometheus"]["volumes"]
    targets = {m["target"] if isinstance(m, dict) else m.split(":")[1] for m in mounts}
    assert set(config["rule_files"]) <= targets
