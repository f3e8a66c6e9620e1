package threatmodel_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// TestThreatTableNamesRealTests holds THREATS.md to the code: every row
// names tests that exist in the repository (a Test or Fuzz function of
// that name in a _test.go file), or says why the threat is accepted.
func TestThreatTableNamesRealTests(t *testing.T) {
	table, err := os.ReadFile("THREATS.md")
	if err != nil {
		t.Fatal(err)
	}
	defined := map[string]bool{}
	funcRE := regexp.MustCompile(`(?m)^func ((?:Test|Fuzz)[A-Za-z0-9_]*)\(`)
	filepath.WalkDir(testbin.Root(), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if strings.HasSuffix(p, "_test.go") {
			src, _ := os.ReadFile(p)
			for _, m := range funcRE.FindAllSubmatch(src, -1) {
				defined[string(m[1])] = true
			}
		}
		return nil
	})
	nameRE := regexp.MustCompile("`((?:Test|Fuzz)[A-Za-z0-9_]*)`")
	rows := 0
	for i, line := range strings.Split(string(table), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 8 || strings.HasPrefix(strings.TrimSpace(cells[1]), "#") || strings.HasPrefix(strings.TrimSpace(cells[1]), "---") {
			continue
		}
		rows++
		tests := cells[len(cells)-2]
		names := nameRE.FindAllStringSubmatch(tests, -1)
		accepted := strings.Contains(tests, "accepted:")
		if len(names) == 0 && !accepted {
			t.Errorf("THREATS.md line %d names no test and is not accepted with a reason", i+1)
		}
		if accepted && len(strings.TrimSpace(strings.SplitN(tests, "accepted:", 2)[1])) < 10 {
			t.Errorf("THREATS.md line %d is accepted without a reason", i+1)
		}
		for _, n := range names {
			if !defined[n[1]] {
				t.Errorf("THREATS.md line %d names %s, which no _test.go file defines", i+1, n[1])
			}
		}
	}
	if rows < 20 {
		t.Fatalf("only %d threat rows found: the table did not parse", rows)
	}
}
