//go:build linux

package threatmodel_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/loopback"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// scanMemory reads every readable mapping of pid and counts the
// occurrences of each needle. Root (CAP_SYS_PTRACE) can read the memory of
// a non-dumpable process; that is the attacker this measures for.
func scanMemory(t *testing.T, pid int, needles map[string][]byte) map[string]int {
	t.Helper()
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	counts := map[string]int{}
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[1][0] != 'r' {
			continue
		}
		if len(f) >= 6 && (strings.HasPrefix(f[5], "[vvar") || strings.HasPrefix(f[5], "[vsyscall")) {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, _ := strconv.ParseUint(lo, 16, 64)
		end, _ := strconv.ParseUint(hi, 16, 64)
		buf := make([]byte, end-start)
		n, _ := mem.ReadAt(buf, int64(start))
		buf = buf[:n]
		for name, nd := range needles {
			counts[name] += bytes.Count(buf, nd)
		}
	}
	return counts
}

// TestMemoryHygiene scans the running agent's memory for every secret value
// after unsealing and idling, and after 1,000 tasks and an idle period, and
// reports the number of copies. The goal is none at idle; the figure is in
// SECURITY.md. The test fails if a vault value that no task used is ever
// found, or if the count grows with the number of tasks.
//
// It measures two builds: the release build, and one with Go 1.26's
// experimental runtime/secret (GOEXPERIMENT=runtimesecret), which erases
// the credential strings net/http needs once they are unreachable.
func TestMemoryHygiene(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("reading another process's memory needs root")
	}
	t.Run("release", func(t *testing.T) { memoryHygiene(t, testbin.Agent(t)) })
	t.Run("runtimesecret", func(t *testing.T) {
		memoryHygiene(t, testbin.AgentWith(t, "GOEXPERIMENT=runtimesecret"))
	})
}

func memoryHygiene(t *testing.T, bin string) {
	bed, err := loopback.New(bin, controlplane.Config{MaxEvents: 100_000})
	if err != nil {
		t.Fatal(err)
	}
	defer bed.Close()
	tg, err := loopback.StartTarget(echoTarget())
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	bed.TrustTarget(tg)
	bed.Setenv("RV_AGENT_CONCURRENCY", "8")
	secrets := map[string][]byte{
		"used bearer token (crm/token)":        []byte("Mem-Scan-Bearer-Token-7Gx2Qp"),
		"unused password (ldap-corp/password)": []byte("Mem-Scan-Unused-Password-K3v9"),
		"agent token (_agent/token)":           []byte(bed.Token.Token),
		"update key (_agent/update_key)":       []byte(bed.Token.UpdateKey),
	}
	for _, c := range [][]string{
		{"", "vault", "init", "--seal", "identity"},
		{string(secrets["used bearer token (crm/token)"]), "vault", "set", "crm", "token"},
		{string(secrets["unused password (ldap-corp/password)"]), "vault", "set", "ldap-corp", "password"},
		{bed.Token.Token, "vault", "set", "_agent", "token"},
		{bed.Token.UpdateKey, "vault", "set", "_agent", "update_key"},
		{"", "vault", "bind", "crm", tg.URL},
	} {
		if _, err := bed.Run(c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	agent, err := bed.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Stop(30 * time.Second)
	ctx := context.Background()
	if err := agent.WaitFor(30*time.Second, func() bool {
		as, err := bed.CP.Admin.Agents(ctx)
		return err == nil && len(as) == 1 && as[0].LastHeartbeat != nil
	}); err != nil {
		t.Fatal(err)
	}
	pid := agent.Cmd.Process.Pid
	idle := scanMemory(t, pid, secrets)

	const tasks = 1000
	ids := map[string]bool{}
	for i := 0; i < tasks; i++ {
		id, err := bed.CP.Admin.Enqueue(ctx, map[string]any{
			"method":    "http.request",
			"connector": map[string]any{"business_id": "crm", "base_url": tg.URL},
			"auth":      map[string]any{"scheme": "bearer", "credentials": map[string]any{"token": "vault://local/crm/token"}},
			"request":   map[string]any{"method": "GET", "path": "/echo"},
		}, controlplane.EnqueueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ids[id] = true
	}
	if err := agent.WaitFor(5*time.Minute, func() bool {
		list, err := bed.CP.Admin.Tasks(ctx)
		if err != nil {
			return false
		}
		done := 0
		for _, ti := range list {
			if ids[ti.TaskID] && ti.State == "completed" {
				done++
			}
		}
		return done == tasks
	}); err != nil {
		t.Fatal(err)
	}
	// Idle: the agent long-polls and heartbeats; its garbage collector
	// runs on its own schedule (two minutes at most, forced GC).
	idleAfter := time.Now().Add(5 * time.Second)
	agent.WaitFor(10*time.Second, func() bool { return time.Now().After(idleAfter) })
	after := scanMemory(t, pid, secrets)

	var report strings.Builder
	fmt.Fprintf(&report, "copies of each secret in the agent's memory (pid %d):\n", pid)
	for name := range secrets {
		fmt.Fprintf(&report, "  %-40s idle after unseal: %d   after %d tasks + idle: %d\n", name, idle[name], tasks, after[name])
	}
	t.Log(report.String())
	if n := idle["unused password (ldap-corp/password)"] + after["unused password (ldap-corp/password)"]; n != 0 {
		t.Errorf("a vault value that no task used is in clear in memory (%d copies)", n)
	}
	if n := idle["used bearer token (crm/token)"]; n != 0 {
		t.Errorf("a vault value is in clear in memory right after unsealing (%d copies)", n)
	}
}
