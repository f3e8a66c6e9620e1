#!/bin/sh
# tier3-agent installer (PROTOCOL.md §8), served by the control plane at
# GET /agent/install. Usage, as root:
#
#   curl -fsS https://CONTROL-PLANE/agent/install |
#     RV_AGENT_TOKEN=... RV_AGENT_UPDATE_KEY=... sh
#
# It fetches the manifest and the binary for this host's os/arch with the
# token, checks the binary's SHA-256 against the manifest, installs it as
# /opt/rapidvalue/tier3-agent, creates an empty vault sealed with the
# strongest seal the host offers (tpm2, then identity encrypted with
# systemd-creds; keyring only on a host without systemd), puts the token and update key in the vault's _agent entry,
# writes the systemd unit rapidvalue-agent.service, starts it and waits until
# the agent has registered. Exit 0 means installed and registered; anything
# else is one line "tier3-agent-install: error: ..." and the host as it was.
# Running it again upgrades the binary in place and keeps the vault.
#
# Uninstall, as root (the same script; nothing else is needed):
#
#   curl -fsS https://CONTROL-PLANE/agent/install | sh -s -- --uninstall [--purge]
#   sh install.sh --uninstall [--purge]
#
# --uninstall stops and disables rapidvalue-agent.service, removes the unit,
# its drop-in folder, the binary and its update files, and keeps the vault,
# its seal file and identity, and the audit log where they are (it lists
# them): they hold the customer's credentials and the evidence, and deleting
# those takes a flag of its own. --purge removes them too, and the
# rapidvalue-agent user (kept otherwise: it owns the kept files). Running it
# again finishes an uninstall cut short; with nothing installed it does
# nothing. The one step it cannot take is on the control plane: revoking
# the agent's token, which stays valid until then (it says how).
#
# Environment:
#   RV_AGENT_TOKEN       agent token (required)
#   RV_AGENT_UPDATE_KEY  update key, stored in the vault (required on first
#                        install)
#   RV_CONTROL_PLANE_URL control plane (default: the URL this script was
#                        served from)
#   RV_CONTROL_PLANE_CA  PEM bundle to trust for the control plane (dev/test;
#                        copied to /opt/rapidvalue/control-plane-ca.pem)
#   RV_INSTALL_ROOT      prefix for every path written (default: /; tests)
#   RV_INSTALL_SEAL      force a seal: tpm2, keyring, identity or passphrase
#                        (a forced identity seal leaves the identity file in
#                        plaintext, 0600, next to the vault: dev/test only;
#                        passphrase needs RV_AGENT_VAULT_PASSPHRASE_FILE, which
#                        the unit then names too)
#   RV_INSTALL_WAIT      seconds to wait for the registration (default 60)
#   RV_AGENT_TPM_DEVICE  TPM device, when not /dev/tpmrm0
set -eu

# The whole script is one brace group: sh reads it to the end before running
# any of it, so a download cut short (curl | sh) runs nothing.
{

prog=tier3-agent-install
served_url='{{RV_CONTROL_PLANE_URL}}'
url=${RV_CONTROL_PLANE_URL:-$served_url}
root=${RV_INSTALL_ROOT:-}
root=${root%/}
dest_rel=/opt/rapidvalue
dest=$root$dest_rel
unit_dir=$root/etc/systemd/system
unit=$unit_dir/rapidvalue-agent.service
dropin_dir=$unit_dir/rapidvalue-agent.service.d
wait_s=${RV_INSTALL_WAIT:-60}

# What this run created, removed again on failure (never the vault of an
# existing installation).
work=
stage=
created_dest=
created_unit=
created_dropin=
old_bin=
enabled=
made_dirs=

# mkdirs DIR: mkdir -p that remembers the topmost folder it created.
mkdirs() {
	top=
	d=$1
	while [ -n "$d" ] && [ "$d" != / ] && [ ! -e "$d" ]; do
		top=$d
		d=$(dirname "$d")
	done
	mkdir -p "$1" || return 1
	if [ -n "$top" ]; then made_dirs="$top $made_dirs"; fi
}

say() { printf '%s: %s\n' "$prog" "$*" >&2; }

cleanup() {
	if [ -n "$enabled" ]; then
		systemctl disable --now rapidvalue-agent.service >/dev/null 2>&1 || :
	fi
	if [ -n "$old_bin" ] && [ -f "$old_bin" ]; then
		mv -f "$old_bin" "$dest/tier3-agent" || :
	fi
	if [ -n "$created_unit" ]; then
		rm -f "$unit"
	elif [ -n "$work" ] && [ -f "$work/unit.old" ]; then
		mv -f "$work/unit.old" "$unit" || :
	fi
	if [ -n "$created_dropin" ]; then rm -rf "$dropin_dir"; fi
	if [ -n "$created_dest" ]; then rm -rf "$dest"; fi
	if [ -n "$stage" ]; then rm -rf "$stage"; fi
	if [ -n "$work" ]; then rm -rf "$work"; fi
	for d in $made_dirs; do rm -rf "$d"; done
}

die() {
	trap - EXIT INT TERM HUP
	cleanup
	printf '%s: error: %s\n' "$prog" "$*" >&2
	exit 1
}

trap 'die "interrupted"' INT TERM HUP
trap 'die "failed unexpectedly: see the message above"' EXIT

usage() {
	trap - EXIT INT TERM HUP
	printf '%s: error: %s\n' "$prog" "$1" >&2
	printf '%s: hint: install: RV_AGENT_TOKEN=... RV_AGENT_UPDATE_KEY=... sh install.sh; uninstall: sh install.sh --uninstall [--purge]\n' "$prog" >&2
	exit 2
}

mode=install
purge=
for arg in "$@"; do
	case $arg in
	--uninstall) mode=uninstall ;;
	--purge) purge=1 ;;
	*) usage "unknown argument $arg" ;;
	esac
done
if [ -n "$purge" ] && [ "$mode" != uninstall ]; then
	usage "--purge goes with --uninstall"
fi

# The files of the binary: removed by every uninstall. Everything else in
# $dest (the vault, its seal file and lock, the identity, the audit log) is
# data, kept unless --purge.
binary_files="tier3-agent tier3-agent.bak tier3-agent.unverified tier3-agent.update.json .tier3-agent.new .tier3-agent.old control-plane-ca.pem"

uninstall() {
	if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
		die "run as root (sudo sh -s -- --uninstall): it removes files under /opt and /etc/systemd"
	fi
	agent_user=rapidvalue-agent
	user_exists=
	if [ -z "$root" ] && id "$agent_user" >/dev/null 2>&1; then user_exists=1; fi
	if [ ! -e "$unit" ] && [ ! -e "$dropin_dir" ] && [ ! -e "$dest" ]; then
		if [ -n "$purge" ] && [ -n "$user_exists" ]; then
			userdel "$agent_user" || die "cannot remove the user $agent_user"
			say "removed the user $agent_user"
		fi
		say "nothing to remove: tier3-agent is not installed here (no $unit, no $dest)"
		trap - EXIT INT TERM HUP
		exit 0
	fi
	if [ -n "$purge" ] && [ -d "$dest" ] && [ ! -e "$dest/agent-vault.json" ] && [ ! -e "$dest/tier3-agent" ]; then
		die "$dest holds neither a vault nor the agent: not removing what this installer did not make; remove it yourself"
	fi
	cp_url=$url
	if [ -f "$unit" ]; then
		cp_url=$(sed -n 's/^Environment=RV_CONTROL_PLANE_URL=//p' "$unit" | tail -n 1)
	fi
	case $cp_url in *'{{'* | '') cp_url='the control plane' ;; esac

	reload=
	if command -v systemctl >/dev/null 2>&1 && { [ -e "$unit" ] || [ -e "$dropin_dir" ]; }; then
		reload=1
	fi
	if [ -e "$unit" ] || [ -e "$dropin_dir" ]; then
		if [ -n "$reload" ]; then
			if [ -e "$unit" ]; then
				if out=$(systemctl disable --now rapidvalue-agent.service 2>&1); then
					say "stopped and disabled rapidvalue-agent.service"
				elif [ -z "$root" ] && [ ! -d /run/systemd/system ]; then
					# systemctl without a running systemd (a container):
					# nothing to stop or reload through it.
					reload=
					say "systemd is not running here: stop the agent you started by hand ($dest_rel/tier3-agent run) if it still runs"
				else
					die "systemctl disable --now rapidvalue-agent.service failed: $(printf '%s' "$out" | tail -n 1); stop the agent and run again"
				fi
			fi
		else
			say "systemctl is missing: stop the agent you started by hand ($dest_rel/tier3-agent run) if it still runs"
		fi
	fi

	# Before the binary goes: the audit log's head, to record off the host.
	if [ -n "$purge" ] && [ -f "$dest/audit.log" ] && [ -x "$dest/tier3-agent" ]; then
		if head=$("$dest/tier3-agent" audit verify "$dest/audit.log" 2>&1); then
			say "$head"
		else
			say "the audit log does not verify: $(printf '%s' "$head" | tail -n 1)"
		fi
	fi

	if [ -e "$unit" ]; then
		rm -f "$unit" || die "cannot remove $unit"
		say "removed $unit"
	fi
	if [ -e "$dropin_dir" ]; then
		for f in "$dropin_dir"/*; do
			if [ -e "$f" ]; then say "removed $f"; fi
		done
		rm -rf "$dropin_dir" || die "cannot remove $dropin_dir"
		say "removed $dropin_dir"
	fi
	if [ -n "$reload" ]; then
		out=$(systemctl daemon-reload 2>&1) || die "systemctl daemon-reload failed: $(printf '%s' "$out" | tail -n 1)"
		# A unit that ended failed stays listed (systemctl --failed) until
		# reset, file or no file.
		systemctl reset-failed rapidvalue-agent.service >/dev/null 2>&1 || :
	fi

	if [ -d "$dest" ]; then
		for f in $binary_files; do
			if [ -e "$dest/$f" ]; then
				rm -f "$dest/$f" || die "cannot remove $dest/$f"
				say "removed $dest/$f"
			fi
		done
	fi
	if [ -n "$purge" ]; then
		if [ -e "$dest" ]; then
			for f in "$dest"/* "$dest"/.[!.]*; do
				if [ -e "$f" ]; then say "removed $f"; fi
			done
			rm -rf "$dest" || die "cannot remove $dest"
			say "removed $dest"
		fi
		if [ -n "$user_exists" ]; then
			userdel "$agent_user" || die "cannot remove the user $agent_user"
			say "removed the user $agent_user"
		fi
		say "the connector secrets the vault held are still valid on their systems: rotate them if this host is not trusted"
	elif [ -d "$dest" ]; then
		kept=
		for f in "$dest"/* "$dest"/.[!.]*; do
			if [ -e "$f" ]; then
				say "kept $f"
				kept=1
			fi
		done
		if [ -n "$kept" ]; then
			say "kept: the vault (with the connector secrets and the agent token), its seal and the audit log; --uninstall --purge removes them"
		else
			rmdir "$dest" && say "removed $dest"
		fi
		if [ -n "$user_exists" ]; then
			say "kept the user $agent_user: it owns the kept files (--purge removes it)"
		fi
	fi
	say "one step is left, on $cp_url: revoke this agent's token, which stays valid until then (admin API: GET /admin/v1/agents names the agent of host $(uname -n) and its token_id; POST /admin/v1/tokens/TOKEN_ID/revoke)"
	trap - EXIT INT TERM HUP
	exit 0
}

if [ "$mode" = uninstall ]; then
	uninstall
fi

case $url in
*'{{'*) die "RV_CONTROL_PLANE_URL is not set: download this script from the control plane's /agent/install or set it" ;;
https://*) ;;
*) die "RV_CONTROL_PLANE_URL must be https://…, not $url" ;;
esac
url=${url%/}
[ -n "${RV_AGENT_TOKEN:-}" ] || die "RV_AGENT_TOKEN is not set: create an agent token in the control plane and run with RV_AGENT_TOKEN=... in the environment"
for tool in curl sha256sum uname sed mktemp; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: install it (Debian: apt-get install curl coreutils) and run again"
done
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
	die "run as root (sudo sh): it installs under /opt and /etc/systemd"
fi

case $(uname -s) in
Linux) os=linux ;;
Darwin) os=darwin ;;
*) die "unsupported OS $(uname -s)" ;;
esac
case $(uname -m) in
x86_64 | amd64) arch=amd64 ;;
aarch64 | arm64) arch=arm64 ;;
*) die "unsupported architecture $(uname -m)" ;;
esac

upgrade=
if [ -e "$dest/agent-vault.json" ] && [ ! -e "$dest/tier3-agent" ]; then
	die "$dest holds a vault kept by --uninstall but no agent: move $dest aside (its vault opens with your recovery key) or remove it with --uninstall --purge, and run again"
elif [ -e "$dest/agent-vault.json" ]; then
	upgrade=1
elif [ -e "$dest" ]; then
	die "$dest exists but holds no vault: move it aside and run again"
fi
if [ -z "$upgrade" ] && [ -z "${RV_AGENT_UPDATE_KEY:-}" ]; then
	die "RV_AGENT_UPDATE_KEY is not set: a first install stores it in the vault"
fi

umask 077
work=$(mktemp -d "${TMPDIR:-/tmp}/tier3-agent-install.XXXXXX") || die "cannot create a temporary folder"
# The token goes to curl in a file, never on its command line.
printf 'Authorization: Bearer %s\n' "$RV_AGENT_TOKEN" >"$work/auth"
set -- --fail --silent --show-error --proto =https --tlsv1.2 --max-time 120 -H "@$work/auth"
if [ -n "${RV_CONTROL_PLANE_CA:-}" ]; then
	[ -r "$RV_CONTROL_PLANE_CA" ] || die "RV_CONTROL_PLANE_CA: cannot read $RV_CONTROL_PLANE_CA"
	set -- "$@" --cacert "$RV_CONTROL_PLANE_CA"
fi

if ! curl "$@" -o "$work/manifest.json" "$url/api/agent/v1/manifest?os=$os&arch=$arch" 2>"$work/curl.err"; then
	die "cannot fetch the manifest from $url: $(tr '\n' ' ' <"$work/curl.err")(check RV_AGENT_TOKEN and the URL)"
fi
field() {
	tr -d '\n' <"$work/manifest.json" | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" | sed 's/\\u0026/\&/g'
}
version=$(field version)
want=$(field sha256)
bin_url=$(field url)
if [ -z "$want" ] || [ -z "$bin_url" ]; then
	die "the manifest from $url has no sha256 or url"
fi
case $bin_url in
/*) bin_url=$url$bin_url ;;
https://*) ;;
*) die "the manifest's binary URL is not https: $bin_url" ;;
esac
if ! curl "$@" -o "$work/tier3-agent" "$bin_url" 2>"$work/curl.err"; then
	die "cannot download the binary: $(tr '\n' ' ' <"$work/curl.err")"
fi
got=$(sha256sum "$work/tier3-agent" | sed 's/ .*//')
if [ "$got" != "$want" ]; then
	die "the downloaded binary's SHA-256 is $got, the manifest says $want: nothing installed (tampered download or a broken mirror)"
