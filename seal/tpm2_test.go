package seal

import (
	"bytes"
	"crypto/ecdh"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"
	"filippo.io/age/armor"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/rapidvalue/tier3-agent/internal/swtpmtest"
	"github.com/rapidvalue/tier3-agent/seal/internal/tpmstate"
)

// Tests of the tpm2 seal against swtpm, a real TPM 2.0 implementation
// (libtpms) in its own process, reached over its TCP protocol like any
// RV_AGENT_TPM_DEVICE=tcp://… deployment.

func encryptTo(t testing.TB, payload []byte, rs ...age.Recipient) []byte {
	t.Helper()
	var buf bytes.Buffer
	aw := armor.NewWriter(&buf)
	w, err := age.Encrypt(aw, rs...)
	if err != nil {
		t.Fatalf("age.Encrypt: %v", err)
	}
	w.Write(payload)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := aw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func decrypt(file []byte, ids ...age.Identity) ([]byte, error) {
	r, err := age.Decrypt(armor.NewReader(bytes.NewReader(file)), ids...)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// openVia returns the seal's Identity and decrypts file with it.
func openVia(s Seal, file []byte) ([]byte, error) {
	id, err := s.Identity()
	if err != nil {
		return nil, err
	}
	return decrypt(file, id)
}

func mustCreate(t testing.TB, p *tpm2Provider, env Env) (Seal, State) {
	t.Helper()
	s, st, err := p.Create(env)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return s, st
}

func recipientOf(t testing.TB, s Seal) age.Recipient {
	t.Helper()
	r, err := s.Recipient()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var secretPayload = []byte(`{"salesforce-prod":{"client_secret":"zq8Vw1-PAYLOAD-MARKER-3kf9","refresh_token":"5Aef0c0ffee"}}`)

func TestTPM2RoundTrip(t *testing.T) {
	sw := swtpmtest.Start(t)
	env := Env{TPMDevice: sw.Device}
	s, st := mustCreate(t, &tpm2Provider{}, env)
	if st.Kind != KindTPM2 || !strings.HasPrefix(st.Recipient, "age1tag1") {
		t.Fatalf("state = %+v, want a tpm2 seal with an age1tag1 recipient", st)
	}
	// The recipient is plain age: parse it from its string, as another host
	// or the upstream age CLI would, and encrypt without any TPM.
	r, err := ParseRecipient(st.Recipient)
	if err != nil {
		t.Fatalf("ParseRecipient(%q): %v", st.Recipient, err)
	}
	file := encryptTo(t, secretPayload, r)

	// Through the registry, from the state as read back from the seal file.
	raw, _ := json.Marshal(st)
	var st2 State
	if err := json.Unmarshal(raw, &st2); err != nil {
		t.Fatal(err)
	}
	loaded, err := Load(env, st2)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	got, err := openVia(loaded, file)
	if err != nil {
		t.Fatalf("decrypt: %v", err)
	}
	if !bytes.Equal(got, secretPayload) {
		t.Fatalf("got %q", got)
	}
	// The Seal that Create returned works too, and so does a second open.
	for range 2 {
		if got, err := openVia(s, file); err != nil || !bytes.Equal(got, secretPayload) {
			t.Fatalf("decrypt with the created seal: %v", err)
		}
	}
	assertNoTransients(t, sw)
}

func TestTPM2RecoveryRecipientMixes(t *testing.T) {
	sw := swtpmtest.Start(t)
	s, _ := mustCreate(t, &tpm2Provider{}, Env{TPMDevice: sw.Device})
	recovery, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	file := encryptTo(t, secretPayload, recipientOf(t, s), recovery.Recipient())
	for name, open := range map[string]func() ([]byte, error){
		"tpm":      func() ([]byte, error) { return openVia(s, file) },
		"recovery": func() ([]byte, error) { return decrypt(file, recovery) },
	} {
		got, err := open()
		if err != nil || !bytes.Equal(got, secretPayload) {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
	// A file for the recovery key alone never reaches the TPM.
	only := encryptTo(t, secretPayload, recovery.Recipient())
	id, err := s.Identity()
	if err != nil {
		t.Fatal(err)
	}
	sw.Stop()
	if _, err := decrypt(only, id); !errors.As(err, new(*age.NoIdentityMatchError)) {
		t.Errorf("file without a tag stanza: err = %v, want NoIdentityMatchError", err)
	}
}

func TestTPM2OtherTPMRefuses(t *testing.T) {
	a, b := swtpmtest.Start(t), swtpmtest.Start(t)
	sA, stA := mustCreate(t, &tpm2Provider{}, Env{TPMDevice: a.Device})
	file := encryptTo(t, secretPayload, recipientOf(t, sA))

	// The same seal file on a host with another TPM.
	onB, err := Load(Env{TPMDevice: b.Device}, stA)
	if err != nil {
		t.Fatal(err)
	}
	_, err = openVia(onB, file)
	if !errors.Is(err, ErrWrongTPM) {
		t.Fatalf("open on TPM B: err = %v, want ErrWrongTPM", err)
	}
	for _, want := range []string{"storage root key", "vault rekey --identity RECOVERY_KEY --seal tpm2"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	assertNoTransients(t, b)

	// A vault encrypted to both hosts' seals opens on each.
	sB, _ := mustCreate(t, &tpm2Provider{}, Env{TPMDevice: b.Device})
	both := encryptTo(t, secretPayload, recipientOf(t, sB), recipientOf(t, sA))
	for name, s := range map[string]Seal{"A": sA, "B": sB} {
		if got, err := openVia(s, both); err != nil || !bytes.Equal(got, secretPayload) {
			t.Errorf("vault for A and B, opened on %s: %v", name, err)
		}
	}
}

// Copying the state to another TPM and making it claim that TPM's SRK does
// not help: the wrapped key is bound to TPM A's storage seed.
func TestTPM2CopiedStateDoesNotLoad(t *testing.T) {
	a, b := swtpmtest.Start(t), swtpmtest.Start(t)
	sA, stA := mustCreate(t, &tpm2Provider{}, Env{TPMDevice: a.Device})
	file := encryptTo(t, secretPayload, recipientOf(t, sA))

	c := b.Open(t)
	srkB, err := createSRK(c)
	if err != nil {
		t.Fatal(err)
	}
	flush(c, srkB.handle)
	c.Close()

	var rec map[string]any
	if err := json.Unmarshal(stA.Data, &rec); err != nil {
		t.Fatal(err)
	}
	rec["srk_name"] = hex.EncodeToString(srkB.name.Buffer)
	forged := stA
	forged.Data, _ = json.Marshal(rec)

	onB, err := Load(Env{TPMDevice: b.Device}, forged)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	_, err = openVia(onB, file)
	if !errors.Is(err, ErrWrongTPM) || !strings.Contains(err.Error(), "cannot load") {
		t.Fatalf("open of copied state on TPM B: err = %v, want ErrWrongTPM (cannot load)", err)
	}
	assertNoTransients(t, b)
}

func TestTPM2PCRPolicy(t *testing.T) {
	sw := swtpmtest.Start(t)
	env := Env{TPMDevice: sw.Device, TPMPCRs: []int{16}}
	resetPCR16(t, sw)
	s, st := mustCreate(t, &tpm2Provider{}, env)
	file := encryptTo(t, secretPayload, recipientOf(t, s))
	if got, err := openVia(s, file); err != nil || !bytes.Equal(got, secretPayload) {
		t.Fatalf("open with PCR 16 unchanged: %v", err)
	}
	lines := strings.Join((&tpm2Provider{}).Describe(st), "\n")
	if !strings.Contains(lines, "sha256:16") {
		t.Errorf("Describe does not show the PCRs:\n%s", lines)
	}

	extendPCR16(t, sw)

	// Identity's own check of the PCR values.
	_, err := s.Identity()
	if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "PCR 16 changed") ||
		!strings.Contains(err.Error(), "--seal tpm2") {
		t.Fatalf("Identity after extending PCR 16: err = %v, want ErrPolicy naming the PCRs and the recovery", err)
	}
	// The TPM's enforcement, without that check: TPM_RC_POLICY_FAIL.
	_, err = decrypt(file, &tpm2Identity{s: s.(*tpm2Seal)})
	if !errors.Is(err, ErrPolicy) || !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("Unwrap after extending PCR 16: err = %v, want ErrPolicy wrapping TPM_RC_POLICY_FAIL", err)
	}
	assertNoTransients(t, sw)

	// Back to the sealed value (PCR 16 is resettable), it opens again.
	resetPCR16(t, sw)
	if got, err := openVia(s, file); err != nil || !bytes.Equal(got, secretPayload) {
		t.Fatalf("open with PCR 16 reset: %v", err)
	}
}

func TestTPM2PCRValidation(t *testing.T) {
	p := &tpm2Provider{open: func(string) (transport.TPMCloser, error) {
		t.Fatal("the TPM was reached with an invalid PCR list")
		return nil, nil
	}}
	for _, pcrs := range [][]int{{24}, {-1}, {7, 99}} {
		if _, _, err := p.Create(Env{TPMPCRs: pcrs}); err == nil || !strings.Contains(err.Error(), "--tpm-pcrs") {
			t.Errorf("Create with PCRs %v: err = %v", pcrs, err)
		}
	}
}

func TestTPM2Unavailable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "tcp://" + l.Addr().String()
	l.Close()
	devices := []string{closed}
	if runtime.GOOS == "linux" {
		devices = append(devices, "/dev/no-such-tpmrm0")
	}
	for _, dev := range devices {
		_, _, err := (&tpm2Provider{}).Create(Env{TPMDevice: dev})
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s: err = %v, want ErrUnavailable", dev, err)
			continue
		}
		for _, want := range []string{"keyring", "identity"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q does not name the %s seal", dev, err, want)
			}
		}
	}
	for _, dev := range []string{"tcp://127.0.0.1", "tcp://:1", "tcp://127.0.0.1:65535", "tpmrm0"} {
		if _, _, err := (&tpm2Provider{}).Create(Env{TPMDevice: dev}); err == nil || errors.Is(err, ErrUnavailable) {
			t.Errorf("%s: err = %v, want a configuration error", dev, err)
		}
	}
}

func TestTPM2DescribeAndLoadRejectMismatch(t *testing.T) {
	sw := swtpmtest.Start(t)
	_, st := mustCreate(t, &tpm2Provider{}, Env{TPMDevice: sw.Device})
	lines := strings.Join((&tpm2Provider{}).Describe(st), "\n")
	for _, want := range []string{sw.Device, "storage root key", "PCR policy: none"} {
		if !strings.Contains(lines, want) {
			t.Errorf("Describe lacks %q:\n%s", want, lines)
		}
	}
	other, _ := age.GenerateX25519Identity()
	bad := st
	bad.Recipient = other.Recipient().String()
	if _, err := Load(Env{}, bad); err == nil {
		t.Error("Load accepted a state whose recipient is not the TPM key's")
	}
	bad = st
	bad.Data = []byte(`{"version":1}`)
	if _, err := Load(Env{}, bad); err == nil || !strings.Contains(err.Error(), "rekey") {
		t.Errorf("Load of a malformed record: %v", err)
	}
}

// TestTPM2SecretNeverOnTheWire records every byte between the seal and swtpm
// while it opens a vault, and searches the recording for the ECDH shared
// secret Z, the file key and the payload. To show that the search can fail,
// the same Z is then obtained through an unsalted password session (a
// test-only path), and the search finds it.
func TestTPM2SecretNeverOnTheWire(t *testing.T) {
	sw := swtpmtest.Start(t)
	testSecretNeverOnTheWire(t, Env{TPMDevice: sw.Device}, nil)
	testSecretNeverOnTheWire(t, Env{TPMDevice: sw.Device, TPMPCRs: []int{16}}, nil)
}

// testSecretNeverOnTheWire runs on any TPM; open nil means openTPM.
func testSecretNeverOnTheWire(t *testing.T, env Env, open func(string) (transport.TPMCloser, error)) {
	if open == nil {
		open = openTPM
	}
	s, st := mustCreate(t, &tpm2Provider{open: open}, env)
	file := encryptTo(t, secretPayload, recipientOf(t, s))

	rec := &recorder{open: open}
	loaded, err := (&tpm2Provider{open: rec.openTPM}).Load(env, st)
	if err != nil {
		t.Fatal(err)
	}
	id, err := loaded.Identity()
	if err != nil {
		t.Fatal(err)
	}
	cap := &capturingIdentity{inner: id}
	got, err := decrypt(file, cap)
	if err != nil || !bytes.Equal(got, secretPayload) {
		t.Fatalf("decrypt through the recorder: %v", err)
	}
	if rec.commands == 0 {
		t.Fatal("nothing was recorded")
	}

	// Z for the file's ephemeral share, through an unsalted password session.
	enc := tagShare(t, cap.stanzas)
	plain := &recorder{open: open}
	z := unsaltedZ(t, plain, loaded.(*tpm2Seal), enc)

	for name, secret := range map[string][]byte{
		"ECDH shared secret Z": z,
		"file key":             cap.fileKey,
		"payload":              []byte("PAYLOAD-MARKER"),
	} {
		if off := findAnyWindow(rec.bytes(), secret); off >= 0 {
			t.Errorf("PCRs %v: the %s crossed the TPM link in clear (at byte %d of %d recorded)", env.TPMPCRs, name, off, len(rec.bytes()))
		}
	}
	if findAnyWindow(plain.bytes(), z) < 0 {
		t.Fatalf("PCRs %v: the search did not find Z in the unsalted recording: the test cannot fail", env.TPMPCRs)
	}
	t.Logf("PCRs %v: %d commands, %d bytes recorded, no 8-byte window of Z, the file key or the payload among them; the unsalted session leaked Z",
		env.TPMPCRs, rec.commands, len(rec.bytes()))
}

// unsaltedZ is the test-only insecure path: ECDHZGen authorized by a plain
// password session (with PCRs bound, an unsalted policy session), no
// parameter encryption.
func unsaltedZ(t *testing.T, rec *recorder, s *tpm2Seal, enc []byte) []byte {
	t.Helper()
	c, err := rec.openTPM(s.device)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srk, err := createSRK(c)
	if err != nil {
		t.Fatal(err)
	}
	defer flush(c, srk.handle)
	sess, err := s.beginWith(c, srk)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.flushKey()
	var auth tpm2.Session = tpm2.PasswordAuth(nil)
	if len(s.st.PCRs) > 0 {
		ps, closeSess, err := tpm2.PolicySession(c, tpm2.TPMAlgSHA256, 16)
		if err != nil {
			t.Fatal(err)
		}
		defer closeSess()
		if _, err := (tpm2.PolicyPCR{PolicySession: ps.Handle(), Pcrs: tpmstate.Selection(s.st.PCRs)}).Execute(c); err != nil {
			t.Fatal(err)
		}
		auth = ps
	}
	rsp, err := tpm2.ECDHZGen{
		KeyHandle: tpm2.AuthHandle{Handle: sess.key.Handle, Name: sess.key.Name, Auth: auth},
		InPoint: tpm2.New2B(tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: enc[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: enc[33:]},
		}),
	}.Execute(c)
	if err != nil {
		t.Fatalf("unsalted ECDHZGen: %v", err)
	}
	pt, err := rsp.OutPoint.Contents()
	if err != nil {
		t.Fatal(err)
	}
	return pt.X.Buffer
}

