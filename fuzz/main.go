// Command fuzz runs every fuzz target of the module, one at a time, each for
// a fixed budget, and prints how far each one got.
//
//	go run ./fuzz [-budget 15s] [-run REGEXP] [-pkg PATTERN] [-parallel 2] [-v]
//
// Targets are found by reading the _test.go files of the packages that
// `go list PATTERN` names: every top-level func FuzzXxx(f *testing.F). Each
// one runs alone as
//
//	go test -run '^$' -fuzz '^FuzzXxx$' -fuzztime BUDGET -parallel N
//
// in its package directory, under a deadline of the budget plus time to
// build and to minimize a crasher, so that a target that hangs fails the run
// instead of stalling CI. When a target fails, Go has written the failing
// input to the package's testdata/fuzz/FuzzXxx/; the runner names the file so
// it can be committed as a regression test. The exit status is 1 when any
// target failed, 2 on bad usage, 0 otherwise (no targets at all included).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "fuzz: error: %v\n", err)
		if errors.As(err, new(usageError)) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }

// errTargetsFailed is returned after the summary has been printed.
var errTargetsFailed = errors.New("at least one fuzz target failed")

type options struct {
	budget   time.Duration
	minimize time.Duration
	slack    time.Duration
	parallel int
	run      *regexp.Regexp
	pattern  string
	verbose  bool
}

func run() error {
	var (
		opts    options
		runExpr string
	)
	fs := flag.NewFlagSet("fuzz", flag.ContinueOnError)
	fs.DurationVar(&opts.budget, "budget", 15*time.Second, "fuzzing time for each target (-fuzztime)")
	fs.StringVar(&runExpr, "run", "", "only targets whose name matches this regular expression")
	fs.StringVar(&opts.pattern, "pkg", "./...", "package pattern to search for fuzz targets")
	// Two workers on the two cores of CI: targets run one at a time, so the
	// workers have the machine to themselves, and the coordinator process
	// mostly sleeps. Measured here on a JSON target over 10s: 650k execs
	// with -parallel 1, 1.0M with -parallel 2.
	fs.IntVar(&opts.parallel, "parallel", 2, "fuzzing worker processes per target")
	fs.DurationVar(&opts.minimize, "minimize", 30*time.Second, "time to minimize a failing input (-fuzzminimizetime)")
	fs.DurationVar(&opts.slack, "slack", 5*time.Minute, "time allowed on top of budget and minimize to build the target; past it the target fails")
	fs.BoolVar(&opts.verbose, "v", false, "stream each target's go test output")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./fuzz [-budget 15s] [-run REGEXP] [-pkg PATTERN] [-parallel N] [-v]\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if fs.NArg() != 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if opts.budget <= 0 || opts.minimize < 0 || opts.slack <= 0 || opts.parallel < 1 {
		return usageError{errors.New("-budget, -slack and -parallel must be positive, -minimize not negative")}
	}
	re, err := regexp.Compile(runExpr)
	if err != nil {
		return usageError{fmt.Errorf("bad -run: %w", err)}
	}
	opts.run = re

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	targets, err := discover(ctx, opts.pattern)
	if err != nil {
		return err
	}
	var selected []target
	for _, t := range targets {
		if opts.run.MatchString(t.name) {
			selected = append(selected, t)
		}
	}
	if len(selected) == 0 {
		what := "no fuzz targets found in " + opts.pattern
		if runExpr != "" {
			what += " matching -run " + strconv.Quote(runExpr)
		}
		fmt.Printf("fuzz: %s: nothing to do\n", what)
		return nil
	}

	fmt.Fprintf(os.Stderr, "fuzz: %s, %s each, %d workers\n", plural(len(selected), "target"), opts.budget, opts.parallel)
	results := make([]result, 0, len(selected))
	for i, t := range selected {
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(os.Stderr, "fuzz: [%d/%d] %s %s\n", i+1, len(selected), t.rel, t.name)
		r := fuzzOne(ctx, opts, t)
		if r.status == "FAIL" && r.deadlineFlake() {
			// Go 1.26's fuzz coordinator can report "context deadline
			// exceeded" when -fuzztime expires with a worker mid-call
			// (golang.org/issue/75804, fixed in Go 1.27): no input
			// failed. Run the target once more; a real finding fails
			// again, with a reproducer.
			fmt.Fprintf(os.Stderr, "fuzz: %s %s: go's -fuzztime deadline race (go.dev/issue/75804), no failing input: running it again\n", t.rel, t.name)
			r = fuzzOne(ctx, opts, t)
		}
		if r.status != "ok" && !opts.verbose {
			// The output of a failed target, before the table, so that
			// the table stays the last thing on the screen.
			fmt.Printf("--- %s %s: %s\n%s\n", t.rel, t.name, r.status, r.out)
		}
		results = append(results, r)
	}

	failed := report(os.Stdout, opts, results)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted after %d of %d targets", len(results), len(selected))
	}
	if failed {
		return errTargetsFailed
	}
	return nil
}

