#!/usr/bin/env python3
"""Invariants of the rendered Kubernetes manifests, checked without a cluster.

Schema validation says each object is well-formed; these checks say the objects agree
with each other and with the mesh's contracts: one native sidecar per meshed pod, its
flags matching the app beside it (its port, and the protocol the kubelet probes it in),
probes on real paths and ports, the security context and resources on every container,
images set through kustomize, Services reaching real ports, and network policies letting through exactly the mesh's traffic. Credentials: no
overlay leaves registry writes open; the registry serves its TLS listener with the CA and
the per-service join tokens from Secrets that no other container reads; each sidecar
checks the registry against the CA certificate from a ConfigMap and holds its own
service's join token only; no Secret or ConfigMap, rendered or committed, holds a private
key. Where the registry keeps its catalog in etcd (the ha overlay): the etcd members
agreeing with each other and with the registry's endpoints, replicas and disruption budgets
that keep both available.

Run with: python3 k8s/test_manifests.py [RENDERED_DIR]
RENDERED_DIR holds one `<overlay>.yaml` per overlay (as k8s/validate.sh writes them);
without it, every overlay is rendered with `kubectl kustomize` and injected with meshctl.
Prints one line per check
and `N passed, N failed` last; exits 1 if any check failed.
"""

import base64
import copy
import ipaddress
import os
import re
import subprocess
import sys
import tempfile

import yaml

K8S = os.path.dirname(os.path.abspath(__file__))

# Ports and paths from the mesh's contracts (docs/proxy.md, docs/registry-api.md).
SIDECAR_IMAGE = "mesh/proxy"
SIDECAR_BINARY = "mesh-proxy"
MESHED_LABEL = ("mesh/sidecar", "true")
READY_PATH, LIVE_PATH = "/ready", "/live"
REGISTRY_SERVICE = "registry"
# The one Service outsiders call (browsers, load balancers): it targets the app, since they
# have no mesh identity and a strict-mTLS inbound listener would refuse them.
ENTRY_POINT = "marketplace"
# The app protocols a sidecar may declare (--app-protocol); `tcp` carries the app's
# connections as bytes.
APP_PROTOCOLS = ("http", "h2", "grpc", "tcp")
# How long the sidecar waits for the registry to confirm a deregistration before draining.
DEREGISTER_WAIT_S = 6
RESTRICTED_UID = 65534
ETCD_BINARY = "etcd"
NODE_TOPOLOGY = "kubernetes.io/hostname"
# Credentials (docs/deploy-kubernetes.md, "Credentials"): the mesh CA's certificate for the
# sidecars, without its key; one join-token Secret per service, for that service's sidecars.
CA_BUNDLE = "mesh-ca-bundle"
CA_BUNDLE_KEY = "ca.pem"
JOIN_TOKEN_SECRET = "mesh-join-token-{}"
# The PEM armour of any private key (PKCS#8, SEC1 "EC", PKCS#1 "RSA", encrypted).
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


def overlays():
    """Overlay name -> directory: the top level, the base, and every overlay."""
    found = {"k8s": K8S, "base": os.path.join(K8S, "base")}
    root = os.path.join(K8S, "overlays")
    for name in sorted(os.listdir(root)):
        if os.path.isfile(os.path.join(root, name, "kustomization.yaml")):
            found[name] = os.path.join(root, name)
    return found


def load(overlay, directory, rendered_dir):
    if rendered_dir:
        with open(os.path.join(rendered_dir, f"{overlay}.yaml")) as f:
            text = f.read()
    else:
        text = inject(subprocess.run(
            ["kubectl", "kustomize", directory], check=True, capture_output=True, text=True
        ).stdout)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def inject(text):
    """The rendered manifests with their sidecars, as k8s/validate.sh injects them: by
    $MESHCTL, else the release build of meshctl, with the tag kustomize gave the images."""
    meshctl = os.environ.get("MESHCTL") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(K8S, "..", "target")), "release", "meshctl")
    tag = re.search(r"image: mesh/registry:(\S+)", text)
    image = "mesh/proxy" + (f":{tag.group(1)}" if tag else "")
    return subprocess.run([meshctl, "inject", "--proxy-image", image, "-"], input=text,
                          check=True, capture_output=True, text=True).stdout


# === kustomize images ===


def kustomize_images(directory, seen=None):
    """The `images:` entries along a kustomization tree; later (outer) entries win."""
    seen = seen if seen is not None else set()
    directory = os.path.realpath(directory)
    if directory in seen:
        return {}
    seen.add(directory)
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    images = {}
    for ref in kustomization.get("resources", []) + kustomization.get("components", []):
        path = os.path.join(directory, ref)
        if os.path.isdir(path):
            images.update(kustomize_images(path, seen))
    for entry in kustomization.get("images", []):
        name = entry.get("newName", entry["name"])
        if "digest" in entry:
            images[entry["name"]] = f"{name}@{entry['digest']}"
        else:
            images[entry["name"]] = f"{name}:{entry.get('newTag', 'latest')}"
    return images


# === helpers over objects ===


def pod_templates(objects):
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            yield obj, obj["spec"]["template"]


def all_containers(pod_spec):
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def native_sidecars(pod_spec):
    return [c for c in pod_spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]


def mesh_sidecar(pod_spec):
    """The pod's native sidecar running the proxy (check_sidecar_count ensures one)."""
    found = [c for c in native_sidecars(pod_spec) if runs_sidecar(c)]
    if len(found) != 1:
        raise ValueError(f"{len(found)} native {SIDECAR_BINARY} sidecars")
    return found[0]


def runs_sidecar(container):
    """Runs the proxy: by its command, or by the proxy image's entrypoint."""
    command = container.get("command") or []
    if command:
        return os.path.basename(command[0]) == SIDECAR_BINARY
    return container["image"].split("@")[0].rsplit(":", 1)[0].endswith(SIDECAR_IMAGE)


def env_of(container):
    """Name -> value (a string, or the valueFrom mapping), plus names in definition order."""
    values, order = {}, []
    for item in container.get("env", []):
        values[item["name"]] = item.get("value", item.get("valueFrom"))
        order.append(item["name"])
    return values, order


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def host_of(address):
    return address.rsplit(":", 1)[0]


def container_port(container, port):
    """A probe's or Service's port (number or name) as a number, if the container has it."""
    for p in container.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return p["containerPort"]
    return None


def pod_port(pod_spec, port):
    for c in all_containers(pod_spec):
        number = container_port(c, port)
        if number is not None:
            return number
    return None


def selects(selector, labels):
    """A label selector (matchLabels/matchExpressions, or a plain map) against labels."""
    if selector is None:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        match = selector.get("matchLabels", {})
    else:
        match = selector  # a Service's plain map; {} selects everything
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def find(objects, kind, name):
    return next(
        (o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name), None
    )


def service_for(objects, labels):
    return [
        o for o in objects
        if o["kind"] == "Service" and o["spec"].get("selector")
        and selects(o["spec"]["selector"], labels)
    ]


def is_meshed(template):
    key, value = MESHED_LABEL
    return template["metadata"].get("labels", {}).get(key) == value


def probes(container):
    return {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container}


def probe_target(probe):
    """(kind, port, path) of a probe."""
    for kind in ("httpGet", "grpc", "tcpSocket"):
        if kind in probe:
            return kind, probe[kind]["port"], probe[kind].get("path")
    return "exec", None, None


def duration_s(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unreadable duration {text!r}")
    return int(m.group(1)) * units[m.group(2)]


def flags_of(container):
    """`--flag=value` and `--flag value` arguments of the command line, as flag -> value."""
    argv = (container.get("command") or []) + (container.get("args") or [])
    flags = {}
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        if eq:
            flags[key] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            flags[key] = argv[i + 1]
        else:
            flags[key] = True
    return flags


def setting(container, flag, var):
    """A setting given as a flag or as its environment variable (the flag wins)."""
    return flags_of(container).get(flag, env_of(container)[0].get(var))


def quantity_bytes(text):
    units = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    m = re.fullmatch(r"(\d+)([KMGT]i?|k)?", str(text).strip())
    if not m:
        raise ValueError(f"unreadable quantity {text!r}")
    return int(m.group(1)) * units[m.group(2) or ""]


def http_url(url):
    """(host, port) of a plain http://host:port URL, or None."""
    m = re.fullmatch(r"http://([^:/]+):(\d+)/?", url.strip())
    return (m.group(1), int(m.group(2))) if m else None


def budgets_for(objects, template):
    labels = template["metadata"].get("labels", {})
    return [o for o in objects if o["kind"] == "PodDisruptionBudget"
            and selects(o["spec"].get("selector"), labels)]


def spread_over_nodes(template):
    """Pod anti-affinity (preferred or required) or a topology spread over nodes, for the
    template's own pods."""
    spec, labels = template["spec"], template["metadata"].get("labels", {})
    anti = spec.get("affinity", {}).get("podAntiAffinity", {})
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
        t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    terms += spec.get("topologySpreadConstraints", [])
    return any(t.get("topologyKey") == NODE_TOPOLOGY and selects(t.get("labelSelector"), labels)
               for t in terms)


def runs_etcd(container):
    command = container.get("command") or []
    if command:
        return os.path.basename(command[0]) == ETCD_BINARY
    return container["image"].split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1] == ETCD_BINARY


def etcd_cluster(objects):
    """(StatefulSet, its etcd container) of the registry's store, if the overlay has one."""
    for workload, template in pod_templates(objects):
        for c in template["spec"]["containers"]:
            if workload["kind"] == "StatefulSet" and runs_etcd(c):
                return workload, c
    return None, None


def etcd_members(sts):
    """Member name -> the host names that reach it through the headless Service."""
    name, service = sts["metadata"]["name"], sts["spec"].get("serviceName", "")
    ns = sts["metadata"].get("namespace", "")
    members = {}
    for i in range(sts["spec"].get("replicas", 1)):
        host = f"{name}-{i}.{service}"
        members[f"{name}-{i}"] = {host, f"{host}.{ns}", f"{host}.{ns}.svc", f"{host}.{ns}.svc.cluster.local"}
    return members


def listen_port(flags, flag):
    """The port of a --listen-*-urls flag (one URL)."""
    parsed = http_url(str(flags.get(flag, "")))
    return parsed[1] if parsed else None


def registry_container(objects):
    dep = find(objects, "Deployment", REGISTRY_SERVICE)
    return (dep, dep["spec"]["template"]["spec"]["containers"][0]) if dep else (None, None)


