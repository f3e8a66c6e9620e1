//go:build unix

package update_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/testbin"
	"github.com/rapidvalue/tier3-agent/internal/wire"
	"github.com/rapidvalue/tier3-agent/update"
)

const v1, v2 = "1.0.0", "2.0.0"

// supervisors are the two ways the agent runs: a plain background process
// (its own supervisor does everything) and under a service manager
// (systemd's Restart=always stand-in).
var supervisors = []string{"plain", "systemd"}

// runner starts the agent one way or the other and stops it at the end,
// checking it exits 0 on SIGTERM.
type runner struct {
	b    *bed
	p    *proc
	u    *unit
	mode string
}

func (b *bed) run2(mode string, extraEnv ...string) *runner {
	r := &runner{b: b, mode: mode}
	if mode == "systemd" {
		r.u = b.startUnit(extraEnv...)
	} else {
		r.p = b.start(extraEnv...)
	}
	return r
}

func (r *runner) stop() {
	r.b.t.Helper()
	var code int
	if r.u != nil {
		code = r.u.stop(r.b.t)
	} else {
		code = r.p.stop(r.b.t)
	}
	if code != 0 {
		r.b.t.Fatalf("exit %d on SIGTERM, want 0", code)
	}
}

// alive checks that no restart happened outside the supervisor: the
// process the test (or "systemd") started is the one still running.
func (r *runner) alive() {
	r.b.t.Helper()
	if r.u != nil {
		if n := r.u.startCount(); n != 1 {
			r.b.t.Fatalf("the service manager had to start the agent %d times", n)
		}
		return
	}
	if !r.p.running() {
		r.b.t.Fatalf("the agent exited (%d)", r.p.code)
	}
}

func TestUpdateApplied(t *testing.T) {
	t.Parallel()
	for _, mode := range supervisors {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			b := newBed(t, agentBinary(t, v1, hookNone))
			b.publish(v2, agentBinary(t, v2, hookNone))
			start := time.Now()
			r := b.run2(mode)
			b.waitEvent(wire.Event{Type: wire.EventSelfUpdateApplied, From: v1, To: v2}, 60*time.Second)
			b.waitOnline(v2, start, 10*time.Second)
			r.alive()
			if v := b.installedVersion(); v != v2 {
				t.Fatalf("installed version %s, want %s", v, v2)
			}
			st := b.state()
			if st.Committed != v2 || st.Trial != nil || len(st.Pending) != 0 {
				t.Fatalf("state: %+v", st)
			}
			if files := b.installFiles(); !slices.Equal(files, []string{"tier3-agent", "tier3-agent.update.json"}) {
				t.Fatalf("install folder holds %v", files)
			}
			// SIGHUP reaches the worker: it reloads the vault.
			if r.p != nil {
				r.p.cmd.Process.Signal(syscall.SIGHUP)
				b.waitEvent(wire.Event{Type: wire.EventVaultReloaded}, 20*time.Second)
			}
			if n := len(b.events(wire.EventSelfUpdateApplied)); n != 1 {
				t.Fatalf("%d applied events", n)
			}
			r.stop()
		})
	}
}

// A new version that misbehaves is reverted, with the right reason, and
// the agent is back online on the old version; the bad version is then
// refused.
func TestBadUpdateReverted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, hook, reason string
	}{
		{"crash at start", hookCrash, "crashed at start"},
		{"hang before healthy", hookHang, "not healthy within"},
		{"exit again and again", hookExit, "exited 3 times before it was stable"},
	} {
		for _, mode := range supervisors {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				t.Parallel()
				b := newBed(t, agentBinary(t, v1, hookNone))
				if tc.hook == hookExit {
					b.env["RV_AGENT_STABLE_AFTER"] = "12"
				}
				b.publish(v2, agentBinary(t, v2, tc.hook))
				r := b.run2(mode)
				rev := b.waitEvent(wire.Event{Type: wire.EventSelfUpdateReverted, From: v2, To: v1, Reason: tc.reason}, 90*time.Second)
				b.waitOnline(v1, rev.At, 20*time.Second)
				r.alive()
				if v := b.installedVersion(); v != v1 {
					t.Fatalf("installed version %s, want %s", v, v1)
				}
				b.waitEvent(wire.Event{Type: wire.EventSelfUpdateRejected, Version: v2, Reason: "was reverted on this host"}, 20*time.Second)
				st := b.state()
				if st.Trial != nil || st.Committed != v1 || !slices.Equal(st.Reverted, []string{v2}) {
					t.Fatalf("state: %+v", st)
				}
				if len(b.events(wire.EventSelfUpdateApplied)) != 0 {
					t.Fatal("an applied event for a reverted update")
				}
				r.stop()
			})
		}
	}
}

