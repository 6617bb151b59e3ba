#!/usr/bin/env python3
"""Offline checks of deploy/ (run by scripts/check-deploy, from scripts/test).

Each group prints one line, `ok` or `FAIL` with the reasons; every group
runs, and the script exits 1 if any failed. Nothing is skipped silently: a
check that cannot run here says what it did instead (e.g. the Compose file
is checked against the Compose specification's JSON schema when there is no
`docker compose`).

Groups:
  yamllint       every YAML file under deploy/ (chart templates excepted:
                 they are Go templates, checked by rendering them)
  helm-lint      `helm lint --strict` for each values set, at the chart's
                 minimum Kubernetes version
  helm-render    values.schema.json accepts each values set; `helm template`
                 renders; every object validates against the Kubernetes
                 schemas of the chart's declared minimum version (strict:
                 unknown fields are errors); CRD kinds get a structural check
  chart-rules    what the issue asks of the shapes: probes, anti-affinity,
                 grace period > preStop + drain, non-root, read-only root,
                 cache on emptyDir, node id from the pod name, secrets from
                 Secrets, Prometheus annotations, HPA and PDB per fleet
  k8s-drift      deploy/k8s/ equals the chart rendered with default values
  dockerfile     hadolint; the build copies the locked workspace (every
                 member of Cargo.toml) and builds with --locked; non-root
                 runtime; the binaries deploy/ runs are the ones it installs
  compose        parses (docker compose config, or the Compose JSON schema);
                 names only images the Dockerfile builds, plus pinned
                 third-party images (PostgreSQL, Redis)
  systemd        `systemd-analyze verify` when systemd is present; hardening
                 directives the issue asks for
  observability  deploy/observability/: `promtool check rules` and `promtool
                 test rules` (every alert has a firing and a quiet case, and
                 severity, summary, description), `promtool check config` of
                 the example configs; the Grafana dashboard: datasource and
                 region variables, every panel on `${datasource}` with at
                 least one expression; every Sentinel metric the dashboard
                 and the rules name is in docs/operations.md. (That each
                 expression returns data from a real fleet is
                 tests/tests/observability.rs.)
  flags          every flag and env var deploy/ passes to sentinel,
                 sentinel-cp or sentinelctl (rendered manifests, Compose,
                 systemd units and env files, Dockerfile, docs/deploy.md)
                 appears in that binary's --help
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "sentinel"
K8S_FILE = DEPLOY / "k8s" / "sentinel.yaml"
COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
SYSTEMD = DEPLOY / "systemd"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
OBSERVABILITY = DEPLOY / "observability"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

RELEASE = "sentinel"
NAMESPACE = "sentinel"

# Values sets rendered and validated; the first is the one deploy/k8s/ holds.
VALUE_SETS = {
    "default values": None,
    "three regions": CHART / "ci" / "three-regions-values.yaml",
}

BINARIES = ("sentinel", "sentinel-cp", "sentinelctl")

# Env vars our binaries read outside their clap flags (docs/operations.md).
ENV_READ_OUTSIDE_CLAP = {"RUST_LOG", "SENTINEL_WORKERS"}

# Images deploy/ may run that the Dockerfile does not build: the
# infrastructure of the local fleet, pinned to a major version.
THIRD_PARTY_IMAGES = {"postgres", "redis"}

# helm template's order of kinds (pkg/release/util/kind_sorter.go).
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret",
    "SecretList", "ConfigMap", "StorageClass", "PersistentVolume",
    "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role",
    "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
    "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]

# Kinds of CRDs the chart may render, which kubernetes-validate has no
# schema for: the fields each must carry.
CRD_REQUIRED = {
    ("cert-manager.io/v1", "Certificate"): ["spec.secretName", "spec.issuerRef.name"],
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["spec.selector", "spec.endpoints"],
}


# === report ===


@dataclass
class Group:
    name: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def note(self, message: str) -> None:
        self.notes.append(message)


class Report:
    def __init__(self) -> None:
        self.groups: list[Group] = []

    def run(self, name: str, check, *args) -> None:
        group = Group(name)
        started = time.monotonic()
        try:
            check(group, *args)
        except Exception as error:  # a broken check is a failure, not a skip
            group.fail(f"check crashed: {type(error).__name__}: {error}")
        took = time.monotonic() - started
        status = "FAIL" if group.problems else "ok"
        extra = f" ({'; '.join(group.notes)})" if group.notes and not group.problems else ""
        print(f"==> deploy: {name:<12} {status} {took:5.2f}s{extra}", flush=True)
        for problem in group.problems:
            for i, line in enumerate(problem.splitlines()):
                print(("    - " if i == 0 else "      ") + line)
        self.groups.append(group)

    def finish(self) -> int:
        failed = [g.name for g in self.groups if g.problems]
        passed = len(self.groups) - len(failed)
        print(f"deploy checks: {passed} passed, {len(failed)} failed", flush=True)
        if failed:
            print(f"check-deploy: failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0


# === helpers ===


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def chart_kube_version() -> str:
    """The minimum version of the chart's `kubeVersion: ">=1.30.0-0"`."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    match = re.search(r">=\s*v?(\d+\.\d+\.\d+)", chart.get("kubeVersion", ""))
    if not match:
        raise ValueError("Chart.yaml declares no `kubeVersion: \">=X.Y.Z\"` to validate against")
    return match.group(1)


