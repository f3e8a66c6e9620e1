//go:build unix

package update_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/rapidvalue/tier3-agent/internal/syncbuf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
	"github.com/rapidvalue/tier3-agent/internal/wire"
	"github.com/rapidvalue/tier3-agent/update"
)

// binDir holds the binaries built for this test process.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	// These tests spend their time waiting on other processes (agents
	// heartbeating once a second, control planes), not on the CPU: let
	// more of them run at once than there are cores, unless -parallel
	// was given.
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		flag.Set("test.parallel", "8")
	}
	var err error
	if binDir, err = os.MkdirTemp("", "tier3-update-bins-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// A build of the real agent, made once per test process: its version, its
// test hook (main.testHook) and GOARCH.
type buildKey struct{ version, hook, goarch string }

type built struct {
	once sync.Once
	path string
	err  error
}

var builds sync.Map // buildKey → *built

// agentBinary builds (once) ./cmd/tier3-agent with -X main.version and
// -X main.testHook, as the release is built (-trimpath, no cgo).
func agentBinary(t testing.TB, version, hook string) string {
	return agentBinaryFor(t, version, hook, runtime.GOARCH)
}

func agentBinaryFor(t testing.TB, version, hook, goarch string) string {
	t.Helper()
	k := buildKey{version, hook, goarch}
	v, _ := builds.LoadOrStore(k, &built{})
	b := v.(*built)
	b.once.Do(func() {
		b.path = filepath.Join(binDir, fmt.Sprintf("tier3-agent-%s-%s-%s", version, strings.NewReplacer(",", "_", "=", "_").Replace(hook), goarch))
		ld := "-X main.version=" + version
		if hook != "" {
			ld += " -X main.testHook=" + hook
		}
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ld, "-o", b.path, "./cmd/tier3-agent")
		cmd.Dir = testbin.Root()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+runtime.GOOS, "GOARCH="+goarch)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", ld, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// The builds these tests use. Every one has the kill points: without
// RV_TEST_KILL_AT they change nothing.
const (
	hookNone  = "killpoints"
	hookCrash = "killpoints,crash"
	hookHang  = "killpoints,hang"
	hookExit  = "killpoints,exit-after=4s"
)

// bed is one install of the agent: its own control plane, an install
// folder that holds only the binary (and what self-update puts beside it),
// and a data folder for the vault and the audit log.
type bed struct {
	t       *testing.T
	cp      *controlplane.TestServer
	inst    string // the install folder
	bin     string // the install path
	data    string
	env     map[string]string
	token   controlplane.CreateTokenResponse
	agentID string

	mu    sync.Mutex
	procs []*proc
}

func newBed(t *testing.T, initial string) *bed {
	t.Helper()
	cp, err := controlplane.Start(controlplane.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Close() })
	b := &bed{t: t, cp: cp, inst: t.TempDir(), data: t.TempDir()}
	b.bin = filepath.Join(b.inst, "tier3-agent")
	b.install(initial)
	ca := filepath.Join(b.data, "cp-ca.pem")
	if err := os.WriteFile(ca, cp.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if b.token, err = cp.Admin.CreateToken(context.Background(), controlplane.CreateTokenRequest{}); err != nil {
		t.Fatal(err)
	}
	b.env = map[string]string{
		"PATH": os.Getenv("PATH"), "HOME": b.data,
		"RV_CONTROL_PLANE_URL": cp.URL, "RV_CONTROL_PLANE_CA": ca,
		"RV_AGENT_VAULT_PATH":          filepath.Join(b.data, "agent-vault.json"),
		"RV_AGENT_VAULT_IDENTITY_FILE": filepath.Join(b.data, "host.key"),
		"RV_AGENT_TOKEN":               b.token.Token,
		"RV_AGENT_UPDATE_KEY":          b.token.UpdateKey,
		"RV_POLL_WAIT":                 "1",
		"RV_HEARTBEAT_INTERVAL":        "1",
		"RV_AGENT_STABLE_AFTER":        "3",
	}
	b.run("vault", "init", "--seal", "identity")
	// Registered last, so it runs first: no agent outlives its test.
	t.Cleanup(b.killAll)
	return b
}

// install puts a built binary at the install path, as an operator would.
// A hard link where it can: a file this process wrote can be open for
// writing in a child forked meanwhile by a parallel test, and exec'ing it
// then fails (ETXTBSY). Self-update never writes into the binary's inode
// (it renames new files over it), so sharing it with the build is safe.
func (b *bed) install(src string) {
	b.t.Helper()
	tmp := b.bin + ".copy"
	if err := os.Link(src, tmp); err == nil {
		if err := os.Rename(tmp, b.bin); err != nil {
			b.t.Fatal(err)
		}
		return
	}
	data, err := os.ReadFile(src)
	if err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(tmp, data, 0o755); err != nil {
		b.t.Fatal(err)
	}
	if err := os.Rename(tmp, b.bin); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bed) environ(extra ...string) []string {
	var env []string
	for k, v := range b.env {
		env = append(env, k+"="+v)
	}
	return append(env, extra...)
}

// run runs a command of the installed binary to completion.
func (b *bed) run(args ...string) string {
	b.t.Helper()
	cmd := exec.Command(b.bin, args...)
	cmd.Env = b.environ()
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.t.Fatalf("tier3-agent %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// installedVersion runs `tier3-agent version` from the install path: the
// install path must always hold a binary that runs.
func (b *bed) installedVersion() string {
	b.t.Helper()
	cmd := exec.Command(b.bin, "version")
	out, err := cmd.Output()
	if err != nil {
		b.t.Fatalf("the install path does not hold a runnable binary: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// proc is one `tier3-agent run`, in a process group of its own (its
// worker is in it too).
type proc struct {
	cmd    *exec.Cmd
	out    *syncbuf.Buffer
	exited chan struct{}
	code   int
}

// start starts `tier3-agent run` from the install path: a plain background
// process, no service manager.
func (b *bed) start(extraEnv ...string) *proc {
	b.t.Helper()
	p := &proc{out: &syncbuf.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(b.bin, "run")
	p.cmd.Env = b.environ(extraEnv...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.mu.Lock()
	b.procs = append(b.procs, p)
	b.mu.Unlock()
	go func() {
		err := p.cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				p.code = 128 + int(ws.Signal())
			}
		}
		close(p.exited)
	}()
	return p
}

// stop sends SIGTERM and returns the exit status.
func (p *proc) stop(t *testing.T) int {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
		t.Fatalf("the agent did not stop on SIGTERM\n%s", p.out)
	}
	return p.code
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (b *bed) killAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.procs {
		if p.running() {
			if b.t.Failed() && os.Getenv("RV_TEST_DUMP") != "" {
				syscall.Kill(-p.cmd.Process.Pid, syscall.SIGQUIT)
				time.Sleep(time.Second)
			}
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
		if b.t.Failed() || os.Getenv("RV_TEST_VERBOSE") != "" {
			b.t.Logf("output of pid %d:\n%s", p.cmd.Process.Pid, p.out)
		}
	}
}

// unit stands in for a systemd service with Restart=always,
// RestartPreventExitStatus=78: it starts the agent with INVOCATION_ID set,
// and starts it again whenever it exits, unless it exited 78 or is being
// stopped.
type unit struct {
	b        *bed
	mu       sync.Mutex
	cur      *proc
	starts   int
	codes    []int
	stopping bool
	done     chan struct{}
}

func (b *bed) startUnit(extraEnv ...string) *unit {
	u := &unit{b: b, done: make(chan struct{})}
	env := append([]string{"INVOCATION_ID=0123456789abcdef0123456789abcdef"}, extraEnv...)
	u.cur = b.start(env...)
	u.starts = 1
	go func() {
		defer close(u.done)
		for {
			u.mu.Lock()
			p := u.cur
			u.mu.Unlock()
			<-p.exited
			u.mu.Lock()
			u.codes = append(u.codes, p.code)
			if u.stopping || p.code == 78 {
				u.mu.Unlock()
				return
			}
			u.mu.Unlock()
			// RestartSec=100ms: systemd's own delay, not a wait for anything.
			time.Sleep(100 * time.Millisecond)
			u.mu.Lock()
			if u.stopping {
				u.mu.Unlock()
				return
			}
			u.cur = b.start(env...)
			u.starts++
			u.mu.Unlock()
		}
	}()
	return u
}

// stop is `systemctl stop`: SIGTERM to the main process, no restart.
func (u *unit) stop(t *testing.T) int {
	u.mu.Lock()
	u.stopping = true
	p := u.cur
	u.mu.Unlock()
	code := p.stop(t)
	<-u.done
	return code
}

func (u *unit) startCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.starts
}

// waitFor polls cond until it holds or limit passes.
func (b *bed) waitFor(what string, limit time.Duration, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// agent returns the control plane's view of the agent (the one there is).
func (b *bed) agent() (controlplane.AgentInfo, bool) {
	as, err := b.cp.Admin.Agents(context.Background())
	if err != nil || len(as) != 1 {
		return controlplane.AgentInfo{}, false
	}
	return as[0], true
}

// waitOnline waits until the agent runs version and a heartbeat of that
// version was answered after since.
func (b *bed) waitOnline(version string, since time.Time, limit time.Duration) {
	b.t.Helper()
	b.waitFor("the agent online on "+version, limit, func() bool {
		a, ok := b.agent()
		if ok {
			b.agentID = a.AgentID
		}
		return ok && a.Version == version && a.Heartbeat != nil && a.Heartbeat.Version == version &&
			a.LastHeartbeat != nil && a.LastHeartbeat.After(since)
	})
}

// events returns the events of a type the control plane received.
func (b *bed) events(typ string) []wire.Event {
	evs, err := b.cp.Admin.Events(context.Background(), controlplane.EventQuery{Type: typ})
	if err != nil {
		b.t.Fatal(err)
	}
	var out []wire.Event
	for _, e := range evs {
		out = append(out, e.Event)
	}
	return out
}

// waitEvent waits for an event of a type whose fields match want (zero
// fields of want match anything; Reason matches as a substring), and
// checks the local audit log has it too.
func (b *bed) waitEvent(want wire.Event, limit time.Duration) wire.Event {
	b.t.Helper()
	var got wire.Event
	b.waitFor(want.Type+" "+want.Reason+" at the control plane", limit, func() bool {
		for _, e := range b.events(want.Type) {
			if eventMatches(e, want) {
				got = e
				return true
			}
		}
		return false
	})
	if !slices.ContainsFunc(b.auditEvents(), func(e wire.Event) bool { return eventMatches(e, want) }) {
		b.t.Fatalf("%s is not in the local audit log", want.Type)
	}
	return got
}

func eventMatches(e, want wire.Event) bool {
	return e.Type == want.Type && (want.From == "" || e.From == want.From) && (want.To == "" || e.To == want.To) &&
		(want.Version == "" || e.Version == want.Version) && strings.Contains(e.Reason, want.Reason)
}

// auditEvents reads the events of the local audit log (whole lines only:
// the agent may be writing the next one).
func (b *bed) auditEvents() []wire.Event {
	b.t.Helper()
	data, err := os.ReadFile(filepath.Join(b.data, "audit.log"))
	if err != nil {
		b.t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	var out []wire.Event
	for _, l := range lines[:len(lines)-1] {
		var rec struct {
			Event wire.Event `json:"event"`
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			b.t.Fatalf("audit log line: %v", err)
		}
		out = append(out, rec.Event)
	}
	return out
}

// state reads the update state beside the binary.
func (b *bed) state() *update.State {
	b.t.Helper()
	st, err := update.Load(update.FilesFor(b.bin))
	if err != nil {
		b.t.Fatal(err)
	}
	return st
}

// installFiles lists the install folder.
func (b *bed) installFiles() []string {
	b.t.Helper()
	ents, err := os.ReadDir(b.inst)
	if err != nil {
		b.t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// publish publishes a built binary as a release for this platform.
func (b *bed) publish(version, path string) []byte {
	b.t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		b.t.Fatal(err)
	}
	if _, err := b.cp.Admin.PublishRelease(context.Background(), version, runtime.GOOS, runtime.GOARCH, data); err != nil {
		b.t.Fatal(err)
	}
	return data
}

// register runs the agent once until it is registered, so that the test
// knows its ID (offers are MACed for it), and stops it.
func (b *bed) register() {
	b.t.Helper()
	p := b.start()
	b.waitFor("registration", 30*time.Second, func() bool {
		a, ok := b.agent()
		b.agentID = a.AgentID
		return ok
	})
	if code := p.stop(b.t); code != 0 {
		b.t.Fatalf("exit %d on SIGTERM", code)
	}
}

// offer builds an offer MACed with this agent's update key.
func (b *bed) offer(version, goos, goarch string, size int64, sum []byte, url string) wire.UpdateOffer {
	o := wire.UpdateOffer{Version: version, OS: goos, Arch: goarch, Size: size, SHA256: hex.EncodeToString(sum), URL: url}
	o.HMACSHA256 = wire.UpdateHMAC([]byte(b.token.UpdateKey), wire.UpdateManifest(b.agentID, version, goos, goarch, size, o.SHA256))
	return o
}

// fault makes the control plane's next answer to endpoint be status with
// body.
func (b *bed) fault(endpoint string, status int, body string, bodyBytes int) {
	b.t.Helper()
	if _, err := b.cp.Admin.AddFault(context.Background(), controlplane.Fault{Endpoint: endpoint, Status: status, Body: body, BodyBytes: bodyBytes}); err != nil {
		b.t.Fatal(err)
	}
}

func sha(data []byte) []byte {
	s := sha256.Sum256(data)
	return s[:]
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	s, err := update.FileSHA256(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