def service_port_to(objects, name, pod_spec, number):
    """The port of Service `name` that reaches the pod's port `number`, if any."""
    svc = find(objects, "Service", name)
    for p in svc["spec"]["ports"] if svc else []:
        if pod_port(pod_spec, p.get("targetPort", p["port"])) == number:
            return p["port"]
    return None


def mounted_volume(pod_spec, container, path):
    """(mount, volume) holding the file `path` in the container, or (None, None)."""
    for m in container.get("volumeMounts", []):
        if str(path).startswith(m["mountPath"].rstrip("/") + "/"):
            volume = next((v for v in pod_spec.get("volumes", []) if v["name"] == m["name"]), None)
            return m, volume
    return None, None


def file_in_volume(mount, source, path):
    """Whether `path` under `mount` is one of the volume source's files (all keys, or its
    items)."""
    items = [i["path"] for i in source.get("items", [])]
    return not items or path[len(mount["mountPath"].rstrip("/")) + 1:] in items


def secrets_read(pod_spec, container):
    """Names of the Secrets a container reads: env, envFrom and mounted volumes."""
    names = set()
    for item in container.get("env", []):
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            names.add(ref["name"])
    for item in container.get("envFrom", []):
        if "secretRef" in item:
            names.add(item["secretRef"]["name"])
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        v = volumes.get(m["name"], {})
        if "secret" in v:
            names.add(v["secret"]["secretName"])
        for source in v.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    return names


def secret_ref(value):
    """The secretKeyRef of an env value (as env_of gives it), or None."""
    return value.get("secretKeyRef") if isinstance(value, dict) else None


def decoded(obj):
    """A Secret's or ConfigMap's data as text, key -> value (base64 undone)."""
    out = dict(obj.get("stringData") or {})
    if obj["kind"] == "ConfigMap":
        out.update(obj.get("data") or {})
    binary = (obj.get("data") or {}) if obj["kind"] == "Secret" else (obj.get("binaryData") or {})
    for key, value in binary.items():
        out[key] = base64.b64decode(value).decode("utf-8", "replace")
    return out


def token_lines(text):
    """The lines of a tokens file (the registry's --join-tokens format) as
    (services, token, line number)."""
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            lines.append((fields[0], fields[1] if len(fields) > 1 else "", n))
    return lines


def registry_on_etcd(objects):
    dep = find(objects, "Deployment", REGISTRY_SERVICE)
    return bool(dep and setting(dep["spec"]["template"]["spec"]["containers"][0],
                                "etcd-endpoints", "REGISTRY_ETCD_ENDPOINTS"))


# === the checks ===


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def expect(self, name, check, *args):
        """Runs one check; a check that crashes on malformed input counts as failed."""
        try:
            problems = check(*args)
        except Exception as error:  # noqa: BLE001 - any crash is a finding
            problems = [f"the check itself failed: {type(error).__name__}: {error}"]
        if problems:
            self.failed += 1
            print(f"FAIL {name}")
            for problem in problems:
                print(f"     - {problem}")
        else:
            self.passed += 1
            print(f"ok   {name}")


def check_namespace(objects):
    problems = []
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    if len(namespaces) != 1:
        return [f"expected one Namespace, found {len(namespaces)}"]
    ns = namespaces[0]
    name = ns["metadata"]["name"]
    if ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "restricted":
        problems.append(f"namespace {name} does not enforce the restricted Pod Security Standard")
    for o in objects:
        if o["kind"] != "Namespace" and o["metadata"].get("namespace") != name:
            problems.append(f"{o['kind']}/{o['metadata']['name']} is not in namespace {name}")
    return problems


def check_security(template):
    spec = template["spec"]
    pod_sc = spec.get("securityContext", {})
    problems = []
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken is not false (no pod talks to the API)")
    if spec.get("enableServiceLinks") is not False:
        problems.append("enableServiceLinks is not false (service links set *_PORT variables)")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"{key} is set")
    for c in all_containers(spec):
        sc = c.get("securityContext")
        if not sc:
            problems.append(f"{c['name']}: no securityContext")
            continue

        def effective(key):
            return sc.get(key, pod_sc.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{c['name']}: runAsNonRoot is not true")
        if effective("runAsUser") != RESTRICTED_UID:
            problems.append(f"{c['name']}: runAsUser is not {RESTRICTED_UID}")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: readOnlyRootFilesystem is not true")
        if sc.get("privileged"):
            problems.append(f"{c['name']}: privileged")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{c['name']}: capabilities do not drop ALL")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{c['name']}: adds capabilities")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{c['name']}: seccompProfile is not RuntimeDefault")
    return problems


def check_resources(template):
    problems = []
    for c in all_containers(template["spec"]):
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in res.get(kind, {}):
                    problems.append(f"{c['name']}: no {kind}.{resource}")
    return problems


def check_images(template, images):
    problems = []
    allowed = set(images.values())
    for c in all_containers(template["spec"]):
        image = c["image"]
        if image not in allowed:
            problems.append(f"{c['name']}: image {image!r} is not set by a kustomize images: entry")
        if image.endswith(":latest"):
            problems.append(f"{c['name']}: image {image!r} is tagged latest")
        if "imagePullPolicy" not in c:
            problems.append(f"{c['name']}: no imagePullPolicy")
    return problems


def check_probes(template):
    """Every container has readiness and liveness probes on one of its own ports."""
    problems = []
    for c in all_containers(template["spec"]):
        found = probes(c)
        for kind in ("readinessProbe", "livenessProbe"):
            if kind not in found:
                problems.append(f"{c['name']}: no {kind}")
        for kind, probe in found.items():
            how, port, _ = probe_target(probe)
            if how == "exec":
                continue
            if container_port(c, port) is None:
                problems.append(f"{c['name']}: {kind} port {port!r} is not one of its ports")
    return problems


def check_sidecar_count(template, images):
    spec = template["spec"]
    sidecars = [c for c in native_sidecars(spec) if runs_sidecar(c)]
    misplaced = [
        c["name"] for c in all_containers(spec)
        if runs_sidecar(c) and c.get("restartPolicy") != "Always"
    ]
    problems = []
    if is_meshed(template):
        if len(sidecars) != 1:
            problems.append(f"{len(sidecars)} native sidecars running {SIDECAR_BINARY}, expected 1")
        for c in sidecars:
            if c["image"] != images.get(SIDECAR_IMAGE):
                problems.append(f"sidecar image {c['image']} is not {SIDECAR_IMAGE} ({images.get(SIDECAR_IMAGE)})")
    elif sidecars:
        problems.append(f"runs a sidecar but lacks the label {MESHED_LABEL[0]}={MESHED_LABEL[1]}"
                        " (the network policies select meshed pods by it)")
    if misplaced:
        problems.append(f"{SIDECAR_BINARY} runs outside a native sidecar in {misplaced}")
    return problems


def check_sidecar_identity(workload, template, objects):
    """Registered under the workload's name, at the pod's IP, as the pod's name."""
    sidecar = mesh_sidecar(template["spec"])
    env, order = env_of(sidecar)
    problems = []
    # Every $(VAR) is defined earlier in the list, or Kubernetes leaves it verbatim.
    for i, name in enumerate(order):
        if isinstance(env[name], str):
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", env[name]):
                if ref not in order[:i]:
                    problems.append(f"{name} uses $({ref}), not defined before it")

    def field_ref(var):
        value = env.get(var)
        return value.get("fieldRef", {}).get("fieldPath") if isinstance(value, dict) else None

    service = env.get("MESH_SERVICE")
    if service != workload["metadata"]["name"]:
        problems.append(f"MESH_SERVICE {service!r} is not the workload's name {workload['metadata']['name']!r}")
    for svc in service_for(objects, template["metadata"].get("labels", {})):
        if svc["metadata"]["name"] != service:
            problems.append(f"MESH_SERVICE {service!r} differs from its Service {svc['metadata']['name']!r}")
    inbound = env.get("MESH_INBOUND", "0.0.0.0:4143")
    for var, address in (("MESH_INBOUND", inbound), ("MESH_ADMIN", env.get("MESH_ADMIN", "0.0.0.0:4191"))):
        if container_port(sidecar, port_of(address)) is None:
            problems.append(f"{var} {address}: port not declared on the sidecar")
    if env.get("MESH_ADVERTISE") != f"$(POD_IP):{port_of(inbound)}" or field_ref("POD_IP") != "status.podIP":
        problems.append("MESH_ADVERTISE is not $(POD_IP):<inbound port> with POD_IP from status.podIP")
    if env.get("MESH_INSTANCE_ID") != "$(POD_NAME)" or field_ref("POD_NAME") != "metadata.name":
        problems.append("MESH_INSTANCE_ID is not $(POD_NAME) with POD_NAME from metadata.name")
    return problems


def check_sidecar_app(template):
    """MESH_APP is the port the app container listens on and declares."""
    spec = template["spec"]
    app = env_of(mesh_sidecar(spec))[0].get("MESH_APP", "")
    app_ports = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
    problems = []
    try:
        loopback = ipaddress.ip_address(host_of(app)).is_loopback
    except ValueError:
        loopback = False  # the proxy takes an IP address here, not a name
    if not loopback or port_of(app) not in app_ports:
        problems.append(f"MESH_APP {app!r} is not a loopback IP with an app containerPort {sorted(app_ports)}")
    for c in spec["containers"]:
        for var, value in env_of(c)[0].items():
            if var.endswith("_LISTEN") and isinstance(value, str) and port_of(value) not in app_ports:
                problems.append(f"{c['name']}: {var} {value} is not one of its containerPorts")
    return problems


