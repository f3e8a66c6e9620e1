//go:build linux

package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/slapdtest"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// TestSyncBenchmark measures http.sync and ldap.search through the real
// agent binary next to reading the same data directly, on the same machine
// in the same run, and prints a Markdown table (docs/BENCHMARKS.md). It
// runs only when RV_SYNC_BENCH=1 (it takes minutes):
//
//	RV_SYNC_BENCH=1 go test ./agent -run '^TestSyncBenchmark$' -v -timeout 30m
//
// Each row is the median of RV_SYNC_BENCH_RUNS runs (default 5; three
// times as many for 100,000 records or fewer), the baseline's and the
// agent's alternating. RV_SYNC_BENCH_SIZES (default
// 10000,100000,1000000) picks the REST sizes;
// RV_SYNC_BENCH_CHUNK sets the REST tasks' chunk_size (default: none, so
// the agent's 500); RV_SYNC_BENCH_LDAP=0 leaves out the LDAP rows (they
// need slapd); RV_SYNC_BENCH_PLACEMENT=shared or isolated runs one
// placement of the two (placements).
//
// Each row's agent is a fresh `tier3-agent run` process; its peak RSS is
// the kernel's VmHWM for the process (/proc/PID/status), read after its
// last run. The reference control plane and the targets run in the test
// process, the direct reader in a process of its own (directReader).
func TestSyncBenchmark(t *testing.T) {
	if os.Getenv("RV_SYNC_BENCH") != "1" {
		t.Skip("set RV_SYNC_BENCH=1 to run the sync benchmark")
	}
	sizes := []int{10_000, 100_000, 1_000_000}
	if s := os.Getenv("RV_SYNC_BENCH_SIZES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, n)
		}
	}
	var rows []string
	row := func(format string, a ...any) {
		rows = append(rows, fmt.Sprintf(format, a...))
		t.Logf(format, a...)
	}
	row("| what | records | time | records/s | agent peak RSS (VmHWM) | vs direct | CPU time |")
	row("|---|---|---|---|---|---|---|")
	for _, pl := range placements(t) {
		for _, n := range sizes {
			benchREST(t, pl, n, "json_url", 2_000, row)
		}
		benchREST(t, pl, sizes[len(sizes)-1], "none", 0, row)
		if os.Getenv("RV_SYNC_BENCH_LDAP") != "0" {
			benchLDAP(t, pl, 100_000, row)
		}
	}
	fmt.Println(strings.Join(rows, "\n"))
}

