#!/usr/bin/env bash
# The Secrets of deploy/k8s's certificates, made with `lockstep certs init`:
#
#   bash deploy/k8s/tls-secret.sh PKI_DIR | kubectl apply -f -
#
# PKI_DIR keeps the CA (ca.pem, ca.key) and every identity's files; keep it
# off the cluster (ca.key never goes into a Secret). Run again to issue what
# is missing (e.g. after raising REPLICAS); existing identities are kept.
# Each certificate is valid only for its own pod's DNS names:
#
#   coordinator-N    lockstep-coordinator-(N-1).lockstep-coordinator[.NS.svc[.DOMAIN]]
#                    (raft id N = pod ordinal + 1, the name it must present)
#   agent-mariadb-K  mariadb-K.mariadb[.NS.svc[.DOMAIN]] (the agent advertises
#                    http://mariadb-K.mariadb:7400 and registers as mariadb-K)
#   operator, viewer the CLI (issued with a new CA)
#
# It prints two Secrets: lockstep-tls (ca.pem and the coordinators' and
# agents' certificates and keys, mounted by their pods) and
# lockstep-operator (ca.pem, operator.pem, operator.key, for cli.yaml).
# Rotate a certificate: delete its two files in PKI_DIR, run this again and
# apply; the pods pick the new files up without a restart (tls.yaml).
#
# Environment: NAMESPACE (lockstep), REPLICAS of each StatefulSet (3),
# DOMAIN (cluster.local), LOCKSTEP (the lockstep binary, from PATH).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 PKI_DIR" >&2; exit 2; }
pki=$1
ns=${NAMESPACE:-lockstep}
replicas=${REPLICAS:-3}
domain=${DOMAIN:-cluster.local}
lockstep=${LOCKSTEP:-lockstep}

# names HOST SERVICE: the DNS names of one StatefulSet pod.
names() { printf -- '--host\n%s\n' "$1.$2" "$1.$2.$ns.svc" "$1.$2.$ns.svc.$domain"; }
# issue IDENTITY ARGS...: lockstep certs init ARGS unless IDENTITY exists.
issue() {
  local id=$1
  shift
  [ -e "$pki/$id.pem" ] || "$lockstep" certs init "$pki" --coordinator-count 0 "$@" >&2
}
[ -e "$pki/ca.pem" ] || "$lockstep" certs init "$pki" --coordinator-count 0 --host localhost >&2
for ((i = 0; i < replicas; i++)); do
  mapfile -t hosts < <(names "lockstep-coordinator-$i" lockstep-coordinator)
  issue "coordinator-$((i + 1))" --identity "coordinator-$((i + 1))" "${hosts[@]}"
  mapfile -t hosts < <(names "mariadb-$i" mariadb)
  issue "agent-mariadb-$i" --agent "mariadb-$i" "${hosts[@]}"
done

files=(--from-file="ca.pem=$pki/ca.pem")
for ((i = 0; i < replicas; i++)); do
  for id in "coordinator-$((i + 1))" "agent-mariadb-$i"; do
    files+=(--from-file="$id.pem=$pki/$id.pem" --from-file="$id.key=$pki/$id.key")
  done
done
kubectl create secret generic lockstep-tls --namespace "$ns" "${files[@]}" --dry-run=client -o yaml
echo ---
kubectl create secret generic lockstep-operator --namespace "$ns" --from-file="ca.pem=$pki/ca.pem" \
  --from-file="operator.pem=$pki/operator.pem" --from-file="operator.key=$pki/operator.key" \
  --dry-run=client -o yaml
