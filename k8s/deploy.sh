#!/usr/bin/env bash
# `make deploy JOB=<job>`: waxctl when it is installed, `kubectl apply -k` otherwise.
# Both deploy the same thing: IMAGE, 2 processes x 1 worker, recovery on, and the
# settings of k8s/<job>/configmap.yaml (credentials: see k8s/README.md).
set -euo pipefail
job=${1:?usage: deploy.sh movie-impressions|booking-correlation}
image=${IMAGE:-ghcr.io/example/waxstreams:0.1.0}
here=$(cd "$(dirname "$0")" && pwd)
[ -d "$here/$job" ] || { echo "deploy: no job '$job' under k8s/" >&2; exit 2; }

if command -v waxctl >/dev/null 2>&1; then
  # Every ConfigMap setting (not the hostfile: waxctl writes its own) as -e KEY=VALUE.
  mapfile -t settings < <("${PYTHON:-python3}" - "$here/$job/configmap.yaml" <<'PY'
import sys, yaml
for key, value in yaml.safe_load(open(sys.argv[1]))["data"].items():
    if key != "hostfile":
        print(f"{key}={value}")
PY
  )
  env_flags=()
  for kv in "${settings[@]}"; do env_flags+=(-e "$kv"); done
  exec waxctl dataflow deploy "$here/../dataflows/${job//-/_}.py" \
    --name "$job" --image-repository "${image%:*}" --image-tag "${image##*:}" --image-pull-policy IfNotPresent \
    --processes 2 --workers 1 \
    --recovery --recovery-parts 2 --recovery-snapshot-interval 10 --recovery-backup-interval 0 --recovery-size 5Gi \
    "${env_flags[@]}" --yes
else
  exec kubectl apply -k "$here/$job"
fi