def check_sidecar_registry(template, objects):
    """MESH_REGISTRY is the registry Service's TLS port over https, checked against the CA
    certificate from the bundle ConfigMap; mTLS is on, since the certificate is what the
    sidecar writes with."""
    spec = template["spec"]
    sidecar = mesh_sidecar(spec)
    env = env_of(sidecar)[0]
    registry_svc = find(objects, "Service", REGISTRY_SERVICE)
    dep, registry = registry_container(objects)
    if not registry_svc or not registry:
        return [f"no Service and Deployment {REGISTRY_SERVICE!r}"]
    ns = registry_svc["metadata"].get("namespace", "")
    names = {REGISTRY_SERVICE, f"{REGISTRY_SERVICE}.{ns}", f"{REGISTRY_SERVICE}.{ns}.svc",
             f"{REGISTRY_SERVICE}.{ns}.svc.cluster.local"}
    tls_listen = setting(registry, "tls-listen", "REGISTRY_TLS_LISTEN")
    tls_port = tls_listen and service_port_to(objects, REGISTRY_SERVICE, dep["spec"]["template"]["spec"],
                                              port_of(tls_listen))
    if not tls_port:
        return [f"the Service {REGISTRY_SERVICE} has no port to a TLS listener for the sidecars"]
    problems = []
    urls = [u.strip() for u in str(env.get("MESH_REGISTRY", "")).split(",")]
    for url in urls:
        m = re.fullmatch(r"https://([^:/]+):(\d+)/?", url)
        if not m or m.group(1) not in names or int(m.group(2)) != tls_port:
            problems.append(f"MESH_REGISTRY {url!r} is not https:// to the registry Service's TLS port"
                            f" ({REGISTRY_SERVICE}:{tls_port})")
    ca = env.get("MESH_REGISTRY_CA")
    mount, volume = mounted_volume(spec, sidecar, ca) if isinstance(ca, str) else (None, None)
    bundle = (volume or {}).get("configMap")
    if not ca:
        problems.append("no MESH_REGISTRY_CA: the sidecar cannot tell the registry from an impostor")
    elif not bundle or bundle.get("name") != CA_BUNDLE:
        problems.append(f"MESH_REGISTRY_CA {ca} is not in a mounted ConfigMap {CA_BUNDLE}")
    else:
        if not mount.get("readOnly"):
            problems.append(f"the ConfigMap {CA_BUNDLE} is mounted writable")
        name = ca[len(mount["mountPath"].rstrip("/")) + 1:]
        items = {i["path"]: i["key"] for i in bundle.get("items", [])}
        if (items.get(name) if items else name) != CA_BUNDLE_KEY:
            problems.append(f"MESH_REGISTRY_CA {ca} is not the ConfigMap's key {CA_BUNDLE_KEY}")
    if env.get("MESH_TLS", "off") == "off":
        problems.append("MESH_TLS is off: without a certificate the sidecar cannot write to the registry")
    return problems


def check_sidecar_join_token(template, objects):
    """The sidecar's join token comes from its own service's Secret, the only Secret it
    reads; the app beside it reads none of the mesh's Secrets."""
    spec = template["spec"]
    sidecar = mesh_sidecar(spec)
    env = env_of(sidecar)[0]
    service = env.get("MESH_SERVICE")
    own = JOIN_TOKEN_SECRET.format(service)
    problems = []
    ref = secret_ref(env.get("MESH_JOIN_TOKEN"))
    if not ref or ref.get("name") != own:
        problems.append(f"MESH_JOIN_TOKEN does not come from the Secret {own}, this service's own")
    elif ref.get("optional"):
        problems.append(f"MESH_JOIN_TOKEN is optional: without {own} the sidecar would start and never join")
    others = secrets_read(spec, sidecar) - {own}
    if others:
        problems.append(f"the sidecar reads Secrets besides its join token: {sorted(others)}")
    for c in spec["containers"]:
        read = secrets_read(spec, c)
        leaked = (read & registry_secrets(objects)) | {
            n for n in read if n.startswith(JOIN_TOKEN_SECRET.format(""))}
        if leaked:
            problems.append(f"{c['name']} (an app) reads the mesh's Secrets {sorted(leaked)}")
    return problems


def check_sidecar_upstreams(template, objects):
    """Each upstream listener is where the app dials (its <NAME>_HOST/_PORT settings), for a
    service the mesh has; no two listeners in the pod share a port."""
    spec = template["spec"]
    env = env_of(mesh_sidecar(spec))[0]
    apps = spec["containers"]
    listeners = [port_of(env.get(var, default)) for var, default in (
        ("MESH_INBOUND", "0.0.0.0:4143"), ("MESH_ADMIN", "0.0.0.0:4191"),
        ("MESH_OUTBOUND", "127.0.0.1:4140"))]
    listeners += [p["containerPort"] for c in apps for p in c.get("ports", [])]
    meshed_services = {
        env_of(mesh_sidecar(t["spec"]))[0].get("MESH_SERVICE")
        for _, t in pod_templates(objects) if is_meshed(t)
    }
    problems = []
    for upstream in (u for u in (env.get("MESH_UPSTREAMS") or "").split(",") if u):
        name, listen = upstream.split("=", 1)
        target, _, dns_port = name.partition(":")
        listeners.append(port_of(listen))
        if not ipaddress.ip_address(host_of(listen)).is_loopback:
            problems.append(f"upstream {upstream}: listens beyond loopback")
        if target not in meshed_services:
            problems.append(f"upstream {upstream}: no meshed workload registers {target!r}")
        if dns_port:
            svc = find(objects, "Service", target)
            if not svc or int(dns_port) not in [p["port"] for p in svc["spec"]["ports"]]:
                problems.append(f"upstream {upstream}: DNS fallback port is not a port of Service {target!r}")
        prefix = target.upper().replace("-", "_")
        dialled = False
        for c in apps:
            app_env = env_of(c)[0]
            if f"{prefix}_PORT" in app_env:
                dialled = True
                if str(app_env[f"{prefix}_PORT"]) != str(port_of(listen)):
                    problems.append(f"{c['name']}: {prefix}_PORT={app_env[f'{prefix}_PORT']}"
                                    f" but the upstream listens on {port_of(listen)}")
            if app_env.get(f"{prefix}_HOST", "localhost") not in ("localhost", "127.0.0.1"):
                problems.append(f"{c['name']}: {prefix}_HOST is not localhost")
        if not dialled:
            problems.append(f"upstream {upstream}: no app container sets {prefix}_PORT")
    if len(listeners) != len(set(listeners)):
        problems.append(f"ports clash inside the pod: {sorted(listeners)}")
    return problems


def check_sidecar_protocol(template):
    """MESH_APP_PROTOCOL is one the proxy knows, and the one the kubelet probes the app in:
    gRPC probes for grpc, TCP probes alone for tcp, HTTP probes for http, h2 or none (the
    caller's version)."""
    spec = template["spec"]
    declared = env_of(mesh_sidecar(spec))[0].get("MESH_APP_PROTOCOL")
    if declared is not None and declared not in APP_PROTOCOLS:
        return [f"MESH_APP_PROTOCOL {declared!r} is none of {sorted(APP_PROTOCOLS)}"]
    kinds = {probe_target(p)[0] for c in spec["containers"] for p in probes(c).values()} - {"exec"}
    if "grpc" in kinds:
        expected = "grpc"
    elif kinds == {"tcpSocket"}:
        expected = "tcp"
    elif "httpGet" in kinds:
        expected = declared if declared in (None, "http", "h2") else "http"
    else:
        return []
    if declared != expected:
        return [f"MESH_APP_PROTOCOL is {declared!r}, but the app is probed with {sorted(kinds)}:"
                f" expected {expected!r}"]
    return []


def check_sidecar_probes(template):
    sidecar = mesh_sidecar(template["spec"])
    admin_port = port_of(env_of(sidecar)[0].get("MESH_ADMIN", "0.0.0.0:4191"))
    expected = {"startupProbe": READY_PATH, "readinessProbe": READY_PATH, "livenessProbe": LIVE_PATH}
    problems = []
    for kind, path in expected.items():
        probe = sidecar.get(kind)
        if not probe:
            problems.append(f"no {kind}")
            continue
        how, port, got = probe_target(probe)
        if how != "httpGet" or got != path or container_port(sidecar, port) != admin_port:
            problems.append(f"{kind} is {how} {got} on {port!r}, expected GET {path} on the admin port {admin_port}")
    return problems


def check_shutdown(template):
    """The grace period covers the app's pause, then deregistration and the drain."""
    spec = template["spec"]
    sidecar = mesh_sidecar(spec)
    drain = duration_s(env_of(sidecar)[0].get("MESH_DRAIN_TIMEOUT", "10s"))
    pause = max(
        (c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
         for c in spec["containers"]),
        default=0,
    )
    grace = spec.get("terminationGracePeriodSeconds", 30)
    needed = pause + DEREGISTER_WAIT_S + drain
    if grace <= needed:
        return [f"terminationGracePeriodSeconds {grace} is not above preStop {pause}s"
                f" + deregistration {DEREGISTER_WAIT_S}s + drain {drain}s"]
    return []


def check_scrape_annotations(template):
    annotations = template["metadata"].get("annotations", {})
    spec = template["spec"]
    if is_meshed(template):
        sidecar = mesh_sidecar(spec)
        port = port_of(env_of(sidecar)[0].get("MESH_ADMIN", "0.0.0.0:4191"))
    else:
        port = None
    problems = []
    if annotations.get("prometheus.io/scrape") != "true":
        return ["no prometheus.io/scrape: \"true\""]
    declared = annotations.get("prometheus.io/port")
    if declared is None or pod_port(spec, int(declared)) is None:
        problems.append(f"prometheus.io/port {declared!r} is not a port of the pod")
    if port is not None and declared != str(port):
        problems.append(f"prometheus.io/port {declared!r} is not the sidecar's admin port {port}")
    if annotations.get("prometheus.io/path") != "/metrics":
        problems.append("prometheus.io/path is not /metrics")
    return problems


