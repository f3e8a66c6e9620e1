//go:build linux

package main_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// TestKilledWriterLeavesOldOrNew kills `vault set` with SIGKILL at random
// points until 200 writers have died mid-run: the vault must always open and hold either the value
// before the write or the value it was writing.
func TestKilledWriterLeavesOldOrNew(t *testing.T) {
	h := newHarness(t)
	h.must("", "vault", "init", "--seal", "identity")
	h.must("value-initial", "vault", "set", "svc", "password")
	committed := "value-initial"

	// Calibrate the kill window on this machine: the time one set takes.
	start := time.Now()
	for i := 0; i < 3; i++ {
		h.must("value-initial", "vault", "set", "svc", "password")
	}
	window := time.Since(start) / 3
	t.Logf("one vault set takes about %v; killing within that window", window)

	bin := testbin.Agent(t)
	kills, survived := 0, 0
	rounds := 0
	for i := 0; kills < 200; i++ {
		if i >= 1000 {
			t.Fatalf("only %d of 1000 writers were killed mid-run", kills)
		}
		rounds++
		next := fmt.Sprintf("value-%03d", i)
		cmd := exec.Command(bin, "vault", "set", "svc", "password")
		cmd.Env = []string{"RV_AGENT_VAULT_PATH=" + h.vars["RV_AGENT_VAULT_PATH"], "RV_AGENT_VAULT_IDENTITY_FILE=" + h.vars["RV_AGENT_VAULT_IDENTITY_FILE"]}
		cmd.Stdin = strings.NewReader(next)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The kill point is random by design: this is the test's input,
		// not a wait for something to happen.
		delay := time.Duration(rand.Int64N(int64(window) + 1))
		timer := time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
		err := cmd.Wait()
		timer.Stop()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			kills++
		} else if err == nil {
			survived++
		}
		got, ok := h.value("svc", "password")
		switch {
		case !ok:
			t.Fatalf("round %d: the value is gone", i)
		case got == next:
			committed = next
		case got != committed:
			t.Fatalf("round %d: vault holds neither the old nor the new value", i)
		}
	}
	t.Logf("%d rounds: %d writers killed mid-run, %d completed", rounds, kills, survived)
	h.assertNoPlaintextOnDisk()
	// The next write tidies any temporary file a killed writer left.
	h.must("final", "vault", "set", "svc", "password")
	if m, _ := filepath.Glob(h.path(".vault.json.tmp-*")); len(m) != 0 {
		t.Fatalf("stale temporary files remain: %v", m)
	}
}

// TestConcurrentSetsLoseNothing: concurrent writers are serialized by the
// lock, so every update lands.
func TestConcurrentSetsLoseNothing(t *testing.T) {
	h := newHarness(t)
	h.must("", "vault", "init", "--seal", "identity")
	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(testbin.Agent(t), "vault", "set", "svc", fmt.Sprintf("f%02d", i))
			cmd.Env = []string{"RV_AGENT_VAULT_PATH=" + h.vars["RV_AGENT_VAULT_PATH"], "RV_AGENT_VAULT_IDENTITY_FILE=" + h.vars["RV_AGENT_VAULT_IDENTITY_FILE"]}
			cmd.Stdin = strings.NewReader(fmt.Sprintf("value-%02d", i))
			if out, err := cmd.CombinedOutput(); err != nil {
				mu.Lock()
				t.Errorf("writer %d: %v %s", i, err, out)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if v, ok := h.value("svc", fmt.Sprintf("f%02d", i)); !ok || v != fmt.Sprintf("value-%02d", i) {
			t.Errorf("update %d was lost", i)
		}
	}
}

