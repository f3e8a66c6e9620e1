package seal

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"filippo.io/age"
	"filippo.io/age/tag"
	"filippo.io/hpke"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/tcp"
	"github.com/rapidvalue/tier3-agent/seal/internal/tpmstate"
)

// The tpm2 seal: an ECC P-256 ECDH key made by, and never leaving, the host's
// TPM 2.0. Its public point is an age tag recipient (age1tag1…), so anyone can
// encrypt a vault to this host without its TPM; only the TPM can compute the
// ECDH shared secret that opens it.
//
// The key's parent is the ECC P-256 SRK (tpm2.ECCSRKTemplate) of the owner
// hierarchy, re-created on every use: no persistent handle, no owner password.
// Its Name is recorded at seal time and compared after every CreatePrimary, so
// another TPM, a cleared one, or something between the agent and the TPM
// pretending to be one, is reported as ErrWrongTPM.
//
// Sessions (SHA-256, salted with the SRK, so their keys come from a salt
// only that TPM can decrypt):
//   - Create: a salted HMAC session on the SRK, which authenticates the
//     response: the public key handed back cannot be swapped on the way.
//   - ECDHZGen: a salted HMAC session (or, with PCRs bound, a salted policy
//     session running PolicyPCR) with AES-128-CFB response encryption, so the
//     shared secret crosses the bus encrypted and the response is
//     authenticated.
//   - CreatePrimary, Load, PCRRead, FlushContext carry nothing secret: the
//     SRK's public area is checked against its recorded Name, the loaded key
//     against the Name computed from the recorded public area (which the
//     ECDHZGen session HMAC also covers).

func init() { Register(KindTPM2, &tpm2Provider{}) }

// DefaultTPMDevice is the kernel's TPM resource manager.
const DefaultTPMDevice = "/dev/tpmrm0"

var (
	// ErrWrongTPM means the TPM reached is not the one the seal was made
	// with: another machine's, a cleared one, or an interposer.
	ErrWrongTPM = errors.New("not the TPM this vault was sealed with")
	// ErrTPMDeviceUnsupported is returned for TPM device paths on systems
	// where this build has no device transport (all but Linux); tcp://
	// devices work everywhere.
	ErrTPMDeviceUnsupported = errors.New("TPM device paths are supported on Linux only")
)

const tpm2Recovery = "open the vault with its recovery key and re-seal it: tier3-agent vault rekey --identity RECOVERY_KEY --seal tpm2"

// The age tag stanza (filippo.io/age/tag): HPKE DHKEM(P-256, HKDF-SHA256),
// HKDF-SHA256, ChaCha20-Poly1305, with this info string.
const (
	p256TagType  = "p256tag"
	p256TagLabel = "age-encryption.org/p256tag"
)

type tpm2Provider struct {
	// open connects to a TPM; nil means openTPM. Tests wrap or replace it
	// (a recording transport, the in-process simulator).
	open func(device string) (transport.TPMCloser, error)
}

var (
	_ Provider  = (*tpm2Provider)(nil)
	_ Describer = (*tpm2Provider)(nil)
)

func (p *tpm2Provider) connect(device string) (transport.TPMCloser, error) {
	if p.open != nil {
		return p.open(device)
	}
	return openTPM(device)
}