def check_services(objects):
    problems = []
    templates = [t for _, t in pod_templates(objects)]
    for svc in (o for o in objects if o["kind"] == "Service"):
        name = svc["metadata"]["name"]
        matched = [t for t in templates if selects(svc["spec"].get("selector"), t["metadata"].get("labels", {}))]
        if not matched:
            problems.append(f"Service {name} selects no pod")
        for t in matched:
            for p in svc["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                if pod_port(t["spec"], target) is None:
                    problems.append(f"Service {name} port {p['port']} targets {target!r}, which its pods lack")
    return problems


def check_meshed_services_target_sidecar(objects):
    """Callers of a meshed pod's Service pass its sidecar's inbound listener, except at the
    entry point, which outsiders without a mesh identity call on the app's port."""
    problems = []
    for _, t in pod_templates(objects):
        if not is_meshed(t):
            continue
        sidecar = mesh_sidecar(t["spec"])
        inbound = port_of(env_of(sidecar)[0].get("MESH_INBOUND", "0.0.0.0:4143"))
        app_ports = {p["containerPort"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for svc in service_for(objects, t["metadata"].get("labels", {})):
            name = svc["metadata"]["name"]
            for p in svc["spec"]["ports"]:
                target = pod_port(t["spec"], p.get("targetPort", p["port"]))
                if name == ENTRY_POINT and target not in app_ports:
                    problems.append(f"Service {name} (the entry point) port {p['port']} does not target the app")
                if name != ENTRY_POINT and target != inbound:
                    problems.append(f"Service {name} port {p['port']} bypasses the sidecar")
    return problems


def check_registry(objects):
    dep = find(objects, "Deployment", REGISTRY_SERVICE)
    if not dep:
        return ["no registry Deployment"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    problems = []
    listen = setting(c, "listen", "REGISTRY_LISTEN") or "0.0.0.0:7700"
    if container_port(c, port_of(listen)) is None:
        problems.append(f"REGISTRY_LISTEN {listen} is not a containerPort")
    for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        how, port, got = probe_target(c.get(kind, {}))
        if how != "httpGet" or got != path or container_port(c, port) != port_of(listen):
            problems.append(f"{kind} is not GET {path} on the plain API port")
    if registry_on_etcd(objects):
        return problems + registry_etcd_problems(objects, dep)
    return problems + registry_volume_problems(objects, dep)


def registry_volume_problems(objects, dep):
    """One replica holding the catalog, snapshotted to its claim."""
    spec = dep["spec"]
    problems = []
    if spec.get("replicas", 1) != 1:
        problems.append("more than one registry replica (the catalog lives in one process)")
    if spec.get("strategy", {}).get("type") != "Recreate":
        problems.append("strategy is not Recreate (the volume is ReadWriteOnce)")
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    data_dir = setting(c, "data-dir", "REGISTRY_DATA_DIR")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mounts.get(data_dir)), None)
    claim = volume and volume.get("persistentVolumeClaim", {}).get("claimName")
    pvc = claim and find(objects, "PersistentVolumeClaim", claim)
    if not pvc:
        problems.append(f"REGISTRY_DATA_DIR {data_dir!r} is not a mounted PersistentVolumeClaim")
    elif pvc["spec"]["accessModes"] != ["ReadWriteOnce"]:
        problems.append("the registry's claim is not ReadWriteOnce")
    if pvc and pod.get("securityContext", {}).get("fsGroup") != RESTRICTED_UID:
        problems.append(f"no fsGroup {RESTRICTED_UID}: the volume would not be writable")
    return problems


def registry_etcd_problems(objects, dep):
    """Stateless replicas on etcd: several of them, every member as an endpoint, no volume
    of their own, a budget and a spread that keep one serving (the one CA from a Secret is
    every overlay's: check_registry_credentials)."""
    spec = dep["spec"]
    template = spec["template"]
    pod = template["spec"]
    c = pod["containers"][0]
    problems = []
    replicas = spec.get("replicas", 1)
    if replicas < 2:
        problems.append(f"{replicas} registry replica on etcd: one pod is still a single point of failure")
    if spec.get("strategy", {}).get("type", "RollingUpdate") != "RollingUpdate":
        problems.append("strategy is not RollingUpdate (Recreate stops every replica at once)")
    if setting(c, "data-dir", "REGISTRY_DATA_DIR") is not None:
        problems.append("--data-dir (REGISTRY_DATA_DIR) is set: the registry refuses it with etcd")
    claims = [v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v]
    if claims:
        problems.append(f"stateless replicas mount claims {claims}")

    sts, etcd = etcd_cluster(objects)
    endpoints = [e for e in str(setting(c, "etcd-endpoints", "REGISTRY_ETCD_ENDPOINTS")).split(",") if e]
    if not sts:
        problems.append("--etcd-endpoints is set but there is no etcd StatefulSet")
    else:
        members = etcd_members(sts)
        client_port = listen_port(flags_of(etcd), "listen-client-urls")
        named = set()
        for url in endpoints:
            parsed = http_url(url)
            member = parsed and next((m for m, hosts in members.items() if parsed[0] in hosts), None)
            if not member or parsed[1] != client_port:
                problems.append(f"etcd endpoint {url!r} is not a member's client URL (port {client_port})")
            else:
                named.add(member)
        if named != set(members):
            problems.append(f"--etcd-endpoints misses members {sorted(set(members) - named)}")
    prefix = setting(c, "etcd-prefix", "REGISTRY_ETCD_PREFIX")
    if prefix is not None and not str(prefix).startswith("/"):
        problems.append(f"--etcd-prefix {prefix!r} does not start with / (the registry refuses it)")

    budgets = budgets_for(objects, template)
    if not budgets:
        problems.append("no PodDisruptionBudget: a drain may take every replica at once")
    for b in budgets:
        least = b["spec"].get("minAvailable", replicas - b["spec"].get("maxUnavailable", replicas))
        if not isinstance(least, int) or not 1 <= least < replicas:
            problems.append(f"budget {b['metadata']['name']}: keeps {least!r} of {replicas} replicas"
                            " (at least 1, and fewer than all, or drains block)")
    if not spread_over_nodes(template):
        problems.append(f"replicas are not spread over nodes ({NODE_TOPOLOGY})")
    return problems


# === credentials ===


def registry_secrets(objects):
    """The Secrets the registry reads: the CA with its key, every service's join token, the
    operator token. No other container may read them."""
    dep, c = registry_container(objects)
    return secrets_read(dep["spec"]["template"]["spec"], c) if dep else set()


def secret_file_problems(pod_spec, container, path, what):
    """(problems, Secret name) for a file that must come from a read-only mounted Secret."""
    mount, volume = mounted_volume(pod_spec, container, path)
    secret = (volume or {}).get("secret")
    if not secret:
        return [f"{what} {path} is not in a mounted Secret"], None
    problems = []
    if not mount.get("readOnly"):
        problems.append(f"the Secret holding {what} {path} is mounted writable")
    if not file_in_volume(mount, secret, path):
        problems.append(f"{what} {path} is not among the Secret's items")
    return problems, secret["secretName"]


def check_registry_tls(objects):
    """The TLS listener sidecars write on: a declared port of its own, exposed by the
    Service, its certificate naming the Service's names. The probes stay on the plain
    listener (check_registry)."""
    dep, c = registry_container(objects)
    if not dep:
        return ["no registry Deployment"]
    pod = dep["spec"]["template"]["spec"]
    tls = setting(c, "tls-listen", "REGISTRY_TLS_LISTEN")
    if not tls:
        return ["no REGISTRY_TLS_LISTEN: sidecars have nowhere to write with their certificates"]
    problems = []
    listen = setting(c, "listen", "REGISTRY_LISTEN") or "0.0.0.0:7700"
    if port_of(tls) == port_of(listen):
        problems.append(f"REGISTRY_TLS_LISTEN {tls} is the plain listener's port")
    if container_port(c, port_of(tls)) is None:
        problems.append(f"REGISTRY_TLS_LISTEN {tls} is not a containerPort")
    elif service_port_to(objects, REGISTRY_SERVICE, pod, port_of(tls)) is None:
        problems.append(f"the Service {REGISTRY_SERVICE} does not expose the TLS listener ({port_of(tls)})")
    ns = dep["metadata"].get("namespace", "")
    wanted = {REGISTRY_SERVICE, f"{REGISTRY_SERVICE}.{ns}", f"{REGISTRY_SERVICE}.{ns}.svc",
              f"{REGISTRY_SERVICE}.{ns}.svc.cluster.local"}
    names = setting(c, "tls-names", "REGISTRY_TLS_NAMES") or "localhost,127.0.0.1,::1"
    missing = wanted - {n.strip() for n in str(names).split(",")}
    if missing:
        problems.append(f"REGISTRY_TLS_NAMES lacks the Service's names {sorted(missing)}")
    return problems


def check_registry_credentials(objects):
    """The CA (certificate and key) and the per-service join tokens from read-only Secrets;
    no CA made on a volume, no shared join token; the operator token, if any, from a
    Secret."""
    dep, c = registry_container(objects)
    if not dep:
        return ["no registry Deployment"]
    pod = dep["spec"]["template"]["spec"]
    env, flags = env_of(c)[0], flags_of(c)
    problems = []
    if setting(c, "ca-dir", "REGISTRY_CA_DIR") is not None:
        problems.append("--ca-dir (REGISTRY_CA_DIR) is set: a CA the registry makes itself cannot be"
                        f" handed to the sidecars (the ConfigMap {CA_BUNDLE}), and replicas on etcd"
                        " would each need the same one; give it --ca-cert/--ca-key from a Secret")
    cert, key = setting(c, "ca-cert", "REGISTRY_CA_CERT"), setting(c, "ca-key", "REGISTRY_CA_KEY")
    if not (cert and key):
        problems.append("no --ca-cert and --ca-key: no CA to sign the sidecars' certificates")
    else:
        secrets = set()
        for path, what in ((cert, "the CA certificate"), (key, "the CA key")):
            found, secret = secret_file_problems(pod, c, path, what)
            problems += found
            secrets |= {secret} if secret else set()
        if len(secrets) > 1:
            problems.append(f"the CA certificate and key come from different Secrets {sorted(secrets)}")
    if "join-token" in flags or env.get("REGISTRY_JOIN_TOKEN") is not None:
        problems.append("a shared join token (REGISTRY_JOIN_TOKEN): its holder may get a certificate"
                        " for any service")
    tokens = setting(c, "join-tokens", "REGISTRY_JOIN_TOKENS")
    if not tokens:
        problems.append("no REGISTRY_JOIN_TOKENS: no per-service join tokens")
    else:
        problems += secret_file_problems(pod, c, tokens, "the join tokens file")[0]
    if "token" in flags or isinstance(env.get("REGISTRY_TOKEN"), str):
        problems.append("the operator token is written into the manifest, not taken from a Secret")
    return problems


def check_registry_writes_closed(objects):
    """Every write needs an identity: a CA with the TLS listener (the sidecars'
    certificates), service tokens, or an operator token that is always there. Without any,
    the registry is open: whoever reaches it may redirect any service's calls."""
    dep, c = registry_container(objects)
    if not dep:
        return ["no registry Deployment"]
    env = env_of(c)[0]
    ca = setting(c, "ca-cert", "REGISTRY_CA_CERT") or setting(c, "ca-dir", "REGISTRY_CA_DIR")
    tls = setting(c, "tls-listen", "REGISTRY_TLS_LISTEN")
    tokens = setting(c, "tokens", "REGISTRY_TOKENS")
    operator = flags_of(c).get("token", env.get("REGISTRY_TOKEN"))
    ref = secret_ref(operator)
    operator_always = isinstance(operator, str) or bool(ref and not ref.get("optional"))
    if (ca and tls) or tokens or operator_always:
        return []
    return ["registry writes are open: no CA with REGISTRY_TLS_LISTEN, no REGISTRY_TOKENS, and no"
            " operator token that is always set (an optional Secret may be missing)"]


def check_registry_secrets_private(objects):
    """The registry's Secrets are read by no other container: the CA key mints any
    identity, the join tokens file holds every service's token."""
    dep, registry = registry_container(objects)
    secrets = registry_secrets(objects)
    problems = []
    for workload, template in pod_templates(objects):
        for c in all_containers(template["spec"]):
            if workload is dep and c["name"] == registry["name"]:
                continue
            shared = secrets_read(template["spec"], c) & secrets
            if shared:
                problems.append(f"{workload['metadata']['name']}/{c['name']} reads the registry's"
                                f" Secrets {sorted(shared)}")
    return problems


def join_tokens_secret(objects):
    """(Secret, key) of the registry's join tokens file, where the overlay renders it."""
    dep, c = registry_container(objects)
    path = dep and setting(c, "join-tokens", "REGISTRY_JOIN_TOKENS")
    if not isinstance(path, str):
        return None, None
    mount, volume = mounted_volume(dep["spec"]["template"]["spec"], c, path)
    source = (volume or {}).get("secret")
    secret = source and find(objects, "Secret", source.get("secretName"))
    if not secret:
        return None, None
    name = path[len(mount["mountPath"].rstrip("/")) + 1:]
    key = next((i["key"] for i in source.get("items", []) if i["path"] == name), name)
    return secret, key


def check_join_tokens_agree(objects):
    """Where the overlay carries the join tokens (dev): every line of the registry's file is
    good for one service, and each meshed service's Secret holds the token of its line."""
    secret, key = join_tokens_secret(objects)
    text = decoded(secret).get(key)
    if text is None:
        return [f"the Secret {secret['metadata']['name']} has no key {key!r}"]
    lines = token_lines(text)
    problems = [f"line {n}: the token is good for {services!r}, not for one service"
                for services, _, n in lines if "," in services or services == "*"]
    services = {env_of(mesh_sidecar(t["spec"]))[0].get("MESH_SERVICE")
                for _, t in pod_templates(objects) if is_meshed(t)}
    for service in sorted(services):
        name = JOIN_TOKEN_SECRET.format(service)
        own = find(objects, "Secret", name)
        if not own:
            problems.append(f"no Secret {name} beside the registry's join tokens")
            continue
        token = decoded(own).get("token")
        scopes = [s for s, t, _ in lines if t == token]
        if scopes != [service]:
            problems.append(f"{name}'s token is good for {scopes or 'nothing'} in the registry's file,"
                            f" not for {service!r}")
    return problems


def check_no_private_keys(objects):
    """No rendered Secret or ConfigMap holds a private key: the CA's is made in the cluster
    (k8s/create-ca.sh), never kept in the manifests."""
    return [f"{o['kind']}/{o['metadata']['name']}: key {key!r} holds a private key"
            for o in objects if o["kind"] in ("Secret", "ConfigMap")
            for key, value in sorted(decoded(o).items()) if PRIVATE_KEY.search(value)]


def check_no_committed_private_keys(directory):
    """No file under the manifests' directory holds a private key: a generator could put
    it in a Secret or ConfigMap."""
    problems = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    if PRIVATE_KEY.search(f.read()):
                        problems.append(f"{os.path.relpath(path, directory)} holds a private key")
            except OSError as error:
                problems.append(f"{path}: {error}")
    return problems


def check_etcd(objects):
    """The members agree on the cluster they form, find each other before any is ready,
    keep their data on claims, and keep a quorum through drains and node losses."""
    sts, c = etcd_cluster(objects)
    if not sts:
        return ["no etcd StatefulSet"]
    spec, template = sts["spec"], sts["spec"]["template"]
    labels = template["metadata"].get("labels", {})
    replicas = spec.get("replicas", 1)
    quorum = replicas // 2 + 1
    problems = []
    if replicas < 3 or replicas % 2 == 0:
        problems.append(f"{replicas} members: an odd number, at least 3, survives losing one")
    if spec.get("podManagementPolicy") != "Parallel":
        problems.append("podManagementPolicy is not Parallel: a member is ready only with a quorum,"
                        " so starting them one by one never gets past the first")

    headless = find(objects, "Service", spec.get("serviceName", ""))
    flags, env = flags_of(c), env_of(c)[0]
    client_port = listen_port(flags, "listen-client-urls")
    peer_port = listen_port(flags, "listen-peer-urls")
    for flag, port in (("listen-client-urls", client_port), ("listen-peer-urls", peer_port)):
        if port is None or container_port(c, port) is None:
            problems.append(f"--{flag} {flags.get(flag)!r} is not one http:// URL on a containerPort")
    if not headless:
        problems.append(f"serviceName {spec.get('serviceName')!r} is not a Service")
    else:
        if headless["spec"].get("clusterIP") != "None":
            problems.append(f"Service {headless['metadata']['name']} is not headless (clusterIP: None)")
        if headless["spec"].get("publishNotReadyAddresses") is not True:
            problems.append(f"Service {headless['metadata']['name']} does not publish unready members:"
                            " they could not find each other to form a quorum")
        if not selects(headless["spec"].get("selector"), labels):
            problems.append(f"Service {headless['metadata']['name']} does not select the members")
        ports = {pod_port(template["spec"], p.get("targetPort", p["port"])) for p in headless["spec"]["ports"]}
        if not {client_port, peer_port} <= ports:
            problems.append(f"Service {headless['metadata']['name']} lacks the client or peer port")
    clients = [s for s in service_for(objects, labels) if s["spec"].get("clusterIP") != "None"
               and any(pod_port(template["spec"], p.get("targetPort", p["port"])) == client_port
                       for p in s["spec"]["ports"])]
    if not clients:
        problems.append("no client Service (a ClusterIP Service on the client port)")

    # Each member's name and URLs, as Kubernetes expands $(POD_NAME) in that pod.
    pod_name = env.get("POD_NAME")
    if not (isinstance(pod_name, dict) and pod_name.get("fieldRef", {}).get("fieldPath") == "metadata.name"):
        problems.append("POD_NAME does not come from metadata.name")
    members = etcd_members(sts)
    initial = {}
    for entry in str(flags.get("initial-cluster", "")).split(","):
        name, _, url = entry.partition("=")
        if name:
            initial[name] = url
    if set(initial) != set(members):
        problems.append(f"--initial-cluster names {sorted(initial)}, the members are {sorted(members)}")
    if flags.get("name") != "$(POD_NAME)":
        problems.append(f"--name is {flags.get('name')!r}, not $(POD_NAME)")
    for member, hosts in members.items():
        def own(flag, member=member):
            return str(flags.get(flag, "")).replace("$(POD_NAME)", member)

        url = initial.get(member)
        parsed = http_url(url or "")
        if url is not None and (not parsed or parsed[0] not in hosts or parsed[1] != peer_port):
            problems.append(f"--initial-cluster {member}={url} is not its DNS name on the peer port {peer_port}")
        if url is not None and own("initial-advertise-peer-urls") != url:
            problems.append(f"{member} advertises {own('initial-advertise-peer-urls')!r} to peers,"
                            f" --initial-cluster says {url!r}")
        advertised = http_url(own("advertise-client-urls"))
        if not advertised or advertised[0] not in hosts or advertised[1] != client_port:
            problems.append(f"{member} advertises clients {own('advertise-client-urls')!r},"
                            " not its DNS name on the client port")
    if flags.get("initial-cluster-state", "new") != "new":
        problems.append("--initial-cluster-state is not new (the StatefulSet bootstraps the cluster)")

    # Data on a claim per member, large enough for the backend quota.
    claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    data_dir = str(flags.get("data-dir", ""))
    mount = next((m for m in c.get("volumeMounts", [])
                  if data_dir == m["mountPath"] or data_dir.startswith(m["mountPath"].rstrip("/") + "/")), None)
    claim = mount and claims.get(mount["name"])
    if not claim:
        problems.append(f"--data-dir {data_dir!r} is not on a volumeClaimTemplate")
    else:
        if claim["spec"].get("accessModes") != ["ReadWriteOnce"]:
            problems.append("the members' claims are not ReadWriteOnce")
        size = quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])
        quota = int(flags.get("quota-backend-bytes", 2 * 2**30))
        if quota >= size:
            problems.append(f"--quota-backend-bytes {quota} does not leave room on a {size}-byte claim")
        if template["spec"].get("securityContext", {}).get("fsGroup") != RESTRICTED_UID:
            problems.append(f"no fsGroup {RESTRICTED_UID}: the volume would not be writable")

    budgets = budgets_for(objects, template)
    if not budgets:
        problems.append("no PodDisruptionBudget: a drain may take the quorum")
    for b in budgets:
        down = b["spec"].get("maxUnavailable", replicas - b["spec"].get("minAvailable", 0))
        if not isinstance(down, int) or not 1 <= down <= replicas - quorum:
            problems.append(f"budget {b['metadata']['name']}: lets {down!r} of {replicas} members go"
                            f" (at least 1, at most {replicas - quorum} to keep a quorum of {quorum})")
    if not spread_over_nodes(template):
        problems.append(f"members are not spread over nodes ({NODE_TOPOLOGY})")
    return problems


