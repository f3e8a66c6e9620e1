//go:build linux

// Package standin plays systemd's systemctl for the tests that run the
// installer (install/install_test.go, docs/guide_test.go): a shell script
// named systemctl, put first on the installer's PATH, that starts and stops
// the installed agent as the unit would, with every path under
// RV_INSTALL_ROOT. Tests use it; nothing in the product imports it.
package standin

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// systemctl plays systemd for the installer: `enable --now` and `restart`
// start the installed binary in the background, in its own process group,
// with the unit's (and drop-in's) Environment= lines, /opt/rapidvalue moved
// under RV_INSTALL_ROOT, and return once it has registered, as Type=notify
// would (or fail if it exits first); `disable --now` and `stop` stop it;
// `reload` sends SIGHUP and returns once the agent has logged the reload's
// outcome; `is-active` says whether it runs. It records every call in
// $STANDIN_STATE/calls and the agent's process group in $STANDIN_STATE/pid.
const systemctl = `#!/bin/sh
state=$STANDIN_STATE
root=$RV_INSTALL_ROOT
echo "$*" >>"$state/calls"
stop() {
	if [ -f "$state/pid" ]; then
		pg=$(cat "$state/pid")
		kill -TERM "-$pg" 2>/dev/null
		# Like systemd: wait until the old agent is gone (10 s, then KILL).
		n=0
		while kill -0 "-$pg" 2>/dev/null && ! grep -q '^[^)]*) Z' "/proc/$pg/stat" 2>/dev/null; do
			n=$((n + 1))
			if [ "$n" -gt 200 ]; then kill -KILL "-$pg" 2>/dev/null; break; fi
			sleep 0.05
		done
		rm -f "$state/pid"
	fi
}
start() {
	units=$(cat "$root/etc/systemd/system/rapidvalue-agent.service" "$root"/etc/systemd/system/rapidvalue-agent.service.d/*.conf 2>/dev/null)
	# LoadCredentialEncrypted=NAME:PATH: decrypt into $state/creds (%d).
	mkdir -p "$state/creds"
	for c in $(printf '%s\n' "$units" | sed -n 's/^LoadCredentialEncrypted=//p'); do
		systemd-creds decrypt --name="${c%%:*}" "$root${c#*:}" "$state/creds/${c%%:*}" || exit 1
	done
	envs=$(printf '%s\n' "$units" | sed -n 's/^Environment=//p' | sed "s#=/opt/rapidvalue#=$root/opt/rapidvalue#; s#%d#$state/creds#")
	# setsid: the agent leads its own process group (no job control here).
	# shellcheck disable=SC2086
	(cd "$root/opt/rapidvalue" && exec @SETSID@ env -i PATH="$PATH" HOME="$state" RV_POLL_WAIT=2 RV_HEARTBEAT_INTERVAL=2 \
		RV_AGENT_SELF_UPDATE=0 $envs "$root/opt/rapidvalue/tier3-agent" run) </dev/null >>"$state/agent.log" 2>&1 &
	pg=$!
	echo "$pg" >"$state/pid"
	echo "$pg" >>"$state/pids"
	# Like Type=notify: return once the agent has registered (a new
	# agent.registered line in its audit log), fail if it exits first.
	n=0
	while [ "$(registered)" -le "$before" ]; do
		if ! running; then
			echo "stand-in systemctl: the agent exited: $(tail -n 1 "$state/agent.log")" >&2
			exit 1
		fi
		n=$((n + 1))
		if [ "$n" -gt 600 ]; then echo "stand-in systemctl: the agent did not register in 30 s" >&2; exit 1; fi
		sleep 0.05
	done
}
# running: the agent's first process (the group's leader, once setsid has
# run) is alive and not a zombie.
running() {
	[ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null && ! grep -q '^[^)]*) Z' "/proc/$(cat "$state/pid")/stat" 2>/dev/null
}
audit=$root/opt/rapidvalue/audit.log
registered() {
	c=$(grep -c '"agent\.registered"' "$audit" 2>/dev/null)
	echo "${c:-0}"
}
# reload: like ExecReload=kill -HUP and the agent's RELOADING=1 ...
# READY=1: signal the agent, return once it has logged the outcome.
reloads() {
	c=$(grep -c '"vault reload' "$state/agent.log" 2>/dev/null)
	echo "${c:-0}"
}
reload() {
	running || { echo "stand-in systemctl: the agent is not running" >&2; exit 1; }
	was=$(reloads)
	kill -HUP "$(cat "$state/pid")"
	n=0
	while [ "$(reloads)" -le "$was" ]; do
		n=$((n + 1))
		if [ "$n" -gt 600 ]; then echo "stand-in systemctl: the agent did not reload in 30 s" >&2; exit 1; fi
		sleep 0.05
	done
}
before=$(registered)
case "$(printf '%s' "$*" | sed 's/rapidvalue-agent\.service/rapidvalue-agent/g')" in
daemon-reload | "reset-failed rapidvalue-agent") ;;
"reload rapidvalue-agent") reload ;;
"enable --now rapidvalue-agent" | "start rapidvalue-agent") running || start ;;
"restart rapidvalue-agent") stop; start ;;
"disable --now rapidvalue-agent" | "stop rapidvalue-agent") stop ;;
"is-active rapidvalue-agent") if running; then echo active; else echo inactive; exit 3; fi ;;
*) echo "stand-in systemctl: unexpected $*" >&2; exit 1 ;;
esac
`