// Every refusal of §7 is an agent.self_update_rejected event with its
// reason, and leaves the install path as it was: the binary unchanged,
// nothing beside it but the state file (which the start path writes, with
// the floor and no trial). Offers a reference control plane would not make
// come from its fault injection: a compromised or broken control plane.
func TestRefusals(t *testing.T) {
	t.Parallel()
	good := agentBinary(t, v2, hookNone)
	goodBytes, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	// The same binary with bytes changed after the manifest was made.
	tampered := append([]byte(nil), goodBytes...)
	copy(tampered[len(tampered)/2:], "tampered by someone on the way")
	otherArch := "arm64"
	if runtime.GOARCH == "arm64" {
		otherArch = "amd64"
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	binURL := wire.APIPrefix + "/update/" + v2 + "/binary"
	for _, tc := range []struct {
		name   string
		env    map[string]string
		setup  func(b *bed) // after registration, before the agent runs again
		reason string
	}{
		{"self-update off", map[string]string{"RV_AGENT_SELF_UPDATE": "0"}, func(b *bed) {
			b.publish(v2, good)
		}, "self-update is off"},
		{"another arch", nil, func(b *bed) {
			other := agentBinaryFor(t, v2, hookNone, otherArch)
			data, _ := os.ReadFile(other)
			if _, err := b.cp.Admin.PublishRelease(context.Background(), v2, runtime.GOOS, otherArch, data); err != nil {
				t.Fatal(err)
			}
			o := b.offer(v2, runtime.GOOS, otherArch, int64(len(data)), sha(data), binURL+"?os="+runtime.GOOS+"&arch="+otherArch)
			b.fault("update", 200, mustJSON(o), 0)
		}, "the offer is for " + runtime.GOOS + "/" + otherArch},
		{"older version", nil, func(b *bed) {
			old := agentBinary(t, "0.9.0", hookNone)
			data := b.publish("0.9.0", old)
			b.fault("update", 200, mustJSON(b.offer("0.9.0", runtime.GOOS, runtime.GOARCH, int64(len(data)), sha(data), wire.APIPrefix+"/update/0.9.0/binary")), 0)
		}, "is not newer than the running 1.0.0"},
		{"size over 256 MiB", nil, func(b *bed) {
			b.fault("update", 200, mustJSON(b.offer(v2, runtime.GOOS, runtime.GOARCH, 300<<20, sha(goodBytes), binURL)), 0)
		}, "over the 256 MiB limit"},
		{"url off the origin", nil, func(b *bed) {
			b.publish(v2, good)
			b.fault("update", 200, mustJSON(b.offer(v2, runtime.GOOS, runtime.GOARCH, int64(len(goodBytes)), sha(goodBytes), "https://elsewhere.example"+binURL)), 0)
		}, "not on the control plane's origin"},
		{"hmac differs (altered offer)", nil, func(b *bed) {
			b.publish(v2, good)
			o := b.offer(v2, runtime.GOOS, runtime.GOARCH, int64(len(goodBytes)), sha(goodBytes), binURL)
			o.SHA256 = hex.EncodeToString(sha(tampered)) // the MAC was made over the genuine one
			b.fault("update", 200, mustJSON(o), 0)
		}, "hmac_sha256 does not match"},
		{"hmac of another agent", nil, func(b *bed) {
			b.publish(v2, good)
			o := b.offer(v2, runtime.GOOS, runtime.GOARCH, int64(len(goodBytes)), sha(goodBytes), binURL)
			o.HMACSHA256 = wire.UpdateHMAC([]byte(b.token.UpdateKey), wire.UpdateManifest("agt_someoneelse", v2, runtime.GOOS, runtime.GOARCH, int64(len(goodBytes)), o.SHA256))
			b.fault("update", 200, mustJSON(o), 0)
		}, "hmac_sha256 does not match"},
		{"sha256 differs (binary altered in transit)", nil, func(b *bed) {
			b.publish(v2, good)
			// The genuine offer, then other bytes of the same length.
			b.fault("update_binary", 200, "", len(goodBytes))
		}, "sha256 differs"},
		{"download longer than size", nil, func(b *bed) {
			b.publish(v2, good)
			short := int64(len(goodBytes)) - 4096
			b.fault("update", 200, mustJSON(b.offer(v2, runtime.GOOS, runtime.GOARCH, short, sha(goodBytes[:short]), binURL)), 0)
		}, "longer than the offered size"},
		{"malformed offer", nil, func(b *bed) {
			b.fault("update", 200, `{"version":"2.0.0","os":"linux"}`, 0)
		}, "malformed update offer"},
		{"signature required, missing", map[string]string{"RV_AGENT_RELEASE_PUBKEY": base64.StdEncoding.EncodeToString(pub)}, func(b *bed) {
			b.publish(v2, good)
		}, "no ed25519 release signature"},
		{"signature does not verify (control plane serves its own binary)", map[string]string{"RV_AGENT_RELEASE_PUBKEY": base64.StdEncoding.EncodeToString(pub)}, func(b *bed) {
			// The control plane holds the update key: it publishes a
			// binary of its own and MACs it. The release key signed only
			// the genuine manifest, which the control plane attaches.
			ri, err := b.cp.Admin.PublishRelease(context.Background(), v2, runtime.GOOS, runtime.GOARCH, tampered)
			if err != nil {
				t.Fatal(err)
			}
			_ = ri
			genuine := wire.UpdateManifest(b.agentID, v2, runtime.GOOS, runtime.GOARCH, int64(len(goodBytes)), hex.EncodeToString(sha(goodBytes)))
			if _, err := b.cp.Admin.PutSignatures(context.Background(), v2, runtime.GOOS, runtime.GOARCH, map[string][]byte{b.agentID: ed25519.Sign(priv, genuine)}); err != nil {
				t.Fatal(err)
			}
		}, "signature does not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBed(t, agentBinary(t, v1, hookNone))
			maps.Copy(b.env, tc.env)
			b.register()
			before := fileSHA(t, b.bin)
			tc.setup(b)
			start := time.Now()
			p := b.start()
			ev := b.waitEvent(wire.Event{Type: wire.EventSelfUpdateRejected, Reason: tc.reason}, 30*time.Second)
			b.waitOnline(v1, start, 20*time.Second)
			if !p.running() {
				t.Fatalf("the agent exited (%d)", p.code)
			}
			t.Logf("rejected %q: %s", ev.Version, ev.Reason)
			if fileSHA(t, b.bin) != before {
				t.Fatal("the binary at the install path changed")
			}
			for _, f := range b.installFiles() {
				if f != "tier3-agent" && f != "tier3-agent.update.json" {
					t.Fatalf("%s was left where the agent is installed", f)
				}
			}
			if st := b.state(); st.Trial != nil || (st.Committed != "" && st.Committed != v1) {
				t.Fatalf("state: %+v", st)
			}
			if n := len(b.events(wire.EventSelfUpdateApplied)); n != 0 {
				t.Fatal("an update was applied")
			}
			if code := p.stop(t); code != 0 {
				t.Fatalf("exit %d on SIGTERM", code)
			}
		})
	}
}

