//go:build cgo

package seal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Unit tests of the tpm2 seal on go-tpm-tools' in-process simulator (the TCG
// reference implementation, linked with cgo). The agent binary never links
// it: it is imported only here, and this file needs cgo. The swtpm tests in
// tpm2_test.go are the ones against a TPM in its own process.

// sim is one simulator, shared by every connection the seal opens during a
// test (simulator.Get resets the TPM; only one exists at a time).
type sim struct {
	s *simulator.Simulator
	// mangle, when set, may alter a command's response (an interposer).
	mangle func(cmd, rsp []byte)
}

func startSim(t testing.TB) *sim {
	t.Helper()
	s, err := simulator.Get()
	if err != nil {
		t.Fatalf("simulator: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return &sim{s: s}
}

func (m *sim) Send(cmd []byte) ([]byte, error) {
	cmdCopy := bytes.Clone(cmd) // the simulator decrypts commands in place
	rsp, err := transport.FromReadWriter(m.s).Send(cmd)
	if err == nil && m.mangle != nil {
		m.mangle(cmdCopy, rsp)
	}
	return rsp, err
}

func (m *sim) Close() error { return nil }

func (m *sim) open(string) (transport.TPMCloser, error) { return m, nil }

func commandCode(cmd []byte) tpm2.TPMCC { return tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) }

func simEnv(pcrs ...int) Env { return Env{TPMDevice: "tcp://simulator:1", TPMPCRs: pcrs} }

func TestTPM2SimRoundTrip(t *testing.T) {
	m := startSim(t)
	p := &tpm2Provider{open: m.open}
	s, st := mustCreate(t, p, simEnv())
	file := encryptTo(t, secretPayload, recipientOf(t, s))
	loaded, err := p.Load(simEnv(), st)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := openVia(loaded, file); err != nil || !bytes.Equal(got, secretPayload) {
		t.Fatalf("decrypt: %q, %v", got, err)
	}
	checkNoTransients(t, m)
}

func TestTPM2SimRebootAndClear(t *testing.T) {
	m := startSim(t)
	p := &tpm2Provider{open: m.open}
	s, _ := mustCreate(t, p, simEnv(16))
	file := encryptTo(t, secretPayload, recipientOf(t, s))

	pcrExtend16(t, m)
	if _, err := openVia(s, file); !errors.Is(err, ErrPolicy) {
		t.Fatalf("PCR 16 extended: err = %v, want ErrPolicy", err)
	}
	if _, err := decrypt(file, &tpm2Identity{s: s.(*tpm2Seal)}); !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("PCR 16 extended, TPM enforcement: err = %v, want TPM_RC_POLICY_FAIL", err)
	}
	checkNoTransients(t, m)

	// A reboot resets the PCRs and keeps the seeds: the same SRK comes back.
	if err := m.s.Reset(); err != nil {
		t.Fatal(err)
	}
	if got, err := openVia(s, file); err != nil || !bytes.Equal(got, secretPayload) {
		t.Fatalf("after reboot: %v", err)
	}

	// A cleared TPM (new seeds) is another TPM.
	if err := m.s.ManufactureReset(); err != nil {
		t.Fatal(err)
	}
	if _, err := openVia(s, file); !errors.Is(err, ErrWrongTPM) {
		t.Fatalf("after clear: err = %v, want ErrWrongTPM", err)
	}
	checkNoTransients(t, m)
}

func TestTPM2SimSecretNeverOnTheWire(t *testing.T) {
	m := startSim(t)
	testSecretNeverOnTheWire(t, simEnv(), m.open)
	testSecretNeverOnTheWire(t, simEnv(16), m.open)
}

// An interposer that alters the ECDH answer is caught by the session's
// response HMAC: the unwrap fails, it does not go on with a wrong secret.
func TestTPM2SimTamperedECDHResponse(t *testing.T) {
	m := startSim(t)
	p := &tpm2Provider{open: m.open}
	s, _ := mustCreate(t, p, simEnv())
	file := encryptTo(t, secretPayload, recipientOf(t, s))
	m.mangle = func(cmd, rsp []byte) {
		if commandCode(cmd) == tpm2.TPMCCECDHZGen && len(rsp) > 20 {
			rsp[20] ^= 1 // inside outPoint.x
		}
	}
	_, err := openVia(s, file)
	if err == nil || !strings.Contains(err.Error(), "HMAC") {
		t.Fatalf("tampered ECDHZGen response: err = %v, want an HMAC failure", err)
	}
}

// An interposer that swaps the public key TPM2_Create returns (to have
// vaults encrypted to its own key) is caught by the salted HMAC session.
func TestTPM2SimTamperedCreateResponse(t *testing.T) {
	m := startSim(t)
	tampered := false
	m.mangle = func(cmd, rsp []byte) {
		if commandCode(cmd) != tpm2.TPMCCCreate || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
			return
		}
		// header (10), parameterSize (4), outPrivate (2+n), outPublic (2+m):
		// flip the last byte of outPublic, the key's Y coordinate.
		off := 14
		off += 2 + int(binary.BigEndian.Uint16(rsp[off:]))
		off += 2 + int(binary.BigEndian.Uint16(rsp[off:]))
		rsp[off-1] ^= 1
		tampered = true
	}
	_, _, err := (&tpm2Provider{open: m.open}).Create(simEnv())
	if !tampered || err == nil || !strings.Contains(err.Error(), "HMAC") {
		t.Fatalf("tampered Create response: err = %v, want an HMAC failure", err)
	}
	t.Logf("tampered Create: %v", err)
}

func TestTPM2SimOwnerPassword(t *testing.T) {
	m := startSim(t)
	if _, err := (tpm2.HierarchyChangeAuth{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NewAuth:    tpm2.TPM2BAuth{Buffer: []byte("owner-pw")},
	}).Execute(m); err != nil {
		t.Fatal(err)
	}
	_, _, err := (&tpm2Provider{open: m.open}).Create(simEnv())
	t.Logf("owner password: %v", err)
	if !errors.Is(err, tpm2.TPMRCBadAuth) || !strings.Contains(err.Error(), "owner hierarchy has a password") {
		t.Fatalf("owner password set: err = %v", err)
	}
}

func BenchmarkUnsealTPM2Simulator(b *testing.B) {
	m := startSim(b)
	benchUnseal(b, &tpm2Provider{open: m.open}, simEnv())
}