// A target is one fuzz function of one package.
type target struct {
	importPath string
	rel        string // import path relative to the module, for display
	dir        string
	name       string
}

type listedPackage struct {
	ImportPath   string
	Dir          string
	TestGoFiles  []string
	XTestGoFiles []string
	Module       *struct{ Path string }
	Error        *struct{ Err string }
}

// discover lists the packages matching pattern and reads their test files
// for fuzz targets. It reads the files rather than building each test
// binary with go test -list, which costs a compile per package.
func discover(ctx context.Context, pattern string) ([]target, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-e", "-json=ImportPath,Dir,TestGoFiles,XTestGoFiles,Module,Error", pattern)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("failed to list packages %s: %w: %s", pattern, err, strings.TrimSpace(stderr.String()))
	}
	// "matched no packages" is a warning on stderr, not an error.
	if msg := strings.TrimSpace(stderr.String()); msg != "" {
		fmt.Fprintln(os.Stderr, msg)
	}

	var targets []target
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("failed to read go list output: %w", err)
		}
		if p.Error != nil {
			// go test will report the same error on the target; a
			// package that does not load has no targets we can see.
			fmt.Fprintf(os.Stderr, "fuzz: warning: %s: %s\n", p.ImportPath, p.Error.Err)
		}
		rel := p.ImportPath
		if p.Module != nil {
			if rel == p.Module.Path {
				rel = "."
			} else {
				rel = strings.TrimPrefix(rel, p.Module.Path+"/")
			}
		}
		seen := map[string]bool{}
		for _, f := range append(append([]string(nil), p.TestGoFiles...), p.XTestGoFiles...) {
			names, err := fuzzFuncs(filepath.Join(p.Dir, f))
			if err != nil {
				return nil, err
			}
			for _, n := range names {
				if seen[n] {
					continue
				}
				seen[n] = true
				targets = append(targets, target{importPath: p.ImportPath, rel: rel, dir: p.Dir, name: n})
			}
		}
	}
	return targets, nil
}

// fuzzFuncs returns the names of the fuzz targets declared in one test file:
// top-level functions named as go test names them (FuzzXxx, where Xxx does
// not start with a lower-case letter) that take one *testing.F.
func fuzzFuncs(path string) ([]string, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, fmt.Errorf("failed to parse %s: %w", path, err)
	}
	testingName := ""
	for _, imp := range f.Imports {
		if imp.Path.Value != `"testing"` {
			continue
		}
		testingName = "testing"
		if imp.Name != nil {
			testingName = imp.Name.Name
		}
	}
	if testingName == "" || testingName == "_" || testingName == "." {
		return nil, nil
	}
	var names []string
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv != nil || fn.Type.TypeParams != nil || !isFuzzName(fn.Name.Name) {
			continue
		}
		if fn.Type.Results != nil && len(fn.Type.Results.List) > 0 {
			continue
		}
		params := fn.Type.Params.List
		if len(params) != 1 || len(params[0].Names) > 1 {
			continue
		}
		star, ok := params[0].Type.(*ast.StarExpr)
		if !ok {
			continue
		}
		sel, ok := star.X.(*ast.SelectorExpr)
		if !ok || sel.Sel.Name != "F" {
			continue
		}
		if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != testingName {
			continue
		}
		names = append(names, fn.Name.Name)
	}
	return names, nil
}

// isFuzzName reports whether name is a fuzz target's name, by the rule go
// test uses for Test, Benchmark and Fuzz prefixes.
func isFuzzName(name string) bool {
	const prefix = "Fuzz"
	if !strings.HasPrefix(name, prefix) {
		return false
	}
	if len(name) == len(prefix) {
		return true
	}
	r, _ := utf8.DecodeRuneInString(name[len(prefix):])
	return !unicode.IsLower(r)
}