def check_claims_mounted(objects):
    """Every PersistentVolumeClaim belongs to a pod (a left-over claim holds a disk for nothing)."""
    used = {v["persistentVolumeClaim"]["claimName"] for _, t in pod_templates(objects)
            for v in t["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    return [f"PersistentVolumeClaim {o['metadata']['name']} is mounted by no pod"
            for o in objects if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] not in used]


# === network policies ===


class Pod:
    """A traffic source or destination: labels, namespace labels, named ports."""

    def __init__(self, namespace, labels, ns_labels=None, spec=None, external=False):
        self.namespace = namespace
        self.labels = labels
        self.ns_labels = ns_labels or {"kubernetes.io/metadata.name": namespace}
        self.spec = spec
        self.external = external


def peer_matches(peer, source, policy_ns):
    if "ipBlock" in peer:
        return source.external  # the only blocks worth writing here are for outsiders
    if source.external:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], source.ns_labels):
            return False
    elif source.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], source.labels)


def port_matches(rule_ports, port, protocol, pod):
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        wanted = p["port"]
        if isinstance(wanted, str):
            wanted = pod_port(pod.spec, wanted) if pod and pod.spec else None
        if wanted == port or (wanted is not None and wanted <= port <= p.get("endPort", wanted)):
            return True
    return False


def admitted(policies, direction, subject, other, port, protocol, port_owner):
    """Whether the policies selecting `subject` let this connection through."""
    kind = "Ingress" if direction == "ingress" else "Egress"
    applying = [
        p for p in policies
        if not subject.external and p["metadata"]["namespace"] == subject.namespace
        and kind in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], subject.labels)
    ]
    if not applying:
        return True
    peer_key = "from" if direction == "ingress" else "to"
    for p in applying:
        for rule in p["spec"].get(direction, []) or []:
            peers = rule.get(peer_key)
            if peers and not any(peer_matches(x, other, p["metadata"]["namespace"]) for x in peers):
                continue
            if port_matches(rule.get("ports"), port, protocol, port_owner):
                return True
    return False


