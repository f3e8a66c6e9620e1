#!/usr/bin/env bash
# test.sh runs every test: what CI runs (.ci/run) and what a developer runs
# before sending a change.
#
#   bash scripts/test.sh
#
#   FUZZ_BUDGET=30s bash scripts/test.sh   # longer fuzzing per target
#
# Steps: install the test dependencies, gofmt, go vet (linux, windows,
# darwin), go test -race inside a private D-Bus session with an unlocked
# gnome-keyring, the fuzz targets, the release cross-builds of the agent and a
# check that its linux/amd64 build is reproducible. A failing step does not
# stop the others; the run fails at the end, after a summary whose last lines
# are go test's own package results.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

run_start=$(date +%s)
bash scripts/install-deps.sh
export PATH="$root/.tools/bin:$PATH"

work=$(mktemp -d "${TMPDIR:-/tmp}/tier3-test.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=()
steps=()
step() { printf '\n=== %s\n' "$*"; }
record() { # record NAME STATUS
	steps+=("$(printf '%-8s %s' "$2" "$1")")
	[[ $2 == ok || $2 == skipped ]] || failed+=("$1")
}
now() { date +%s; }

# --- gofmt -------------------------------------------------------------------
step "gofmt"
# The files the housekeeping test checks: every .go file outside hidden
# folders (.git, .tools), folders starting with _, testdata and vendor.
# gofmt -l names the files it would change, and says on stderr which ones do
# not parse: both fail the step.
gofmt_rc=0
unformatted=$(find . -type d \( -name '.?*' -o -name '_*' -o -name testdata -o -name vendor \) -prune -o \
	-name '*.go' -type f -print0 | xargs -0 -r gofmt -l 2>&1) || gofmt_rc=$?
if [[ -n $unformatted || $gofmt_rc -ne 0 ]]; then
	echo "not gofmt-clean (run gofmt -w on them):"
	printf '%s\n' "$unformatted" | sed 's/^/  /'
	record gofmt FAIL
else
	echo "ok"
	record gofmt ok
fi

# --- go vet --------------------------------------------------------------------
# Platform code lives in _linux/_windows/_darwin files: vet each platform so a
# mistake in one is not left for the cross-build to find.
for goos in linux windows darwin; do
	step "go vet ./... (GOOS=$goos)"
	cgo=0; [[ $goos == linux ]] && cgo=$(go env CGO_ENABLED)
	if GOOS=$goos CGO_ENABLED=$cgo go vet ./...; then
		echo "ok"
		record "vet/$goos" ok
	else
		record "vet/$goos" FAIL
	fi
done

# --- go test -------------------------------------------------------------------
step "go test -race -count=1 ./... (private D-Bus session, gnome-keyring unlocked)"
# The keyring daemon keeps its keyrings under XDG_DATA_HOME and its control
# socket under XDG_RUNTIME_DIR: private ones, set for the whole D-Bus session,
# so that each run's throwaway password creates its own login keyring. With
# $HOME's, a login keyring left by any earlier session stays locked under a
# new password and refuses every write ("Cannot create an item in a locked
# collection"). The whole session needs them, not only the daemon we start:
# a client that calls before that daemon owns org.freedesktop.secrets makes
# dbus-daemon start another one from its .service file, with dbus-daemon's
# environment. So: wait for the name, then prove the service answers before
# telling the tests (RV_TEST_KEYRING=1) that it does.
keyring_pw=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir -p "$work/keyring-data" "$work/keyring-run"
chmod 0700 "$work/keyring-run"
test_log="$work/go-test.log"
# What dbus-daemon says on every run in a container; nothing about the tests.
dbus_noise='^dbus-daemon\[[0-9]+\]: \[session [^]]*\] (Activating service|Successfully activated service|org\.freedesktop\.DBus\.Error\.AccessDenied: Failed to set fd limit)'
start=$(now)
set +e
RV_TEST_KEYRING_PW="$keyring_pw" XDG_DATA_HOME="$work/keyring-data" XDG_RUNTIME_DIR="$work/keyring-run" \
	dbus-run-session -- sh -c '
		fail() { echo "scripts/test.sh: error: $*" >&2; exit 1; }
		printf %s "$RV_TEST_KEYRING_PW" | gnome-keyring-daemon --unlock --components=secrets >/dev/null ||
			fail "gnome-keyring-daemon --unlock failed"
		unset RV_TEST_KEYRING_PW
		n=0
		until dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
			org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null | grep -q "boolean true"; do
			n=$((n + 1))
			[ "$n" -lt 100 ] || fail "gnome-keyring did not take org.freedesktop.secrets on the session bus within 10s"
			sleep 0.1
		done
		probe=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d " \n")
		printf %s "$probe" | secret-tool store --label=rv-test-probe rv-test probe &&
			[ "$(secret-tool lookup rv-test probe)" = "$probe" ] &&
			secret-tool clear rv-test probe ||
			fail "gnome-keyring does not answer in the private D-Bus session (secret-tool store/lookup failed)"
		export RV_TEST_KEYRING=1
		exec go test -race -count=1 ./...
	' 2>&1 | grep --line-buffered -v -E "$dbus_noise" | tee "$test_log"