// openTPM opens RV_AGENT_TPM_DEVICE: tcp://HOST:PORT (a software TPM; PORT
// takes commands, PORT+1 is its platform port) or a device path.
func openTPM(device string) (transport.TPMCloser, error) {
	rest, ok := strings.CutPrefix(device, "tcp://")
	if !ok {
		return openDeviceTPM(device)
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil || host == "" {
		return nil, fmt.Errorf("RV_AGENT_TPM_DEVICE %q: want tcp://HOST:PORT", device)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || p == 65535 {
		return nil, fmt.Errorf("RV_AGENT_TPM_DEVICE %q: PORT must be 1 to 65534 (PORT+1 is the platform port)", device)
	}
	// Never PowerOn: swtpm's control protocol is not the reference
	// simulator's; it is started with --flags not-need-init,startup-clear.
	t, err := tcp.Open(tcp.Config{
		CommandAddress:  net.JoinHostPort(host, port),
		PlatformAddress: net.JoinHostPort(host, strconv.FormatUint(p+1, 10)),
	})
	if err != nil {
		return nil, fmt.Errorf("tpm2 seal: %w: no software TPM answers at %s (%v): start it, or choose --seal keyring or --seal identity", ErrUnavailable, device, err)
	}
	return t, nil
}

func tpmDevice(env Env, recorded string) string {
	switch {
	case env.TPMDevice != "":
		return env.TPMDevice
	case recorded != "":
		return recorded
	}
	return DefaultTPMDevice
}

func (p *tpm2Provider) Create(env Env) (Seal, State, error) {
	pcrs := slices.Clone(env.TPMPCRs)
	slices.Sort(pcrs)
	pcrs = slices.Compact(pcrs)
	if err := tpmstate.ValidPCRs(pcrs); err != nil {
		return nil, State{}, fmt.Errorf("--tpm-pcrs: %v", err)
	}
	device := tpmDevice(env, "")
	t, err := p.connect(device)
	if err != nil {
		return nil, State{}, err
	}
	defer t.Close()
	srk, err := createSRK(t)
	if err != nil {
		return nil, State{}, err
	}
	defer flush(t, srk.handle)

	var digest, policy []byte
	if len(pcrs) > 0 {
		if digest, err = readPCRDigest(t, pcrs); err != nil {
			return nil, State{}, err
		}
		if policy, err = tpmstate.PCRPolicy(pcrs, digest); err != nil {
			return nil, State{}, err
		}
	}
	rsp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{
			Handle: srk.handle,
			Name:   srk.name,
			Auth:   tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Salted(srk.handle, srk.public)),
		},
		InPublic: tpm2.New2B(tpmstate.KeyTemplate(policy)),
	}.Execute(t)
	if err != nil {
		return nil, State{}, fmt.Errorf("tpm2 seal: the TPM could not create a key: %w", err)
	}
	ts, err := tpmstate.New(device, srk.name.Buffer, rsp.OutPublic, rsp.OutPrivate, pcrs, digest)
	if err != nil {
		return nil, State{}, fmt.Errorf("tpm2 seal: the TPM returned an unexpected key: %w", err)
	}
	s := &tpm2Seal{p: p, device: device, st: ts}
	if s.recipient, err = tagRecipient(ts.Key()); err != nil {
		return nil, State{}, err
	}

	// Prove the key works now, under its policy, before anything is
	// encrypted to it: one ECDH against a software key.
	sess, err := s.beginWith(t, srk)
	if err != nil {
		return nil, State{}, err
	}
	defer sess.flushKey()
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, State{}, err
	}
	want, err := eph.ECDH(ts.Key())
	if err != nil {
		return nil, State{}, err
	}
	got, err := sess.zgen(eph.PublicKey())
	if err != nil {
		return nil, State{}, err
	}
	ok := subtle.ConstantTimeCompare(got, want) == 1
	clear(got)
	clear(want)
	if !ok {
		return nil, State{}, errors.New("tpm2 seal: the TPM's ECDH result does not match its public key: this TPM cannot be used")
	}

	data, err := ts.Marshal()
	if err != nil {
		return nil, State{}, err
	}
	return s, State{Kind: KindTPM2, Recipient: s.recipient.String(), Data: data}, nil
}

func (p *tpm2Provider) Load(env Env, st State) (Seal, error) {
	ts, err := tpmstate.Parse(st.Data)
	if err != nil {
		return nil, fmt.Errorf("tpm2 seal: %w: restore the seal file from a backup, or %s", err, tpm2Recovery)
	}
	r, err := tagRecipient(ts.Key())
	if err != nil {
		return nil, err
	}
	if st.Recipient != r.String() {
		return nil, fmt.Errorf("tpm2 seal: the seal file's recipient is not the TPM key's: restore the seal file from a backup, or %s", tpm2Recovery)
	}
	return &tpm2Seal{p: p, device: tpmDevice(env, ts.Device), st: ts, recipient: r}, nil
}

