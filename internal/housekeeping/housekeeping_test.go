package housekeeping_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/format"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// repoRoot returns the directory of the module's go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// goCmd runs the go command in dir with extra environment and returns its
// standard output; the error carries its standard error.
func goCmd(dir string, env []string, args ...string) ([]byte, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out, nil
}

// TestGofmt checks every .go file of the repository is as gofmt writes it.
// It walks the tree as the go command does, skipping hidden folders (.git,
// .tools), folders starting with _ and testdata, which may hold files that
// are broken on purpose.
func TestGofmt(t *testing.T) {
	root := repoRoot(t)
	var checked int
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		checked++
		formatted, err := format.Source(src)
		if err != nil {
			t.Errorf("%s: does not parse: %v", rel, err)
			return nil
		}
		if !bytes.Equal(src, formatted) {
			t.Errorf("%s: not gofmt-clean; run: gofmt -w %s", rel, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("found no .go files to check")
	}
}

// boundaries are the trust boundaries the imports must mirror (STYLE.md,
// Shape): the control plane never sees a credential, so it cannot even link
// the code that reads one; the agent binary links no control plane; the
// vault and its seals know nothing of the runtime or the control plane.
// Paths are relative to the module; a forbidden path covers its
// subpackages.
var boundaries = []struct {
	pkgs      string
	forbidden []string
}{
	{"./controlplane/...", []string{"vault", "seal", "agent"}},
	{"./cmd/rv-control-plane", []string{"vault", "seal", "agent"}},
	{"./cmd/tier3-agent", []string{"controlplane"}},
	{"./vault", []string{"agent", "controlplane"}},
	{"./seal/...", []string{"agent", "controlplane"}},
	// Self-update verifies and swaps binaries with the key it is handed;
	// it never opens the vault or talks through the runtime.
	{"./update/...", []string{"vault", "seal", "agent", "controlplane"}},
	// The installer is served by the control plane: it carries no code
	// that reads a credential.
	{"./install", []string{"vault", "seal", "agent", "controlplane"}},
	// The offline release signer holds the release key and talks to the
	// control plane's admin API, never to a vault.
	{"./cmd/rv-release-sign", []string{"vault", "seal", "agent"}},
}

// boundaryPlatforms are those the release is built for: build-tagged files
// can add imports on one platform only.
var boundaryPlatforms = []string{"linux", "windows", "darwin"}

type listedPackage struct {
	ImportPath string
	Imports    []string
	DepOnly    bool
	Error      *struct{ Err string }
}

func TestImportBoundaries(t *testing.T) {
	root := repoRoot(t)
	module := modulePath(t, root)
	for _, rule := range boundaries {
		t.Run(strings.Trim(rule.pkgs, "./"), func(t *testing.T) {
			dir := filepath.Join(root, filepath.FromSlash(strings.TrimSuffix(rule.pkgs, "/...")))
			if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
				t.Skipf("%s does not exist yet", rule.pkgs)
			}
			for _, goos := range boundaryPlatforms {
				checked, violations, err := boundaryViolations(root, module, goos, rule.pkgs, rule.forbidden)
				if err != nil {
					t.Fatal(err)
				}
				if checked == 0 {
					t.Skipf("%s has no packages yet", rule.pkgs)
				}
				for _, v := range violations {
					t.Error(v)
				}
			}
		})
	}
}

// TestImportBoundariesCatches runs the boundary check on a small module that
// breaks a rule, so that a check that silently passes everything is seen.
func TestImportBoundariesCatches(t *testing.T) {
	const module = "example.com/bad"
	root := t.TempDir()
	files := map[string]string{
		"go.mod":                  "module " + module + "\n\ngo 1.22\n",
		"vault/vault.go":          "package vault\n",
		"internal/wire/wire.go":   "package wire\n",
		"controlplane/api/api.go": "package api\n\nimport _ \"" + module + "/internal/wire\"\n",
		// Only on Windows, to show each platform is looked at.
		"controlplane/api/api_windows.go": "package api\n\nimport _ \"" + module + "/internal/helper\"\n",
		"internal/helper/helper.go":       "package helper\n\nimport _ \"" + module + "/vault\"\n",
	}
	for name, content := range files {
		path := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		goos string
		want string
	}{
		{"linux", ""},
		{"windows", "controlplane/api -> internal/helper -> vault"},
	} {
		checked, violations, err := boundaryViolations(root, module, tt.goos, "./controlplane/...", []string{"vault", "seal", "agent"})
		if err != nil {
			t.Fatal(err)
		}
		if checked != 1 {
			t.Errorf("GOOS=%s: checked %d packages, want 1", tt.goos, checked)
		}
		switch {
		case tt.want == "" && len(violations) > 0:
			t.Errorf("GOOS=%s: unexpected violations %q", tt.goos, violations)
		case tt.want != "" && (len(violations) != 1 || !strings.Contains(violations[0], tt.want)):
			t.Errorf("GOOS=%s: violations %q, want one naming %q", tt.goos, violations, tt.want)
		}
	}
}