test_status=${PIPESTATUS[0]}
set -e
echo "(go test: $(($(now) - start))s)"
if ((test_status == 0)); then record "go test" ok; else record "go test" FAIL; fi

# --- fuzz ----------------------------------------------------------------------
step "fuzz (go run ./fuzz -budget ${FUZZ_BUDGET:-10s})"
start=$(now)
if go run ./fuzz -budget "${FUZZ_BUDGET:-10s}"; then record fuzz ok; else record fuzz FAIL; fi
echo "(fuzz: $(($(now) - start))s)"

# --- release builds --------------------------------------------------------------
agent=./cmd/tier3-agent
have_agent() { compgen -G "$agent/*.go" >/dev/null; }
step "CGO_ENABLED=0 go build -trimpath $agent for each release platform"
if have_agent; then
	ok=1
	for target in linux/amd64 linux/arm64 darwin/arm64 darwin/amd64 windows/amd64; do
		goos=${target%/*} goarch=${target#*/}
		ext=; [[ $goos == windows ]] && ext=.exe
		out="$work/build/tier3-agent-$goos-$goarch$ext"
		if CGO_ENABLED=0 GOOS=$goos GOARCH=$goarch go build -trimpath -o "$out" "$agent"; then
			printf '  %-14s %s bytes\n' "$target" "$(stat -c %s "$out")"
		else
			printf '  %-14s FAILED\n' "$target"
			ok=0
		fi
	done
	if ((ok)); then record "builds" ok; else record "builds" FAIL; fi

	# Two builds that share nothing but the source: each from its own copy
	# of the tree at a different path (what -trimpath must hide), the
	# second with an empty build cache, so that the compiler's output is
	# compared too and not only the linker's. VCS stamping is off: the
	# copies have no .git.
	step "reproducible build (linux/amd64, two copies of the tree, second with an empty build cache)"
	mkdir -p "$work/repro1/src" "$work/repro2/elsewhere/src"
	tar --exclude=./.git --exclude=./.tools --exclude=./bin --exclude=./tier3-agent -cf - . | tar -C "$work/repro1/src" -xf -
	cp -a "$work/repro1/src/." "$work/repro2/elsewhere/src"
	sums=()
	for dir in "$work/repro1/src" "$work/repro2/elsewhere/src"; do
		cache=$(go env GOCACHE)
		[[ $dir == */repro2/* ]] && cache="$work/repro2/gocache"
		if ! (cd "$dir" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOCACHE="$cache" \
			go build -trimpath -buildvcs=false -ldflags=-buildid= -o "$dir.bin" "$agent"); then
			sums+=(build-failed)
			continue
		fi
		sums+=("$(sha256sum "$dir.bin" | cut -d' ' -f1)")
	done
	if [[ ${sums[0]} == "${sums[1]}" && ${sums[0]} != build-failed ]]; then
		echo "ok: both sha256 ${sums[0]}"
		record reproducible ok
	else
		echo "the two builds differ: ${sums[0]} and ${sums[1]}"
		record reproducible FAIL
	fi
else
	echo "skipped: $agent does not exist yet"
	record "builds" skipped
	record reproducible skipped
fi

# --- summary -------------------------------------------------------------------
step "summary"
printf '  %s\n' "${steps[@]}"
echo "  (all steps: $(($(now) - run_start))s)"
echo
echo "go test results:"
grep -E '^(ok|FAIL|---|panic:|\?)[[:space:]]' "$test_log" || true
if ((${#failed[@]})); then
	echo "FAIL: ${failed[*]}"
	exit 1
fi
