#!/usr/bin/env python3
"""Offline checks of the GMMAS chart, run by scripts/ops-check-chart.sh.

For each values set: render the chart with the Helm v4 SDK (helm-python-sdk), lint it strictly
for Kubernetes 1.30, validate every rendered object with kubernetes-validate (strict, 1.30.0)
and with kubernetes-models (Node), and assert what the chart promises (probes, resources,
security contexts, PodDisruptionBudgets, GPU placement, the LLM server's isolation, no Secret
objects, the dashboard's label). Then the negative checks: values the chart must refuse.
No cluster and no network are needed.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import yaml

import helm_python as helm

SERVICES = ["api", "ingest", "preprocess", "infer", "report", "curate", "train"]
GPU_CAPABLE = {"infer", "curate", "train"}
# Custom resources: no schema in kubernetes-validate nor a model in kubernetes-models. They are
# filtered out before both validators (and checked by the assertions below instead).
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
KUBE_VERSION = "1.30.0"
# The one lint finding that is expected offline: the NATS subchart is declared (condition
# nats.enabled) but not vendored, because charts cannot be downloaded here.
MISSING_NATS = "chart directory is missing these dependencies: nats"

# name, values file (relative to the chart), release name, namespace, GPU placement expected
CASES = [
    ("default", None, "gmmas", "gmmas", False),
    ("gpu-on", "ci/gpu-on-values.yaml", "gmmas", "gmmas", True),
    ("gpu-off", "ci/gpu-off-values.yaml", "gmmas", "gmmas", False),
    ("all-features-hpa", "ci/all-features-hpa-values.yaml", "gmmas", "gmmas", True),
    ("all-features-keda", "ci/all-features-keda-values.yaml", "gmmas", "gmmas", True),
    ("site-a", "examples/two-sites/site-a-values.yaml", "gmmas-site-a", "gmmas-site-a", True),
    ("site-b", "examples/two-sites/site-b-values.yaml", "gmmas-site-b", "gmmas-site-b", False),
]
# name, values file, a piece of the schema's refusal
NEGATIVE = [
    ("gpu-quantity", "ci/invalid/gpu-quantity-values.yaml", "'two-gpus' does not match pattern"),
    ("unknown-key", "ci/invalid/unknown-key-values.yaml", "additional properties 'gpus' not allowed"),
    ("image-variant", "ci/invalid/image-variant-values.yaml", "value must be one of 'cpu', 'cuda'"),
    ("service-typo", "ci/invalid/service-typo-values.yaml", "/services/infer/replica"),
]


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)


def load_values(chart_dir: str, rel: str | None) -> dict:
    if rel is None:
        return {}
    with open(os.path.join(chart_dir, rel), encoding="utf-8") as f:
        return helm.values_from_yaml(f.read()) or {}


def split_documents(text: str) -> list[str]:
    docs = re.split(r"(?m)^---[ \t]*$", text)
    return [d for d in docs if d.strip() and yaml.safe_load(d) is not None]


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def component(obj: dict) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component")


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def gpu_in(container: dict) -> bool:
    res = container.get("resources") or {}
    return any(
        k.endswith("/gpu") for part in ("requests", "limits") for k in (res.get(part) or {})
    )


def check_case(r: Report, case: str, values: dict, objs: list[dict], rules_groups: int,
               gpu_expected: bool, release: str, namespace: str) -> None:
    gpu_selector = values["gpu"].get("nodeSelector") or {}
    by_kind: dict[str, list[dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    deployments = by_kind.get("Deployment", [])
    p = f"{case}:"

    # No Secret objects: every secret is an existing Secret named in the values.
    r.check("Secret" not in by_kind, f"{p} the chart rendered a Secret object")

    for o in objs:
        if o["kind"] in {"Service", "Deployment", "StatefulSet"}:
            r.check(len(o["metadata"]["name"]) <= 63, f"{p} {o['kind']}/{o['metadata']['name']}: name over 63 characters")

    for o in objs:
        if o["kind"] not in WORKLOAD_KINDS:
            continue
        name = f"{o['kind']}/{o['metadata']['name']}"
        spec = pod_spec(o)
        psc = spec.get("securityContext") or {}
        if o["kind"] != "Job":
            r.check(labels_match(o["spec"]["selector"]["matchLabels"], o["spec"]["template"]["metadata"]["labels"]),
                    f"{p} {name}: selector does not match the pod labels")
        r.check(spec.get("automountServiceAccountToken") is False, f"{p} {name}: service account token mounted")
        for c in spec.get("initContainers", []) + spec["containers"]:
            cn = f"{name} container {c['name']}"
            sc = c.get("securityContext") or {}
            res = c.get("resources") or {}
            r.check(bool(res.get("requests")) and bool(res.get("limits")), f"{p} {cn}: requests and limits missing")
            r.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{p} {cn}: runAsNonRoot not set")
            r.check(sc.get("readOnlyRootFilesystem") is True, f"{p} {cn}: readOnlyRootFilesystem not set")
            r.check(sc.get("allowPrivilegeEscalation") is False, f"{p} {cn}: privilege escalation allowed")
            r.check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{p} {cn}: capabilities not dropped")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            r.check(seccomp == "RuntimeDefault", f"{p} {cn}: seccomp profile is not RuntimeDefault")
            names = [e["name"] for e in c.get("env", [])]
            r.check(len(names) == len(set(names)), f"{p} {cn}: duplicate environment variables")
            for e in c.get("env", []):
                val = e.get("value", "")
                r.check(not re.search(r"://[^/@\s]+:[^/@\s]+@", val), f"{p} {cn}: {e['name']} holds credentials")
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            r.check("/tmp" in mounts, f"{p} {cn}: no writable /tmp")

    # The GMMAS services.
    seen = set()
    for d in deployments:
        comp = component(d)
        if comp not in SERVICES:
            continue
        seen.add(comp)
        name = f"Deployment/{d['metadata']['name']}"
        spec = pod_spec(d)
        c = spec["containers"][0]
        env = env_of(c)
        r.check(c.get("args") == [f"gmmas-{comp}"], f"{p} {name}: does not run gmmas-{comp}")
        r.check((c.get("livenessProbe") or {}).get("httpGet", {}).get("path") == "/healthz",
                f"{p} {name}: liveness probe is not GET /healthz")
        r.check((c.get("readinessProbe") or {}).get("httpGet", {}).get("path") == "/readyz",
                f"{p} {name}: readiness probe is not GET /readyz")
        r.check(spec.get("enableServiceLinks") is False, f"{p} {name}: service links would add *_PORT variables")
        db = env.get("GMMAS_DATABASE_URL", {})
        r.check("secretKeyRef" in (db.get("valueFrom") or {}) and "value" not in db,
                f"{p} {name}: GMMAS_DATABASE_URL is not read from a Secret")
        for key, want in (("GMMAS_MIGRATE_ON_START", "false"), ("GMMAS_LOG_FORMAT", "json"),
                          ("GMMAS_HTTP_ADDR", "0.0.0.0:8080")):
            r.check(env.get(key, {}).get("value") == want, f"{p} {name}: {key} is not {want}")
        for key in ("GMMAS_NATS_URL", "GMMAS_WORKERS", "GMMAS_ACK_WAIT_S"):
            r.check(key in env, f"{p} {name}: {key} missing")
        if values.get("natsAuth", {}).get("enabled", True):
            r.check(env.get("GMMAS_NATS_USER", {}).get("value") == comp, f"{p} {name}: NATS user is not {comp}")
            r.check("GMMAS_NATS_PASSWORD_FILE" in env, f"{p} {name}: no NATS password file")
            vol = next((v for v in spec["volumes"] if v["name"] == "nats-password"), {})
            items = (vol.get("secret") or {}).get("items") or []
            r.check([i["key"] for i in items] == [comp], f"{p} {name}: NATS password is not the Secret key {comp}")
        if comp in {"api", "ingest"}:
            hosts = env.get("GMMAS_ALLOWED_HOSTS", {}).get("value", "")
            names = [e["name"] for e in c["env"]]
            r.check(hosts.startswith("$(POD_IP),") and names.index("POD_IP") < names.index("GMMAS_ALLOWED_HOSTS"),
                    f"{p} {name}: GMMAS_ALLOWED_HOSTS does not let probes in by the pod IP")
        if comp == "infer":
            r.check(spec.get("terminationGracePeriodSeconds", 30) > 60,
                    f"{p} {name}: grace period not longer than a CPU inference (60 s)")
            for key in ("GMMAS_MODEL_PATH", "GMMAS_INCOMPLETE_MODEL_PATH", "GMMAS_MC_PASSES", "GMMAS_THREADS"):
                r.check(key in env, f"{p} {name}: {key} missing")
        if comp == "report" and not values["services"]["report"]["llm"].get("url"):
            fullname = release if "gmmas" in release else f"{release}-gmmas"
            r.check(env.get("GMMAS_LLM_URL", {}).get("value") == f"http://{fullname}-ollama:11434",
                    f"{p} {name}: GMMAS_LLM_URL is not the Ollama service")
        if comp in {"curate", "train"}:
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            r.check("/var/lib/gmmas/work" in mounts, f"{p} {name}: no work volume")
        if comp == "train":
            for key in ("GMMAS_RUN_CONFIG", "GMMAS_WORK_DIR", "GMMAS_EVAL_DIR", "GMMAS_DEVICE"):
                r.check(key in env, f"{p} {name}: {key} missing")
            r.check(spec.get("terminationGracePeriodSeconds", 30) >= 600, f"{p} {name}: grace period under 600 s")
        if comp in GPU_CAPABLE:
            on_gpu = gpu_in(c)
            device = env.get("GMMAS_DEVICE", {}).get("value")
            r.check(device == ("cuda" if on_gpu else "cpu"), f"{p} {name}: GMMAS_DEVICE={device} but GPU={on_gpu}")
            r.check(c["image"].endswith("-cuda") if on_gpu else True, f"{p} {name}: GPU pod without the cuda image")
    r.check("infer" in seen and "api" in seen, f"{p} api or infer Deployment missing")

    # GPU placement.
    infer = next((d for d in deployments if component(d) == "infer"), None)
    if gpu_expected and infer is not None:
        spec = pod_spec(infer)
        limits = (spec["containers"][0].get("resources") or {}).get("limits") or {}
        r.check(int(limits.get("nvidia.com/gpu", 0)) >= 1, f"{p} infer has no nvidia.com/gpu limit")
        r.check(labels_match(gpu_selector, spec.get("nodeSelector") or {}), f"{p} infer lacks the GPU node selector")
        r.check(any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations") or []),
                f"{p} infer lacks the GPU toleration")
    if not gpu_expected:
        for o in objs:
            if o["kind"] in WORKLOAD_KINDS:
                for c in pod_spec(o).get("initContainers", []) + pod_spec(o)["containers"]:
                    r.check(not gpu_in(c), f"{p} {o['kind']}/{o['metadata']['name']} asks for a GPU with gpu off")
                    if component(o) in GPU_CAPABLE:
                        r.check(env_of(c).get("GMMAS_DEVICE", {}).get("value") == "cpu",
                                f"{p} {o['metadata']['name']}: GMMAS_DEVICE is not cpu with gpu off")

    # A PodDisruptionBudget for every Deployment.
    pdbs = by_kind.get("PodDisruptionBudget", [])
    for d in deployments:
        sel = d["spec"]["selector"]["matchLabels"]
        r.check(any(pd["spec"]["selector"]["matchLabels"] == sel for pd in pdbs),
                f"{p} Deployment/{d['metadata']['name']} has no PodDisruptionBudget")

    # The LLM server: ClusterIP only, and a NetworkPolicy that lets in only the report pods.
    ollama = next((d for d in deployments if component(d) == "ollama"), None)
    if ollama is not None:
        pod_labels = ollama["spec"]["template"]["metadata"]["labels"]
        c = pod_spec(ollama)["containers"][0]
        r.check("livenessProbe" in c and "readinessProbe" in c, f"{p} ollama has no probes")
        if gpu_expected:
            want = bool(values["ollama"]["gpu"]["enabled"])
            r.check(gpu_in(c) == want, f"{p} ollama GPU placement is {gpu_in(c)}, values say {want}")
        svcs = [s for s in by_kind.get("Service", []) if component(s) == "ollama"]
        r.check(len(svcs) == 1 and svcs[0]["spec"].get("type") == "ClusterIP", f"{p} the ollama Service is not ClusterIP")
        r.check(all("nodePort" not in port for s in svcs for port in s["spec"]["ports"]), f"{p} ollama Service has a nodePort")
        report_pods = next((d["spec"]["template"]["metadata"]["labels"] for d in deployments if component(d) == "report"), {})
        pols = [n for n in by_kind.get("NetworkPolicy", [])
                if labels_match(n["spec"]["podSelector"].get("matchLabels"), pod_labels)]
        r.check(len(pols) >= 1, f"{p} no NetworkPolicy selects the ollama pods")
        for n in pols:
            sources = [f for rule in n["spec"].get("ingress", []) for f in rule.get("from", [])]
            ok = bool(sources) and all(
                set(f) == {"podSelector"} and labels_match(f["podSelector"]["matchLabels"], report_pods)
                for f in sources) and all(rule.get("from") for rule in n["spec"].get("ingress", []))
            r.check(ok and "Ingress" in n["spec"].get("policyTypes", []),
                    f"{p} NetworkPolicy/{n['metadata']['name']} lets in more than the report pods")
        backends = {path["backend"]["service"]["name"] for ing in by_kind.get("Ingress", [])
                    for rule in ing["spec"]["rules"] for path in rule["http"]["paths"]}
        r.check(not any(s["metadata"]["name"] in backends for s in svcs), f"{p} an Ingress exposes ollama")

    # The dashboard ConfigMap for Grafana's sidecar.
    if values.get("metrics", {}).get("dashboard", {}).get("enabled", True):
        dash = [cm for cm in by_kind.get("ConfigMap", []) if "gmmas.json" in (cm.get("data") or {})]
        r.check(len(dash) == 1 and dash[0]["metadata"]["labels"].get("grafana_dashboard") == "1",
                f"{p} no dashboard ConfigMap labelled grafana_dashboard: \"1\"")
        if dash:
            try:
                json.loads(dash[0]["data"]["gmmas.json"])
                r.check(True, "")
            except ValueError as e:
                r.check(False, f"{p} the dashboard is not JSON: {e}")

    # Optional features, where the values switch them on.
    metrics = values.get("metrics", {})
    if metrics.get("prometheusRule", {}).get("enabled"):
        rules = by_kind.get("PrometheusRule", [])
        r.check(len(rules) == 1 and len(rules[0]["spec"]["groups"]) == rules_groups,
                f"{p} PrometheusRule does not carry the {rules_groups} groups of the rules file")
    else:
        r.check("PrometheusRule" not in by_kind, f"{p} PrometheusRule rendered while off")
    if metrics.get("serviceMonitor", {}).get("enabled"):
        sms = by_kind.get("ServiceMonitor", [])
        prot = [s for s in sms if s["spec"]["selector"]["matchLabels"].get("gmmas.io/metrics") == "protected"]
        r.check(len(sms) == 2 and len(prot) == 1 and "authorization" in prot[0]["spec"]["endpoints"][0],
                f"{p} ServiceMonitors: api/ingest must be scraped with the bearer token")
    else:
        r.check("ServiceMonitor" not in by_kind, f"{p} ServiceMonitor rendered while off")
    services = values.get("services", {})
    for comp in ("preprocess", "infer"):
        a = services.get(comp, {}).get("autoscaling", {})
        d = next((x for x in deployments if component(x) == comp), None)
        hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", []) if component(h) == comp]
        keda = [s for s in by_kind.get("ScaledObject", []) if component(s) == comp]
        if a.get("enabled") and a.get("mode", "hpa") == "hpa":
            ok = len(hpas) == 1 and hpas[0]["apiVersion"] == "autoscaling/v2"
            if ok:
                m = hpas[0]["spec"]["metrics"][0]
                ok = (m["type"] == "External" and m["external"]["metric"]["name"] == "gmmas_consumer_pending_messages"
                      and m["external"]["metric"]["selector"]["matchLabels"] == {"consumer": comp})
            r.check(ok and not keda, f"{p} {comp}: no autoscaling/v2 HPA on gmmas_consumer_pending_messages{{consumer=\"{comp}\"}}")
            r.check(d is not None and "replicas" not in d["spec"], f"{p} {comp}: replicas set while autoscaled")
        elif a.get("enabled") and a.get("mode") == "keda":
            ok = len(keda) == 1 and keda[0]["spec"]["triggers"][0]["type"] == "prometheus" and \
                f'consumer="{comp}"' in keda[0]["spec"]["triggers"][0]["metadata"]["query"]
            r.check(ok and not hpas, f"{p} {comp}: no KEDA ScaledObject with a prometheus trigger")
            r.check(d is not None and "replicas" not in d["spec"], f"{p} {comp}: replicas set while autoscaled")
        else:
            r.check(not hpas and not keda, f"{p} {comp}: autoscaler rendered while off")
    if values.get("networkPolicy", {}).get("enabled"):
        pols = by_kind.get("NetworkPolicy", [])
        for d in deployments:
            r.check(any(labels_match(n["spec"]["podSelector"].get("matchLabels"), d["spec"]["template"]["metadata"]["labels"])
                        for n in pols), f"{p} no NetworkPolicy for Deployment/{d['metadata']['name']}")
    if values.get("ingress", {}).get("enabled"):
        r.check(len(by_kind.get("Ingress", [])) == 1, f"{p} no Ingress for the API")
    bundled = values.get("postgresql", {}).get("bundled", {}).get("enabled", False)
    jobs = by_kind.get("Job", [])
    r.check(len(jobs) == 1, f"{p} expected one migrate Job")
    for j in jobs:
        hook = (j["metadata"].get("annotations") or {}).get("helm.sh/hook")
        if bundled:
            r.check(hook is None and "StatefulSet" in by_kind, f"{p} bundled PostgreSQL: migrate Job must not be a pre-install hook")
        else:
            r.check(hook == "pre-install,pre-upgrade", f"{p} migrate Job is not a pre-install/pre-upgrade hook")
        c = pod_spec(j)["containers"][0]
        r.check("secretKeyRef" in (env_of(c).get("GMMAS_MIGRATIONS_DATABASE_URL", {}).get("valueFrom") or {}),
                f"{p} migrate Job does not read the admin URL from a Secret")
        tenants = values.get("tenants") or []
        r.check(env_of(c).get("TENANTS", {}).get("value", "") == " ".join(tenants),
                f"{p} migrate Job does not create the tenants {tenants}")
    if values.get("nats", {}).get("enabled"):
        url = f"nats://{release if 'nats' in release else release + '-nats'}.{namespace}.svc.cluster.local:4222"
        for d in deployments:
            if component(d) in SERVICES:
                r.check(env_of(pod_spec(d)["containers"][0]).get("GMMAS_NATS_URL", {}).get("value") == url,
                        f"{p} {d['metadata']['name']}: GMMAS_NATS_URL is not the subchart's service")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chart", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--npm-dir", required=True)
    ap.add_argument("--kubernetes-validate", required=True)
    args = ap.parse_args()
    started = time.monotonic()
    chart_dir = os.path.abspath(args.chart)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for sub in [c[0] for c in CASES] + ["kubernetes-validate"]:
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)

    r = Report()
    lines: list[str] = []
    chart = helm.Chart.load(chart_dir)
    vendored = bool(glob.glob(os.path.join(chart_dir, "charts", "nats-*.tgz")) or
                    os.path.isdir(os.path.join(chart_dir, "charts", "nats")))
    with open(os.path.join(chart_dir, "files/alerts/gmmas-rules.yaml"), encoding="utf-8") as f:
        rules_groups = len((yaml.safe_load(f) or {}).get("groups") or [])

    model_items: list[dict] = []
    kv_files: list[str] = []
    kv_count = 0
    lint_ignored = 0
    lint_info = 0
    for case, rel, release, namespace, gpu_expected in CASES:
        values = load_values(chart_dir, rel)
        try:
            rendered = chart.render(copy.deepcopy(values), name=release, namespace=namespace)
            merged = chart.merge_values(copy.deepcopy(values))
        except helm.HelmError as e:
            r.check(False, f"{case}: render failed: {e}")
            continue
        case_dir = os.path.join(out, case)
        os.makedirs(case_dir)
        objs: list[dict] = []
        kv_docs: list[str] = []
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt"):
                with open(os.path.join(case_dir, "NOTES.txt"), "w", encoding="utf-8") as f:
                    f.write(text)
                continue
            docs = split_documents(text)
            if not docs:
                continue
            with open(os.path.join(case_dir, os.path.basename(path)), "w", encoding="utf-8") as f:
                f.write(text)
            for doc in docs:
                obj = yaml.safe_load(doc)
                objs.append(obj)
                source = os.path.basename(path)
                model_items.append({"case": case, "source": source, "expect": "valid", "object": obj})
                if (obj["apiVersion"], obj["kind"]) not in CUSTOM_KINDS:
                    kv_docs.append(doc.strip("\n"))
                    kv_count += 1
        # What kubernetes-validate reads: every object but the custom resources.
        kv_dir = os.path.join(out, "kubernetes-validate")
        os.makedirs(kv_dir, exist_ok=True)
        kv_file = os.path.join(kv_dir, f"{case}.yaml")
        with open(kv_file, "w", encoding="utf-8") as f:
            f.write("\n---\n".join(kv_docs) + "\n")
        kv_files.append(kv_file)

        # Strict lint for Kubernetes 1.30 with the same values.
        lint = helm.lint(chart_dir, copy.deepcopy(values), strict=True, kube_version=f"v{KUBE_VERSION}",
                         namespace=namespace)
        bad = []
        for m in lint.get("messages", []):
            if m["severity"] >= 2:
                if m["error"] == MISSING_NATS and not vendored:
                    lint_ignored += 1
                    continue
                bad.append(f"[{m['severity']}] {m['path']}: {m['error']}")
            else:
                lint_info += 1
        extra_errors = [e for e in lint.get("errors", []) if not (e == MISSING_NATS and not vendored)]
        r.check(not bad and not extra_errors, f"{case}: lint: {'; '.join(bad + extra_errors)}")

        before = len(r.failures)
        check_case(r, case, merged, objs, rules_groups, gpu_expected, release, namespace)
        kinds: dict[str, int] = {}
        for o in objs:
            kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
        status = "ok" if len(r.failures) == before and not bad else "FAILED"
        lines.append(f"  {case:<18} {len(objs):>3} objects ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}) {status}")

    # kubernetes-validate, strict, on every rendered object but the custom resources.
    kv_output = "no file rendered"
    if kv_files:
        kv = subprocess.run([args.kubernetes_validate, "--strict", "-k", KUBE_VERSION, "--quiet", *kv_files],
                            capture_output=True, text=True)
        kv_output = (kv.stdout + kv.stderr).strip()
        r.check(kv.returncode == 0 and kv_output == "", f"kubernetes-validate: rc {kv.returncode}: {kv_output}")
    else:
        r.check(False, "kubernetes-validate: nothing rendered to validate")

    # The negative checks: both must be refused by the values schema (and so by install).
    negatives = []
    for name, rel, expect in NEGATIVE:
        values = load_values(chart_dir, rel)
        try:
            chart.validate_schema(copy.deepcopy(values))
            r.check(False, f"negative {name}: {rel} was accepted by the schema")
            negatives.append(f"  {name}: ACCEPTED (must be refused)")
            continue
        except helm.HelmValuesError as e:
            msg = str(e)
            r.check(expect in msg, f"negative {name}: refused, but not for the expected reason: {msg}")
            first = next((ln.strip() for ln in msg.splitlines() if expect in ln), msg.splitlines()[0])
        try:
            chart.render(copy.deepcopy(values), name="gmmas", namespace="gmmas")
            r.check(False, f"negative {name}: rendered although the schema refuses it")
        except helm.HelmValuesError:
            r.check(True, "")
        negatives.append(f"  {name}: refused by the schema ({first})")
    # The same bad quantity must also be refused by kubernetes-models, should it get past the
    # schema: the default infer Deployment with nvidia.com/gpu "two-gpus" (the validator's self-test).
    infer = next((i["object"] for i in model_items if i["case"] == "default" and i["object"]["kind"] == "Deployment"
                  and component(i["object"]) == "infer"), None)
    if infer is not None:
        bad_obj = copy.deepcopy(infer)
        pod_spec(bad_obj)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "two-gpus"
        model_items.append({"case": "negative", "source": "gpu-quantity (injected)", "expect": "invalid", "object": bad_obj})

    objects_file = os.path.join(out, "objects.json")
    with open(objects_file, "w", encoding="utf-8") as f:
        json.dump(model_items, f)
    node = subprocess.run(["node", os.path.join(chart_dir, "ci", "validate-models.mjs"), args.npm_dir, objects_file],
                          capture_output=True, text=True)
    node_lines = (node.stdout + node.stderr).strip().splitlines()
    problems = [ln[len("PROBLEM "):] for ln in node_lines if ln.startswith("PROBLEM ")]
    r.check(node.returncode == 0, f"kubernetes-models refused {len(problems)} object(s), first: "
            + (problems[0] if problems else " | ".join(node_lines[-3:])))
    if node.returncode == 0:
        negatives.append("  gpu-quantity: refused by kubernetes-models too (self-test, the value injected into a rendered Deployment)")

    summary = [
        f"chart {chart.name} {chart.version} (Helm SDK {helm.helm_sdk_version()}), Kubernetes {KUBE_VERSION}",
        "values sets:",
        *lines,
        f"lint (strict, v{KUBE_VERSION}): {len(CASES)} values sets, {lint_info} info message(s); "
        + (f"{lint_ignored} expected warning(s) ignored: '{MISSING_NATS}' (the NATS subchart is not vendored offline)"
           if lint_ignored else "no warning"),
        f"kubernetes-validate --strict -k {KUBE_VERSION}: {kv_count} objects, "
        + ("no output" if not kv_output else "OUTPUT: " + kv_output.splitlines()[0])
        + " (ServiceMonitor, PrometheusRule, ScaledObject filtered out before: no schema there)",
        *(ln for ln in node_lines if ln.startswith("kubernetes-models:")),
        "negative checks:",
        *negatives,
        f"assertions: {r.passed} passed, {len(r.failures)} failed",
        f"manifests in {out} ({time.monotonic() - started:.1f} s)",
    ]
    for f in r.failures:
        summary.append(f"FAIL {f}")
    text = "\n".join(summary)
    print(text)
    with open(os.path.join(out, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return 0 if not r.failures else 1


if __name__ == "__main__":
    sys.exit(main())
