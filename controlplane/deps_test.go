package controlplane

import (
	"go/parser"
	gotoken "go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports holds the trust boundary: the control plane and its command
// link nothing of the module but internal/wire and internal/devca (so never
// vault, seal or agent; the command also embeds the installer, install), and
// those link only the standard library.
func TestImports(t *testing.T) {
	const module = "github.com/rapidvalue/tier3-agent/"
	allowed := map[string][]string{
		"internal/wire":        {},
		"internal/devca":       {"internal/wire"},
		"controlplane":         {"internal/wire", "internal/devca"},
		"cmd/rv-control-plane": {"controlplane", "internal/wire", "internal/devca", "install"},
		// The embedded installer script and unit: standard library only.
		"install": {},
	}
	for dir, ok := range allowed {
		files, err := filepath.Glob(filepath.Join("..", dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			if _, err := os.Stat(filepath.Join("..", dir)); err == nil {
				t.Errorf("%s: no Go files", dir)
			}
			continue
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			parsed, err := parser.ParseFile(gotoken.NewFileSet(), f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range parsed.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				first, _, _ := strings.Cut(path, "/")
				switch {
				case strings.HasPrefix(path, module):
					rel := strings.TrimPrefix(path, module)
					found := false
					for _, a := range ok {
						found = found || a == rel
					}
					if !found {
						t.Errorf("%s imports %s", f, path)
					}
				case strings.Contains(first, "."):
					t.Errorf("%s imports %s, outside the standard library", f, path)
				}
			}
		}
	}
}