func (p *tpm2Provider) Describe(st State) []string {
	ts, err := tpmstate.Parse(st.Data)
	if err != nil {
		return []string{"tpm2: " + err.Error()}
	}
	device := ts.Device
	if device == "" {
		device = DefaultTPMDevice
	}
	pcrs := "tpm2 PCR policy: none (any boot state opens it)"
	if len(ts.PCRs) > 0 {
		pcrs = fmt.Sprintf("tpm2 PCR policy: sha256:%s (digest %s… at seal time)",
			joinInts(ts.PCRs), hex.EncodeToString(ts.PCRDigest[:8]))
	}
	return []string{
		"tpm2 device: " + device + " (at seal time; RV_AGENT_TPM_DEVICE overrides)",
		fmt.Sprintf("tpm2 storage root key: ECC P-256, re-created on each use, Name %s…", hex.EncodeToString(ts.SRKName[:10])),
		pcrs,
	}
}

type tpm2Seal struct {
	p         *tpm2Provider
	device    string
	st        *tpmstate.State
	recipient *tag.Recipient
}

var _ Seal = (*tpm2Seal)(nil)

func (s *tpm2Seal) Recipient() (age.Recipient, error) { return s.recipient, nil }

// Identity checks that the TPM answers and, for a PCR-bound seal, that the
// PCRs still hold their sealed values. The TPM is used again, and the SRK
// checked, by each Unwrap that finds a stanza for this key.
func (s *tpm2Seal) Identity() (age.Identity, error) {
	t, err := s.p.connect(s.device)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if len(s.st.PCRs) > 0 {
		d, err := readPCRDigest(t, s.st.PCRs)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(d, s.st.PCRDigest) {
			return nil, s.pcrsChanged()
		}
	}
	return &tpm2Identity{s: s}, nil
}

func (s *tpm2Seal) pcrsChanged() error {
	return fmt.Errorf("tpm2 seal: %w: %s changed since the vault was sealed (firmware or Secure Boot update?): %s",
		ErrPolicy, pcrList(s.st.PCRs), tpm2Recovery)
}

// tpm2Identity is the age.Identity of a tpm2 seal.
type tpm2Identity struct{ s *tpm2Seal }

var _ age.Identity = (*tpm2Identity)(nil)

// Unwrap opens the first p256tag stanza made for this TPM key. Stanzas of
// other types are skipped; if none is for this key the error wraps
// age.ErrIncorrectIdentity. The TPM is reached only when a stanza's tag
// matches the key.
func (id *tpm2Identity) Unwrap(stanzas []*age.Stanza) ([]byte, error) {
	var sess *tpmSession
	defer func() {
		if sess != nil {
			sess.close()
		}
	}()
	for _, st := range stanzas {
		if st.Type != p256TagType {
			continue
		}
		enc, ok, err := id.match(st)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		if sess == nil {
			if sess, err = id.s.begin(); err != nil {
				return nil, err
			}
		}
		kx := &tpmKeyExchanger{pub: id.s.st.Key(), sess: sess}
		priv, err := hpke.NewDHKEMPrivateKey(kx)
		if err != nil {
			return nil, err
		}
		r, err := hpke.NewRecipient(enc, priv, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), []byte(p256TagLabel))
		kx.wipe() // hpke keeps only what it derived from Z
		if err != nil {
			if kx.err != nil {
				return nil, kx.err
			}
			return nil, fmt.Errorf("tpm2 seal: invalid p256tag stanza: %v", err)
		}
		fileKey, err := r.Open(nil, st.Body)
		if err != nil {
			// The tag is a 4-byte hint: another recipient's may collide.
			continue
		}
		return fileKey, nil
	}
	return nil, age.ErrIncorrectIdentity
}

var b64 = base64.RawStdEncoding.Strict()