def reachable(policies, source, destination, port, protocol="TCP"):
    return admitted(policies, "egress", source, destination, port, protocol, destination) and admitted(
        policies, "ingress", destination, source, port, protocol, destination
    )


def check_network_policies(objects):
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    ns = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
    pods = {}
    for dep, t in pod_templates(objects):
        pods[dep["metadata"]["name"]] = Pod(ns, t["metadata"].get("labels", {}), spec=t["spec"])
    problems = []
    if not any(p["spec"]["podSelector"] == {} and "Ingress" in p["spec"].get("policyTypes", [])
               and not p["spec"].get("ingress") for p in policies):
        problems.append("no default deny for ingress")

    def sidecar_port(name, var, default):
        c = mesh_sidecar(pods[name].spec)
        return port_of(env_of(c)[0].get(var, default))

    mkt, rec, reg = pods.get("marketplace"), pods.get("recommendations"), pods.get("registry")
    if not (mkt and rec and reg):
        return problems + ["marketplace, recommendations or registry missing"]
    inbound = sidecar_port("recommendations", "MESH_INBOUND", "0.0.0.0:4143")
    admin = sidecar_port("recommendations", "MESH_ADMIN", "0.0.0.0:4191")
    app = port_of(env_of(rec.spec["containers"][0])[0]["RECOMMENDATIONS_LISTEN"])
    registry = registry_container(objects)[1]
    registry_port = port_of(setting(registry, "listen", "REGISTRY_LISTEN") or "0.0.0.0:7700")
    registry_tls = port_of(setting(registry, "tls-listen", "REGISTRY_TLS_LISTEN") or "0.0.0.0:7743")
    entry = find(objects, "Service", ENTRY_POINT)["spec"]["ports"][0]
    entry_port = pod_port(mkt.spec, entry.get("targetPort", entry["port"]))
    outsider = Pod("", {}, external=True)
    unmeshed = Pod(ns, {"app.kubernetes.io/name": "debug"})
    prometheus_here = Pod(ns, {"app.kubernetes.io/name": "prometheus"})
    prometheus_there = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    dns = Pod("kube-system", {"k8s-app": "kube-dns"})

    cases = [
        ("marketplace -> recommendations sidecar inbound", mkt, rec, inbound, "TCP", True),
        ("marketplace -> recommendations app port (bypassing the sidecar)", mkt, rec, app, "TCP", False),
        ("marketplace -> registry TLS listener", mkt, reg, registry_tls, "TCP", True),
        ("recommendations -> registry TLS listener", rec, reg, registry_tls, "TCP", True),
        ("marketplace -> registry plain listener (sidecars use TLS)", mkt, reg, registry_port, "TCP", False),
        ("un-meshed pod -> registry TLS listener", unmeshed, reg, registry_tls, "TCP", False),
        ("un-meshed pod -> registry plain listener", unmeshed, reg, registry_port, "TCP", False),
        ("un-meshed pod -> recommendations sidecar inbound", unmeshed, rec, inbound, "TCP", False),
        ("prometheus (same namespace) -> sidecar admin", prometheus_here, rec, admin, "TCP", True),
        ("prometheus (same namespace) -> registry plain listener", prometheus_here, reg, registry_port, "TCP", True),
        ("prometheus (other namespace) -> registry plain listener", prometheus_there, reg, registry_port, "TCP", True),
        ("prometheus (same namespace) -> registry TLS listener", prometheus_here, reg, registry_tls, "TCP", False),
        ("prometheus (other namespace) -> sidecar admin", prometheus_there, mkt, admin, "TCP", True),
        ("un-meshed pod -> sidecar admin", unmeshed, rec, admin, "TCP", False),
        ("outside -> marketplace entry port", outsider, mkt, entry_port, "TCP", True),
        ("outside -> marketplace admin", outsider, mkt, admin, "TCP", False),
        ("outside -> marketplace sidecar inbound", outsider, mkt, inbound, "TCP", False),
        ("outside -> recommendations sidecar inbound", outsider, rec, inbound, "TCP", False),
        ("outside -> registry plain listener", outsider, reg, registry_port, "TCP", False),
        ("outside -> registry TLS listener", outsider, reg, registry_tls, "TCP", False),
        ("marketplace -> DNS (UDP)", mkt, dns, 53, "UDP", True),
        ("marketplace -> DNS (TCP)", mkt, dns, 53, "TCP", True),
        ("recommendations -> outside the namespace, not DNS", rec, dns, 443, "TCP", False),
    ]
    cache = pods.get("cache")
    if cache:
        # The cache's inbound listener for the marketplace alone (its sidecar's allow list),
        # Redis' own port for nobody.
        cache_inbound = sidecar_port("cache", "MESH_INBOUND", "0.0.0.0:4143")
        cache_admin = sidecar_port("cache", "MESH_ADMIN", "0.0.0.0:4191")
        redis = int(flags_of(cache.spec["containers"][0]).get("port", 6379))
        cases += [
            ("marketplace -> cache sidecar inbound", mkt, cache, cache_inbound, "TCP", True),
            ("marketplace -> cache app port (bypassing the sidecar)", mkt, cache, redis, "TCP", False),
            ("recommendations -> cache sidecar inbound (not on its allow list)", rec, cache, cache_inbound, "TCP", False),
            ("un-meshed pod -> cache sidecar inbound", unmeshed, cache, cache_inbound, "TCP", False),
            ("outside -> cache sidecar inbound", outsider, cache, cache_inbound, "TCP", False),
            ("cache -> registry TLS listener", cache, reg, registry_tls, "TCP", True),
            ("cache -> recommendations sidecar inbound", cache, rec, inbound, "TCP", True),
            ("prometheus (other namespace) -> cache sidecar admin", prometheus_there, cache, cache_admin, "TCP", True),
            ("un-meshed pod -> cache sidecar admin", unmeshed, cache, cache_admin, "TCP", False),
        ]
    sts, etcd_container = etcd_cluster(objects)
    if sts:
        # The catalog in etcd is reached through the registry only.
        etcd = pods[sts["metadata"]["name"]]
        flags = flags_of(etcd_container)
        client = listen_port(flags, "listen-client-urls")
        peer = listen_port(flags, "listen-peer-urls")
        metrics = listen_port(flags, "listen-metrics-urls")
        cases += [
            ("registry -> etcd client port", reg, etcd, client, "TCP", True),
            ("etcd member -> etcd member, peer port", etcd, etcd, peer, "TCP", True),
            ("registry -> etcd peer port", reg, etcd, peer, "TCP", False),
            ("marketplace -> etcd client port", mkt, etcd, client, "TCP", False),
            ("recommendations -> etcd client port", rec, etcd, client, "TCP", False),
            ("un-meshed pod -> etcd client port", unmeshed, etcd, client, "TCP", False),
            ("un-meshed pod -> etcd peer port", unmeshed, etcd, peer, "TCP", False),
            ("prometheus (same namespace) -> etcd client port", prometheus_here, etcd, client, "TCP", False),
            ("outside -> etcd client port", outsider, etcd, client, "TCP", False),
            ("outside -> etcd peer port", outsider, etcd, peer, "TCP", False),
        ]
        if metrics is not None:
            cases += [
                ("prometheus (other namespace) -> etcd metrics", prometheus_there, etcd, metrics, "TCP", True),
                ("un-meshed pod -> etcd metrics", unmeshed, etcd, metrics, "TCP", False),
            ]
    for what, src, dst, port, proto, want in cases:
        got = reachable(policies, src, dst, port, proto)
        if got != want:
            problems.append(f"{what} (port {port}/{proto}): {'allowed' if got else 'denied'}, "
                            f"expected {'allowed' if want else 'denied'}")
    return problems


def check_prometheus_config(objects):
    cm = next((o for o in objects if o["kind"] == "ConfigMap"
               and o["metadata"]["name"].startswith("prometheus-config")), None)
    if not cm:
        return None
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    # The plain listener: Prometheus neither has nor needs the mesh CA.
    dep, registry = registry_container(objects)
    port = service_port_to(objects, REGISTRY_SERVICE, dep["spec"]["template"]["spec"],
                           port_of(setting(registry, "listen", "REGISTRY_LISTEN") or "0.0.0.0:7700"))
    problems = []
    jobs = {j["job_name"]: j for j in config.get("scrape_configs", [])}
    urls = [sd["url"] for j in jobs.values() for sd in j.get("http_sd_configs", [])]
    if f"http://{REGISTRY_SERVICE}:{port}/v1/prometheus/targets" not in urls:
        problems.append(f"no http_sd from http://{REGISTRY_SERVICE}:{port}/v1/prometheus/targets (found {urls})")
    for job in jobs.values():
        if job.get("http_sd_configs"):
            relabels = job.get("relabel_configs", [])
            if not any(r.get("action") == "labeldrop" and re.fullmatch(r.get("regex", ""), "service")
                       for r in relabels):
                problems.append(f"job {job['job_name']}: the target label `service` is kept and would"
                                " clash with the proxy metrics' own `service` label")
    static = [t for j in jobs.values() for sc in j.get("static_configs", []) for t in sc["targets"]]
    if f"{REGISTRY_SERVICE}:{port}" not in static:
        problems.append("the registry itself is not scraped")
    dep = find(objects, "Deployment", "prometheus")
    volumes = dep["spec"]["template"]["spec"]["volumes"] if dep else []
    if not any(v.get("configMap", {}).get("name") == cm["metadata"]["name"] for v in volumes):
        problems.append("Prometheus does not mount the generated config")
    return problems


def check_entry_service(overlay, objects):
    expected = {"dev": "NodePort", "production": "LoadBalancer"}.get(overlay, "ClusterIP")
    svc = find(objects, "Service", ENTRY_POINT)
    got = svc["spec"].get("type", "ClusterIP") if svc else None
    return [] if got == expected else [f"marketplace Service is {got}, expected {expected}"]