fi
chmod 0755 "$work/tier3-agent"

# The agent's account: files in /opt/rapidvalue belong to it (the unit runs
# as it). Under RV_INSTALL_ROOT (tests) no account is made.
agent_user=rapidvalue-agent
have_user=
if [ -z "$root" ]; then
	if ! id "$agent_user" >/dev/null 2>&1; then
		command -v useradd >/dev/null 2>&1 || die "useradd is missing: create a system user $agent_user and run again"
		useradd --system --no-create-home --home-dir "$dest_rel" --shell /usr/sbin/nologin "$agent_user" ||
			die "cannot create the user $agent_user"
	fi
	have_user=1
fi

tpm_dev=${RV_AGENT_TPM_DEVICE:-/dev/tpmrm0}
keyring_reachable() {
	[ -n "${DBUS_SESSION_BUS_ADDRESS:-}" ] && command -v dbus-send >/dev/null 2>&1 &&
		dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
			org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null | grep -q 'boolean true'
}

dropin=
if [ -z "$upgrade" ]; then
	seal=${RV_INSTALL_SEAL:-}
	if [ -z "$seal" ]; then
		if [ -e /dev/tpmrm0 ] || [ -n "${RV_AGENT_TPM_DEVICE:-}" ]; then
			seal=tpm2
		elif ! command -v systemctl >/dev/null 2>&1 && keyring_reachable; then
			# Only without systemd: the agent then runs in this session,
			# which has the keyring. rapidvalue-agent.service has no
			# session bus, so a keyring seal could never open there.
			seal=keyring
		elif command -v systemd-creds >/dev/null 2>&1; then
			seal=identity
		else
			die "no seal for the vault on this host: no TPM (/dev/tpmrm0), no systemd-creds, no keyring the agent could use; add a TPM, or set RV_INSTALL_SEAL=passphrase (and RV_AGENT_VAULT_PASSPHRASE_FILE) or RV_INSTALL_SEAL=identity (dev/test only)"
		fi
	fi
	case $seal in
	tpm2 | keyring | identity | passphrase) ;;
	*) die "RV_INSTALL_SEAL: want tpm2, keyring, identity or passphrase, not $seal" ;;
	esac
	if [ "$seal" = keyring ] && command -v systemctl >/dev/null 2>&1; then
		die "the keyring seal needs a user's session bus, which rapidvalue-agent.service does not have: use RV_INSTALL_SEAL=tpm2, identity or passphrase"
	fi

	# Stage next to the destination (same file system: the final mv is a
	# rename), then move into place.
	mkdirs "$root/opt" || die "cannot create $root/opt"
	stage=$(mktemp -d "$root/opt/.rapidvalue.install.XXXXXX") || die "cannot create a staging folder in $root/opt"
	chmod 0700 "$stage"
	cp "$work/tier3-agent" "$stage/tier3-agent"
	chmod 0755 "$stage/tier3-agent"

	export RV_AGENT_VAULT_PATH="$stage/agent-vault.json"
	id_file=
	if [ "$seal" = identity ]; then
		id_file=$stage/host.key
		export RV_AGENT_VAULT_IDENTITY_FILE="$id_file"
	fi
	if [ "$seal" = tpm2 ]; then
		export RV_AGENT_TPM_DEVICE="$tpm_dev"
	fi
	if ! "$stage/tier3-agent" vault init --seal "$seal" >"$work/vault.out" 2>&1; then
		die "cannot create the vault (seal $seal): $(tail -n 1 "$work/vault.out")"
	fi
	if ! printf %s "$RV_AGENT_TOKEN" | "$stage/tier3-agent" vault set _agent token >"$work/vault.out" 2>&1; then
		die "cannot store the token in the vault: $(tail -n 1 "$work/vault.out")"
	fi
	if ! printf %s "$RV_AGENT_UPDATE_KEY" | "$stage/tier3-agent" vault set _agent update_key >"$work/vault.out" 2>&1; then
		die "cannot store the update key in the vault: $(tail -n 1 "$work/vault.out")"
	fi

	if [ "$seal" = identity ]; then
		if command -v systemd-creds >/dev/null 2>&1 && [ -z "${RV_INSTALL_SEAL:-}" ]; then
			# The identity lives encrypted with the host's credential key;
			# systemd decrypts it for the service only.
			if ! systemd-creds encrypt --name=host.key "$id_file" "$stage/host.key.cred" 2>"$work/creds.err"; then
				die "systemd-creds encrypt failed: $(tr '\n' ' ' <"$work/creds.err")"
			fi
			rm -f "$id_file"
			dropin="${dropin}LoadCredentialEncrypted=host.key:$dest_rel/host.key.cred