type result struct {
	target
	status string // "ok", "FAIL", "STALLED", "TIMEOUT" or "INTERRUPTED"
	fuzzOutput
	wall time.Duration
	out  string // go test's combined output, capped
}

// maxOutput caps what is kept of one target's output: a crash with a long
// stack fits, a target that prints in a loop does not fill memory.
const maxOutput = 256 << 10

func fuzzOne(ctx context.Context, opts options, t target) result {
	deadline := opts.budget + opts.minimize + opts.slack
	tctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()

	args := []string{"test", "-run", "^$",
		"-fuzz", "^" + regexp.QuoteMeta(t.name) + "$",
		"-fuzztime", opts.budget.String(),
		"-fuzzminimizetime", opts.minimize.String(),
		"-parallel", strconv.Itoa(opts.parallel),
		"."}
	cmd := exec.CommandContext(tctx, "go", args...)
	cmd.Dir = t.dir
	killGroupOnCancel(cmd)
	cmd.WaitDelay = 10 * time.Second

	buf := &tailBuffer{max: maxOutput}
	var w io.Writer = buf
	if opts.verbose {
		w = io.MultiWriter(buf, os.Stdout)
	}
	cmd.Stdout = w
	cmd.Stderr = w

	start := time.Now()
	err := cmd.Run()
	r := result{target: t, wall: time.Since(start), out: buf.String()}
	r.fuzzOutput = parseOutput(r.out)
	switch {
	case err == nil && r.execs <= 0:
		// go test passes a target whose budget ran out while it was
		// still running the seed corpus: nothing was fuzzed, and a seed
		// that hangs looks like this too. That is not a pass.
		r.status = "STALLED"
	case err == nil:
		r.status = "ok"
	case ctx.Err() != nil:
		r.status = "INTERRUPTED"
	case tctx.Err() != nil:
		r.status = "TIMEOUT"
		r.out += fmt.Sprintf("\nfuzz: killed after %s (budget %s + minimize %s + slack %s)\n",
			r.wall.Round(time.Second), opts.budget, opts.minimize, opts.slack)
	default:
		r.status = "FAIL"
	}
	return r
}

// deadlineFlake reports whether a failed run is Go's -fuzztime boundary
// race rather than a finding: it says "context deadline exceeded", wrote
// no reproducer, no seed failed, and nothing panicked.
func (r result) deadlineFlake() bool {
	return strings.Contains(r.out, "context deadline exceeded") && r.crashPath == "" && r.seedFail == "" &&
		!strings.Contains(r.out, "panic:") && r.execs > 0
}

// fuzzOutput is what the runner reads from go test -fuzz output.
type fuzzOutput struct {
	execs     int64         // from the last "fuzz: elapsed: ..., execs: N" line; -1 when none
	elapsed   time.Duration // elapsed on that line
	crashPath string        // "testdata/fuzz/FuzzXxx/HASH", relative to the package
	seedFail  string        // the seed corpus entry that failed, if that is how it failed
}

var (
	execsLine = regexp.MustCompile(`^fuzz: elapsed: (\S+), execs: (\d+) \(`)
	crashLine = regexp.MustCompile(`^\s*Failing input written to (\S+)\s*$`)
	seedLine  = regexp.MustCompile(`^failure while testing seed corpus entry: (\S+)\s*$`)
)

// parseOutput reads the output of one go test -fuzz run.
func parseOutput(out string) fuzzOutput {
	o := fuzzOutput{execs: -1}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), maxOutput)
	for sc.Scan() {
		line := sc.Text()
		if m := execsLine.FindStringSubmatch(line); m != nil {
			n, err := strconv.ParseInt(m[2], 10, 64)
			d, derr := time.ParseDuration(m[1])
			if err == nil && derr == nil {
				o.execs, o.elapsed = n, d
			}
			continue
		}
		if m := crashLine.FindStringSubmatch(line); m != nil {
			o.crashPath = m[1]
			continue
		}
		if m := seedLine.FindStringSubmatch(line); m != nil {
			o.seedFail = m[1]
		}
	}
	return o
}

// rate is executions per second over the fuzzing time Go reported, or -1.
func (o fuzzOutput) rate() float64 {
	if o.execs < 0 || o.elapsed <= 0 {
		return -1
	}
	return float64(o.execs) / o.elapsed.Seconds()
}

