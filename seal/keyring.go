package seal

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/awnumar/memguard"
	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/zalando/go-keyring"
)

// The keyring seal: an X25519 age identity kept in the OS keyring (Secret
// Service on Linux, Keychain on macOS, Credential Manager on Windows) of the
// user the agent runs as, one item per vault. The recipient is in the seal
// file, so encrypting needs no keyring.
//
// Copies of the identity outside locked memory, which go-keyring and age
// force on us (SECURITY.md lists them):
//   - go-keyring returns a Go string, built from the D-Bus reply's []byte
//     (Linux) or the security tool's output (macOS): two heap copies, plus the
//     D-Bus message buffer, that cannot be wiped and live until collected.
//     On Linux the secret crosses the session bus unencrypted ("plain"
//     Secret Service session); any process of the same user can ask for it.
//   - the string is moved into locked memory at once and kept in a memguard
//     Enclave; each Unwrap opens it briefly and has age parse it, which
//     makes a string copy, a lowercase copy and the scalar inside the
//     X25519Identity, all on the heap until collected.
// The tpm2 seal does not have these: its key never leaves the TPM.

func init() { Register(KindKeyring, &keyringProvider{}) }

// KeyringService is the service name of every item this agent keeps in the
// OS keyring.
const KeyringService = "rapidvalue-tier3-agent"

// keyringTimeout bounds each keyring call: a locked collection may wait for
// a password prompt that nobody on a server will answer.
const keyringTimeout = 15 * time.Second

const keyringRecovery = "open the vault with its recovery key and re-seal it: tier3-agent vault rekey --identity RECOVERY_KEY --seal keyring"

// keyringBackend is the part of go-keyring the seal uses. Unit tests put a
// fake here; they never call keyring.MockInit, which swaps a process-wide
// global under every other test.
type keyringBackend interface {
	Get(service, user string) (string, error)
	Set(service, user, secret string) error
}

type osKeyring struct{}

func (osKeyring) Get(service, user string) (string, error) { return keyring.Get(service, user) }
func (osKeyring) Set(service, user, secret string) error   { return keyring.Set(service, user, secret) }

type keyringProvider struct {
	kr      keyringBackend // nil: the OS keyring
	timeout time.Duration  // 0: keyringTimeout
}

var (
	_ Provider  = (*keyringProvider)(nil)
	_ Describer = (*keyringProvider)(nil)
)

type keyringData struct {
	Service string `json:"service"`
	User    string `json:"user"`
}

// KeyringUser is the keyring user name of the vault at vaultPath:
// "vault:" and the first 8 bytes of SHA-256 of its absolute path, in hex.
func KeyringUser(vaultPath string) (string, error) {
	abs, err := filepath.Abs(vaultPath)
	if err != nil {
		return "", fmt.Errorf("keyring seal: cannot resolve the vault path: %w", err)
	}
	sum := sha256.Sum256([]byte(abs))
	return "vault:" + hex.EncodeToString(sum[:8]), nil
}

func keyringUnavailable(cause error) error {
	return fmt.Errorf("keyring seal: %w: no OS keyring reachable (headless server?): use --seal tpm2 or --seal identity (%v)", ErrUnavailable, cause)
}

// withTimeout runs f on the keyring with the provider's timeout. A call that
// does not return in time is abandoned (go-keyring takes no context) and
// reported unavailable; discard then disposes of its late result.
func withTimeout[T any](p *keyringProvider, f func(keyringBackend) (T, error), discard func(T)) (T, error) {
	kr, timeout := p.kr, p.timeout
	if kr == nil {
		kr = osKeyring{}
	}
	if timeout == 0 {
		timeout = keyringTimeout
	}
	type result struct {
		v   T
		err error
	}
	done, abandoned := make(chan result), make(chan struct{})
	go func() {
		v, err := f(kr)
		select {
		case done <- result{v, err}:
		case <-abandoned:
			if err == nil && discard != nil {
				discard(v)
			}
		}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-done:
		return r.v, r.err
	case <-timer.C:
		close(abandoned)
		var zero T
		return zero, keyringUnavailable(fmt.Errorf("no answer within %v: the keyring may be locked and waiting for a prompt", timeout))
	}
}

// get returns the item in locked memory. Missing items wrap
// keyring.ErrNotFound; every other failure wraps ErrUnavailable (or
// secmem.ErrMemlock).
func (p *keyringProvider) get(user string) (*memguard.LockedBuffer, error) {
	secret, err := withTimeout(p, func(kr keyringBackend) (*memguard.LockedBuffer, error) {
		s, err := kr.Get(KeyringService, user)
		if err != nil {
			return nil, err
		}
		// The first and only conversion: from here on the identity is in
		// locked memory (the string s itself cannot be wiped).
		return secmem.FromBytes([]byte(s))
	}, (*memguard.LockedBuffer).Destroy)
	switch {
	case err == nil:
		return secret, nil
	case errors.Is(err, keyring.ErrNotFound), errors.Is(err, ErrUnavailable), errors.Is(err, secmem.ErrMemlock):
		return nil, err
	default:
		return nil, keyringUnavailable(err)
	}
}

func (p *keyringProvider) set(user, identity string) error {
	_, err := withTimeout(p, func(kr keyringBackend) (struct{}, error) {
		return struct{}{}, kr.Set(KeyringService, user, identity)
	}, nil)
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	return keyringUnavailable(err)
}