// benchREST syncs n records from a paged source, directly and through the
// agent.
func benchREST(t *testing.T, pl placement, n int, kind string, perPage int, row func(string, ...any)) {
	t.Run(fmt.Sprintf("rest-%s-%d-%s", kind, n, pl.name), func(t *testing.T) {
		src := &pagedSource{total: n, perPage: perPage, kind: kind, secretAt: -1}
		// The control plane checks each record as it arrives and keeps
		// none: holding 100 MB of records would charge this process's
		// page faults to the agent's row.
		check := &orderCheck{want: n}
		e, tg := syncEnvWith(t, src, controlplane.Config{MaxTaskBytes: 1 << 30, Records: check.records})
		desc := fmt.Sprintf("pages of %d, json_url", perPage)
		if kind == "none" {
			desc = "one page, a bare array"
		}

		// The baseline: the same pages read by a Go client over TLS, each
		// record decoded (json.RawMessage), in a process of its own in the
		// agent's seat (directReader).
		pl.pinHarness(t)
		dr := pl.startDirectReader(t, tg.URL, e.vars["RV_AGENT_TARGET_CA"], kind)
		defer dr.close()

		agentRuntimeEnv(e)
		e.start()
		pl.pinAgent(t, e.cmd.Process.Pid)
		e.waitFor("registration", 30*time.Second, func() bool {
			return strings.Contains(e.out.String(), `"msg":"registered"`)
		})
		env := bearerSync(tg, syncRequest(kind))
		env["timeout_s"], env["lease_s"] = 3600, 3600
		chunk := 500
		if c := os.Getenv("RV_SYNC_BENCH_CHUNK"); c != "" {
			chunk, _ = strconv.Atoi(c)
			env["chunk_size"] = chunk
		}
		pid := e.cmd.Process.Pid
		e.benchSync(env, n, check) // warm up as the direct reader did: connections, code paths

		// The runs alternate, so that what else the machine does falls on
		// both alike; each figure is the median of its runs.
		var direct, agent []benchRun
		var pageBytes int64
		for range benchRuns(t, n) {
			r := dr.read()
			if r.records != n {
				t.Fatalf("direct read: %d records, want %d", r.records, n)
			}
			pageBytes = r.bytes
			direct = append(direct, benchRun{d: r.d, cpu: r.readerCPU, harness: r.harnessCPU})
			a0, s0 := procCPU(t, pid), selfCPU()
			ad, dispatch := e.benchSync(env, n, check)
			agent = append(agent, benchRun{d: ad, cpu: procCPU(t, pid) - a0, harness: selfCPU() - s0, dispatch: dispatch})
		}
		hwm := vmHWM(t, pid)
		e.stop()
		dm, am := medianRun(direct), medianRun(agent)
		dd, ad := dm.d, am.d
		row("| REST direct read (%s, %.0f MB of pages; %s) | %d | %s | %.0f | | | reader %.2f s, harness %.2f s |", desc, float64(pageBytes)/1e6, pl.desc, n, secs(dd), float64(n)/dd.Seconds(), dm.cpu.Seconds(), dm.harness.Seconds())
		row("| REST http.sync through the agent (%s, chunks of %d; %s) | %d | %s (+%.1f ms dispatch) | %.0f | %.1f MiB | %.0f%% | agent %.2f s, harness %.2f s |", desc, chunk, pl.desc, n, secs(ad), ms(am.dispatch), float64(n)/ad.Seconds(), float64(hwm)/(1<<20), 100*dd.Seconds()/ad.Seconds(), am.cpu.Seconds(), am.harness.Seconds())
	})
}

