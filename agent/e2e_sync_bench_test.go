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
// RV_SYNC_BENCH_SIZES (default 10000,100000,1000000) picks the REST sizes;
// RV_SYNC_BENCH_CHUNK sets the REST tasks' chunk_size (default: none, so
// the agent's 500); RV_SYNC_BENCH_LDAP=0 leaves out the LDAP rows (they
// need slapd); RV_SYNC_BENCH_PLACEMENT=shared or isolated runs one
// placement of the two (placements).
//
// Each agent run is a fresh `tier3-agent run` process; its peak RSS is the
// kernel's VmHWM for the process (/proc/PID/status), read once the task
// has completed. The reference control plane and the targets run in the
// test process, so agent and baseline share the 2 cores with them alike.
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
		// record decoded (json.RawMessage), as the agent reads them.
		direct := func() (time.Duration, int64) {
			start := time.Now()
			got, bytes := readPagesDirect(t, tg.URL, e.targetCA().Pool(), kind)
			if got != n {
				t.Fatalf("direct read: %d records, want %d", got, n)
			}
			return time.Since(start), bytes
		}
		pl.pinHarness(t)
		direct() // warm the target's code paths and the connection pool
		c0 := selfCPU()
		dd, pageBytes := direct()
		dcpu := selfCPU() - c0

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
		e.benchSync(env, n, check) // warm up as the direct read did: connections, code paths
		a0, s0 := procCPU(t, pid), selfCPU()
		ad := e.benchSync(env, n, check)
		acpu, scpu := procCPU(t, pid)-a0, selfCPU()-s0
		hwm := vmHWM(t, pid)
		e.stop()
		row("| REST direct read (%s, %.0f MB of pages; %s) | %d | %.2f s | %.0f | | | harness %.2f s |", desc, float64(pageBytes)/1e6, pl.desc, n, dd.Seconds(), float64(n)/dd.Seconds(), dcpu.Seconds())
		row("| REST http.sync through the agent (%s, chunks of %d; %s) | %d | %.2f s | %.0f | %.1f MiB | %.0f%% | agent %.2f s, harness %.2f s |", desc, chunk, pl.desc, n, ad.Seconds(), float64(n)/ad.Seconds(), float64(hwm)/(1<<20), 100*dd.Seconds()/ad.Seconds(), acpu.Seconds(), scpu.Seconds())
	})
}

// benchSync runs one sync task of n records to its end, checks its
// records with check (the control plane's Records callback) and returns
// the time from enqueueing it to its last record's arrival.
func (e *env) benchSync(env map[string]any, n int, check *orderCheck) time.Duration {
	e.t.Helper()
	check.reset()
	start := time.Now()
	id := e.enqueue(env)
	ti := e.syncBenchResult(id, 30*time.Minute)
	if ti.State != controlplane.TaskCompleted || ti.Records != int64(n) {
		full, _ := e.cp.Admin.Task(context.Background(), id)
		e.t.Fatalf("state %s, %d records: %+v", ti.State, ti.Records, full.Result)
	}
	all, err := check.result()
	if err != nil {
		e.t.Fatal(err)
	}
	return all.Sub(start)
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
			e.t.Fatalf("task %s still %s after %v", id, found.State, limit)
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
//   - isolated: the agent on the last CPU, everything else (this test
//     process: target, control plane and direct reader; slapd; ldapsearch)
//     on the others. The agent has a core of its own, as on its host, and
//     the baseline and the agent's run give the outside world the same
//     cores; the agent's run charges them the control plane's work too.
type placement struct {
	name, desc     string
	harness, agent string // taskset CPU lists; agent "": as the harness
}

func placements(t *testing.T) []placement {
	n := runtime.NumCPU()
	all := fmt.Sprintf("0-%d", n-1)
	shared := placement{name: "shared", desc: fmt.Sprintf("all %d CPUs shared", n), harness: all}
	isolated := placement{name: "isolated", desc: fmt.Sprintf("agent on CPU %d, the rest on 0-%d", n-1, n-2),
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
	// all is when the last record arrived: the end of the agent's run
	// (polling the admin API for the result would add up to its interval).
	all time.Time
}

func (c *orderCheck) records(_ string, _ int64, recs []json.RawMessage) {
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
		}
		c.next++
	}
	if c.next == c.want {
		c.all = time.Now()
	}
}

func (c *orderCheck) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next, c.err, c.all = 0, nil, time.Time{}
}

// result returns when the last record arrived, or why not all did.
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

// readPagesDirect reads every page of a pagedSource the way the agent
// does (HTTP/2 over TLS, streaming JSON, each record decoded on its own)
// and returns the records and the bytes of the pages.
func readPagesDirect(t *testing.T, base string, roots *x509.CertPool, kind string) (int, int64) {
	t.Helper()
	tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	return readPagesWith(t, base, tr, kind)
}

func readPagesWith(t *testing.T, base string, tr *http.Transport, kind string) (int, int64) {
	t.Helper()
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
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

		search := func() time.Duration {
			cmd := exec.Command(ldapsearch, "-LLL", "-H", dir.LDAPSURL, "-x", "-D", ldapBindDN, "-w", bindPW,
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
			return d
		}
		search() // warm slapd's caches
		c0 := selfCPU()
		sd := search()
		scpu0 := selfCPU() - c0

		e.vaultIn(ldapBindDN, "set", "dir", "bind_dn")
		e.vaultIn(bindPW, "set", "dir", "bind_password")
		e.vault("bind", "dir", dir.LDAPSURL)
		if g := os.Getenv("RV_SYNC_BENCH_GOGC"); g != "" {
			e.vars["GOGC"] = g
		}
		e.start()
		pl.pinAgent(t, e.cmd.Process.Pid)
		e.waitFor("registration", 30*time.Second, func() bool {
			return strings.Contains(e.out.String(), `"msg":"registered"`)
		})
		env := ldapEnvelope("dir", dir.LDAPSURL, map[string]any{"base_dn": base, "scope": "one", "filter": filter, "page_size": 500})
		env["timeout_s"], env["lease_s"] = 3600, 3600
		pid := e.cmd.Process.Pid
		e.benchSync(env, n, check) // warm up, as ldapsearch was
		a0, s0 := procCPU(t, pid), selfCPU()
		ad := e.benchSync(env, n, check)
		acpu, scpu := procCPU(t, pid)-a0, selfCPU()-s0
		hwm := vmHWM(t, pid)
		e.stop()
		row("| LDAP `ldapsearch -E pr=500/noprompt` over ldaps, LDIF to a pipe (%s) | %d | %.2f s | %.0f | | | harness %.2f s |", pl.desc, n, sd.Seconds(), float64(n)/sd.Seconds(), scpu0.Seconds())
		row("| LDAP ldap.search through the agent (page_size 500, chunks of 500; %s) | %d | %.2f s | %.0f | %.1f MiB | %.0f%% | agent %.2f s, harness %.2f s |", pl.desc, n, ad.Seconds(), float64(n)/ad.Seconds(), float64(hwm)/(1<<20), 100*sd.Seconds()/ad.Seconds(), acpu.Seconds(), scpu.Seconds())
	})
}