Environment=RV_AGENT_VAULT_IDENTITY_FILE=%d/host.key
"
		else
			dropin="${dropin}Environment=RV_AGENT_VAULT_IDENTITY_FILE=$dest_rel/host.key
"
		fi
	fi
	if [ "$seal" = tpm2 ]; then
		if [ "$tpm_dev" != /dev/tpmrm0 ]; then
			dropin="${dropin}Environment=RV_AGENT_TPM_DEVICE=$tpm_dev
DeviceAllow=$tpm_dev rw
"
		fi
		if command -v getent >/dev/null 2>&1 && getent group tss >/dev/null 2>&1; then
			dropin="${dropin}SupplementaryGroups=tss
"
		fi
	fi
	if [ "$seal" = passphrase ] && [ -n "${RV_AGENT_VAULT_PASSPHRASE_FILE:-}" ]; then
		dropin="${dropin}Environment=RV_AGENT_VAULT_PASSPHRASE_FILE=$RV_AGENT_VAULT_PASSPHRASE_FILE
"
	fi
	if [ -n "${RV_CONTROL_PLANE_CA:-}" ]; then
		cp "$RV_CONTROL_PLANE_CA" "$stage/control-plane-ca.pem"
		dropin="${dropin}Environment=RV_CONTROL_PLANE_CA=$dest_rel/control-plane-ca.pem