func TestEditInMemory(t *testing.T) {
	h := newHarness(t)
	if _, err := os.Stat("/dev/shm"); err != nil {
		t.Skip("no /dev/shm on this machine")
	}
	h.must("", "vault", "init", "--seal", "identity")
	h.must(secrets[2], "vault", "set", "ldap-corp", "bind_password")
	rec := h.path("rec")
	editor := h.path("editor.sh")
	os.WriteFile(editor, []byte(`#!/bin/sh
set -e
stat -f -c %T "$1" > "`+rec+`.fs"
stat -c %a "$1" > "`+rec+`.mode"
printf %s "$1" > "`+rec+`.path"
sed -i 's/"bind_password"/"bind_password2"/' "$1"
`), 0o700)
	h.vars["EDITOR"] = editor
	h.must("", "vault", "edit")
	fsType, _ := os.ReadFile(rec + ".fs")
	mode, _ := os.ReadFile(rec + ".mode")
	path, _ := os.ReadFile(rec + ".path")
	if got := strings.TrimSpace(string(fsType)); got != "tmpfs" && got != "ramfs" {
		t.Fatalf("the editor's copy was on %q, not memory-backed storage", got)
	}
	if strings.TrimSpace(string(mode)) != "600" {
		t.Fatalf("the editor's copy had mode %s", mode)
	}
	if _, err := os.Stat(string(path)); !os.IsNotExist(err) {
		t.Fatalf("the editor's copy was not removed: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(string(path))); !os.IsNotExist(err) {
		t.Fatal("the editor's folder was not removed")
	}
	if v, ok := h.value("ldap-corp", "bind_password2"); !ok || v != secrets[2] {
		t.Fatal("the edit was not saved")
	}

	// An edit that breaks the schema changes nothing.
	before, _ := os.ReadFile(h.vars["RV_AGENT_VAULT_PATH"])
	os.WriteFile(editor, []byte("#!/bin/sh\nprintf %s "+`'{"ldap-corp": {"bind_password2": 5}}'`+" > \"$1\"\n"), 0o700)
	h.fails(1, "nothing changed", "", "vault", "edit")
	if after, _ := os.ReadFile(h.vars["RV_AGENT_VAULT_PATH"]); string(after) != string(before) {
		t.Fatal("a refused edit changed the vault")
	}
	// An editor that fails changes nothing either.
	h.vars["EDITOR"] = "false"
	h.fails(1, "editor failed", "", "vault", "edit")
}

// nobody runs the binary as an unprivileged user (no CAP_IPC_LOCK, no
// CAP_SYS_PTRACE), so limits and dumpability mean what they mean on a host.
func runAsNobody(t *testing.T, dir string, env []string, shell string) (string, int) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to switch to an unprivileged user")
	}
	cmd := exec.Command("/bin/sh", "-c", shell)
	cmd.Dir = dir
	cmd.Env = append(env, "PATH=/usr/bin:/bin", "BIN="+testbin.Agent(t))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func nobodyDir(t *testing.T) string {
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chown(dir, 65534, 65534)
	return dir
}

func TestMemlockTooLowIsAClearError(t *testing.T) {
	dir := nobodyDir(t)
	env := []string{"RV_AGENT_VAULT_PATH=" + dir + "/v.json", "RV_AGENT_VAULT_IDENTITY_FILE=" + dir + "/k"}
	out, code := runAsNobody(t, dir, env, `ulimit -l 64 && exec "$BIN" vault init --seal identity`)
	if code != 78 || !strings.Contains(out, "RLIMIT_MEMLOCK") || strings.Contains(out, "panic") {
		t.Fatalf("exit %d: %s", code, out)
	}
	if _, err := os.Stat(dir + "/v.json"); !os.IsNotExist(err) {
		t.Fatal("a vault was created although the process could not lock memory")
	}
	out, code = runAsNobody(t, dir, env, `ulimit -l 8192 && exec "$BIN" vault init --seal identity`)
	if code != 0 {
		t.Fatalf("with 8 MiB: exit %d: %s", code, out)
	}
}

// TestProcessIsNotDumpable: while a command holds plaintext (here, vault
// edit waiting for the editor), its /proc files belong to root, not to the
// user (PR_SET_DUMPABLE 0), and its core limit is 0.
func TestProcessIsNotDumpable(t *testing.T) {
	if _, err := os.Stat("/dev/shm"); err != nil {
		t.Skip("no /dev/shm")
	}
	dir := nobodyDir(t)
	env := []string{"RV_AGENT_VAULT_PATH=" + dir + "/v.json", "RV_AGENT_VAULT_IDENTITY_FILE=" + dir + "/k", "EDITOR=" + dir + "/ed.sh"}
	os.WriteFile(dir+"/ed.sh", []byte("#!/bin/sh\nstat -c %u /proc/$PPID/mem > "+dir+"/owner\ngrep 'Max core file size' /proc/$PPID/limits > "+dir+"/core\n"), 0o755)
	if out, code := runAsNobody(t, dir, env, `"$BIN" vault init --seal identity && exec "$BIN" vault edit`); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	owner, _ := os.ReadFile(dir + "/owner")
	core, _ := os.ReadFile(dir + "/core")
	if strings.TrimSpace(string(owner)) != "0" {
		t.Fatalf("/proc/PID/mem of the agent is owned by uid %q: the process is dumpable", owner)
	}
	if f := strings.Fields(string(core)); len(f) < 6 || f[4] != "0" || f[5] != "0" {
		t.Fatalf("core limit: %q", core)
	}
}