func tagShare(t *testing.T, stanzas []*age.Stanza) []byte {
	t.Helper()
	for _, s := range stanzas {
		if s.Type == p256TagType {
			enc, err := b64.DecodeString(s.Args[1])
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ecdh.P256().NewPublicKey(enc); err != nil {
				t.Fatal(err)
			}
			return enc
		}
	}
	t.Fatal("no p256tag stanza")
	return nil
}

// findAnyWindow returns the offset in hay of any 8-byte window of needle, or -1.
func findAnyWindow(hay, needle []byte) int {
	const w = 8
	for i := 0; i+w <= len(needle); i++ {
		if off := bytes.Index(hay, needle[i:i+w]); off >= 0 {
			return off
		}
	}
	return -1
}

// recorder records every command and response on the TPM link. Commands are
// copied before they are sent: a transport may decrypt them in place.
type recorder struct {
	open     func(string) (transport.TPMCloser, error)
	mu       sync.Mutex
	log      bytes.Buffer
	commands int
}

func (r *recorder) openTPM(device string) (transport.TPMCloser, error) {
	c, err := r.open(device)
	if err != nil {
		return nil, err
	}
	return &recordingTPM{r: r, c: c}, nil
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.log.Bytes())
}

type recordingTPM struct {
	r *recorder
	c transport.TPMCloser
}

