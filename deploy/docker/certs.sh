#!/usr/bin/env bash
# Certificates of the compose cluster (deploy/compose.yaml), made with `sovctl ca`: a CA, one
# certificate per scheduler and per agent (with its node's location claims: the nodes are
# operator-certificate trusted), and the client identities operator, deployer and auditor.
#
#   deploy/docker/certs.sh [DIR]        # DIR defaults to deploy/docker/tls
#
# Idempotent: what exists is kept (sovctl never overwrites a key). Layout, one directory per
# service, mounted read-only at /etc/sov/tls in that service's container only:
#   DIR/ca/            the CA (ca.key stays here; no container sees it)
#   DIR/sched-N/       ca.crt, sched-N.crt, sched-N.key
#   DIR/agent-XX/      ca.crt, <node>.crt, <node>.key
#   DIR/client/        ca.crt, operator.*, deployer.*, auditor.*  (export SOV_TLS_DIR=DIR/client)
# The containers run as the image's user (uid 10001), so the service directories must be
# theirs: run as root, this script hands them over; otherwise it prints the command to do so.
# An existing DIR/ca is used as is (bring your own CA, or the test suite's).
#
# This is a local demo CA. For a real site, keep the CA offline (docs/security.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$here/tls}"
sovctl="${SOVCTL:-$(command -v sovctl || echo "$here/../../target/release/sovctl")}"
[ -x "$sovctl" ] || { echo "sovctl not found: cargo build --release --bins (or set SOVCTL)" >&2; exit 2; }

mkdir -p "$dir"
[ -f "$dir/ca/ca.crt" ] || "$sovctl" ca init --dir "$dir/ca" --name "sov compose cluster CA" >/dev/null

issue() { # OUT NAME ROLE [flags...]
    local out="$1" name="$2" role="$3"
    shift 3
    [ -f "$dir/$out/$name.crt" ] && return 0
    "$sovctl" ca issue --ca "$dir/ca" --out "$dir/$out" --role "$role" --name "$name" --days 365 "$@" >/dev/null
}

for n in 1 2 3; do
    issue "sched-$n" "sched-$n" scheduler --dns "sched-$n" --dns "sched-$n-raft"
done
issue agent-fr fr-paris-1 agent --country FR --subdivision FR-IDF --site paris-1 \
    --operator "Exemple Cloud SAS" --operator-hq FR --ultimate-parent-hq FR
issue agent-de de-frankfurt-1 agent --country DE --subdivision DE-HE --site frankfurt-1 \
    --operator "Beispiel Rechenzentrum GmbH" --operator-hq DE --ultimate-parent-hq DE
issue agent-pl pl-warsaw-1 agent --country PL --subdivision PL-14 --site warsaw-1 \
    --operator "Przyklad Chmura sp. z o.o." --operator-hq PL --ultimate-parent-hq PL
issue agent-ie ie-dublin-1 agent --country IE --subdivision IE-L --site dublin-1 \
    --operator "Example Hyperscale Ireland Ltd" --operator-hq IE --ultimate-parent-hq US
issue agent-us us-virginia-1 agent --country US --subdivision US-VA --site virginia-1 \
    --operator "Example Hyperscale Inc" --operator-hq US --ultimate-parent-hq US
for role in operator deployer auditor; do
    issue client "$role" "$role"
done

services=(sched-1 sched-2 sched-3 agent-fr agent-de agent-pl agent-ie agent-us)
if [ "$(id -u)" = 0 ]; then
    for s in "${services[@]}"; do chown -R 10001:10001 "$dir/$s"; done
    echo "certificates in $dir (service keys owned by the containers' user, uid 10001)"
else
    echo "certificates in $dir; give the service directories to the containers' user (uid 10001):"
    echo "  sudo chown -R 10001:10001 $(printf "$dir/%s " "${services[@]}")"
fi
echo "sovctl on this host: export SOV_TLS_DIR=$dir/client"