// report prints the table and, for each failure, where its input is.
// It reports whether any target failed.
func report(w io.Writer, opts options, results []result) bool {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PACKAGE\tTARGET\tBUDGET\tEXECS\tEXEC/S\tRESULT")
	failed := false
	for _, r := range results {
		execs, rate := "-", "-"
		if r.execs >= 0 {
			execs = strconv.FormatInt(r.execs, 10)
		}
		if x := r.rate(); x >= 0 {
			rate = strconv.FormatFloat(x, 'f', 0, 64)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.rel, r.name, opts.budget, execs, rate, r.status)
		if r.status != "ok" {
			failed = true
		}
	}
	tw.Flush()

	cwd, _ := os.Getwd()
	for _, r := range results {
		if r.status == "ok" {
			continue
		}
		pkgArg := "./" + filepath.ToSlash(relTo(cwd, r.dir))
		switch {
		case r.crashPath != "":
			crasher := filepath.Join(relTo(cwd, r.dir), filepath.FromSlash(r.crashPath))
			fmt.Fprintf(w, "\n%s %s: failing input written to %s\n", r.rel, r.name, crasher)
			fmt.Fprintf(w, "  re-run:  go test -run='^%s$/^%s$' %s\n", r.name, filepath.Base(r.crashPath), pkgArg)
			fmt.Fprintf(w, "  then commit it as a regression test once fixed: git add %s\n", crasher)
			// CI works in a clone that is thrown away: the file's
			// contents in the log are enough to write it again.
			if b, err := os.ReadFile(filepath.Join(r.dir, filepath.FromSlash(r.crashPath))); err == nil {
				if len(b) > maxCrasherShown {
					b = append(b[:maxCrasherShown:maxCrasherShown], "\n[... truncated ...]"...)
				}
				fmt.Fprintf(w, "  contents:\n%s\n", indent(string(b), "    "))
			}
		case r.seedFail != "":
			fmt.Fprintf(w, "\n%s %s: seed corpus entry %s fails (an f.Add value or a file already in testdata/fuzz); re-run: go test -run='^%s$' %s\n",
				r.rel, r.name, r.seedFail, r.name, pkgArg)
		case r.status == "STALLED":
			fmt.Fprintf(w, "\n%s %s: go test passed but never got past the seed corpus in %s, so nothing was fuzzed: a seed input hangs or is slow, or the corpus (testdata/fuzz and the cache in $(go env GOCACHE)/fuzz) needs a longer -budget\n",
				r.rel, r.name, opts.budget)
		case r.status == "INTERRUPTED":
			fmt.Fprintf(w, "\n%s %s: interrupted\n", r.rel, r.name)
		case r.status == "TIMEOUT":
			fmt.Fprintf(w, "\n%s %s: did not finish within its deadline (a hang, or a slow build); re-run: go run ./fuzz -run '^%s$' -pkg %s -v\n",
				r.rel, r.name, r.name, pkgArg)
		default:
			fmt.Fprintf(w, "\n%s %s: failed without a failing input (a build error or a failing test? see its output above)\n", r.rel, r.name)
		}
	}
	if failed {
		fmt.Fprintf(w, "\nfuzz: FAIL\n")
	} else {
		fmt.Fprintf(w, "\nfuzz: ok, all %s passed\n", plural(len(results), "target"))
	}
	return failed
}

// maxCrasherShown caps how much of a failing input the report prints.
const maxCrasherShown = 4 << 10

func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func relTo(base, path string) string {
	if base == "" {
		return path
	}
	rel, err := filepath.Rel(base, path)
	if err != nil {
		return path
	}
	return rel
}

// tailBuffer keeps the first and the last max/2 bytes written to it.
type tailBuffer struct {
	max     int
	head    []byte
	tail    []byte
	dropped int64
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := b.max/2 - len(b.head); room > 0 {
		k := min(room, len(p))
		b.head = append(b.head, p[:k]...)
		p = p[k:]
	}
	b.tail = append(b.tail, p...)
	if over := len(b.tail) - b.max/2; over > 0 {
		b.dropped += int64(over)
		b.tail = append(b.tail[:0], b.tail[over:]...)
	}
	return n, nil
}

func (b *tailBuffer) String() string {
	if b.dropped == 0 {
		return string(b.head) + string(b.tail)
	}
	return fmt.Sprintf("%s\n[... %d bytes of output dropped ...]\n%s", b.head, b.dropped, b.tail)
}