// match parses a p256tag stanza and reports whether its tag is this key's.
func (id *tpm2Identity) match(st *age.Stanza) (enc []byte, ok bool, err error) {
	if len(st.Args) != 2 || strings.ContainsAny(st.Args[0]+st.Args[1], "\r\n") {
		return nil, false, errors.New("tpm2 seal: malformed p256tag stanza")
	}
	t, err := b64.DecodeString(st.Args[0])
	if err != nil || len(t) != 4 {
		return nil, false, errors.New("tpm2 seal: malformed p256tag stanza tag")
	}
	enc, err = b64.DecodeString(st.Args[1])
	if err != nil || len(enc) != 65 {
		return nil, false, errors.New("tpm2 seal: malformed p256tag stanza share")
	}
	if len(st.Body) != 32 {
		return nil, false, errors.New("tpm2 seal: malformed p256tag stanza body")
	}
	want, err := id.s.recipient.Tag(enc)
	if err != nil {
		return nil, false, fmt.Errorf("tpm2 seal: %v", err)
	}
	return enc, subtle.ConstantTimeCompare(t, want) == 1, nil
}

// tpmKeyExchanger is the TPM key as an hpke key exchanger (crypto/ecdh's
// KeyExchanger): hpke runs DHKEM and the tag unwrap, the TPM only the ECDH.
type tpmKeyExchanger struct {
	pub  *ecdh.PublicKey
	sess *tpmSession
	z    []byte
	err  error
}

func (k *tpmKeyExchanger) PublicKey() *ecdh.PublicKey { return k.pub }
func (k *tpmKeyExchanger) Curve() ecdh.Curve          { return ecdh.P256() }

func (k *tpmKeyExchanger) ECDH(peer *ecdh.PublicKey) ([]byte, error) {
	z, err := k.sess.zgen(peer)
	if err != nil {
		k.err = err
		return nil, err
	}
	k.z = z
	return z, nil
}

func (k *tpmKeyExchanger) wipe() { clear(k.z) }

// srk is the re-created storage root key, a transient object.
type srk struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	public tpm2.TPMTPublic
}

func createSRK(t transport.TPM) (*srk, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(t)
	switch {
	case errors.Is(err, tpm2.TPMRCBadAuth), errors.Is(err, tpm2.TPMRCAuthFail):
		return nil, fmt.Errorf("tpm2 seal: the TPM's owner hierarchy has a password; the tpm2 seal needs it without one (or choose --seal keyring or --seal identity): %w", err)
	case errors.Is(err, tpm2.TPMRCInitialize):
		return nil, fmt.Errorf("tpm2 seal: %w: the TPM was not started (TPM2_Startup); a software TPM needs --flags startup-clear: %v", ErrUnavailable, err)
	case err != nil:
		return nil, fmt.Errorf("tpm2 seal: the TPM could not create its storage root key: %w", err)
	}
	s := &srk{handle: rsp.ObjectHandle}
	pub, err := rsp.OutPublic.Contents()
	if err == nil {
		var name *tpm2.TPM2BName
		if name, err = tpm2.ObjectName(pub); err == nil {
			s.name, s.public = *name, *pub
		}
	}
	if err != nil {
		flush(t, s.handle)
		return nil, fmt.Errorf("tpm2 seal: the TPM returned a malformed storage root key: %w", err)
	}
	// The Name is computed here from the public area, not taken from the
	// response: it is what binds the salt of every session to this SRK.
	if !bytes.Equal(rsp.Name.Buffer, s.name.Buffer) {
		flush(t, s.handle)
		return nil, fmt.Errorf("tpm2 seal: %w: the TPM's answer names a storage root key other than the one it returned (something between the agent and the TPM?)", ErrWrongTPM)
	}
	return s, nil
}

