// Package swtpmtest starts swtpm, a software TPM 2.0, for tests.
//
// Each TPM is a swtpm process on free loopback ports, with its own state
// directory, stopped at t.Cleanup. Tests skip when the swtpm binary is
// missing, unless CI=true: in CI a missing swtpm fails the test.
package swtpmtest

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/rapidvalue/tier3-agent/internal/childproc"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/tcp"
)

// TPM is a running swtpm.
type TPM struct {
	// Device is its RV_AGENT_TPM_DEVICE: tcp://127.0.0.1:PORT.
	Device string
	// Port takes TPM commands; Port+1 is the control port.
	Port int
	// StateDir holds its persistent state (seeds, NV); starting another
	// swtpm on the same directory is the same TPM after a reboot.
	StateDir string

	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   chan struct{}
}

// Binary returns the swtpm path, skipping the test (or failing it when
// CI=true) if swtpm is not installed.
func Binary(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("swtpm")
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("swtpm is not installed, and CI=true: install it (apt-get install swtpm swtpm-tools)")
	}
	t.Skipf("swtpm is not installed: apt-get install swtpm swtpm-tools to run this test (with CI=true its absence fails)")
	return ""
}

// Start starts a new TPM with a fresh state directory.
func Start(t testing.TB) *TPM {
	t.Helper()
	return StartWithState(t, t.TempDir())
}

// StartWithState starts a swtpm on stateDir (a previous TPM's, to model a
// reboot of the same TPM).
func StartWithState(t testing.TB, stateDir string) *TPM {
	t.Helper()
	bin := Binary(t)
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePortPair()
		if err != nil {
			lastErr = err
			continue
		}
		s := &TPM{
			Device:   "tcp://127.0.0.1:" + strconv.Itoa(port),
			Port:     port,
			StateDir: stateDir,
			done:     make(chan struct{}),
		}
		s.cmd = exec.Command(bin, "socket", "--tpm2",
			"--tpmstate", "dir="+stateDir,
			"--server", "type=tcp,port="+strconv.Itoa(port)+",bindaddr=127.0.0.1",
			"--ctrl", "type=tcp,port="+strconv.Itoa(port+1)+",bindaddr=127.0.0.1",
			"--flags", "not-need-init,startup-clear")
		s.cmd.Stdout = &s.stderr
		s.cmd.Stderr = &s.stderr
		if err := s.cmd.Start(); err != nil {
			t.Fatalf("cannot start swtpm: %v", err)
		}
		go func() { s.cmd.Wait(); close(s.done) }()
		if err := s.waitReady(10 * time.Second); err != nil {
			s.Stop()
			lastErr = fmt.Errorf("%v (swtpm said: %q)", err, s.stderr.String())
			continue // most likely a port taken between probe and bind
		}
		t.Cleanup(s.Stop)
		return s
	}
	t.Fatalf("swtpm did not start: %v", lastErr)
	return nil
}

// Stop stops the TPM (idempotent).
func (s *TPM) Stop() {
	childproc.Stop(s.cmd.Process, s.done, 5*time.Second)
}

// Open connects to the TPM. swtpm serves one connection at a time: close it
// before the code under test connects.
func (s *TPM) Open(t testing.TB) transport.TPMCloser {
	t.Helper()
	c, err := s.open()
	if err != nil {
		t.Fatalf("cannot connect to swtpm: %v", err)
	}
	return c
}

func (s *TPM) open() (transport.TPMCloser, error) {
	return tcp.Open(tcp.Config{
		CommandAddress:  "127.0.0.1:" + strconv.Itoa(s.Port),
		PlatformAddress: "127.0.0.1:" + strconv.Itoa(s.Port+1),
	})
}

func (s *TPM) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-s.done:
			return errors.New("swtpm exited")
		default:
		}
		c, err := s.open()
		if err == nil {
			_, err = tpm2.GetRandom{BytesRequested: 8}.Execute(c)
			c.Close()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("swtpm not answering after %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePortPair finds P such that P and P+1 are free on 127.0.0.1.
func freePortPair() (int, error) {
	for i := 0; i < 50; i++ {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		l1.Close()
		if err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, errors.New("no two consecutive free ports")
}

// ExtendPCR extends a PCR (in the SHA-256 bank) with a random digest, as a
// firmware or Secure Boot update would change PCR 7. PCR 16 is the debug
// PCR, resettable and extendable at the default locality.
func (s *TPM) ExtendPCR(t testing.TB, pcr int) {
	t.Helper()
	c := s.Open(t)
	defer c.Close()
	ExtendPCR(t, c, pcr)
}

// ExtendPCR extends pcr over an open connection.
func ExtendPCR(t testing.TB, c transport.TPM, pcr int) {
	t.Helper()
	d := make([]byte, 32)
	if _, err := rand.Read(d); err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d}}},
	}).Execute(c); err != nil {
		t.Fatalf("PCR_Extend(%d): %v", pcr, err)
	}
}
