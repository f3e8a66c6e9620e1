// Package loopback sets up the whole product on one machine: the reference
// control plane over TLS, HTTPS targets with their own CA, a sealed vault,
// and the real tier3-agent binary as a child process. The demo
// (cmd/rv-demo) and the benchmarks (cmd/rv-bench) run on it.
package loopback

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/rapidvalue/tier3-agent/internal/childproc"
	"github.com/rapidvalue/tier3-agent/internal/syncbuf"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/install"
	"github.com/rapidvalue/tier3-agent/internal/devca"
)

// Bed is one control plane, one folder for the agent's files, and the
// environment `tier3-agent` runs with.
type Bed struct {
	CP       *controlplane.TestServer
	Dir      string
	Token    controlplane.CreateTokenResponse
	AgentBin string
	env      []string
}

// New starts a control plane and creates an agent token. The agent's
// environment points at it, with a vault and an identity seal in Dir.
func New(agentBin string, cfg controlplane.Config) (*Bed, error) {
	dir, err := os.MkdirTemp("", "tier3-loopback-")
	if err != nil {
		return nil, err
	}
	if cfg.InstallScript == "" {
		cfg.InstallScript = install.Script // GET /agent/install serves the real installer
	}
	cp, err := controlplane.Start(cfg)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	b := &Bed{CP: cp, Dir: dir, AgentBin: agentBin}
	caFile := filepath.Join(dir, "cp-ca.pem")
	if err := os.WriteFile(caFile, cp.CAPEM(), 0o600); err != nil {
		b.Close()
		return nil, err
	}
	if b.Token, err = cp.Admin.CreateToken(context.Background(), controlplane.CreateTokenRequest{}); err != nil {
		b.Close()
		return nil, err
	}
	b.env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"RV_CONTROL_PLANE_URL=" + cp.URL, "RV_CONTROL_PLANE_CA=" + caFile,
		"RV_AGENT_VAULT_PATH=" + filepath.Join(dir, "agent-vault.json"),
		"RV_AGENT_VAULT_IDENTITY_FILE=" + filepath.Join(dir, "host.key"),
		"RV_POLL_WAIT=2", "RV_HEARTBEAT_INTERVAL=2", "RV_AGENT_SELF_UPDATE=0",
	}
	return b, nil
}

// Setenv adds or replaces a variable of the agent's environment.
func (b *Bed) Setenv(k, v string) {
	for i, kv := range b.env {
		if strings.HasPrefix(kv, k+"=") {
			b.env[i] = k + "=" + v
			return
		}
	}
	b.env = append(b.env, k+"="+v)
}

// Close stops the control plane and removes the folder.
func (b *Bed) Close() {
	b.CP.Close()
	os.RemoveAll(b.Dir)
}

// Run runs a tier3-agent command (vault …, audit …) to completion.
func (b *Bed) Run(stdin string, args ...string) (string, error) {
	cmd := exec.Command(b.AgentBin, args...)
	cmd.Env = b.env
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("tier3-agent %v: %w\n%s", args, err, out)
	}
	return string(out), nil
}

// Agent is a running `tier3-agent run`.
type Agent struct {
	Cmd    *exec.Cmd
	Exited chan struct{}
	Err    error // set when Exited is closed
	logs   syncbuf.Buffer
}

// Logs returns what the agent printed so far.
func (a *Agent) Logs() string { return a.logs.String() }

// Start starts `tier3-agent run`.
func (b *Bed) Start() (*Agent, error) {
	a := &Agent{Cmd: exec.Command(b.AgentBin, "run"), Exited: make(chan struct{})}
	a.Cmd.Env = b.env
	a.Cmd.Stdout, a.Cmd.Stderr = &a.logs, &a.logs
	if err := a.Cmd.Start(); err != nil {
		return nil, err
	}
	go func() { a.Err = a.Cmd.Wait(); close(a.Exited) }()
	return a, nil
}

// Stop sends SIGTERM and waits up to limit for the exit.
func (a *Agent) Stop(limit time.Duration) error {
	if !childproc.Stop(a.Cmd.Process, a.Exited, limit) {
		return errors.New("the agent did not stop in time")
	}
	return a.Err
}

// WaitFor polls cond until it holds, the agent exits, or limit passes. The
// agent is another process: the control plane is where its progress shows.
func (a *Agent) WaitFor(limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-a.Exited:
			return fmt.Errorf("the agent exited: %v", a.Err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// RSS returns the agent's resident set size and its peak (VmRSS, VmHWM),
// in KiB, from /proc.
func (a *Agent) RSS() (rss, peak int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.Cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		var v int64
		if _, err := fmt.Sscanf(l, "VmRSS: %d kB", &v); err == nil {
			rss = v
		}
		if _, err := fmt.Sscanf(l, "VmHWM: %d kB", &v); err == nil {
			peak = v
		}
	}
	return rss, peak, nil
}

// Target is an HTTPS server on loopback with a certificate from its own CA.
type Target struct {
	URL   string
	CAPEM []byte
	srv   *http.Server
}

// StartTarget serves h over TLS on 127.0.0.1.
func StartTarget(h http.Handler) (*Target, error) {
	ca, err := devca.New()
	if err != nil {
		return nil, err
	}
	cert, err := ca.Server()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	go srv.ServeTLS(ln, "", "")
	return &Target{URL: "https://" + ln.Addr().String(), CAPEM: ca.CertPEM(), srv: srv}, nil
}

// Close stops the target.
func (t *Target) Close() { t.srv.Close() }

// Client returns an HTTP client that trusts the target's CA (for baselines
// measured from the harness).
func (t *Target) Client() *http.Client {
	pool, _ := devcaPool(t.CAPEM)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 64, ForceAttemptHTTP2: true}}
}

// TrustTarget makes the agent trust t's CA (RV_AGENT_TARGET_CA).
func (b *Bed) TrustTarget(t *Target) error {
	p := filepath.Join(b.Dir, "target-ca.pem")
	if err := os.WriteFile(p, t.CAPEM, 0o600); err != nil {
		return err
	}
	b.Setenv("RV_AGENT_TARGET_CA", p)
	return nil
}