// readPCRDigest is SHA-256 over the SHA-256 bank values of pcrs, in order:
// the digest PolicyPCR checks. PCRs are read one at a time (a TPM returns at
// most 8 a call).
func readPCRDigest(t transport.TPM, pcrs []int) ([]byte, error) {
	h := sha256.New()
	for _, p := range pcrs {
		sel := tpmstate.Selection([]int{p})
		rsp, err := tpm2.PCRRead{PCRSelectionIn: sel}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("tpm2 seal: cannot read PCR %d: %w", p, err)
		}
		out := rsp.PCRSelectionOut.PCRSelections
		if len(out) != 1 || out[0].Hash != tpm2.TPMAlgSHA256 || !bytes.Equal(out[0].PCRSelect, sel.PCRSelections[0].PCRSelect) ||
			len(rsp.PCRValues.Digests) != 1 || len(rsp.PCRValues.Digests[0].Buffer) != sha256.Size {
			return nil, fmt.Errorf("tpm2 seal: the TPM has no SHA-256 value for PCR %d (SHA-256 bank not allocated?)", p)
		}
		h.Write(rsp.PCRValues.Digests[0].Buffer)
	}
	return h.Sum(nil), nil
}

func flush(t transport.TPM, h tpm2.TPMHandle) {
	// A failed flush is not actionable here; the kernel resource manager
	// flushes on close, and a software TPM on restart.
	tpm2.FlushContext{FlushHandle: h}.Execute(t)
}

// tpmSession is one connection to the TPM with the SRK re-created, checked,
// and the seal's key loaded.
type tpmSession struct {
	t    transport.TPMCloser
	w    *wipingTPM
	srk  *srk
	key  tpm2.NamedHandle
	pcrs []int
	own  bool // close flushes the SRK and closes t
}

// begin connects, re-creates and checks the SRK, and loads the key.
func (s *tpm2Seal) begin() (*tpmSession, error) {
	t, err := s.p.connect(s.device)
	if err != nil {
		return nil, err
	}
	srk, err := createSRK(t)
	if err != nil {
		t.Close()
		return nil, err
	}
	if !bytes.Equal(srk.name.Buffer, s.st.SRKName) {
		flush(t, srk.handle)
		t.Close()
		return nil, fmt.Errorf("tpm2 seal: %w: its storage root key differs (another machine's or a cleared TPM, or something between the agent and the TPM): %s",
			ErrWrongTPM, tpm2Recovery)
	}
	sess, err := s.beginWith(t, srk)
	if err != nil {
		flush(t, srk.handle)
		t.Close()
		return nil, err
	}
	sess.own = true
	return sess, nil
}

// beginWith loads the key under srk on t.
func (s *tpm2Seal) beginWith(t transport.TPMCloser, srk *srk) (*tpmSession, error) {
	rsp, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: srk.handle, Name: srk.name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    s.st.Private,
		InPublic:     s.st.Public,
	}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCIntegrity) || errors.Is(err, tpm2.TPMRCSize) || errors.Is(err, tpm2.TPMRCValue) {
			return nil, fmt.Errorf("tpm2 seal: %w: the TPM cannot load the vault's key (made by another TPM, or the seal file was altered): %s", ErrWrongTPM, tpm2Recovery)
		}
		return nil, fmt.Errorf("tpm2 seal: the TPM cannot load the vault's key: %w", err)
	}
	name := s.st.KeyName()
	if !bytes.Equal(rsp.Name.Buffer, name.Buffer) {
		flush(t, rsp.ObjectHandle)
		return nil, fmt.Errorf("tpm2 seal: %w: the TPM loaded a key other than the vault's (something between the agent and the TPM?)", ErrWrongTPM)
	}
	return &tpmSession{
		t:    t,
		w:    &wipingTPM{t: t},
		srk:  srk,
		key:  tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: name},
		pcrs: s.st.PCRs,
	}, nil
}

func (ts *tpmSession) flushKey() { flush(ts.t, ts.key.Handle) }

func (ts *tpmSession) close() {
	ts.flushKey()
	if ts.own {
		flush(ts.t, ts.srk.handle)
		ts.t.Close()
	}
}

