#!/usr/bin/env bash
# The demo: on a fresh machine with Go, builds tier3-agent and walks the
# sealed vault end to end in a throwaway folder: an identity-sealed vault
# with an offline recovery key, secrets set from stdin, listed (never
# printed), opened by upstream `age -d` with the recovery key, a lost host
# key repaired with `vault rekey`, and a plaintext vault migrated in place.
# Then the agent itself (cmd/rv-demo): the reference control plane, an
# HTTPS target with an OAuth2 token endpoint that echoes secrets back, the
# real binary with a sealed vault, a task end to end, a hostile envelope
# refused, the audit trail, and a clean stop.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/install-deps.sh
export PATH="$repo/.tools/bin:$PATH"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin="$work/tier3-agent"
CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=0.0.0-demo" -o "$bin" ./cmd/tier3-agent

export RV_AGENT_VAULT_PATH="$work/agent-vault.json"
export RV_AGENT_VAULT_IDENTITY_FILE="$work/host.key"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "an offline recovery key (kept off the host in real life)"
show age-keygen -o "$work/recovery.key" 2>&1
recovery=$(age-keygen -y "$work/recovery.key")

step "an empty vault sealed for this host (identity seal) and the recovery key"
show "$bin" vault init --seal identity --recipient "$recovery"

step "secrets go in on standard input; the vault file never holds them in clear"
printf 'demo-client-secret-%s\n' "$RANDOM$RANDOM" | "$bin" vault set salesforce-prod client_secret --version 3
printf 'demo-refresh-token-%s\n' "$RANDOM$RANDOM" | "$bin" vault set salesforce-prod refresh_token
printf '3MVG9-demo-client-id' | "$bin" vault set salesforce-prod client_id
printf 'demo-bind-password-%s' "$RANDOM$RANDOM" | "$bin" vault set ldap-corp bind_password
show "$bin" vault bind salesforce-prod https://acme.my.salesforce.com https://login.salesforce.com
show head -c 200 "$RV_AGENT_VAULT_PATH"; echo " …"
if grep -q demo- "$RV_AGENT_VAULT_PATH"; then echo "plaintext in the vault file!" >&2; exit 1; fi

step "list and status: names, versions, bindings and warnings; never a value"
show "$bin" vault list
show "$bin" vault status

step "upstream age opens the vault with the recovery key, without this project's code"
show age -d -i "$work/recovery.key" "$RV_AGENT_VAULT_PATH" | sed -E 's/(demo-[a-z-]+-)[0-9]+/\1…/'

step "the host key is lost: the vault no longer opens with the seal (exit 78)…"
rm "$RV_AGENT_VAULT_IDENTITY_FILE"
set +e; "$bin" vault list; echo "exit status $?"; set -e
step "…and the recovery key repairs it, nothing lost"
show "$bin" vault rekey --identity "$work/recovery.key" --seal identity
show "$bin" vault list

step "migration: a plaintext vault in the documented schema, sealed in place"
export RV_AGENT_VAULT_PATH="$work/legacy-vault.json"
printf '{"ldap-corp": {"bind_dn": "cn=svc,dc=corp,dc=local", "bind_password": "demo-legacy-%s"}}\n' "$RANDOM" > "$RV_AGENT_VAULT_PATH"
chmod 600 "$RV_AGENT_VAULT_PATH"
set +e; "$bin" run; echo "exit status $?"; set -e
show "$bin" vault seal --seal identity --recipient "$recovery"
show "$bin" vault status

step "the agent: a task end to end against the reference control plane"
go run ./cmd/rv-demo -agent "$bin"