func modulePath(t *testing.T, root string) string {
	t.Helper()
	out, err := goCmd(root, nil, "list", "-m", "-f", "{{.Path}}")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// boundaryViolations lists, for GOOS=goos and without cgo (as the release is
// built), the packages matching pattern and describes each import chain from
// one of them to a forbidden package. It returns how many packages it
// checked: none when pattern has no Go code yet.
func boundaryViolations(root, module, goos, pattern string, forbidden []string) (int, []string, error) {
	env := []string{"GOOS=" + goos, "CGO_ENABLED=0"}
	out, err := goCmd(root, env, "list", "-e", "-deps", "-json=ImportPath,Imports,DepOnly,Error", pattern)
	if err != nil {
		return 0, nil, err
	}
	pkgs, err := decodePackages(out)
	if err != nil {
		return 0, nil, err
	}
	imports := map[string][]string{}
	var roots []string
	for _, p := range pkgs {
		imports[p.ImportPath] = p.Imports
		if p.DepOnly {
			continue
		}
		if p.Error != nil && strings.Contains(p.Error.Err, "no Go files") {
			continue // the folder is there, its code is not yet
		}
		// A package with errors is still checked on the imports that
		// parsed; the build and go vet report the errors themselves.
		roots = append(roots, p.ImportPath)
	}
	var violations []string
	for _, r := range roots {
		if chain := forbiddenChain(imports, r, module, forbidden); chain != nil {
			violations = append(violations, fmt.Sprintf("GOOS=%s: %s must not depend on %s/{%s}, but imports it: %s",
				goos, trim(module, r), module, strings.Join(forbidden, ","), strings.Join(chain, " -> ")))
		}
	}
	return len(roots), violations, nil
}

func decodePackages(out []byte) ([]listedPackage, error) {
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			return pkgs, nil
		} else if err != nil {
			return nil, fmt.Errorf("failed to read go list output: %w", err)
		}
		pkgs = append(pkgs, p)
	}
}

// forbiddenChain returns the shortest import chain from root to a forbidden
// package, with module-relative names, or nil if there is none.
func forbiddenChain(imports map[string][]string, root, module string, forbidden []string) []string {
	isForbidden := func(p string) bool {
		for _, f := range forbidden {
			f = module + "/" + f
			if p == f || strings.HasPrefix(p, f+"/") {
				return true
			}
		}
		return false
	}
	parent := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if isForbidden(p) {
			var chain []string
			for ; p != ""; p = parent[p] {
				chain = append(chain, trim(module, p))
			}
			slices.Reverse(chain)
			return chain
		}
		for _, imp := range imports[p] {
			if _, seen := parent[imp]; !seen {
				parent[imp] = p
				queue = append(queue, imp)
			}
		}
	}
	return nil
}

func trim(module, p string) string {
	if r, ok := strings.CutPrefix(p, module+"/"); ok {
		return r
	}
	return p
}

func TestForbiddenChain(t *testing.T) {
	const m = "example.com/m"
	imports := map[string][]string{
		m + "/cmd/a":         {"fmt", m + "/internal/wire", m + "/agent"},
		m + "/agent":         {m + "/vault/format"},
		m + "/internal/wire": {"encoding/json"},
		m + "/controlplane":  {m + "/internal/wire", m + "/vaulty"},
	}
	tests := []struct {
		name      string
		root      string
		forbidden []string
		want      []string
	}{
		{"direct", m + "/cmd/a", []string{"agent"}, []string{"cmd/a", "agent"}},
		{"subpackage through another", m + "/cmd/a", []string{"vault"}, []string{"cmd/a", "agent", "vault/format"}},
		{"prefix is not a subpackage", m + "/controlplane", []string{"vault"}, nil},
		{"clean", m + "/controlplane", []string{"agent", "seal"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := forbiddenChain(imports, tt.root, m, tt.forbidden)
			if !slices.Equal(got, tt.want) {
				t.Errorf("forbiddenChain = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestAgentBuilds builds the agent as it is released, without cgo, for the
// platforms whose code differs most (the release builds five; scripts/test.sh
// builds them all).
func TestAgentBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-builds are slow; skipped in -short mode")
	}
	root := repoRoot(t)
	if m, _ := filepath.Glob(filepath.Join(root, "cmd", "tier3-agent", "*.go")); len(m) == 0 {
		t.Skip("./cmd/tier3-agent does not exist yet")
	}
	for _, platform := range []string{"linux/amd64", "windows/amd64", "darwin/arm64"} {
		t.Run(strings.ReplaceAll(platform, "/", "_"), func(t *testing.T) {
			goos, goarch, _ := strings.Cut(platform, "/")
			env := []string{"CGO_ENABLED=0", "GOOS=" + goos, "GOARCH=" + goarch}
			// -trimpath as the release is built, which also shares the
			// build cache with scripts/test.sh's release builds.
			if _, err := goCmd(root, env, "build", "-trimpath", "-o", os.DevNull, "./cmd/tier3-agent"); err != nil {
				t.Errorf("CGO_ENABLED=0 GOOS=%s GOARCH=%s: %v", goos, goarch, err)
			}
		})
	}
}

// TestScriptVersions: every version a script stamps into a binary with
// -X main.version= is one the control plane accepts at registration (a
// semantic version). The demo stamped "demo", and every registration of
// its agent was answered 400: no test runs the demo, so this one reads it.
func TestScriptVersions(t *testing.T) {
	root := repoRoot(t)
	scripts, err := filepath.Glob(filepath.Join(root, "scripts", "*.sh"))
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no scripts found: %v", err)
	}
	re := regexp.MustCompile(`-X main\.version=([^"' ]+)`)
	found := 0
	for _, p := range scripts {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllSubmatch(data, -1) {
			found++
			v := string(m[1])
			if strings.HasPrefix(v, "$") {
				continue // set by the caller
			}
			if _, err := wire.ParseVersion(v); err != nil {
				t.Errorf("%s stamps version %q, which the control plane refuses at registration: %v", filepath.Base(p), v, err)
			}
		}
	}
	if found == 0 {
		t.Fatal("no script stamps a version: is the pattern still right?")
	}
}