// zgen has the TPM compute the ECDH shared secret (the X coordinate,
// left-padded to 32 bytes) of the key and peer. The response is encrypted
// under a session salted with the SRK, and authenticated by it.
func (ts *tpmSession) zgen(peer *ecdh.PublicKey) ([]byte, error) {
	b := peer.Bytes()
	if len(b) != 65 || b[0] != 4 {
		return nil, errors.New("tpm2 seal: not an uncompressed P-256 point")
	}
	opts := []tpm2.AuthOption{
		tpm2.Salted(ts.srk.handle, ts.srk.public),
		tpm2.AESEncryption(128, tpm2.EncryptOut),
	}
	var auth tpm2.Session
	if len(ts.pcrs) == 0 {
		auth = tpm2.HMAC(tpm2.TPMAlgSHA256, 16, opts...)
	} else {
		sess, closeSess, err := tpm2.PolicySession(ts.t, tpm2.TPMAlgSHA256, 16, opts...)
		if err != nil {
			return nil, fmt.Errorf("tpm2 seal: cannot start a policy session: %w", err)
		}
		defer closeSess()
		if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: tpmstate.Selection(ts.pcrs)}).Execute(ts.t); err != nil {
			return nil, fmt.Errorf("tpm2 seal: PolicyPCR failed: %w", err)
		}
		auth = sess
	}
	defer ts.w.wipe()
	rsp, err := tpm2.ECDHZGen{
		KeyHandle: tpm2.AuthHandle{Handle: ts.key.Handle, Name: ts.key.Name, Auth: auth},
		InPoint: tpm2.New2B(tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: b[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: b[33:]},
		}),
	}.Execute(ts.w)
	if errors.Is(err, tpm2.TPMRCPolicyFail) {
		return nil, fmt.Errorf("tpm2 seal: %w: %s changed since the vault was sealed (firmware or Secure Boot update?): %s (%w)",
			ErrPolicy, pcrList(ts.pcrs), tpm2Recovery, err)
	}
	if err != nil {
		return nil, fmt.Errorf("tpm2 seal: ECDH in the TPM failed: %w", err)
	}
	defer clear(rsp.OutPoint.Bytes())
	pt, err := rsp.OutPoint.Contents()
	if err != nil {
		return nil, fmt.Errorf("tpm2 seal: malformed ECDH answer from the TPM: %w", err)
	}
	defer clear(pt.X.Buffer)
	defer clear(pt.Y.Buffer)
	if len(pt.X.Buffer) > 32 {
		return nil, errors.New("tpm2 seal: malformed ECDH answer from the TPM")
	}
	z := make([]byte, 32)
	copy(z[32-len(pt.X.Buffer):], pt.X.Buffer)
	return z, nil
}

// wipingTPM keeps the last response so that zgen can wipe it: go-tpm
// decrypts the response parameters in place in this buffer.
type wipingTPM struct {
	t    transport.TPM
	last []byte
}

func (w *wipingTPM) Send(cmd []byte) ([]byte, error) {
	rsp, err := w.t.Send(cmd)
	w.last = rsp
	return rsp, err
}

func (w *wipingTPM) wipe() {
	clear(w.last)
	w.last = nil
}

// tagRecipient is the age tag recipient (age1tag1…) of a P-256 public key.
func tagRecipient(pub *ecdh.PublicKey) (*tag.Recipient, error) {
	u := pub.Bytes() // 0x04 || X || Y
	if len(u) != 65 {
		return nil, errors.New("tpm2 seal: not a P-256 key")
	}
	c := make([]byte, 33)
	c[0] = 2 | u[64]&1
	copy(c[1:], u[1:33])
	r, err := tag.NewClassicRecipient(c)
	if err != nil {
		return nil, fmt.Errorf("tpm2 seal: %v", err)
	}
	return r, nil
}

// pcrList is "PCR 7" or "PCRs 7,16".
func pcrList(pcrs []int) string {
	if len(pcrs) == 1 {
		return "PCR " + joinInts(pcrs)
	}
	return "PCRs " + joinInts(pcrs)
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
