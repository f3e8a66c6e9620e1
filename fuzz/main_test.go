package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The outputs below were captured from go1.26.8 `go test -run '^$' -fuzz
// '^FuzzX$' -fuzztime T -parallel N` on small targets: one that passes, one
// that finds a crasher, one whose seed fails, one whose seed hangs longer
// than the budget, and a run past a minute.
const (
	outPass = `fuzz: elapsed: 0s, gathering baseline coverage: 0/248 completed
fuzz: elapsed: 0s, gathering baseline coverage: 248/248 completed, now fuzzing with 2 workers
fuzz: elapsed: 3s, execs: 342926 (114292/sec), new interesting: 3 (total: 251)
fuzz: elapsed: 4s, execs: 480094 (123802/sec), new interesting: 3 (total: 251)
PASS
ok  	example.com/fz/p	4.126s
`
	outLong = `fuzz: elapsed: 0s, gathering baseline coverage: 0/255 completed
fuzz: elapsed: 0s, gathering baseline coverage: 255/255 completed, now fuzzing with 1 workers
fuzz: elapsed: 3s, execs: 198646 (66195/sec), new interesting: 2 (total: 257)
fuzz: elapsed: 57s, execs: 4011344 (68749/sec), new interesting: 64 (total: 319)
fuzz: elapsed: 1m0s, execs: 4222987 (70533/sec), new interesting: 65 (total: 320)
fuzz: elapsed: 1m2s, execs: 4362998 (67039/sec), new interesting: 65 (total: 320)
PASS
ok  	example.com/fz/p	62.100s
`
	outCrash = `fuzz: elapsed: 0s, gathering baseline coverage: 0/1 completed
fuzz: elapsed: 0s, gathering baseline coverage: 1/1 completed, now fuzzing with 2 workers
fuzz: minimizing 49-byte failing input file
fuzz: elapsed: 0s, minimizing
--- FAIL: FuzzCrash (0.22s)
    --- FAIL: FuzzCrash (0.00s)
        p_test.go:21: found it
    
    Failing input written to testdata/fuzz/FuzzCrash/bf9c5ac437b95a58
    To re-run:
    go test -run=FuzzCrash/bf9c5ac437b95a58
FAIL
exit status 1
FAIL	example.com/fz/p	0.225s
`
	outSeed = `fuzz: elapsed: 0s, gathering baseline coverage: 0/1 completed
failure while testing seed corpus entry: FuzzSeedFail/seed#0
fuzz: elapsed: 0s, gathering baseline coverage: 0/1 completed
--- FAIL: FuzzSeedFail (0.01s)
    --- FAIL: FuzzSeedFail (0.00s)
        testing.go:1927: panic: seed boom
            goroutine 24 [running]:
            runtime/debug.Stack()
            	/usr/local/go/src/runtime/debug/stack.go:26 +0x9b
    
FAIL
exit status 1
FAIL	example.com/fz/p	0.010s
`
	outStalled = `fuzz: elapsed: 0s, gathering baseline coverage: 0/1 completed
fuzz: elapsed: 3s, gathering baseline coverage: 0/1 completed
fuzz: elapsed: 4s, gathering baseline coverage: 0/1 completed
PASS
ok  	example.com/fz/p	4.005s
`
	outBuildFailed = `# example.com/fz/p
# [example.com/fz/p]
./p_test.go:49:6: Fuzzy has malformed name: first letter after 'Fuzz' must not be lowercase
FAIL	example.com/fz/p [build failed]
`
)

func TestParseOutput(t *testing.T) {
	tests := []struct {
		name     string
		out      string
		want     fuzzOutput
		wantRate float64
	}{
		{"pass", outPass, fuzzOutput{execs: 480094, elapsed: 4 * time.Second}, 120023.5},
		{"past a minute", outLong, fuzzOutput{execs: 4362998, elapsed: 62 * time.Second}, 4362998.0 / 62},
		{"crasher", outCrash, fuzzOutput{execs: -1, crashPath: "testdata/fuzz/FuzzCrash/bf9c5ac437b95a58"}, -1},
		{"seed fails", outSeed, fuzzOutput{execs: -1, seedFail: "FuzzSeedFail/seed#0"}, -1},
		{"stalled in the seed corpus", outStalled, fuzzOutput{execs: -1}, -1},
		{"build failed", outBuildFailed, fuzzOutput{execs: -1}, -1},
		{"empty", "", fuzzOutput{execs: -1}, -1},
		{"crlf", strings.ReplaceAll(outPass, "\n", "\r\n"), fuzzOutput{execs: 480094, elapsed: 4 * time.Second}, 120023.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := parseOutput(tt.out)
			if got != tt.want {
				t.Errorf("parseOutput = %+v, want %+v", got, tt.want)
			}
			if r := got.rate(); r != tt.wantRate {
				t.Errorf("rate = %v, want %v", r, tt.wantRate)
			}
		})
	}
}

func TestFuzzFuncs(t *testing.T) {
	const src = `package p

import (
	tt "testing"
	"testing/quick"
)

var _ = quick.Check

func FuzzParse(f *tt.F)          {}
func Fuzz(f *tt.F)               {}
func Fuzz_Under(f *tt.F)         {}
func FuzzÀccent(f *tt.F)         {}
func Fuzzy(f *tt.F)              {}
func fuzzLower(f *tt.F)          {}
func FuzzWrongType(t *tt.T)      {}
func FuzzTwo(f *tt.F, x int)     {}
func FuzzResult(f *tt.F) error   { return nil }
func FuzzGeneric[T any](f *tt.F) {}
func FuzzOtherF(f *quick.Config) {}

type s struct{}

func (s) FuzzMethod(f *tt.F) {}
`
	path := filepath.Join(t.TempDir(), "x_test.go")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := fuzzFuncs(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"FuzzParse", "Fuzz", "Fuzz_Under", "FuzzÀccent"}
	if !slices.Equal(got, want) {
		t.Errorf("fuzzFuncs = %q, want %q", got, want)
	}
}

func TestTailBuffer(t *testing.T) {
	b := &tailBuffer{max: 8}
	for _, s := range []string{"ab", "cdef", "ghij", "kl"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got, want := b.String(), "abcd\n[... 4 bytes of output dropped ...]\nijkl"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	small := &tailBuffer{max: 8}
	small.Write([]byte("abc"))
	if got := small.String(); got != "abc" {
		t.Errorf("String() = %q, want %q", got, "abc")
	}
}

func TestDeadlineFlake(t *testing.T) {
	flake := "fuzz: elapsed: 10s, execs: 1144083 (76862/sec), new interesting: 0 (total: 37)\n--- FAIL: FuzzVerify (10.43s)\n    context deadline exceeded\nFAIL\n"
	r := result{status: "FAIL", out: flake, fuzzOutput: parseOutput(flake)}
	if !r.deadlineFlake() {
		t.Fatal("the go.dev/issue/75804 output is not recognized")
	}
	crash := flake + "    Failing input written to testdata/fuzz/FuzzVerify/abc\n"
	r = result{status: "FAIL", out: crash, fuzzOutput: parseOutput(crash)}
	if r.deadlineFlake() {
		t.Fatal("a run that wrote a reproducer was taken for the deadline race")
	}
}
