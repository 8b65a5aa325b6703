#!/usr/bin/env bash
# Debian's `prometheus` (2.42 on bookworm) for tests/cluster/test_dashboards.py, which starts it
# against the cluster-in-a-box pods and evaluates every panel query of k8s/grafana-dashboard.json.
# Idempotent: installs only when the binary is missing; never starts the packaged service (the test
# runs its own prometheus process with its own config and storage).
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
    echo "prometheus present: $(prometheus --version 2>&1 | head -n1)"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "prometheus missing and not root: install the Debian package 'prometheus' (apt-get install prometheus)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: the package's maintainer scripts must not start a system-wide prometheus here.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
trap '[[ $created_policy -eq 1 ]] && rm -f "$policy"' EXIT
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus
prometheus --version 2>&1 | head -n1