func (p *keyringProvider) Create(env Env) (Seal, State, error) {
	if env.VaultPath == "" {
		return nil, State{}, errors.New("keyring seal: no vault path to name the keyring item after")
	}
	user, err := KeyringUser(env.VaultPath)
	if err != nil {
		return nil, State{}, err
	}
	var r *age.X25519Recipient
	existing, err := p.get(user)
	switch {
	case err == nil:
		// Never overwrite: the vault on disk (or the one a rekey is
		// replacing) may still be encrypted to this key.
		r, err = recipientOfSecret(existing)
		existing.Destroy()
		if err != nil {
			return nil, State{}, fmt.Errorf("keyring seal: the keyring item %s/%s exists but holds no age identity: remove it (secret-tool clear service %s username %s) and try again",
				KeyringService, user, KeyringService, user)
		}
	case errors.Is(err, keyring.ErrNotFound):
		id, gerr := age.GenerateX25519Identity()
		if gerr != nil {
			return nil, State{}, gerr
		}
		// go-keyring takes a string: the identity's String() is a heap
		// copy until collected.
		if err := p.set(user, id.String()); err != nil {
			return nil, State{}, err
		}
		r = id.Recipient()
		// Read it back: a vault must not be sealed to a key the keyring
		// accepted but cannot return.
		back, err := p.get(user)
		if err != nil {
			return nil, State{}, fmt.Errorf("keyring seal: the OS keyring stored the key but cannot return it: %w", err)
		}
		br, err := recipientOfSecret(back)
		back.Destroy()
		if err != nil || br.String() != r.String() {
			return nil, State{}, errors.New("keyring seal: the OS keyring returned another value than the key stored")
		}
	default:
		return nil, State{}, err
	}
	data, _ := json.Marshal(keyringData{Service: KeyringService, User: user})
	st := State{Kind: KindKeyring, Recipient: r.String(), Data: data}
	return &keyringSeal{p: p, user: user, recipient: r}, st, nil
}

func parseKeyringData(st State) (keyringData, error) {
	var d keyringData
	if err := json.Unmarshal(st.Data, &d); err != nil || d.Service != KeyringService ||
		!strings.HasPrefix(d.User, "vault:") || len(d.User) > 128 {
		return keyringData{}, errors.New("keyring seal: malformed state in the seal file")
	}
	return d, nil
}

func (p *keyringProvider) Load(env Env, st State) (Seal, error) {
	d, err := parseKeyringData(st)
	if err != nil {
		return nil, err
	}
	r, err := age.ParseX25519Recipient(st.Recipient)
	if err != nil {
		return nil, errors.New("keyring seal: malformed recipient in the seal file")
	}
	return &keyringSeal{p: p, user: d.User, recipient: r}, nil
}

func (p *keyringProvider) Describe(st State) []string {
	d, err := parseKeyringData(st)
	if err != nil {
		return []string{err.Error()}
	}
	return []string{
		fmt.Sprintf("keyring item: service %s, user %s (in the OS keyring of the user the agent runs as)", d.Service, d.User),
	}
}

type keyringSeal struct {
	p         *keyringProvider
	user      string
	recipient *age.X25519Recipient
}

var _ Seal = (*keyringSeal)(nil)

func (s *keyringSeal) Recipient() (age.Recipient, error) { return s.recipient, nil }

func (s *keyringSeal) Identity() (age.Identity, error) {
	secret, err := s.p.get(s.user)
	if errors.Is(err, keyring.ErrNotFound) {
		return nil, fmt.Errorf("keyring seal: the OS keyring has no item %s for this vault (deleted, or not this user's keyring): %s", s.user, keyringRecovery)
	}
	if err != nil {
		return nil, err
	}
	r, err := recipientOfSecret(secret)
	if err != nil {
		secret.Destroy()
		return nil, fmt.Errorf("keyring seal: the keyring item %s holds no age identity: %s", s.user, keyringRecovery)
	}
	if r.String() != s.recipient.String() {
		secret.Destroy()
		return nil, fmt.Errorf("keyring seal: the keyring item %s is not the key this vault was sealed to: %s", s.user, keyringRecovery)
	}
	enc, err := secmem.Seal(secret.Bytes())
	secret.Destroy()
	if err != nil {
		return nil, err
	}
	return &keyringIdentity{enclave: enc}, nil
}

// recipientOfSecret parses the identity in secret; the error never quotes it.
func recipientOfSecret(secret *memguard.LockedBuffer) (*age.X25519Recipient, error) {
	id, err := age.ParseX25519Identity(strings.TrimSpace(string(secret.Bytes())))
	if err != nil {
		return nil, errors.New("not an age X25519 identity")
	}
	return id.Recipient(), nil
}

// keyringIdentity keeps the identity encrypted in a memguard Enclave between
// uses.
type keyringIdentity struct{ enclave *memguard.Enclave }

var _ age.Identity = (*keyringIdentity)(nil)

func (i *keyringIdentity) Unwrap(stanzas []*age.Stanza) ([]byte, error) {
	found := false
	for _, s := range stanzas {
		found = found || s.Type == "X25519"
	}
	if !found {
		return nil, age.ErrIncorrectIdentity
	}
	b, err := secmem.Open(i.enclave)
	if err != nil {
		return nil, err
	}
	defer b.Destroy()
	id, err := age.ParseX25519Identity(strings.TrimSpace(string(b.Bytes())))
	if err != nil {
		return nil, errors.New("keyring seal: the identity in memory is corrupt")
	}
	return id.Unwrap(stanzas)
}