func (t *recordingTPM) Send(cmd []byte) ([]byte, error) {
	t.r.mu.Lock()
	t.r.log.Write(cmd)
	t.r.commands++
	t.r.mu.Unlock()
	rsp, err := t.c.Send(cmd)
	t.r.mu.Lock()
	t.r.log.Write(rsp)
	t.r.mu.Unlock()
	return rsp, err
}

func (t *recordingTPM) Close() error { return t.c.Close() }

// capturingIdentity records the stanzas it is given and the file key found.
type capturingIdentity struct {
	inner   age.Identity
	stanzas []*age.Stanza
	fileKey []byte
}

func (c *capturingIdentity) Unwrap(ss []*age.Stanza) ([]byte, error) {
	c.stanzas = ss
	k, err := c.inner.Unwrap(ss)
	c.fileKey = bytes.Clone(k)
	return k, err
}

func resetPCR16(t *testing.T, sw *swtpmtest.TPM) {
	t.Helper()
	c := sw.Open(t)
	defer c.Close()
	if _, err := (tpm2.PCRReset{PCRHandle: tpm2.AuthHandle{Handle: 16, Auth: tpm2.PasswordAuth(nil)}}).Execute(c); err != nil {
		t.Fatalf("PCR_Reset(16): %v", err)
	}
}

func extendPCR16(t *testing.T, sw *swtpmtest.TPM) { sw.ExtendPCR(t, 16) }

func pcrExtend16(t testing.TB, c transport.TPM) { swtpmtest.ExtendPCR(t, c, 16) }

// assertNoTransients checks that the seal left no object or session loaded:
// swtpm has no resource manager, so a leak would stay until it restarts.
func assertNoTransients(t *testing.T, sw *swtpmtest.TPM) {
	t.Helper()
	c := sw.Open(t)
	defer c.Close()
	checkNoTransients(t, c)
}

func checkNoTransients(t testing.TB, c transport.TPM) {
	t.Helper()
	for name, first := range map[string]tpm2.TPMHandle{
		"transient objects": 0x80000000,
		"loaded sessions":   0x02000000,
		"saved sessions":    0x03000000,
	} {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 64}.Execute(c)
		if err != nil {
			t.Fatalf("GetCapability: %v", err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for _, h := range hs.Handle {
			if h>>24 == first>>24 {
				left = append(left, "0x"+strconv.FormatUint(uint64(h), 16))
			}
		}
		if len(left) > 0 {
			t.Errorf("%s left in the TPM: %v", name, left)
		}
	}
}