def load_values(path: Path | None) -> dict:
    return yaml.safe_load(path.read_text()) or {} if path else {}


def dig(obj, dotted: str):
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def kind_rank(doc: dict) -> tuple:
    kind = doc.get("kind", "")
    rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
    return (rank, kind, doc.get("metadata", {}).get("name", ""))


class Rendered:
    """One values set rendered: the helm-template-style text and the objects."""

    def __init__(self, text: str, objects: list[tuple[str, dict]], notes: str) -> None:
        self.text = text
        self.objects = objects
        self.notes = notes


def render(values: dict) -> Rendered:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[tuple[tuple, str, str, dict]] = []
    for source, text in manifests.items():
        if not source.endswith((".yaml", ".yml")):
            continue
        for chunk in re.split(r"^---\s*$", text, flags=re.M):
            if not chunk.strip():
                continue
            obj = yaml.safe_load(chunk)
            if obj is None:
                continue
            docs.append((kind_rank(obj), source, chunk.strip("\n"), obj))
    docs.sort(key=lambda d: (d[0], d[1]))
    text = "".join(f"---\n# Source: {source}\n{chunk}\n" for _, source, chunk, _ in docs)
    notes = next((t for s, t in manifests.items() if s.endswith("NOTES.txt")), "")
    return Rendered(text, [(source, obj) for _, source, _, obj in docs], notes)


K8S_HEADER = (
    "# Plain manifests for clusters without Helm: deploy/helm/sentinel rendered\n"
    "# with its default values (release \"sentinel\", namespace \"sentinel\").\n"
    "# Generated by `scripts/check-deploy --update`; do not edit by hand —\n"
    "# scripts/test fails when this file and the chart disagree.\n"
    "# Apply: kubectl create namespace sentinel && kubectl -n sentinel apply -f deploy/k8s/\n"
)


# === checks ===


def check_yamllint(g: Group, venv: Path) -> None:
    files = [
        p for p in sorted(DEPLOY.rglob("*"))
        if p.suffix in (".yaml", ".yml") and "templates" not in p.parts
    ]
    if not files:
        g.fail("no YAML files under deploy/")
        return
    result = run([str(venv / "bin" / "yamllint"), "-f", "parsable", "-c", str(DEPLOY / "tools" / "yamllint.yaml"),
                  *map(str, files)], cwd=ROOT)
    if result.returncode != 0:
        g.fail((result.stdout + result.stderr).strip())
    g.note(f"{len(files)} files")


def check_helm_lint(g: Group, kube: str) -> None:
    import helm_python as helm

    for label, path in VALUE_SETS.items():
        report = helm.lint(str(CHART), load_values(path), strict=True, namespace=NAMESPACE,
                           kube_version=f"v{kube}")
        for message in report.get("messages", []):
            if message.get("severity", 0) >= 2:
                g.fail(f"{label}: {message.get('path')}: {message.get('error')}")
        for error in report.get("errors", []):
            g.fail(f"{label}: {error}")
    g.note(f"strict, Kubernetes {kube}")


