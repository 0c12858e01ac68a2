"""compose.yaml and the Dockerfiles: the production layout is complete and every command it runs exists.

Docker is not available to the tests, so the file is checked structurally (PyYAML) and each service command
of our own images is run locally with `--help`: a renamed or missing CLI command fails here, not at deploy.
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO
from tests.support.stack import clean_env

ONE_SHOT = {"createbucket", "migrate"}
# beat is a single scheduler process: Docker's restart policy is its health (it answers no ping)
NO_HEALTHCHECK = ONE_SHOT | {"beat"}
REQUIRED = {"postgres", "redis", "minio", "createbucket", "migrate", "api", "proxy", "worker", "webhooks", "beat"}
OPTIONAL = {"prometheus": "monitoring", "flower": "flower"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def test_every_service_of_the_production_layout_is_there(services: dict[str, Any]) -> None:
    assert set(services) >= REQUIRED
    for name, profile in OPTIONAL.items():
        assert profile in services[name]["profiles"], name
    for name in REQUIRED:
        assert "profiles" not in services[name], f"{name} must start by default"


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart(services: dict[str, Any]) -> None:
    assert services["beat"]["deploy"]["replicas"] == 1
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
        elif name not in NO_HEALTHCHECK:
            assert service["healthcheck"]["test"], name


def test_start_order_waits_for_health_and_for_the_one_shots(services: dict[str, Any]) -> None:
    assert services["createbucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "webhooks", "beat"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["createbucket"]["condition"] == "service_completed_successfully", name


def test_workers_reserve_a_gpu_scale_and_keep_the_model_cache(services: dict[str, Any]) -> None:
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    assert "replicas" in worker["deploy"]
    assert worker["environment"]["HF_HOME"] == "/models"
    assert any(v.endswith(":/models") for v in worker["volumes"])
    assert "--device" in worker["command"]


def test_services_share_the_production_urls(services: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker", "webhooks", "beat"):
        env = services[name]["environment"]
        assert env["UNIPIC_DATABASE_URL"].startswith("postgresql://"), name
        assert env["UNIPIC_BROKER_URL"].startswith("redis://redis:6379"), name
        assert env["UNIPIC_STORAGE_URL"].startswith("s3://"), name
        assert env["UNIPIC_S3_ENDPOINT_URL"] == "http://minio:9000", name


def _our_commands(services: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(label, argv) of every command that runs our CLI: service commands and healthchecks."""
    found = []
    for name, service in services.items():
        if "build" in service or str(service.get("image", "")).startswith("unipic-"):  # our images
            found.append((name, service["command"]))
        test = service.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "unipic"]:
            found.append((f"{name} healthcheck", test[1:]))
    return found


def _help(argv: list[str]) -> tuple[list[str], list[str], subprocess.CompletedProcess[str]]:
    """Run `unipic <subcommand path> --help` for a service's argv (the path ends at the first option)."""
    first_option = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    words = argv[1:first_option]
    result = subprocess.run([sys.executable, "-m", "cli.main", *words, "--help"], cwd=REPO, env=clean_env(),
                            capture_output=True, text=True, check=False, timeout=60)
    return argv, words, result


def test_every_service_command_is_a_real_cli_entry_point(services: dict[str, Any]) -> None:
    commands = _our_commands(services)
    assert {label for label, _ in commands} >= {"migrate", "api", "worker", "webhooks", "beat",
                                                "api healthcheck", "worker healthcheck", "webhooks healthcheck"}
    assert all(argv[0] == "unipic" for _, argv in commands)
    with ThreadPoolExecutor(max_workers=4) as pool:  # interpreter start-ups overlap
        helps = list(pool.map(_help, [argv for _, argv in commands]))
    for (label, _), (argv, words, result) in zip(commands, helps, strict=True):
        assert result.returncode == 0, f"{label}: {argv}\n{result.stdout}\n{result.stderr}"
        for option in [a for a in argv[1:] if a.startswith("--")]:
            assert option in result.stdout, f"{label}: option {option} unknown to `unipic {' '.join(words)}`"


def test_dockerfiles_exist_and_run_the_cli(services: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        dockerfile = REPO / services[name]["build"]["dockerfile"]
        text = dockerfile.read_text()
        assert re.search(r'^CMD \["unipic"', text, re.MULTILINE), dockerfile
    api_docker = (REPO / "docker/api.Dockerfile").read_text()
    assert "requirements/api.txt" in api_docker and "\ntorch==" not in (REPO / "requirements/api.txt").read_text()
    assert "torch" in (REPO / "docker/worker.Dockerfile").read_text()


def test_prometheus_scrapes_the_api(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO / "deploy/prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert "api:8000" in targets
    mount = compose["services"]["prometheus"]["volumes"][0]
    assert Path(REPO / mount.split(":")[0]).resolve() == (REPO / "deploy/prometheus.yml").resolve()


def test_the_proxy_is_the_only_way_in_and_runs_the_documented_config(services: dict[str, Any]) -> None:
    proxy = services["proxy"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", proxy["image"]), proxy["image"]
    mounts = {v.rsplit(":", 2)[1]: v.rsplit(":", 2)[0] for v in proxy["volumes"]}  # source:target:ro
    assert (REPO / mounts["/etc/nginx/templates/default.conf.template"]).resolve() == REPO / "deploy/nginx.conf"
    assert proxy["environment"]["UNIPIC_API_UPSTREAM"] == "api:8000"
    assert proxy["environment"]["NGINX_ENVSUBST_FILTER"] == "^UNIPIC_"  # nginx's own $host etc. stay
    assert "/etc/nginx/tls" in mounts and "PROXY_TLS_DIR" in mounts["/etc/nginx/tls"]
    assert proxy["environment"]["UNIPIC_TLS_DIR"] == "/etc/nginx/tls"
    assert (REPO / "deploy/tls/README.md").is_file() and not list((REPO / "deploy/tls").glob("*.conf"))
    assert [p.split(":")[-1] for p in proxy["ports"]] == ["80", "443"]
    assert proxy["environment"]["UNIPIC_PROXY_PORT"] == "80"
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    api = services["api"]
    assert "ports" not in api and api["expose"] == ["8000"]
    assert "--port" in api["command"] and api["command"][api["command"].index("--port") + 1] == "8000"


def test_the_proxy_fills_every_placeholder_of_its_config(services: dict[str, Any]) -> None:
    placeholders = set(re.findall(r"\$\{(UNIPIC_[A-Z_]+)\}", (REPO / "deploy/nginx.conf").read_text()))
    assert placeholders == {"UNIPIC_PROXY_PORT", "UNIPIC_API_UPSTREAM", "UNIPIC_TLS_DIR"}
    assert placeholders <= set(services["proxy"]["environment"])


def test_the_proxy_body_cap_is_the_apis_largest_body() -> None:
    from api.app import body_limits
    from storage.settings import Settings

    largest = max(body_limits(Settings(database_url="sqlite://")).values())
    cap = re.search(r"client_max_body_size (\d+)m;", (REPO / "deploy/nginx.conf").read_text())
    assert cap and int(cap.group(1)) * 1024 * 1024 == largest