// runuser stands in for util-linux runuser, which needs the installer's
// rapidvalue-agent user (not made under RV_INSTALL_ROOT): it drops its
// options up to "--" and runs the command as the caller.
const runuser = `#!/bin/sh
while [ $# -gt 0 ] && [ "$1" != -- ]; do shift; done
[ "$1" = -- ] && shift
exec "$@"
`

// Runuser writes the runuser stand-in as dir/runuser.
func Runuser(t testing.TB, dir string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "runuser"), []byte(runuser), 0o755); err != nil {
		t.Fatal(err)
	}
}

// Systemctl writes the stand-in as dir/systemctl. The installer must run
// with STANDIN_STATE (a folder for its records and the agent's log) and
// RV_INSTALL_ROOT in its environment. At cleanup every agent it started is
// stopped. It skips the test when setsid (util-linux) is missing, unless
// CI=true.
func Systemctl(t testing.TB, dir, state string) {
	t.Helper()
	setsid, err := exec.LookPath("setsid")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("setsid (util-linux) is missing")
		}
		t.Skip("setsid (util-linux) is missing")
	}
	script := strings.ReplaceAll(systemctl, "@SETSID@", setsid)
	if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { KillAgents(state) })
}

// Running reports whether the agent the stand-in started last still runs.
func Running(state string) bool {
	data, err := os.ReadFile(filepath.Join(state, "pid"))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	return err == nil && pid > 1 && alive(pid)
}

// KillAgents stops every agent the stand-in started and waits until each
// process group is gone.
func KillAgents(state string) {
	data, _ := os.ReadFile(filepath.Join(state, "pids"))
	for _, f := range strings.Fields(string(data)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 1 {
			continue
		}
		syscall.Kill(-pid, syscall.SIGTERM)
		deadline := time.Now().Add(10 * time.Second)
		for alive(pid) {
			if time.Now().After(deadline) {
				syscall.Kill(-pid, syscall.SIGKILL)
				break
			}
			time.Sleep(20 * time.Millisecond) // polling, with a deadline
		}
	}
}

// alive reports whether the process group pid still has members, counting
// a zombie leader (reparented, maybe never reaped here) as gone.
func alive(pid int) bool {
	if syscall.Kill(-pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // the leader is gone, other members are not
	}
	i := bytes.LastIndexByte(stat, ')')
	return !(i > 0 && i+2 < len(stat) && stat[i+2] == 'Z')
}
