// Package testbin builds the real tier3-agent binary once per test process
// and finds the tools tests run it against (upstream age, swtpm, slapd).
// Tests use it; nothing in the product imports it.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	once    sync.Once
	binPath string
	binErr  error
	dir     string
)

// Root is the module root.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Agent returns the path of a freshly built tier3-agent binary.
func Agent(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		dir, binErr = os.MkdirTemp("", "tier3-agent-bin-")
		if binErr != nil {
			return
		}
		os.Chmod(dir, 0o755)
		binPath = filepath.Join(dir, "tier3-agent")
		cmd := exec.Command("go", "build", "-trimpath", "-o", binPath, "./cmd/tier3-agent")
		cmd.Dir = Root()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = &buildError{string(out)}
		}
	})
	if binErr != nil {
		t.Fatalf("building tier3-agent: %v", binErr)
	}
	return binPath
}

type buildError struct{ out string }

func (e *buildError) Error() string { return e.out }

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