"
	fi
	if [ -n "$have_user" ]; then
		chown -R "$agent_user:$agent_user" "$stage" || die "cannot give $stage to $agent_user"
		chown root:root "$stage/tier3-agent"
	fi
fi

# The unit (install/rapidvalue-agent.service), written atomically.
mkdirs "$unit_dir" || die "cannot create $unit_dir"
[ -e "$unit" ] || created_unit=1
umask 022
cat >"$work/unit" <<'RAPIDVALUE_AGENT_SERVICE'
@@RAPIDVALUE_AGENT_SERVICE@@
RAPIDVALUE_AGENT_SERVICE
sed "s#^Environment=RV_CONTROL_PLANE_URL=.*#Environment=RV_CONTROL_PLANE_URL=$url#" "$work/unit" >"$work/unit.url"

if [ -z "$upgrade" ]; then
	mv "$stage" "$dest" || die "cannot move $stage to $dest"
	stage=
	created_dest=1
	if [ -n "$dropin" ]; then
		[ -e "$dropin_dir" ] || created_dropin=1
		mkdirs "$dropin_dir" || die "cannot create $dropin_dir"
		printf '# Written by the tier3-agent installer for this host.\n[Service]\n%s' "$dropin" >"$dropin_dir/install.conf"
	fi
else
	# Upgrade: replace the binary by a rename; the vault and its seal stay.
	cp "$work/tier3-agent" "$dest/.tier3-agent.new"
	chmod 0755 "$dest/.tier3-agent.new"
	if [ -f "$dest/tier3-agent" ]; then
		cp -p "$dest/tier3-agent" "$dest/.tier3-agent.old"
		old_bin=$dest/.tier3-agent.old
	fi
	mv -f "$dest/.tier3-agent.new" "$dest/tier3-agent" || die "cannot replace $dest/tier3-agent"
fi
if [ -z "$created_unit" ]; then
	cp -p "$unit" "$work/unit.old" || die "cannot keep a copy of $unit"
fi
if ! cp "$work/unit.url" "$unit.new" || ! mv -f "$unit.new" "$unit"; then
	die "cannot write $unit"
fi

audit=$dest/audit.log
before=0
if [ -f "$audit" ]; then
	before=$(grep -c 'agent\.registered' "$audit" || :)
fi

if ! command -v systemctl >/dev/null 2>&1; then
	say "installed tier3-agent $version in $dest; systemctl is missing, so start it yourself:"
	say "  cd $dest_rel && RV_CONTROL_PLANE_URL=$url RV_AGENT_VAULT_PATH=$dest_rel/agent-vault.json $dest_rel/tier3-agent run"
	if [ -n "$dropin" ]; then
		say "  with also: $(printf '%s' "$dropin" | sed -n 's/^Environment=//p' | tr '\n' ' ')"
	fi
	trap - EXIT INT TERM HUP
	rm -f "$old_bin"
	rm -rf "$work"
	exit 0
fi
systemctl daemon-reload >"$work/systemctl.out" 2>&1 || die "systemctl daemon-reload failed: $(tail -n 1 "$work/systemctl.out")"
if [ -n "$upgrade" ]; then
	systemctl restart rapidvalue-agent.service >"$work/systemctl.out" 2>&1 ||
		die "systemctl restart rapidvalue-agent.service failed: $(tail -n 1 "$work/systemctl.out")"
else
	enabled=1
	systemctl enable --now rapidvalue-agent.service >"$work/systemctl.out" 2>&1 ||
		die "systemctl enable --now rapidvalue-agent.service failed: $(tail -n 1 "$work/systemctl.out")"
fi

# Registered: the agent's audit log gains an agent.registered line.
deadline=$(($(date +%s) + wait_s))
while :; do
	n=0
	if [ -f "$audit" ]; then
		n=$(grep -c 'agent\.registered' "$audit" || :)
	fi
	[ "$n" -gt "$before" ] && break
	if [ "$(date +%s)" -ge "$deadline" ]; then
		die "the agent did not register within ${wait_s}s: see journalctl -u rapidvalue-agent"
	fi
	sleep 1
done

trap - EXIT INT TERM HUP
rm -f "$old_bin"
rm -rf "$work"
say "tier3-agent $version installed in $dest and registered with $url"
exit 0
}