def check_helm_render(g: Group, kube: str, rendered: dict[str, Rendered]) -> None:
    import kubernetes_validate as kv

    count = 0
    for label, path in VALUE_SETS.items():
        try:
            rendered[label] = render(load_values(path))
        except Exception as error:
            g.fail(f"{label}: {error}")
            continue
        for source, obj in rendered[label].objects:
            count += 1
            where = f"{label}: {source}: {obj.get('kind')}/{dig(obj, 'metadata.name')}"
            crd = CRD_REQUIRED.get((obj.get("apiVersion"), obj.get("kind")))
            if crd is not None:
                for dotted in ["metadata.name", *crd]:
                    if dig(obj, dotted) in (None, "", [], {}):
                        g.fail(f"{where}: `{dotted}` is missing")
                continue
            try:
                kv.validate(obj, kube, True)
            except kv.ValidationError as error:
                path_ = ".".join(str(p) for p in error.path)
                g.fail(f"{where}: {path_ or '(root)'}: {error.message}")
            except kv.SchemaNotFoundError:
                g.fail(f"{where}: no Kubernetes {kube} schema for {obj.get('apiVersion')} "
                       f"{obj.get('kind')} (add it to CRD_REQUIRED if it is a CRD)")
    g.note(f"{count} objects, Kubernetes {kube} strict schemas")


def pod_specs(objects: list[tuple[str, dict]]):
    for source, obj in objects:
        spec = dig(obj, "spec.template.spec")
        if obj.get("kind") in ("Deployment", "DaemonSet", "StatefulSet") and spec:
            yield source, obj, spec


def check_chart_rules(g: Group, rendered: dict[str, Rendered]) -> None:
    for label in VALUE_SETS:
        if label not in rendered:
            g.fail(f"{label}: not rendered (see helm-render), so not checked")
    for label, r in rendered.items():
        kinds: dict[str, list[dict]] = {}
        for _, obj in r.objects:
            kinds.setdefault(obj["kind"], []).append(obj)
        hpas = {dig(o, "spec.scaleTargetRef.name") for o in kinds.get("HorizontalPodAutoscaler", [])}
        pdb_selectors = [dig(o, "spec.selector.matchLabels") for o in kinds.get("PodDisruptionBudget", [])]
        values = load_values(VALUE_SETS[label])
        autoscaling = dig(values, "proxy.autoscaling.enabled")
        autoscaling = True if autoscaling is None else autoscaling
        for source, obj, spec in pod_specs(r.objects):
            name = obj["metadata"]["name"]
            where = f"{label}: {name}"
            component = dig(obj, "spec.template.metadata.labels")["app.kubernetes.io/component"]
            if not dig(spec, "securityContext.runAsNonRoot"):
                g.fail(f"{where}: pod does not set runAsNonRoot")
            if not any(sel and all(dig(obj, "spec.template.metadata.labels").get(k) == v
                                   for k, v in sel.items()) for sel in pdb_selectors):
                g.fail(f"{where}: no PodDisruptionBudget selects its pods")
            for c in spec["containers"]:
                sc = c.get("securityContext", {})
                if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
                    g.fail(f"{where}: container {c['name']} needs readOnlyRootFilesystem and no privilege escalation")
                env = {e["name"]: e for e in c.get("env", [])}
                probes = (dig(c, "livenessProbe.httpGet.path"), dig(c, "readinessProbe.httpGet.path"))
                if component == "control-plane":
                    if probes != ("/healthz", "/readyz"):
                        g.fail(f"{where}: probes are {probes}, want /healthz and /readyz")
                    for var in ("DATABASE_URL", "SENTINEL_CP_BOOTSTRAP_TOKEN"):
                        if not dig(env.get(var, {}), "valueFrom.secretKeyRef"):
                            g.fail(f"{where}: {var} must come from a Secret")
                    if (obj["spec"].get("replicas") or 0) < 2:
                        g.fail(f"{where}: the control plane needs >= 2 replicas")
                elif component == "proxy":
                    if probes != ("/health", "/ready"):
                        g.fail(f"{where}: probes are {probes}, want /health and /ready")
                    if dig(env.get("SENTINEL_INSTANCE_ID", {}), "valueFrom.fieldRef.fieldPath") != "metadata.name":
                        g.fail(f"{where}: node id must come from the pod name")
                    if "SENTINEL_ZONE" not in env or "--region" not in c.get("args", []):
                        g.fail(f"{where}: --region and SENTINEL_ZONE must be set")
                    args = c.get("args", [])
                    cache = args[args.index("--cache-dir") + 1] if "--cache-dir" in args else None
                    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                    vols = {v["name"]: v for v in spec.get("volumes", [])}
                    if cache is None or "emptyDir" not in vols.get(mounts.get(cache, ""), {}):
                        g.fail(f"{where}: --cache-dir must be an emptyDir mount")
                    sleep = dig(c, "lifecycle.preStop.sleep.seconds")
                    drain = dig(values, "proxy.gracefulShutdownTimeoutSecs") or 30
                    grace = spec.get("terminationGracePeriodSeconds") or 30
                    if sleep is None:
                        g.fail(f"{where}: no preStop sleep")
                    elif grace <= sleep + drain:
                        g.fail(f"{where}: terminationGracePeriodSeconds {grace} <= preStop {sleep} + drain {drain}")
                    ann = dig(obj, "spec.template.metadata.annotations") or {}
                    if ann.get("prometheus.io/scrape") != "true" or not ann.get("prometheus.io/port"):
                        g.fail(f"{where}: Prometheus scrape annotations missing")
                    terms = (dig(spec, "affinity.podAntiAffinity") or {})
                    keys = json.dumps(terms)
                    pinned = "topology.kubernetes.io/zone" in (dig(spec, "nodeSelector") or {})
                    if "topology.kubernetes.io/zone" not in keys and not pinned:
                        g.fail(f"{where}: neither zone anti-affinity nor pinned to one zone")
                    if autoscaling and name not in hpas:
                        g.fail(f"{where}: no HorizontalPodAutoscaler")
        if "NetworkPolicy" not in kinds:
            g.fail(f"{label}: no NetworkPolicy for the control plane")
        if "HorizontalPodAutoscaler" in kinds and not autoscaling:
            g.fail(f"{label}: HPA rendered with autoscaling off")


