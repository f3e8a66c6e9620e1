#!/usr/bin/env bash
# install-deps.sh installs what the tests need on a Debian 12 machine that has
# only Go: gcc for go test -race, the real components the tests run against
# (swtpm, gnome-keyring on a private D-Bus, slapd) and the upstream age CLI
# that checks our sealed files open without our code.
#
# Idempotent and fast when everything is present: it only looks for binaries
# with `command -v`, and calls apt-get or the Go module proxy for what is
# missing. Run it as root (CI is); otherwise it fails in one line naming what
# to install.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

age_version=v1.3.2

# binary -> Debian package that provides it.
declare -A pkg_for=(
	[swtpm]=swtpm
	[swtpm_setup]=swtpm-tools
	[tpm2_getcap]=tpm2-tools
	[gnome-keyring-daemon]=gnome-keyring
	[dbus-run-session]=dbus
	[dbus-send]=dbus
	[secret-tool]=libsecret-tools
	[slapd]=slapd
	[ldapsearch]=ldap-utils
	[curl]=curl
	[shellcheck]=shellcheck
	[systemd-analyze]=systemd
)
# Fixed order, so the output and the apt-get command line are stable.
bins=(swtpm swtpm_setup tpm2_getcap gnome-keyring-daemon dbus-run-session dbus-send secret-tool slapd ldapsearch curl shellcheck systemd-analyze)

say() { printf 'install-deps: %s\n' "$*" >&2; }

# slapd lives in /usr/sbin, which is not on every non-root PATH.
PATH="$PATH:/usr/sbin:/sbin"

missing=()
for b in "${bins[@]}"; do
	command -v "$b" >/dev/null 2>&1 || missing+=("${pkg_for[$b]}")
done
# go test -race needs cgo, so a C compiler and the C library headers; the
# machines have them, a minimal Debian does not.
if ! command -v gcc >/dev/null 2>&1 || [[ ! -e /usr/include/stdlib.h ]]; then
	missing+=(gcc libc6-dev)
fi

if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		say "error: missing Debian packages and not root: run 'sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}' (or run this script as root)"
		exit 1
	fi
	say "installing ${missing[*]}"

	# Keep package scripts from starting daemons (slapd, dbus) on this
	# machine: invoke-rc.d and deb-systemd-invoke ask policy-rc.d, and 101
	# means "action not allowed" (see invoke-rc.d(8)). Docker-style images
	# already ship one; only when there is none do we place ours, and take it
	# away again however this script ends.
	policy=/usr/sbin/policy-rc.d
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 0755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi

	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

	for b in "${bins[@]}" gcc; do
		if ! command -v "$b" >/dev/null 2>&1; then
			say "error: $b is still missing after installing ${pkg_for[$b]:-$b}"
			exit 1
		fi
	done
fi

# The upstream age CLI, pinned, in the repository's own .tools/bin (ignored by
# git): `age -d -i KEY VAULT` must open a sealed vault without our code.
bin="$repo/.tools/bin"
if [[ ! -x $bin/age || $("$bin/age" --version 2>/dev/null) != "$age_version" ]]; then
	say "installing filippo.io/age/cmd/...@$age_version into .tools/bin"
	mkdir -p "$bin"
	GOBIN="$bin" go install "filippo.io/age/cmd/...@$age_version"
fi