// Anti-rollback: once 2.0.0 was committed here, nothing at or below it is
// installed again, even after the operator puts 1.0.0 back by hand and the
// control plane offers 1.5.0 (newer than what runs).
func TestAntiRollback(t *testing.T) {
	t.Parallel()
	one := agentBinary(t, v1, hookNone)
	b := newBed(t, one)
	b.publish(v2, agentBinary(t, v2, hookNone))
	p := b.start()
	b.waitEvent(wire.Event{Type: wire.EventSelfUpdateApplied, From: v1, To: v2}, 60*time.Second)
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if err := b.cp.Admin.DeleteRelease(context.Background(), v2, runtime.GOOS, runtime.GOARCH); err != nil {
		t.Fatal(err)
	}
	b.publish("1.5.0", agentBinary(t, "1.5.0", hookNone))
	b.install(one)
	start := time.Now()
	p = b.start()
	b.waitEvent(wire.Event{Type: wire.EventSelfUpdateRejected, Version: "1.5.0", Reason: "not newer than 2.0.0, the highest version committed on this host"}, 30*time.Second)
	b.waitOnline(v1, start, 20*time.Second)
	if v := b.installedVersion(); v != v1 {
		t.Fatalf("installed %s", v)
	}
	if st := b.state(); st.Committed != v2 {
		t.Fatalf("floor %q", st.Committed)
	}
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// The release key signs offline with rv-release-sign; the agent that
// requires it applies the signed release.
func TestSignedReleaseApplied(t *testing.T) {
	t.Parallel()
	signer := filepath.Join(t.TempDir(), "rv-release-sign")
	cmd := exec.Command("go", "build", "-trimpath", "-o", signer, "./cmd/rv-release-sign")
	cmd.Dir = testbin.Root()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	keyDir := t.TempDir()
	key := filepath.Join(keyDir, "release.key")
	out, err := exec.Command(signer, "keygen", "-key", key).Output()
	if err != nil {
		t.Fatal(err)
	}
	pubB64 := strings.TrimSpace(string(out))

	b := newBed(t, agentBinary(t, v1, hookNone))
	b.env["RV_AGENT_RELEASE_PUBKEY"] = pubB64
	b.register()
	two := agentBinary(t, v2, hookNone)
	b.publish(v2, two)
	caFile := filepath.Join(keyDir, "admin-ca.pem")
	os.WriteFile(caFile, b.cp.CAPEM(), 0o600)
	sign := exec.Command(signer, "sign", "-key", key, "-binary", two, "-version", v2, "-admin", b.cp.AdminURL, "-admin-ca", caFile)
	sign.Env = append(os.Environ(), "RV_ADMIN_TOKEN="+b.cp.AdminToken)
	if out, err := sign.CombinedOutput(); err != nil {
		t.Fatalf("rv-release-sign sign: %v\n%s", err, out)
	}
	start := time.Now()
	p := b.start()
	b.waitEvent(wire.Event{Type: wire.EventSelfUpdateApplied, From: v1, To: v2}, 60*time.Second)
	b.waitOnline(v2, start, 20*time.Second)
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// A SIGKILL of everything (the supervisor and its worker, as a power cut
// would) after any step of a download, an install, a commit or a revert
// leaves a runnable binary at the install path, and the next start carries
// the update through: applied, or reverted, never half-way.
func TestKillAtEveryStep(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		point  string
		hook   string // of the new version
		revert bool
	}{
		{"download:1", hookNone, false},
		{"apply:1", hookNone, false},
		{"apply:2", hookNone, false},
		{"apply:3", hookNone, false},
		{"apply:4", hookNone, false},
		{"apply:5", hookNone, false},
		{"commit:1", hookNone, false},
		{"revert:1", hookCrash, true},
		{"revert:2", hookCrash, true},
		{"revert:3", hookCrash, true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			t.Parallel()
			b := newBed(t, agentBinary(t, v1, hookNone))
			b.publish(v2, agentBinary(t, v2, tc.hook))
			p := b.start("RV_TEST_KILL_AT=" + tc.point)
			select {
			case <-p.exited:
			case <-time.After(60 * time.Second):
				t.Fatalf("not killed at %s", tc.point)
			}
			if !strings.Contains(p.out.String(), "killed at "+tc.point) || p.code != 128+9 {
				t.Fatalf("exit %d, not by the kill point", p.code)
			}
			if v := b.installedVersion(); v != v1 && v != v2 {
				t.Fatalf("installed version %q", v)
			}
			start := time.Now()
			p = b.start()
			if tc.revert {
				b.waitEvent(wire.Event{Type: wire.EventSelfUpdateReverted, From: v2, To: v1, Reason: "crashed at start"}, 60*time.Second)
				b.waitOnline(v1, start, 20*time.Second)
				if v := b.installedVersion(); v != v1 {
					t.Fatalf("installed version %s after the revert", v)
				}
			} else {
				b.waitEvent(wire.Event{Type: wire.EventSelfUpdateApplied, From: v1, To: v2}, 60*time.Second)
				b.waitOnline(v2, start, 20*time.Second)
				if v := b.installedVersion(); v != v2 {
					t.Fatalf("installed version %s after the update", v)
				}
			}
			if st := b.state(); st.Trial != nil {
				t.Fatalf("a trial is left: %+v", st.Trial)
			}
			for _, f := range b.installFiles() {
				if f != "tier3-agent" && f != "tier3-agent.update.json" {
					t.Fatalf("%s is left where the agent is installed", f)
				}
			}
			if code := p.stop(t); code != 0 {
				t.Fatalf("exit %d", code)
			}
		})
	}
}