def check_k8s_drift(g: Group, rendered: dict[str, Rendered], update: bool) -> None:
    default = rendered.get("default values")
    if default is None:
        g.fail("the chart did not render with default values (see helm-render)")
        return
    want = K8S_HEADER + default.text
    extra = sorted(p.name for p in K8S_FILE.parent.iterdir() if p != K8S_FILE)
    if extra:
        g.fail(f"deploy/k8s/ holds files the chart does not render: {', '.join(extra)}")
    if update:
        K8S_FILE.write_text(want)
        g.note(f"wrote {rel(K8S_FILE)}")
        return
    have = K8S_FILE.read_text() if K8S_FILE.exists() else ""
    if have != want:
        import difflib

        diff = list(difflib.unified_diff(have.splitlines(), want.splitlines(),
                                         rel(K8S_FILE), "helm template", lineterm="", n=1))
        shown = "\n".join(diff[:40]) + ("\n…" if len(diff) > 40 else "")
        g.fail(f"{rel(K8S_FILE)} differs from the chart; run scripts/check-deploy --update\n{shown}")


def dockerfile_stages(text: str) -> tuple[list[str], list[str]]:
    """(logical lines, stage names) of a Dockerfile."""
    text = re.sub(r"\\\n", " ", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    stages = [m.group(1) for ln in lines if (m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", ln, re.I))]
    return lines, stages


def check_dockerfile(g: Group, venv: Path) -> None:
    result = run([str(venv / "bin" / "hadolint"), "--no-color", "--failure-threshold", "warning",
                  str(DOCKERFILE)])
    if result.returncode != 0:
        g.fail("hadolint:\n" + (result.stdout + result.stderr).strip())
    lines, stages = dockerfile_stages(DOCKERFILE.read_text())
    copies = " ".join(ln for ln in lines if ln.upper().startswith("COPY") and "--from" not in ln)
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    for needed in ["Cargo.toml", "Cargo.lock", "migrations", *members]:
        if not re.search(rf"(^|\s){re.escape(needed)}(\s|$)", copies):
            g.fail(f"the build stage does not COPY `{needed}` (the locked workspace)")
    want_rust = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    have_rust = next((m.group(1) for ln in lines if (m := re.match(r"ARG RUST_VERSION=(\S+)", ln))), None)
    if have_rust is None or tuple(map(int, have_rust.split("."))) < tuple(map(int, want_rust.split("."))):
        g.fail(f"ARG RUST_VERSION={have_rust} is older than the workspace's rust-version {want_rust}")
    builds = [ln for ln in lines if "cargo build" in ln]
    if not builds or not all("--locked" in ln for ln in builds):
        g.fail("every `cargo build` must use --locked")
    final = [ln for ln in lines if ln.upper().startswith("USER")]
    if not final or final[-1].split()[1].split(":")[0] in ("0", "root"):
        g.fail("the runtime image must end with a non-root USER")
    installs = " ".join(ln for ln in lines if ln.upper().startswith("COPY") and "--from" in ln)
    for binary in BINARIES:
        if not re.search(rf"/{re.escape(binary)}(\s|$)", installs) or "/usr/local/bin/" not in installs:
            g.fail(f"the runtime image does not install {binary} into /usr/local/bin")
        if f"--bin {binary}" not in " ".join(builds):
            g.fail(f"the build does not build --bin {binary}")
    ignored = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    for member in ["Cargo.lock", "migrations", *members]:
        if member in ignored:
            g.fail(f"{rel(DOCKERIGNORE)} excludes `{member}`, which the build needs")
    g.note(f"stages {', '.join(stages)}; {len(members)} workspace members copied")


def compose_services() -> dict:
    return (yaml.safe_load(COMPOSE_FILE.read_text()) or {}).get("services", {})


def check_compose(g: Group, venv: Path) -> None:
    docker = shutil.which("docker")
    parsed = None
    if docker and run([docker, "compose", "version"]).returncode == 0:
        result = run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"])
        if result.returncode != 0:
            g.fail("docker compose config:\n" + result.stderr.strip())
        parsed = "docker compose config"
    else:
        result = run([str(venv / "bin" / "check-jsonschema"), "--builtin-schema",
                      "vendor.compose-spec", str(COMPOSE_FILE)])
        if result.returncode != 0:
            g.fail("Compose specification schema:\n" + (result.stdout + result.stderr).strip())
        parsed = "Compose JSON schema (no docker compose here)"
    _, stages = dockerfile_stages(DOCKERFILE.read_text())
    services = compose_services()
    built: set[str] = set()
    for name, svc in services.items():
        build = svc.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
        dockerfile = (context / build.get("dockerfile", "Dockerfile")).resolve()
        if context != ROOT or dockerfile != DOCKERFILE:
            g.fail(f"service {name}: builds {dockerfile} in {context}, not {rel(DOCKERFILE)} in the repository root")
        if build.get("target") and build["target"] not in stages:
            g.fail(f"service {name}: build target {build['target']} is not a stage of the Dockerfile")
        if not svc.get("image"):
            g.fail(f"service {name}: builds the Dockerfile but names no image to tag it")
        built.add(svc.get("image", ""))
    if not built:
        g.fail("no service builds deploy/docker/Dockerfile")
    for name, svc in services.items():
        image = svc.get("image", "")
        if image in built:
            continue
        repo, _, tag = image.rpartition(":") if ":" in image else (image, "", "")
        if repo in THIRD_PARTY_IMAGES and tag and tag != "latest":
            continue
        g.fail(f"service {name}: image `{image}` is neither built by the Dockerfile "
               f"nor a pinned {'/'.join(sorted(THIRD_PARTY_IMAGES))} image")
    g.note(f"{len(services)} services; parsed with {parsed}")


def unit_directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def check_systemd(g: Group, bin_dir: Path) -> None:
    units = sorted(SYSTEMD.glob("*.service"))
    if {u.name for u in units} != {"sentinel.service", "sentinel-cp.service"}:
        g.fail(f"want sentinel.service and sentinel-cp.service, found {[u.name for u in units]}")
    for unit in units:
        d = unit_directives(unit)
        want = {
            "NoNewPrivileges": "yes", "ProtectSystem": "strict",
            "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "KillSignal": "SIGTERM",
        }
        for key, value in want.items():
            if value not in d.get(key, []):
                g.fail(f"{unit.name}: {key}={value} missing")
        if not ("DynamicUser" in d or "User" in d):
            g.fail(f"{unit.name}: no DynamicUser= or User=")
        if not (d.get("ReadWritePaths") or d.get("StateDirectory") or d.get("CacheDirectory")):
            g.fail(f"{unit.name}: no ReadWritePaths/StateDirectory/CacheDirectory for its cache or database")
        reload_hup = any("HUP" in v for v in d.get("ExecReload", []))
        if unit.name == "sentinel.service" and not reload_hup:
            g.fail(f"{unit.name}: ExecReload must send SIGHUP (standalone reload)")
        if unit.name == "sentinel-cp.service" and reload_hup:
            g.fail(f"{unit.name}: sentinel-cp does not handle SIGHUP; a HUP ExecReload would stop it")
        if not d.get("TimeoutStopSec"):
            g.fail(f"{unit.name}: TimeoutStopSec (drain time) missing")
        for env_file in d.get("EnvironmentFile", []):
            example = SYSTEMD / (Path(env_file.lstrip("-")).name + ".example")
            if not example.exists():
                g.fail(f"{unit.name}: EnvironmentFile {env_file} has no example {rel(example)}")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        g.note("no systemd-analyze: directives and ExecStart flags (see flags) checked instead")
        return
    # Verify copies whose ExecStart points at the built binaries (the units
    # name /usr/local/bin, absent here).
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for unit in units:
            text = unit.read_text()
            text = re.sub(r"/usr/local/bin/(sentinel(?:-cp|ctl)?)\b",
                          lambda m: f"{bin_dir.resolve()}/{m.group(1)}", text)
            copy = Path(tmp) / unit.name
            copy.write_text(text)
            copies.append(str(copy))
        result = run([analyze, "verify", "--man=no", *copies],
                     env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
        noise = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
        if result.returncode != 0 or noise:
            g.fail("systemd-analyze verify:\n" + "\n".join(noise))
    g.note("systemd-analyze verify")


# --- observability ---


def promtool(g: Group, *args: str) -> subprocess.CompletedProcess | None:
    exe = shutil.which("promtool")
    if exe is None:
        g.fail("promtool is missing: install the Debian package `prometheus` (scripts/ensure-deps)")
        return None
    result = run([exe, *args], cwd=OBSERVABILITY / "prometheus")
    if result.returncode != 0:
        g.fail(f"promtool {' '.join(args)}:\n" + (result.stdout + result.stderr).strip())
    return result


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\bsentinel_[a-z0-9_]+", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def check_observability(g: Group) -> None:
    prom = OBSERVABILITY / "prometheus"
    for path in ("alerts.yml", "alerts_test.yml", "prometheus.yml", "federation.yml"):
        if not (prom / path).exists():
            g.fail(f"{rel(prom / path)} is missing")
    if g.problems:
        return
    if promtool(g, "check", "rules", "alerts.yml") is None:
        return
    promtool(g, "test", "rules", "alerts_test.yml")
    promtool(g, "check", "config", "prometheus.yml")
    promtool(g, "check", "config", "federation.yml")

    used: set[str] = set()
    rules = yaml.safe_load((prom / "alerts.yml").read_text())
    alerts = [r for grp in rules["groups"] for r in grp["rules"] if "alert" in r]
    tests = yaml.safe_load((prom / "alerts_test.yml").read_text())
    cases: dict[str, list[bool]] = {}
    for t in tests.get("tests", []):
        for case in t.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    for a in alerts:
        name = a["alert"]
        used |= metric_names(a["expr"])
        if a.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            g.fail(f"alert {name}: no severity label (critical, warning or info)")
        for key in ("summary", "description"):
            if not a.get("annotations", {}).get(key):
                g.fail(f"alert {name}: no {key} annotation")
        seen = cases.get(name, [])
        if True not in seen or False not in seen:
            g.fail(f"alert {name}: alerts_test.yml needs a case where it fires and one where it does not")

    path = OBSERVABILITY / "grafana" / "sentinel-fleet.json"
    try:
        dash = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        g.fail(f"{rel(path)}: {error}")
        return
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        g.fail("the dashboard needs a `datasource` variable of type datasource, query prometheus")
    if "region" not in variables:
        g.fail("the dashboard needs a `region` variable")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        g.fail("the dashboard's schemaVersion is missing or older than 36")
    panels = list(dash.get("panels", []))
    ids: set[int] = set()
    count = 0
    while panels:
        p = panels.pop()
        panels.extend(p.get("panels", []))
        if p.get("id") in ids:
            g.fail(f"panel id {p.get('id')} is used twice")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        count += 1
        title = p.get("title", "?")
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            g.fail(f"panel {title!r}: its datasource is not ${{datasource}}")
        exprs = [t.get("expr", "").strip() for t in p.get("targets", [])]
        if not exprs or not all(exprs):
            g.fail(f"panel {title!r}: every panel needs targets, each with an expr")
        for t in p.get("targets", []):
            if t.get("datasource") and t["datasource"].get("uid") != "${datasource}":
                g.fail(f"panel {title!r}, target {t.get('refId')}: datasource is not ${{datasource}}")
            used |= metric_names(t.get("expr", ""))
    docs = OPERATIONS_DOC.read_text()
    for name in sorted(used):
        if f"`{name}`" not in docs:
            g.fail(f"{name} (dashboard or alert rules) is not documented in {rel(OPERATIONS_DOC)}")
    g.note(f"{len(alerts)} alerts, {count} panels")


# --- flags ---


@dataclass
class Invocation:
    where: str
    binary: str
    argv: list[str]
    env: list[str]


class Help:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.cache: dict[tuple[str, ...], tuple[set[str], set[str]]] = {}

    def of(self, *cmd: str) -> tuple[set[str], set[str]]:
        if cmd not in self.cache:
            exe = self.bin_dir / cmd[0]
            result = run([str(exe), *cmd[1:], "--help"])
            if result.returncode != 0:
                raise RuntimeError(f"`{' '.join(cmd)} --help` failed: {result.stderr.strip()}")
            text = result.stdout
            flags = set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", text))
            flags |= set(re.findall(r"(?<![\w-])(-[a-zA-Z])\b", text))
            envs = set(re.findall(r"\[env: ([A-Z0-9_]+)", text))
            self.cache[cmd] = (flags, envs)
        return self.cache[cmd]

    def subcommands(self) -> set[str]:
        result = run([str(self.bin_dir / "sentinelctl"), "--help"])
        block = result.stdout.split("Commands:", 1)[-1].split("Options:", 1)[0]
        return {m.group(1) for m in re.finditer(r"^\s+([a-z][a-z-]*)\s", block, re.M)}


def kdl_env_names() -> set[str]:
    """`${NAME}` references in the KDL files a deployment applies."""
    names: set[str] = set()
    for path in [*ROOT.joinpath("docs", "examples").glob("*.kdl"), *DEPLOY.rglob("*.kdl")]:
        names |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    return names


def invocations(rendered: dict[str, Rendered]) -> list[Invocation]:
    found: list[Invocation] = []
    _, stages = dockerfile_stages(DOCKERFILE.read_text())
    entry = None
    for ln in dockerfile_stages(DOCKERFILE.read_text())[0]:
        if ln.upper().startswith("ENTRYPOINT"):
            entry = json.loads(ln.split(None, 1)[1])
    default_binary = Path(entry[0]).name if entry else "sentinel"
    if entry:
        found.append(Invocation(f"{rel(DOCKERFILE)} ENTRYPOINT", default_binary, entry[1:], []))

    for label, r in rendered.items():
        for source, obj, spec in pod_specs(r.objects):
            for c in spec["containers"]:
                cmd = c.get("command") or [default_binary]
                found.append(Invocation(
                    f"{label}: {source}: {obj['metadata']['name']}/{c['name']}",
                    Path(cmd[0]).name, [*cmd[1:], *map(str, c.get("args", []))],
                    [e["name"] for e in c.get("env", [])]))

    if COMPOSE_FILE.exists():
        for name, svc in compose_services().items():
            if svc.get("image", "").split(":")[0].split("/")[-1] not in ("sentinel",):
                continue
            ep = svc.get("entrypoint") or [f"/usr/local/bin/{default_binary}"]
            ep = shlex.split(ep) if isinstance(ep, str) else ep
            cmd = svc.get("command") or []
            cmd = shlex.split(cmd) if isinstance(cmd, str) else cmd
            env = svc.get("environment") or {}
            env = list(env) if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
            found.append(Invocation(f"{rel(COMPOSE_FILE)}: {name}", Path(ep[0]).name,
                                    [*ep[1:], *map(str, cmd)], env))

    for unit in sorted(SYSTEMD.glob("*.service")):
        d = unit_directives(unit)
        env = [kv.split("=", 1)[0] for v in d.get("Environment", []) for kv in shlex.split(v)]
        for env_file in d.get("EnvironmentFile", []):
            example = SYSTEMD / (Path(env_file.lstrip("-")).name + ".example")
            if example.exists():
                for line in example.read_text().splitlines():
                    line = line.strip().lstrip("#").strip()
                    if re.match(r"^[A-Z][A-Z0-9_]*=", line):
                        env.append(line.split("=", 1)[0])
        for exec_start in d.get("ExecStart", []):
            argv = shlex.split(exec_start.lstrip("-@:+!"))
            found.append(Invocation(f"{rel(unit)} ExecStart", Path(argv[0]).name, argv[1:], env))
            env = []

    if DEPLOY_DOC.exists():
        found += command_lines(DEPLOY_DOC.read_text(), rel(DEPLOY_DOC), code_only=True)
    for label, r in rendered.items():
        found += command_lines(r.notes, f"{label}: NOTES.txt", code_only=False)
    return found


def command_lines(text: str, where: str, code_only: bool) -> list[Invocation]:
    """Shell lines that run one of our binaries (in ``` blocks if code_only)."""
    found: list[Invocation] = []
    in_code = False
    logical: list[tuple[int, str]] = []  # (first line number, joined line)
    for number, line in enumerate(text.splitlines(), 1):
        if logical and logical[-1][1].endswith("\\"):
            logical[-1] = (logical[-1][0], logical[-1][1][:-1] + " " + line.strip())
        else:
            logical.append((number, line))
    for number, line in logical:
        if line.strip().startswith("```"):
            in_code = not in_code
            continue
        if code_only and not in_code:
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        env = []
        while words and re.match(r"^[A-Z][A-Z0-9_]*=", words[0]):
            env.append(words.pop(0).split("=", 1)[0])
        if words and words[0] in ("sudo", "exec"):
            words.pop(0)
        if words and Path(words[0]).name in BINARIES:
            found.append(Invocation(f"{where}:{number}", Path(words[0]).name, words[1:], env))
    return found


def check_flags(g: Group, bin_dir: Path, rendered: dict[str, Rendered]) -> None:
    helps = Help(bin_dir)
    for binary in BINARIES:
        if not (bin_dir / binary).exists():
            g.fail(f"{bin_dir / binary} is missing (cargo build --bins)")
    if g.problems:
        return
    # The check must be able to fail: each --help parses into flags and env
    # vars, and an invented flag is not among them.
    for binary in BINARIES:
        flags, envs = helps.of(binary)
        if "--help" not in flags or len(envs) < 2 or "--no-such-flag" in flags:
            g.fail(f"`{binary} --help` did not parse into flags and env vars; the check would be blind")
    if g.problems:
        return
    missing: dict[str, list[str]] = {}
    kdl_names = kdl_env_names()
    subcommands = helps.subcommands()
    checked = 0
    for inv in invocations(rendered):
        if inv.binary not in BINARIES:
            continue
        cmd: tuple[str, ...] = (inv.binary,)
        if inv.binary == "sentinelctl":
            sub = next((a for a in inv.argv if not a.startswith("-")), None)
            if sub in subcommands:
                cmd = (inv.binary, sub)
        flags, envs = helps.of(*cmd)
        if len(cmd) > 1:
            top_flags, top_envs = helps.of(inv.binary)
            flags, envs = flags | top_flags, envs | top_envs
        for arg in inv.argv:
            if arg.startswith("-") and arg not in ("-", "--"):
                flag = arg.split("=", 1)[0]
                checked += 1
                if flag not in flags:
                    missing.setdefault(f"`{' '.join(cmd)} --help` has no flag {flag}", []).append(inv.where)
        for name in inv.env:
            checked += 1
            if name not in envs and name not in ENV_READ_OUTSIDE_CLAP and name not in kdl_names:
                missing.setdefault(f"`{inv.binary} --help` has no env var {name} "
                                   f"(nor is it a ${{{name}}} of the shipped KDL)", []).append(inv.where)
    for problem, places in missing.items():
        g.fail(f"{problem}; used in {len(places)} place(s):\n" + "\n".join(f"  {p}" for p in places))
    g.note(f"{checked} flags and env vars")


# === main ===


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", type=Path, required=True)
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--update", action="store_true", help="re-render deploy/k8s/ first")
    args = parser.parse_args()

    report = Report()
    kube = chart_kube_version()
    rendered: dict[str, Rendered] = {}
    report.run("helm-lint", check_helm_lint, kube)
    report.run("helm-render", check_helm_render, kube, rendered)
    report.run("chart-rules", check_chart_rules, rendered)
    report.run("k8s-drift", check_k8s_drift, rendered, args.update)
    report.run("yamllint", check_yamllint, args.venv)
    report.run("dockerfile", check_dockerfile, args.venv)
    report.run("compose", check_compose, args.venv)
    report.run("systemd", check_systemd, args.bin_dir)
    report.run("observability", check_observability)
    report.run("flags", check_flags, args.bin_dir, rendered)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