def checks_for(overlay, objects, images):
    """(name, check, args) for every check of one rendered overlay."""
    yield f"{overlay}: namespace", check_namespace, (objects,)
    for workload, template in pod_templates(objects):
        name = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        yield f"{name}: security context", check_security, (template,)
        yield f"{name}: resources", check_resources, (template,)
        yield f"{name}: images through kustomize", check_images, (template, images)
        yield f"{name}: probes on own ports", check_probes, (template,)
        yield f"{name}: native sidecar", check_sidecar_count, (template, images)
        if is_meshed(template):
            yield f"{name}: sidecar registers the workload and pod", check_sidecar_identity, (workload, template, objects)
            yield f"{name}: sidecar forwards to the app's port", check_sidecar_app, (template,)
            yield f"{name}: sidecar uses the registry Service over TLS, checked against the CA bundle", check_sidecar_registry, (template, objects)
            yield f"{name}: sidecar holds its own service's join token only", check_sidecar_join_token, (template, objects)
            yield f"{name}: upstreams match where the app dials", check_sidecar_upstreams, (template, objects)
            yield f"{name}: sidecar declares the protocol the app is probed in", check_sidecar_protocol, (template,)
            yield f"{name}: sidecar probes on /ready and /live", check_sidecar_probes, (template,)
            yield f"{name}: grace period covers the drain", check_shutdown, (template,)
        if workload["metadata"]["name"] != "prometheus":
            yield f"{name}: prometheus.io annotations", check_scrape_annotations, (template,)
    yield f"{overlay}: Services reach real ports", check_services, (objects,)
    yield f"{overlay}: Services target the sidecar (the app at the entry point)", check_meshed_services_target_sidecar, (objects,)
    yield f"{overlay}: registry", check_registry, (objects,)
    yield f"{overlay}: registry TLS listener", check_registry_tls, (objects,)
    yield f"{overlay}: registry credentials from Secrets", check_registry_credentials, (objects,)
    yield f"{overlay}: registry writes are not open", check_registry_writes_closed, (objects,)
    yield f"{overlay}: the registry's Secrets stay with the registry", check_registry_secrets_private, (objects,)
    if join_tokens_secret(objects)[0]:
        yield f"{overlay}: join tokens agree with the registry's file", check_join_tokens_agree, (objects,)
    yield f"{overlay}: no private key in a Secret or ConfigMap", check_no_private_keys, (objects,)
    if registry_on_etcd(objects) or etcd_cluster(objects)[0]:
        yield f"{overlay}: etcd members", check_etcd, (objects,)
    yield f"{overlay}: claims are mounted", check_claims_mounted, (objects,)
    yield f"{overlay}: network policies", check_network_policies, (objects,)
    yield f"{overlay}: marketplace Service type", check_entry_service, (overlay, objects)
    if any(o["kind"] == "Deployment" and o["metadata"]["name"] == "prometheus" for o in objects):
        yield f"{overlay}: Prometheus scrape config", check_prometheus_config, (objects,)


# === the checks catch what they claim ===


def _sidecar(objects, name):
    return find(objects, "Deployment", name)["spec"]["template"]["spec"]["initContainers"][0]


def _app(objects, name):
    return find(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def _set_env(container, var, value):
    for item in container["env"]:
        if item["name"] == var:
            item["value"] = value


def _pod(objects, name):
    return find(objects, "Deployment", name)["spec"]["template"]["spec"]


def _secret_ref(container, var):
    return next(e for e in container["env"] if e["name"] == var)["valueFrom"]["secretKeyRef"]


def _mount(container, path):
    return next(m for m in container["volumeMounts"] if m["mountPath"] == path)


def _drop_env(container, var):
    container["env"] = [e for e in container["env"] if e["name"] != var]


# An EC key's armour, made up here so that no key is ever written in this directory.
_FAKE_KEY = "-----BEGIN " + "EC PRIVATE KEY-----\nMHcCAQEEI...\n-----END " + "EC PRIVATE KEY-----\n"


# Each breaks the base in one way a hand edit could; every one must be reported.
MUTATIONS = {
    "marketplace dials another port than its upstream listener":
        lambda o: _set_env(_app(o, "marketplace"), "RECOMMENDATIONS_PORT", "50052"),
    "the sidecar is a plain init container":
        lambda o: _sidecar(o, "marketplace").pop("restartPolicy"),
    "a sidecar probe on a path the admin port lacks":
        lambda o: _sidecar(o, "recommendations")["readinessProbe"]["httpGet"].update(path="/readyz"),
    "a sidecar probe on the inbound port":
        lambda o: _sidecar(o, "recommendations")["livenessProbe"]["httpGet"].update(port="mesh-inbound"),
    "a writable root filesystem":
        lambda o: _app(o, "marketplace")["securityContext"].pop("readOnlyRootFilesystem"),
    "the registry URL on the plain listener's port":
        lambda o: _set_env(_sidecar(o, "marketplace"), "MESH_REGISTRY", "https://registry:7700"),
    "the registry URL in another namespace":
        lambda o: _set_env(_sidecar(o, "marketplace"), "MESH_REGISTRY", "https://registry.other:7743"),
    "an image bypassing kustomize images:":
        lambda o: _sidecar(o, "marketplace").update(image="mesh/proxy:latest"),
    "MESH_SERVICE differs from the workload":
        lambda o: _set_env(_sidecar(o, "recommendations"), "MESH_SERVICE", "recs"),
    "MESH_APP on a port the app does not listen on":
        lambda o: _set_env(_sidecar(o, "recommendations"), "MESH_APP", "127.0.0.1:50052"),
    "MESH_APP as a host name (the proxy takes an IP address)":
        lambda o: _set_env(_sidecar(o, "recommendations"), "MESH_APP", "localhost:50051"),
    "the sidecar as a second app container":
        lambda o: find(o, "Deployment", "marketplace")["spec"]["template"]["spec"]["containers"].append(
            find(o, "Deployment", "marketplace")["spec"]["template"]["spec"].pop("initContainers")[0]),
    "Prometheus annotations on the app's port":
        lambda o: find(o, "Deployment", "recommendations")["spec"]["template"]["metadata"]["annotations"].update(
            {"prometheus.io/port": "50051"}),
    "an upstream listener on the app's own port":
        lambda o: _set_env(_sidecar(o, "marketplace"), "MESH_UPSTREAMS", "recommendations:50051=127.0.0.1:5000"),
    "$(POD_IP) used before it is defined":
        lambda o: _sidecar(o, "recommendations")["env"].append(_sidecar(o, "recommendations")["env"].pop(0)),
    "a grace period shorter than the drain":
        lambda o: find(o, "Deployment", "recommendations")["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=10),
    "no memory limit":
        lambda o: _app(o, "recommendations")["resources"]["limits"].pop("memory"),
    "the recommendations Service bypasses the sidecar":
        lambda o: find(o, "Service", "recommendations")["spec"]["ports"][0].update(targetPort="grpc"),
    "the cache Service bypasses the sidecar":
        lambda o: find(o, "Service", "cache")["spec"]["ports"][0].update(targetPort="redis"),
    "marketplace dials another port than its cache listener":
        lambda o: _set_env(_app(o, "marketplace"), "CACHE_PORT", "6380"),
    "the cache's sidecar without its protocol (read as HTTP, or detected)":
        lambda o: _drop_env(_sidecar(o, "cache"), "MESH_APP_PROTOCOL"),
    "recommendations' sidecar declaring tcp":
        lambda o: _set_env(_sidecar(o, "recommendations"), "MESH_APP_PROTOCOL", "tcp"),
    "the cache open to every meshed pod":
        lambda o: find(o, "NetworkPolicy", "mesh-inbound-from-meshed-pods")["spec"]["podSelector"].pop(
            "matchExpressions"),
    "the cache's inbound listener closed to the marketplace":
        lambda o: o.remove(find(o, "NetworkPolicy", "cache-from-marketplace")),
    "the entry point goes through the sidecar's inbound listener":
        lambda o: find(o, "Service", ENTRY_POINT)["spec"]["ports"][0].update(targetPort="mesh-inbound"),
    "no default deny":
        lambda o: o.remove(find(o, "NetworkPolicy", "default-deny-ingress")),
    "no sidecar-to-sidecar policy":
        lambda o: o.remove(find(o, "NetworkPolicy", "mesh-inbound-from-meshed-pods")),
    "egress open to everything":
        lambda o: find(o, "NetworkPolicy", "egress-dns-and-namespace")["spec"]["egress"].append({}),
    "a meshed pod without the meshed label":
        lambda o: find(o, "Deployment", "recommendations")["spec"]["template"]["metadata"]["labels"].pop(
            MESHED_LABEL[0]),
    "the registry rolls instead of being recreated":
        lambda o: find(o, "Deployment", "registry")["spec"].update(strategy={"type": "RollingUpdate"}),
    # Credentials: the sidecars' side.
    "a sidecar on the registry's plain listener":
        lambda o: (_set_env(_sidecar(o, "recommendations"), "MESH_REGISTRY", "http://registry:7700"),
                   _drop_env(_sidecar(o, "recommendations"), "MESH_REGISTRY_CA")),
    "a sidecar that does not check the registry's certificate":
        lambda o: _drop_env(_sidecar(o, "marketplace"), "MESH_REGISTRY_CA"),
    "the registry's CA certificate from outside the bundle":
        lambda o: _set_env(_sidecar(o, "marketplace"), "MESH_REGISTRY_CA", "/tmp/ca.pem"),
    "the bundle mounted from the CA's Secret (with its key)":
        lambda o: _pod(o, "marketplace").update(
            volumes=[{"name": "mesh-ca-bundle", "secret": {"secretName": "registry-ca"}}]),
    "the bundle mounted writable":
        lambda o: _sidecar(o, "recommendations")["volumeMounts"][0].update(readOnly=False),
    "a sidecar with mTLS off (no certificate to write with)":
        lambda o: _set_env(_sidecar(o, "recommendations"), "MESH_TLS", "off"),
    "the shared join token Secret":
        lambda o: _secret_ref(_sidecar(o, "marketplace"), "MESH_JOIN_TOKEN").update(name="mesh-join-token"),
    "a sidecar holding another service's join token":
        lambda o: _secret_ref(_sidecar(o, "recommendations"), "MESH_JOIN_TOKEN").update(
            name=JOIN_TOKEN_SECRET.format("marketplace")),
    "an optional join token":
        lambda o: _secret_ref(_sidecar(o, "marketplace"), "MESH_JOIN_TOKEN").update(optional=True),
    "a sidecar holding the operator token":
        lambda o: _sidecar(o, "marketplace")["env"].append(
            {"name": "MESH_REGISTRY_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": "registry-token", "key": "token", "optional": True}}}),
    "an app reading its sidecar's join token":
        lambda o: _app(o, "recommendations")["env"].append(
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {
                "name": JOIN_TOKEN_SECRET.format("recommendations"), "key": "token"}}}),
    # Credentials: the registry's side.
    "no TLS listener":
        lambda o: _drop_env(_app(o, REGISTRY_SERVICE), "REGISTRY_TLS_LISTEN"),
    "the TLS listener's port not declared":
        lambda o: _app(o, REGISTRY_SERVICE)["ports"].pop(1),
    "the registry Service without the TLS port":
        lambda o: find(o, "Service", REGISTRY_SERVICE)["spec"]["ports"].pop(1),
    "the TLS certificate without the Service's names":
        lambda o: _set_env(_app(o, REGISTRY_SERVICE), "REGISTRY_TLS_NAMES", "registry,localhost"),
    "the registry's readiness probe on the TLS listener":
        lambda o: _app(o, REGISTRY_SERVICE)["readinessProbe"]["httpGet"].update(port="https-api"),
    "a CA made on the registry's volume":
        lambda o: (_drop_env(_app(o, REGISTRY_SERVICE), "REGISTRY_CA_CERT"),
                   _drop_env(_app(o, REGISTRY_SERVICE), "REGISTRY_CA_KEY"),
                   _app(o, REGISTRY_SERVICE)["env"].append({"name": "REGISTRY_CA_DIR", "value": "/data/ca"})),
    "the CA's Secret mounted writable":
        lambda o: _mount(_app(o, REGISTRY_SERVICE), "/ca").update(readOnly=False),
    "a shared join token on the registry":
        lambda o: _app(o, REGISTRY_SERVICE)["env"].append(
            {"name": "REGISTRY_JOIN_TOKEN", "valueFrom": {"secretKeyRef": {"name": "mesh-join-token", "key": "token"}}}),
    "the join tokens file outside its Secret":
        lambda o: _set_env(_app(o, REGISTRY_SERVICE), "REGISTRY_JOIN_TOKENS", "/data/join-tokens"),
    "the operator token written into the manifest":
        lambda o: _app(o, REGISTRY_SERVICE)["env"].append({"name": "REGISTRY_TOKEN", "value": "s3cr3t"}),
    "a registry with no credentials (open writes)":
        lambda o: [_drop_env(_app(o, REGISTRY_SERVICE), var) for var in (
            "REGISTRY_TLS_LISTEN", "REGISTRY_CA_CERT", "REGISTRY_CA_KEY", "REGISTRY_JOIN_TOKENS")],
    "a CA without the TLS listener, the optional operator token the only other credential":
        lambda o: _drop_env(_app(o, REGISTRY_SERVICE), "REGISTRY_TLS_LISTEN"),
    "a sidecar mounting the CA's Secret":
        lambda o: (_pod(o, "recommendations")["volumes"].append(
            {"name": "ca", "secret": {"secretName": "registry-ca"}}),
            _sidecar(o, "recommendations")["volumeMounts"].append(
                {"name": "ca", "mountPath": "/mesh-ca", "readOnly": True})),
    "a CA private key in a ConfigMap":
        lambda o: o.append({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": CA_BUNDLE, "namespace": "mesh"},
                            "data": {"ca.pem": "...", "ca-key.pem": _FAKE_KEY}}),
    "a CA private key in a Secret":
        lambda o: o.append({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": "registry-ca", "namespace": "mesh"},
                            "data": {"ca-key.pem": base64.b64encode(_FAKE_KEY.encode()).decode()}}),
    "sidecars kept from the registry's TLS listener":
        lambda o: find(o, "NetworkPolicy", "registry-from-meshed-pods-and-prometheus")["spec"]["ingress"][0][
            "ports"][0].update(port=7700),
}


