"""deploy/: the Dockerfile and manifests pass their linters (offline), and what the image relies on holds on the
real server process: configuration from the environment only, a non-root uid, a tree it cannot write."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from .live import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
NOBODY = 65534


def linter(name: str) -> str:
    """The linter installed beside this Python (the dev extra) or on PATH."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        if os.environ.get("MEDCLS_REQUIRE_ALL") == "1":
            pytest.fail(f"{name} is not installed (dev extra)")
        pytest.skip(f"{name} is not installed (dev extra)")
    return found


def lint(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ linters
def test_dockerfile_passes_hadolint():
    r = lint(linter("hadolint"), "--failure-threshold", "info", str(DEPLOY / "Dockerfile"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD medcls serve\n")
    r = lint(linter("hadolint"), str(bad))
    assert r.returncode != 0 and "DL3007" in r.stdout  # 'latest' tag


def test_manifests_validate_strictly_against_the_kubernetes_schemas():
    kinds = [yaml.safe_load(p.read_text())["kind"] for p in MANIFESTS]
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(kinds)
    files = [str(p) for p in MANIFESTS if p.name != "kustomization.yaml"]  # not a Kubernetes kind: no schema
    r = lint(linter("kubernetes-validate"), "--strict", "--quiet", *files)
    assert r.returncode == 0, r.stdout + r.stderr
    kustomize = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert sorted(kustomize["resources"]) == sorted(Path(f).name for f in files)


def test_strict_validation_refuses_a_misspelt_field(tmp_path):
    bad = tmp_path / "d.yaml"
    bad.write_text((DEPLOY / "k8s" / "deployment.yaml").read_text().replace("revisionHistoryLimit", "revisionHistoryLimt"))
    r = lint(linter("kubernetes-validate"), "--strict", "--quiet", str(bad))
    assert r.returncode != 0 and "revisionHistoryLimt" in r.stdout + r.stderr


def test_compose_file_validates_against_the_compose_spec():
    r = lint(linter("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------ the manifests agree with the server
def deployment() -> dict:
    return yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())


def serve_options() -> dict[str, object]:
    """Environment variable -> default of every `medcls serve` parameter (click's auto envvar prefix)."""
    import typer.main

    from medcls.cli import app

    cmd = typer.main.get_command(app).commands["serve"]
    ctx = cmd.make_context("serve", ["/x"], resilient_parsing=True, auto_envvar_prefix="MEDCLS_SERVE")
    out = {}
    for p in cmd.params:
        env = p.envvar if isinstance(p.envvar, str) else p.resolve_envvar_value(ctx) or f"MEDCLS_SERVE_{p.name.upper()}"
        out[env] = p.default
    return out


def test_every_environment_variable_in_the_manifests_is_a_serve_option():
    options = serve_options()
    container = deployment()["spec"]["template"]["spec"]["containers"][0]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["medcls"]["environment"]
    named = [e["name"] for e in container["env"]] + list(compose)
    assert [n for n in named if n.startswith("MEDCLS_SERVE_") and n not in options] == []
    assert "MEDCLS_SERVE_TIMEOUT_GRACEFUL_SHUTDOWN" in options and "MEDCLS_SERVE_BUNDLE" in options


def test_probes_security_and_grace_period_match_the_server():
    from medcls.serve import ServeSettings, create_app

    pod = deployment()["spec"]["template"]["spec"]
    c = pod["containers"][0]
    paths = set(create_app(ServeSettings(bundle="x")).openapi()["paths"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] in paths
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"  # ready = model loaded
    env = {e["name"]: e.get("value") for e in c["env"]}
    grace = float(env["MEDCLS_SERVE_TIMEOUT_GRACEFUL_SHUTDOWN"])
    assert pod["terminationGracePeriodSeconds"] > c["lifecycle"]["preStop"]["sleep"]["seconds"] + grace
    assert c["ports"][0]["containerPort"] == int(env["MEDCLS_SERVE_PORT"])
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsUser"] != 0
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # the only writable place
    docker = (DEPLOY / "Dockerfile").read_text()
    assert "USER 10001" in docker and "HEALTHCHECK" in docker and "/health" in docker


# ------------------------------------------------------------------ the real server, configured like the image
def as_user(uid: int) -> dict:
    """subprocess arguments that run the child as ``uid`` only (its group too, no supplementary groups)."""
    return {"user": uid, "group": uid, "extra_groups": []}


def reachable_by(uid: int) -> bool:
    """Whether a process of ``uid`` can run this Python (its interpreter may live under a private home)."""
    try:
        r = subprocess.run([sys.executable, "-c", "import medcls, fastapi"], cwd="/", capture_output=True, **as_user(uid))
    except PermissionError:  # the interpreter itself
        return False
    return r.returncode == 0


@pytest.fixture
def readonly_tree(bundle):
    """The bundle copied into a folder that belongs to root and that nobody else may write."""
    out, _ = bundle
    root = Path(tempfile.mkdtemp(prefix="medcls-ro-"))
    shutil.copytree(out, root / "bundle")
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o444)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to start a non-root server")
def test_server_from_environment_only_as_nobody_on_a_read_only_tree(readonly_tree, tmp_path):
    if not reachable_by(NOBODY):
        msg = f"uid {NOBODY} cannot run {sys.executable} (its home is private; .ci/run makes it reachable)"
        if os.environ.get("MEDCLS_REQUIRE_NONROOT") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    home = Path(tempfile.mkdtemp(prefix="medcls-home-"))
    os.chown(home, NOBODY, NOBODY)
    key = readonly_tree / "api-key"
    key.write_text("s3cret\n")
    key.chmod(0o444)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDCLS_SERVE_")}
    env.update(HOME=str(home), TMPDIR=str(home), MPLCONFIGDIR=str(home / "mpl"), PYTHONDONTWRITEBYTECODE="1",
               MEDCLS_SERVE_BUNDLE=str(readonly_tree / "bundle"), MEDCLS_SERVE_PORT=str(port),
               MEDCLS_SERVE_BACKEND="onnx", MEDCLS_SERVE_API_KEY_FILE=str(key), MEDCLS_SERVE_MAX_UPLOAD_MB="0.01")
    before = {p: p.stat().st_mtime_ns for p in readonly_tree.rglob("*")}
    proc = subprocess.Popen([sys.executable, "-m", "medcls", "serve"], cwd=readonly_tree, env=env, **as_user(NOBODY),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = wait_ready(f"http://127.0.0.1:{port}", proc)
        assert Path(f"/proc/{proc.pid}/status").read_text().split("Uid:")[1].split()[0] == str(NOBODY)
        assert httpx.post(base + "/v1/predict", files={"file": ("a.png", png())}).status_code == 401
        ok = httpx.post(base + "/v1/predict", files={"file": ("a.png", png())}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200 and "probabilities" in ok.json()
        big = httpx.post(base + "/v1/predict", files={"file": ("a.png", b"x" * 20_000)}, headers={"X-API-Key": "s3cret"})
        assert big.status_code == 413  # MEDCLS_SERVE_MAX_UPLOAD_MB took effect
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
        shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode in (0, -15, 143), out
    assert {p: p.stat().st_mtime_ns for p in readonly_tree.rglob("*")} == before  # nothing written in the tree
    assert not any(stat.S_IWOTH & p.stat().st_mode for p in readonly_tree.rglob("*"))


def test_a_bad_environment_value_is_one_line_exit_2(bundle):
    out, _ = bundle
    env = {**os.environ, "MEDCLS_SERVE_BUNDLE": str(out), "MEDCLS_SERVE_PORT": "eighty"}
    r = subprocess.run([sys.executable, "-m", "medcls", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "--port" in r.stderr and "MEDCLS_SERVE_PORT='eighty'" in r.stderr


def test_api_key_file_errors_are_one_line(bundle, tmp_path):
    out, _ = bundle
    for key, what in ((tmp_path, "found a directory"), (tmp_path / "missing", "no such file")):
        r = subprocess.run([sys.executable, "-m", "medcls", "serve", str(out), "--api-key-file", str(key)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr
