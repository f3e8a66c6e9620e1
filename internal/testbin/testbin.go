// Package testbin builds the real tier3-agent binary once per test process
// and finds the tools tests run it against (upstream age, swtpm, slapd).
// Tests use it; nothing in the product imports it.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var (
	mu     sync.Mutex
	builds = map[string]string{} // environment → binary
	dir    string
)

// Root is the module root.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Agent returns the path of a freshly built tier3-agent binary.
func Agent(t testing.TB) string { return AgentWith(t) }

// AgentWith builds tier3-agent with extra environment for go build (say
// GOEXPERIMENT=runtimesecret), once per test process and environment.
func AgentWith(t testing.TB, env ...string) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	key := strings.Join(env, " ")
	if p, ok := builds[key]; ok {
		return p
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "tier3-agent-bin-")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(d, 0o755)
		dir = d
	}
	p := filepath.Join(dir, fmt.Sprintf("tier3-agent-%d", len(builds)))
	cmd := exec.Command("go", "build", "-trimpath", "-o", p, "./cmd/tier3-agent")
	cmd.Dir = Root()
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building tier3-agent %s: %v\n%s", key, err, out)
	}
	builds[key] = p
	return p
}

// Tool finds an external tool on PATH or in the repo's .tools/bin. When it
// is missing the test is skipped, except in CI (CI=true), where the test
// command installs every tool and a missing one is a failure.
func Tool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	p := filepath.Join(Root(), ".tools", "bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed: scripts/install-deps.sh installs it", name)
	}
	t.Skipf("%s is not installed (scripts/install-deps.sh installs it)", name)
	return ""
}