// Outside an update, a worker that exits is restarted by the supervisor
// when there is no service manager; under one, the supervisor passes the
// exit on and the service manager restarts it; exit 78 (configuration that
// cannot work, here a revoked token) is never restarted.
func TestSupervisorExits(t *testing.T) {
	t.Parallel()
	t.Run("plain restarts a crashed worker", func(t *testing.T) {
		t.Parallel()
		b := newBed(t, agentBinary(t, v1, hookExit))
		p := b.start()
		b.waitFor("three registrations", 30*time.Second, func() bool { return len(b.events(wire.EventRegistered)) >= 3 })
		if !p.running() {
			t.Fatalf("the supervisor exited (%d)", p.code)
		}
		if code := p.stop(t); code != 0 {
			t.Fatalf("exit %d", code)
		}
	})
	t.Run("systemd gets the exit", func(t *testing.T) {
		t.Parallel()
		b := newBed(t, agentBinary(t, v1, hookExit))
		u := b.startUnit()
		b.waitFor("two starts by the service manager", 30*time.Second, func() bool { return u.startCount() >= 2 })
		u.mu.Lock()
		codes := slices.Clone(u.codes)
		u.mu.Unlock()
		if len(codes) == 0 || codes[0] != 3 {
			t.Fatalf("exit statuses %v, want the worker's 3", codes)
		}
		u.stop(t)
	})
	for _, mode := range supervisors {
		t.Run("exit 78 is final/"+mode, func(t *testing.T) {
			t.Parallel()
			b := newBed(t, agentBinary(t, v1, hookNone))
			r := b.run2(mode)
			b.waitOnline(v1, time.Time{}, 30*time.Second)
			if err := b.cp.Admin.RevokeToken(context.Background(), b.token.TokenID); err != nil {
				t.Fatal(err)
			}
			if r.u != nil {
				select {
				case <-r.u.done:
				case <-time.After(30 * time.Second):
					t.Fatal("the unit did not stop")
				}
				if r.u.startCount() != 1 || r.u.codes[0] != 78 {
					t.Fatalf("starts %d, exits %v", r.u.startCount(), r.u.codes)
				}
				return
			}
			select {
			case <-r.p.exited:
			case <-time.After(30 * time.Second):
				t.Fatal("the agent did not exit")
			}
			if r.p.code != 78 {
				t.Fatalf("exit %d, want 78", r.p.code)
			}
		})
	}
}

// Under a service manager, a supervisor killed during a trial is restarted
// from the new binary; its start path goes on with the trial, reverts the
// hanging version and execs the old binary, which reports the revert.
func TestSupervisorKilledDuringTrial(t *testing.T) {
	t.Parallel()
	b := newBed(t, agentBinary(t, v1, hookNone))
	b.publish(v2, agentBinary(t, v2, hookHang))
	u := b.startUnit()
	b.waitFor("the trial of 2.0.0", 30*time.Second, func() bool {
		st, err := update.Load(update.FilesFor(b.bin))
		return err == nil && st.Trial != nil && st.Trial.Starts >= 1
	})
	u.mu.Lock()
	syscall.Kill(-u.cur.cmd.Process.Pid, syscall.SIGKILL)
	u.mu.Unlock()
	rev := b.waitEvent(wire.Event{Type: wire.EventSelfUpdateReverted, From: v2, To: v1, Reason: "not healthy within"}, 60*time.Second)
	b.waitOnline(v1, rev.At, 20*time.Second)
	if n := u.startCount(); n != 2 {
		t.Fatalf("%d starts, want 2", n)
	}
	if v := b.installedVersion(); v != v1 {
		t.Fatalf("installed %s", v)
	}
	if code := u.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