// benchSync runs one sync task of n records to its end, checks its
// records with check (the control plane's Records callback) and returns
// the sync's time: from the control plane handing the task to the agent
// (its claim) to the arrival of the final chunk, which holds the last
// records. The direct reader's clock likewise starts when it is told to
// read. The harness waits on the control plane's Records callback, not
// by polling the admin API, until then. dispatch is what comes before:
// from enqueueing the task to its claim (the admin call, and the answer
// to the agent's waiting long poll).
func (e *env) benchSync(env map[string]any, n int, check *orderCheck) (sync, dispatch time.Duration) {
	e.t.Helper()
	arrived := check.reset()
	start := time.Now()
	id := e.enqueue(env)
	select {
	case <-arrived:
	case <-e.exited:
		e.t.Fatalf("the agent exited:\n%s", e.out)
	case <-time.After(30 * time.Minute):
		e.t.Fatalf("task %s: the records did not all arrive in 30 minutes", id)
	}
	ti := e.syncBenchResult(id, time.Minute)
	full, err := e.cp.Admin.Task(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	if ti.State != controlplane.TaskCompleted || ti.Records != int64(n) || len(full.Claims) != 1 {
		e.t.Fatalf("state %s, %d records, %d claims: %+v", ti.State, ti.Records, len(full.Claims), full.Result)
	}
	all, err := check.result()
	if err != nil {
		e.t.Fatal(err)
	}
	claimed := full.Claims[0].ClaimedAt
	return all.Sub(claimed), claimed.Sub(start)
}

// syncBenchResult waits for a task to end, polling the task list (no
// chunks) every 20 ms.
func (e *env) syncBenchResult(id string, limit time.Duration) controlplane.TaskInfo {
	e.t.Helper()
	var found controlplane.TaskInfo
	deadline := time.Now().Add(limit)
	for {
		tasks, err := e.cp.Admin.Tasks(context.Background())
		if err != nil {
			e.t.Fatal(err)
		}
		for _, ti := range tasks {
			if ti.TaskID == id && ti.State != controlplane.TaskQueued && ti.State != controlplane.TaskLeased {
				return ti
			}
			if ti.TaskID == id {
				found = ti
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("task %s still %s after %v:\n%s", id, found.State, limit, e.out)
		}
		select {
		case <-e.exited:
			e.t.Fatalf("the agent exited:\n%s", e.out)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// A placement says which CPUs the processes of a run may use.
//
//   - shared: all of them, as the kernel schedules it. The agent competes
//     with the target, the control plane and slapd for the cores, which on
//     the customer's side sit on other machines.
//   - isolated: the agent's seat is the last CPU, and everything else (this
//     test process: target and control plane; slapd) runs on the others.
//     The baselines (the direct reader, ldapsearch) take the agent's seat
//     in their runs. Reader and agent each have a core of their own, as the
//     agent has on its host, and leave the same cores to the outside
//     world, which in the agent's run also does the control plane's work.
type placement struct {
	name, desc     string
	harness, agent string // taskset CPU lists; agent "": as the harness
}

func placements(t *testing.T) []placement {
	n := runtime.NumCPU()
	all := fmt.Sprintf("0-%d", n-1)
	shared := placement{name: "shared", desc: fmt.Sprintf("all %d CPUs shared", n), harness: all}
	isolated := placement{name: "isolated", desc: fmt.Sprintf("agent or reader on CPU %d, the rest on 0-%d", n-1, n-2),
		harness: fmt.Sprintf("0-%d", n-2), agent: strconv.Itoa(n - 1)}
	want := os.Getenv("RV_SYNC_BENCH_PLACEMENT")
	var out []placement
	if want == "" || want == "shared" {
		out = append(out, shared)
	}
	if want == "" || want == "isolated" {
		if _, err := exec.LookPath("taskset"); err != nil || n < 2 {
			t.Logf("the isolated placement needs 2 CPUs and taskset: skipped")
		} else {
			out = append(out, isolated)
		}
	}
	return out
}

// pinHarness moves this test process (every thread), and the other given
// processes, to the harness's CPUs.
func (pl placement) pinHarness(t *testing.T, pids ...int) {
	for _, pid := range append([]int{os.Getpid()}, pids...) {
		taskset(t, pid, pl.harness)
	}
}

// pinAgent moves the agent (every thread) to its CPUs, if it has its own.
func (pl placement) pinAgent(t *testing.T, pid int) {
	if pl.agent != "" {
		taskset(t, pid, pl.agent)
	}
}

// command returns a command to run in the agent's seat: on the agent's
// CPUs when it has its own (ldapsearch, the direct reader).
func (pl placement) command(name string, args ...string) *exec.Cmd {
	if pl.agent == "" {
		return exec.Command(name, args...)
	}
	return exec.Command("taskset", append([]string{"-c", pl.agent, name}, args...)...)
}

// A directResult is one direct read of a pagedSource's pages.
type directResult struct {
	records               int
	bytes                 int64 // of the pages
	d                     time.Duration
	readerCPU, harnessCPU time.Duration // the reader process's; this process's (the target)
}

// A directReader reads every page of a target, as the agent reads them, in
// a process of its own (TestSyncBenchReader) that sits where the agent
// sits: the baseline and the agent's run leave the same CPUs to the
// target. It has read the pages once, to warm up, when it starts.
type directReader struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  *bufio.Scanner
	stderr strings.Builder
}

func (pl placement) startDirectReader(t *testing.T, base, caFile, kind string) *directReader {
	t.Helper()
	r := &directReader{t: t, cmd: pl.command(os.Args[0], "-test.run", "^TestSyncBenchReader$", "-test.count=1")}
	r.cmd.Env = append(os.Environ(), "RV_SYNC_BENCH_READER="+base, "RV_SYNC_BENCH_READER_CA="+caFile, "RV_SYNC_BENCH_READER_KIND="+kind)
	var err error
	if r.stdin, err = r.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	r.cmd.Stderr = &r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.lines = bufio.NewScanner(stdout)
	r.expect("warm")
	return r
}

func (r *directReader) expect(prefix string) string {
	r.t.Helper()
	for r.lines.Scan() {
		if rest, ok := strings.CutPrefix(r.lines.Text(), prefix); ok {
			return rest
		}
	}
	r.cmd.Wait()
	r.t.Fatalf("the direct reader ended before %q: %s", prefix, r.stderr.String())
	return ""
}

// read has the reader read the pages once more, timed.
func (r *directReader) read() directResult {
	r.t.Helper()
	c0 := selfCPU()
	if _, err := io.WriteString(r.stdin, "go\n"); err != nil {
		r.t.Fatal(err)
	}
	var res directResult
	var ns, cpuNS int64
	if _, err := fmt.Sscan(r.expect("result "), &res.records, &res.bytes, &ns, &cpuNS); err != nil {
		r.t.Fatal(err)
	}
	res.harnessCPU = selfCPU() - c0
	res.d, res.readerCPU = time.Duration(ns), time.Duration(cpuNS)
	return res
}

func (r *directReader) close() {
	r.stdin.Close()
	r.cmd.Wait()
}

// TestSyncBenchReader is TestSyncBenchmark's direct reader (directReader):
// it reads the pages once, says "warm", and then for each line on stdin
// reads them again and prints "result RECORDS BYTES NANOSECONDS
// CPU_NANOSECONDS".
func TestSyncBenchReader(t *testing.T) {
	base := os.Getenv("RV_SYNC_BENCH_READER")
	if base == "" {
		t.Skip("TestSyncBenchmark runs it")
	}
	pem, err := os.ReadFile(os.Getenv("RV_SYNC_BENCH_READER_CA"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in RV_SYNC_BENCH_READER_CA")
	}
	kind := os.Getenv("RV_SYNC_BENCH_READER_KIND")
	// One client for every read, as the agent keeps its connections to a
	// target: no read pays for a TLS handshake.
	tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	readPages(t, base, tr, kind) // warm the target's code paths and this process's
	fmt.Println("warm")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		c0, start := selfCPU(), time.Now()
		n, bytes := readPages(t, base, tr, kind)
		d, cpu := time.Since(start), selfCPU()-c0
		fmt.Printf("result %d %d %d %d\n", n, bytes, d.Nanoseconds(), cpu.Nanoseconds())
	}
}

// agentRuntimeEnv passes RV_SYNC_BENCH_GOGC and RV_SYNC_BENCH_GOMAXPROCS
// to the agent as GOGC and GOMAXPROCS, for trying the Go runtime's knobs.
func agentRuntimeEnv(e *env) {
	for _, k := range []string{"GOGC", "GOMAXPROCS"} {
		if v := os.Getenv("RV_SYNC_BENCH_" + k); v != "" {
			e.vars[k] = v
		}
	}
}

// A benchRun is one measured run: its time, the CPU time of the process
// measured (reader or agent), this process's, and (the agent's) the
// dispatch before its time (benchSync).
type benchRun struct{ d, cpu, harness, dispatch time.Duration }

// benchRuns is the number of measured runs of each kind for a row of n
// records: RV_SYNC_BENCH_RUNS, default 5, and three times as many for rows
// of 100,000 records or fewer, which last milliseconds and move the most
// with what else the machine does.
func benchRuns(t *testing.T, n int) int {
	runs := 5
	if v := os.Getenv("RV_SYNC_BENCH_RUNS"); v != "" {
		var err error
		if runs, err = strconv.Atoi(v); err != nil || runs < 1 {
			t.Fatalf("RV_SYNC_BENCH_RUNS=%q: want a positive integer", v)
		}
	}
	if n <= 100_000 {
		runs *= 3
	}
	return runs
}

// medianRun returns the median of each figure of runs (each on its own:
// the figures of the result need not come from the same run).
func medianRun(runs []benchRun) benchRun {
	med := func(f func(benchRun) time.Duration) time.Duration {
		v := make([]time.Duration, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return benchRun{
		d:        med(func(r benchRun) time.Duration { return r.d }),
		cpu:      med(func(r benchRun) time.Duration { return r.cpu }),
		harness:  med(func(r benchRun) time.Duration { return r.harness }),
		dispatch: med(func(r benchRun) time.Duration { return r.dispatch }),
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// secs formats a run's time with 3 significant digits or more.
func secs(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%.3f s", d.Seconds())
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func taskset(t *testing.T, pid int, cpus string) {
	t.Helper()
	if out, err := exec.Command("taskset", "-a", "-cp", cpus, strconv.Itoa(pid)).CombinedOutput(); err != nil {
		t.Fatalf("taskset %s %d: %v: %s", cpus, pid, err, out)
	}
}

// orderCheck is the benchmark's record sink in the control plane
// (controlplane.Config.Records): record k of the task must be record k of
// the pagedSource, whose records start {"id":k, (every record exactly
// once, in order).
type orderCheck struct {
	mu     sync.Mutex
	want   int
	count  bool // only count the records (LDAP: slapd's order is its own)
	next   int
	prefix []byte
	err    error
	// all is when the final chunk arrived: the end of the agent's run
	// (polling the admin API for the result would add up to its interval).
	all time.Time
	// arrived is closed then (or at the first wrong record), so that the
	// harness waits for it without polling the admin API, which would
	// take CPU from the agent's runs only.
	arrived chan struct{}
}

func (c *orderCheck) records(_ string, _ int64, recs []json.RawMessage, final bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range recs {
		if c.count {
			c.next++
			continue
		}
		c.prefix = strconv.AppendInt(append(c.prefix[:0], `{"id":`...), int64(c.next), 10)
		c.prefix = append(c.prefix, ',')
		if c.err == nil && !bytes.HasPrefix(r, c.prefix) {
			c.err = fmt.Errorf("record %d is %.40s…", c.next, r)
			c.signal()
		}
		c.next++
	}
	// The run ends with the final chunk (empty when the records fill the
	// chunks exactly): then the control plane has every record and knows
	// it, as the reader does when it has read the last page to its end.
	if final {
		c.all = time.Now()
		c.signal()
	}
}

// signal closes arrived, once.
func (c *orderCheck) signal() {
	select {
	case <-c.arrived:
	default:
		close(c.arrived)
	}
}

// reset readies c for a run and returns the channel closed when the run's
// final chunk arrives (or a wrong record does).
func (c *orderCheck) reset() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next, c.err, c.all = 0, nil, time.Time{}
	c.arrived = make(chan struct{})
	return c.arrived
}

// result returns when the final chunk arrived, or why not all records did.
func (c *orderCheck) result() (time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && c.next != c.want {
		c.err = fmt.Errorf("the control plane got %d records, want %d", c.next, c.want)
	}
	return c.all, c.err
}

// procCPU returns the CPU time (user + system) a process has used.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (which is in parentheses): utime and
	// stime are the 12th and 13th, in clock ticks (100 a second on Linux).
	rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
	f := strings.Fields(rest)
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// selfCPU returns the CPU time the test process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// vmHWM returns a process's peak resident set size in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb * 1024
		}
	}
	t.Fatal("no VmHWM in /proc/PID/status")
	return 0
}

// readPages reads every page of a pagedSource the way the agent does
// (HTTP/2 over TLS, streaming JSON, each record decoded on its own) and
// returns the records and the bytes of the pages.
func readPages(t *testing.T, base string, tr *http.Transport, kind string) (int, int64) {
	t.Helper()
	client := &http.Client{Transport: tr}
	u := base + "/records?page=0"
	records := 0
	var total int64
	for u != "" {
		resp, err := client.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		cr := &countingReader{r: resp.Body}
		dec := json.NewDecoder(bufio.NewReaderSize(cr, 64<<10))
		next := ""
		var rec json.RawMessage
		readArray := func() {
			if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
				t.Fatalf("want an array: %v %v", tok, err)
			}
			for dec.More() {
				rec = rec[:0]
				if err := dec.Decode(&rec); err != nil {
					t.Fatal(err)
				}
				records++
			}
			dec.Token()
		}
		if kind == "none" {
			readArray()
		} else {
			dec.Token() // {
			for dec.More() {
				k, _ := dec.Token()
				switch k {
				case "records":
					readArray()
				case "nextRecordsUrl":
					v, _ := dec.Token()
					next, _ = v.(string)
				default:
					var skip json.RawMessage
					dec.Decode(&skip)
				}
			}
		}
		io.Copy(io.Discard, cr)
		resp.Body.Close()
		total += cr.n
		u = ""
		if next != "" {
			nu, err := url.Parse(base)
			if err != nil {
				t.Fatal(err)
			}
			ref, _ := url.Parse(next)
			u = nu.ResolveReference(ref).String()
		}
	}
	return records, total
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// benchLDAP syncs the people of a directory of n users, with ldapsearch
// and through the agent.
func benchLDAP(t *testing.T, pl placement, n int, row func(string, ...any)) {
	t.Run(fmt.Sprintf("ldap-%d-%s", n, pl.name), func(t *testing.T) {
		ldapsearch := testbin.Tool(t, "ldapsearch")
		bindPW := e2eSecrets["basic_pw"]
		check := &orderCheck{want: n, count: true} // the control plane counts and keeps none (benchREST)
		e := newEnv(t, controlplane.Config{MaxTaskBytes: 1 << 30, Records: check.records})
		dir := slapdtest.Start(t, slapdtest.Options{Suffix: ldapSuffix, CA: e.targetCA(), LDIF: ldapDirectory(n, -1, bindPW, "ldap://127.0.0.1:9")})
		pl.pinHarness(t, dir.Pid())
		base := "ou=people," + ldapSuffix
		filter := "(objectClass=inetOrgPerson)"

		// search runs ldapsearch once and returns its time and CPU time.
		search := func() (time.Duration, time.Duration) {
			cmd := pl.command(ldapsearch, "-LLL", "-H", dir.LDAPSURL, "-x", "-D", ldapBindDN, "-w", bindPW,
				"-E", "pr=500/noprompt", "-b", base, "-s", "one", filter)
			cmd.Env = append(os.Environ(), "LDAPTLS_CACERT="+dir.CAFile, "LDAPTLS_REQCERT=demand")
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			start := time.Now()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			entries := 0
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "dn: ") {
					entries++
				}
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("ldapsearch: %v\n%s", err, stderr.String())
			}
			d := time.Since(start)
			if entries != n {
				t.Fatalf("ldapsearch: %d entries, want %d", entries, n)
			}
			return d, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		search() // warm slapd's caches

		e.vaultIn(ldapBindDN, "set", "dir", "bind_dn")
		e.vaultIn(bindPW, "set", "dir", "bind_password")
		e.vault("bind", "dir", dir.LDAPSURL)
		agentRuntimeEnv(e)
		e.start()
		pl.pinAgent(t, e.cmd.Process.Pid)
		e.waitFor("registration", 30*time.Second, func() bool {
			return strings.Contains(e.out.String(), `"msg":"registered"`)
		})
		env := ldapEnvelope("dir", dir.LDAPSURL, map[string]any{"base_dn": base, "scope": "one", "filter": filter, "page_size": 500})
		env["timeout_s"], env["lease_s"] = 3600, 3600
		pid := e.cmd.Process.Pid
		e.benchSync(env, n, check) // warm up, as ldapsearch was

		// As benchREST: alternate runs, medians. The harness's CPU time
		// is this process's (the control plane) and slapd's.
		harnessCPU := func() time.Duration { return selfCPU() + procCPU(t, dir.Pid()) }
		var direct, agent []benchRun
		for range benchRuns(t, n) {
			h0 := harnessCPU()
			sd, scpu := search()
			direct = append(direct, benchRun{d: sd, cpu: scpu, harness: harnessCPU() - h0})
			a0, h0 := procCPU(t, pid), harnessCPU()
			ad, dispatch := e.benchSync(env, n, check)
			agent = append(agent, benchRun{d: ad, cpu: procCPU(t, pid) - a0, harness: harnessCPU() - h0, dispatch: dispatch})
		}
		hwm := vmHWM(t, pid)
		e.stop()
		dm, am := medianRun(direct), medianRun(agent)
		row("| LDAP `ldapsearch -E pr=500/noprompt` over ldaps, LDIF to a pipe (%s) | %d | %s | %.0f | | | ldapsearch %.2f s, harness %.2f s |", pl.desc, n, secs(dm.d), float64(n)/dm.d.Seconds(), dm.cpu.Seconds(), dm.harness.Seconds())
		row("| LDAP ldap.search through the agent (page_size 500, chunks of 500; %s) | %d | %s (+%.1f ms dispatch) | %.0f | %.1f MiB | %.0f%% | agent %.2f s, harness %.2f s |", pl.desc, n, secs(am.d), ms(am.dispatch), float64(n)/am.d.Seconds(), float64(hwm)/(1<<20), 100*dm.d.Seconds()/am.d.Seconds(), am.cpu.Seconds(), am.harness.Seconds())
	})
}
