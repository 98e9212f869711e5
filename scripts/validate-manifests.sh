#!/usr/bin/env bash
# Checks the Kubernetes manifests: every YAML file under deploy/ (or under DIR) against the API schemas of one fixed
# Kubernetes version, in strict mode (an unknown field is an error, as `kubectl apply --validate=strict` would make
# it), and every *.json document inside a ConfigMap parses as JSON, with the shape flanneld and the CNI runtime need
# for the two in kube-flannel-cfg.
#
#   scripts/validate-manifests.sh [DIR]      KUBE_VERSION=1.33.0 by default
#
# The validator (kubernetes-validate, from PyPI) goes into a virtualenv in a temporary directory, removed on exit;
# nothing is written to the repository. Debian's python3 and python3-venv (scripts/packages) make that venv.
# Exit status: 0 when everything passed; 1 when a manifest failed (or none was found); 2 when the tools could not be
# set up. A schema warning (a kind the schemas do not know, say) counts as a failure: everything here is core API.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/deploy}
kube_version=${KUBE_VERSION:-1.33.0}
# Pinned, so that a new release cannot change the verdict on an unchanged manifest.
validator=kubernetes-validate==1.37.0
# Debian's interpreter, not whatever python3 comes first on PATH: scripts/packages installs this one.
py=/usr/bin/python3
me=validate-manifests

[ -d "$dir" ] || { echo "$me: FAILED: $dir is not a directory" >&2; exit 1; }
[ -x "$py" ] || { echo "$me: $py is not installed (scripts/deps.sh installs it)" >&2; exit 2; }
mapfile -t files < <(find "$dir" -type f \( -name '*.yml' -o -name '*.yaml' \) | sort)
if ((!${#files[@]})); then
  echo "$me: FAILED: no *.yml or *.yaml file under $dir" >&2
  exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/validate-manifests.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# -I -S: the venv is made without reading the system's site-packages (their .pth files) or PYTHON* variables.
if ! "$py" -I -S -m venv "$tmp/venv"; then
  echo "$me: cannot create a virtualenv with $py (python3-venv missing?)" >&2
  exit 2
fi
pip=("$tmp/venv/bin/python" -m pip install --disable-pip-version-check --no-input -q)
if ! "${pip[@]}" "$validator" >"$tmp/pip" 2>&1; then
  cat "$tmp/pip" >&2
  echo "$me: cannot install $validator from PyPI" >&2
  exit 2
fi

failed=0
# 1. The API schemas, strict.
set +e
"$tmp/venv/bin/kubernetes-validate" --strict -k "$kube_version" "${files[@]}" >"$tmp/schema" 2>&1
rc=$?
set -e
cat "$tmp/schema"
resources=$(grep -c ' passed for resource ' "$tmp/schema" || true)
if ((rc != 0)); then
  echo "$me: FAILED: kubernetes-validate --strict -k $kube_version exited $rc" >&2
  failed=1
elif grep -q '^WARN' "$tmp/schema"; then
  echo "$me: FAILED: kubernetes-validate warned (see WARN above)" >&2
  failed=1
elif ((resources == 0)); then
  echo "$me: FAILED: no Kubernetes resource found in ${files[*]}" >&2
  failed=1
fi

# 2. The JSON documents inside ConfigMaps (PyYAML comes with kubernetes-validate).
if ! "$tmp/venv/bin/python" - "${files[@]}" <<'EOF'; then failed=1; fi
import json, sys, yaml

bad = 0
def fail(where, why):
    global bad
    bad += 1
    print(f"ERROR {where}: {why}", file=sys.stderr)

for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        if doc.get("kind") != "ConfigMap":
            continue
        name = doc.get("metadata", {}).get("name", "?")
        data = doc.get("data") or {}
        parsed = {}
        for key, text in data.items():
            if not key.endswith(".json"):
                continue
            where = f"{path} configmap/{name} {key}"
            try:
                parsed[key] = json.loads(text)
                print(f"INFO {where} parses as JSON")
            except (TypeError, ValueError) as e:
                fail(where, f"not JSON: {e}")
        if name != "kube-flannel-cfg":
            continue
        # The two documents flanneld and the install-cni init container read.
        for key in ("cni-conf.json", "net-conf.json"):
            if key not in data:
                fail(f"{path} configmap/{name}", f"has no {key}")
        cni = parsed.get("cni-conf.json")
        if isinstance(cni, dict):
            plugins = cni.get("plugins")
            if not (isinstance(cni.get("name"), str) and isinstance(cni.get("cniVersion"), str)):
                fail(f"{path} configmap/{name} cni-conf.json", "a conflist needs string 'name' and 'cniVersion'")
            if not (isinstance(plugins, list) and plugins
                    and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins)):
                fail(f"{path} configmap/{name} cni-conf.json",
                     "'plugins' must be a non-empty list of objects with 'type'")
            elif plugins[0]["type"] != "flannel":
                fail(f"{path} configmap/{name} cni-conf.json", "the first plugin must be 'flannel'")
        elif "cni-conf.json" in parsed:
            fail(f"{path} configmap/{name} cni-conf.json", "must be a JSON object")
        net = parsed.get("net-conf.json")
        if isinstance(net, dict):
            if not isinstance(net.get("Network"), str) and not isinstance(net.get("IPv6Network"), str):
                fail(f"{path} configmap/{name} net-conf.json", "needs 'Network' (or 'IPv6Network')")
            backend = net.get("Backend", {"Type": "udp"})
            if not (isinstance(backend, dict) and isinstance(backend.get("Type", "udp"), str)):
                fail(f"{path} configmap/{name} net-conf.json", "'Backend' must be an object with a string 'Type'")
        elif "net-conf.json" in parsed:
            fail(f"{path} configmap/{name} net-conf.json", "must be a JSON object")
sys.exit(1 if bad else 0)
EOF

if ((failed)); then
  echo "$me: FAILED (${#files[@]} file(s) under $dir, Kubernetes $kube_version)" >&2
  exit 1
fi
echo "$me: ok: $resources resources in ${#files[@]} file(s) under $dir valid against Kubernetes $kube_version" \
  "(strict); ConfigMap JSON parses"
