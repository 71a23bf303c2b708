"""`make lint`'s deploy checks (scripts/check_deploy.py): the real files pass, broken copies fail.

Each broken copy is one real file with one mistake a person makes, checked by the same command
`make lint` runs; the failure must name the file and the mistake.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCRIPT = ROOT / "scripts" / "check_deploy.py"


def check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def broken_copy(tmp_path: Path, relative: str, old: str, new: str) -> Path:
    """A copy of deploy/``relative`` under tmp_path with ``old`` replaced by ``new`` once."""
    source = DEPLOY / relative
    text = source.read_text()
    assert text.count(old) >= 1, f"{old!r} is no longer in {relative}"
    target = tmp_path / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text.replace(old, new, 1))
    return target


def failed_lines(run: subprocess.CompletedProcess[str], path: Path) -> str:
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    assert f"FAIL  {path}:" in out, out
    return out


def test_the_real_deploy_files_pass() -> None:
    run = check()
    assert run.returncode == 0, run.stdout + run.stderr
    for name in (
        "deploy/docker/Dockerfile",
        "deploy/compose/compose.yaml",
        "deploy/k8s/silo-statefulset.yaml",
        "deploy/k8s/coordinator-deployment.yaml",
        "deploy/k8s/silo-networkpolicy.yaml",
        "deploy/k8s/kustomization.yaml",
        "deploy/EDIT-BEFORE-DEPLOYING.md",
    ):
        assert f"ok    {name}:" in run.stdout, run.stdout
    assert "FAIL" not in run.stdout


def test_a_dockerfile_from_latest_with_unpinned_apt_fails(tmp_path: Path) -> None:
    dockerfile = broken_copy(
        tmp_path,
        "docker/Dockerfile",
        "FROM ${PYTHON_IMAGE} AS run\n",
        "FROM debian:latest AS run\nRUN apt-get update && apt-get install -y curl\n",
    )
    out = failed_lines(check(dockerfile), dockerfile)
    assert "DL3007" in out  # FROM …:latest
    assert "DL3008" in out  # apt-get install without versions


def test_a_compose_service_with_an_unknown_key_fails(tmp_path: Path) -> None:
    compose = broken_copy(
        tmp_path, "compose/compose.yaml", '    restart: "no"\n', '    restrat: "no"\n'
    )
    out = failed_lines(check(compose), compose)
    assert "services.admin" in out and "'restrat'" in out


def test_a_value_of_the_wrong_type_in_a_shared_anchor_fails_in_every_service(
    tmp_path: Path,
) -> None:
    compose = broken_copy(
        tmp_path, "compose/compose.yaml", "  read_only: true\n", "  read_only: {}\n"
    )
    out = failed_lines(check(compose), compose)
    for service in ("hub", "kjv", "pydocs", "web", "admin"):
        assert f"services.{service}.read_only" in out


def copy_manifests(tmp_path: Path) -> Path:
    directory = tmp_path / "k8s"
    shutil.copytree(DEPLOY / "k8s", directory, ignore=shutil.ignore_patterns("kits"))
    return directory


def test_a_deployment_with_a_field_of_the_wrong_type_fails(tmp_path: Path) -> None:
    directory = copy_manifests(tmp_path)
    deployment = directory / "coordinator-deployment.yaml"
    deployment.write_text(deployment.read_text().replace("replicas: 1", 'replicas: "one"', 1))
    run = check(directory)
    out = failed_lines(run, deployment)
    assert "Deployment/hub" in out and "spec.replicas" in out
    # The other manifests of the directory are still checked, and pass.
    assert f"ok    {directory / 'silo-statefulset.yaml'}:" in out


def test_an_unknown_field_fails_strict_validation(tmp_path: Path) -> None:
    directory = copy_manifests(tmp_path)
    statefulset = directory / "silo-statefulset.yaml"
    statefulset.write_text(
        statefulset.read_text().replace("  serviceName: kjv", "  serviceName: kjv\n  replica: 2", 1)
    )
    out = failed_lines(check(directory), statefulset)
    assert "StatefulSet/kjv" in out and "'replica'" in out


@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        ("silo-statefulset.yaml", "secretName: kjv-tls", "secretName: kjv-tsl", "no Secret"),
        ("silo-statefulset.yaml", "  serviceName: kjv", "  serviceName: kjb", "serviceName"),
        ("coordinator-deployment.yaml", "claimName: hub-state", "claimName: hub", "no Persistent"),
    ],
)
def test_a_workload_naming_what_is_not_there_fails(
    tmp_path: Path, name: str, old: str, new: str, expected: str
) -> None:
    directory = copy_manifests(tmp_path)
    manifest = directory / name
    manifest.write_text(manifest.read_text().replace(old, new, 1))
    out = failed_lines(check(directory), manifest)
    assert expected in out


def test_a_kustomization_missing_a_manifest_or_committing_a_secret_fails(tmp_path: Path) -> None:
    directory = copy_manifests(tmp_path)
    kustomization = directory / "kustomization.yaml"
    text = kustomization.read_text().replace("  - silo-networkpolicy.yaml\n", "", 1)
    text = text.replace("hub.key=kits/hub/tls/hub.key", "hub.key=hub.key", 1)
    kustomization.write_text(text)
    out = failed_lines(check(directory), kustomization)
    assert "silo-networkpolicy.yaml is not in resources" in out
    assert "Secret hub-tls from hub.key" in out