def _registry(objects):
    return find(objects, "Deployment", REGISTRY_SERVICE)


def _etcd(objects):
    return etcd_cluster(objects)[0]


def _set_arg(container, flag, value):
    container["args"] = [f"--{flag}={value}" if a.startswith(f"--{flag}=") else a for a in container["args"]]


# Each breaks the ha overlay in one way a hand edit could; every one must be reported.
HA_MUTATIONS = {
    "two etcd members (no quorum once one is lost)":
        lambda o: _etcd(o)["spec"].update(replicas=2),
    "a member missing from --initial-cluster":
        lambda o: _set_arg(etcd_cluster(o)[1], "initial-cluster",
                           "etcd-0=http://etcd-0.etcd:2380,etcd-1=http://etcd-1.etcd:2380"),
    "--initial-cluster on the client port":
        lambda o: _set_arg(etcd_cluster(o)[1], "initial-cluster", ",".join(
            f"etcd-{i}=http://etcd-{i}.etcd:2379" for i in range(3))),
    "a member advertising its pod IP's name to peers":
        lambda o: _set_arg(etcd_cluster(o)[1], "initial-advertise-peer-urls", "http://$(POD_NAME):2380"),
    "etcd members started one by one":
        lambda o: _etcd(o)["spec"].update(podManagementPolicy="OrderedReady"),
    "the headless Service hides unready members":
        lambda o: find(o, "Service", "etcd")["spec"].pop("publishNotReadyAddresses"),
    "etcd data on the container's filesystem":
        lambda o: _etcd(o)["spec"].pop("volumeClaimTemplates"),
    "no etcd disruption budget":
        lambda o: o.remove(find(o, "PodDisruptionBudget", "etcd")),
    "an etcd budget that lets the quorum go":
        lambda o: find(o, "PodDisruptionBudget", "etcd")["spec"].update(maxUnavailable=2),
    "etcd members not spread over nodes":
        lambda o: _etcd(o)["spec"]["template"]["spec"].pop("affinity"),
    "one registry replica":
        lambda o: _registry(o)["spec"].update(replicas=1),
    "the registry recreated (every replica down at once)":
        lambda o: _registry(o)["spec"].update(strategy={"type": "Recreate"}),
    "--etcd-endpoints misses a member":
        lambda o: _set_env(_app(o, REGISTRY_SERVICE), "REGISTRY_ETCD_ENDPOINTS",
                           "http://etcd-0.etcd:2379,http://etcd-1.etcd:2379"),
    "--etcd-endpoints on the peer port":
        lambda o: _set_env(_app(o, REGISTRY_SERVICE), "REGISTRY_ETCD_ENDPOINTS",
                           ",".join(f"http://etcd-{i}.etcd:2380" for i in range(3))),
    "the registry keeps a data dir":
        lambda o: _app(o, REGISTRY_SERVICE)["env"].append({"name": "REGISTRY_DATA_DIR", "value": "/data"}),
    "a CA made by each replica":
        lambda o: (_drop_env(_app(o, REGISTRY_SERVICE), "REGISTRY_CA_CERT"),
                   _drop_env(_app(o, REGISTRY_SERVICE), "REGISTRY_CA_KEY"),
                   _app(o, REGISTRY_SERVICE)["env"].append({"name": "REGISTRY_CA_DIR", "value": "/ca"})),
    "the CA key outside the Secret":
        lambda o: _set_env(_app(o, REGISTRY_SERVICE), "REGISTRY_CA_KEY", "/tmp/ca-key.pem"),
    "no registry disruption budget":
        lambda o: o.remove(find(o, "PodDisruptionBudget", REGISTRY_SERVICE)),
    "registry replicas not spread over nodes":
        lambda o: _registry(o)["spec"]["template"]["spec"].pop("affinity"),
    "the base's registry claim left behind":
        lambda o: o.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "metadata": {"name": "registry-data", "namespace": "mesh"},
                            "spec": {"accessModes": ["ReadWriteOnce"],
                                     "resources": {"requests": {"storage": "1Gi"}}}}),
    "etcd's client port open to the namespace":
        lambda o: find(o, "NetworkPolicy", "etcd-client-from-registry")["spec"]["ingress"][0].update(
            {"from": [{"podSelector": {}}]}),
    "no peer policy":
        lambda o: o.remove(find(o, "NetworkPolicy", "etcd-peers")),
}


def _secret_data(objects, name, key, change):
    secret = find(objects, "Secret", name)
    text = base64.b64decode(secret["data"][key]).decode()
    secret["data"][key] = base64.b64encode(change(text).encode()).decode()


# Each breaks the dev overlay's generated join tokens in one way a hand edit could.
DEV_MUTATIONS = {
    "a sidecar's token missing from the registry's file":
        lambda o: _secret_data(o, JOIN_TOKEN_SECRET.format("marketplace"), "token", lambda t: t + "-new"),
    "a service's token good for another service too":
        lambda o: _secret_data(o, "registry-join-tokens", "join-tokens",
                               lambda t: t.replace("\nrecommendations ", "\nrecommendations,marketplace ")),
    "a token good for any service":
        lambda o: _secret_data(o, "registry-join-tokens", "join-tokens", lambda t: t + "* dev-any\n"),
    "a service's line missing from the registry's file":
        lambda o: _secret_data(o, "registry-join-tokens", "join-tokens",
                               lambda t: "".join(l for l in t.splitlines(True) if not l.startswith("recommendations"))),
    "a service's join token Secret missing":
        lambda o: o.remove(find(o, "Secret", JOIN_TOKEN_SECRET.format("recommendations"))),
}


def self_test_committed_files(checks):
    """The committed-files check reports a key file where a generator could pick it up."""
    with tempfile.TemporaryDirectory() as directory:
        os.makedirs(os.path.join(directory, "overlays", "dev"))
        with open(os.path.join(directory, "overlays", "dev", "ca-key.pem"), "w") as f:
            f.write(_FAKE_KEY)
        caught = check_no_committed_private_keys(directory)
    checks.expect("caught (files): a CA key committed beside a kustomization",
                  lambda: [] if caught else ["not reported by any check"])


def self_test(checks, overlay, objects, images, mutations):
    for what, mutate in mutations.items():
        broken = copy.deepcopy(objects)
        mutate(broken)
        caught = []
        for _, check, args in checks_for(overlay, broken, images):
            try:
                caught += check(*args)
            except Exception as error:  # noqa: BLE001 - a crash also reports the breakage
                caught.append(str(error))
        checks.expect(f"caught ({overlay}): {what}", lambda c=caught: [] if c else ["not reported by any check"])


def run(rendered_dir=None):
    checks = Checks()
    rendered = {}
    for overlay, directory in overlays().items():
        objects = load(overlay, directory, rendered_dir)
        images = kustomize_images(directory)
        rendered[overlay] = (objects, images)
        for name, check, args in checks_for(overlay, objects, images):
            checks.expect(name, check, *args)
    checks.expect("k8s/: no committed file holds a private key", check_no_committed_private_keys, K8S)
    self_test(checks, "base", *rendered["base"], MUTATIONS)
    if "ha" in rendered:
        self_test(checks, "ha", *rendered["ha"], HA_MUTATIONS)
    if "dev" in rendered:
        self_test(checks, "dev", *rendered["dev"], DEV_MUTATIONS)
    self_test_committed_files(checks)
    print(f"{checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


def test_manifests():
    """The same checks under pytest."""
    assert run() == 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1] if len(sys.argv) > 1 else None))
