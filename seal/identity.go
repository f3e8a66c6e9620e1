package seal

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/age"
	"github.com/rapidvalue/tier3-agent/internal/atomicfile"
)

func init() {
	Register(KindIdentity, identityProvider{})
	Register(KindPassphrase, passphraseProvider{})
}

// identityProvider: the vault is encrypted to an X25519 identity kept in a file
// (RV_AGENT_VAULT_IDENTITY_FILE), e.g. one systemd hands over with
// LoadCredentialEncrypted=.
type identityProvider struct{}

type identityData struct {
	IdentityFile string `json:"identity_file"`
}

type identitySeal struct {
	path      string
	recipient *age.X25519Recipient
}

var _ Seal = (*identitySeal)(nil)

func (identityProvider) Create(env Env) (Seal, State, error) {
	if env.IdentityFile == "" {
		return nil, State{}, errors.New("the identity seal needs RV_AGENT_VAULT_IDENTITY_FILE: set it to the identity file to create or use")
	}
	id, err := ReadIdentityFile(env.IdentityFile)
	if errors.Is(err, os.ErrNotExist) {
		id, err = createIdentityFile(env.IdentityFile)
	}
	if err != nil {
		return nil, State{}, err
	}
	x, ok := id.(*age.X25519Identity)
	if !ok {
		return nil, State{}, fmt.Errorf("identity file %s: the identity seal takes an X25519 identity (AGE-SECRET-KEY-1…)", env.IdentityFile)
	}
	data, _ := json.Marshal(identityData{IdentityFile: env.IdentityFile})
	st := State{Kind: KindIdentity, Recipient: x.Recipient().String(), Data: data}
	return &identitySeal{path: env.IdentityFile, recipient: x.Recipient()}, st, nil
}

func (identityProvider) Load(env Env, st State) (Seal, error) {
	var d identityData
	if len(st.Data) > 0 {
		if err := json.Unmarshal(st.Data, &d); err != nil {
			return nil, errors.New("identity seal: malformed state in the seal file")
		}
	}
	path := env.IdentityFile
	if path == "" {
		path = d.IdentityFile
	}
	if path == "" {
		return nil, errors.New("the identity seal needs RV_AGENT_VAULT_IDENTITY_FILE")
	}
	r, err := age.ParseX25519Recipient(st.Recipient)
	if err != nil {
		return nil, errors.New("identity seal: malformed recipient in the seal file")
	}
	return &identitySeal{path: path, recipient: r}, nil
}

func (identityProvider) Describe(st State) []string {
	var d identityData
	json.Unmarshal(st.Data, &d)
	return []string{"identity file: " + d.IdentityFile}
}

func (s *identitySeal) Recipient() (age.Recipient, error) { return s.recipient, nil }

func (s *identitySeal) Identity() (age.Identity, error) { return ReadIdentityFile(s.path) }

const maxIdentityFile = 64 << 10

// ReadIdentityFile reads an age identity file (one or more identities; the
// first X25519 or hybrid one is used). Errors never quote the file.
func ReadIdentityFile(path string) (age.Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("identity file %s does not exist: %w", path, err)
		}
		return nil, fmt.Errorf("cannot read identity file: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		// Like age-keygen: warn-worthy, but the caller decides; we refuse
		// group- or world-writable files outright.
		if fi.Mode().Perm()&0o022 != 0 {
			return nil, fmt.Errorf("identity file %s is writable by others: chmod 600 it", path)
		}
	}
	ids, err := age.ParseIdentities(io.LimitReader(f, maxIdentityFile))
	if err != nil {
		return nil, fmt.Errorf("identity file %s holds no valid age identity: check that it is an age-keygen file", path)
	}
	for _, id := range ids {
		switch id.(type) {
		case *age.X25519Identity, *age.HybridIdentity:
			return id, nil
		}
	}
	return nil, fmt.Errorf("identity file %s holds no X25519 or post-quantum identity", path)
}

func createIdentityFile(path string) (age.Identity, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# created by tier3-agent vault init\n# public key: %s\n%s\n", id.Recipient(), id)
	if err := atomicfile.WriteNew(path, []byte(b.String()), 0o600); err != nil {
		return nil, fmt.Errorf("cannot create identity file %s: %w", path, err)
	}
	return id, nil
}

// passphraseProvider: age's scrypt. It stands alone: no extra recipients.
type passphraseProvider struct{}

type passphraseSeal struct{ env Env }

var _ Seal = (*passphraseSeal)(nil)

func (passphraseProvider) Create(env Env) (Seal, State, error) {
	if env.Passphrase == nil {
		return nil, State{}, errors.New("the passphrase seal needs RV_AGENT_VAULT_PASSPHRASE_FILE or a terminal")
	}
	return &passphraseSeal{env: env}, State{Kind: KindPassphrase}, nil
}

func (passphraseProvider) Load(env Env, st State) (Seal, error) {
	if env.Passphrase == nil {
		return nil, errors.New("the passphrase seal needs RV_AGENT_VAULT_PASSPHRASE_FILE or a terminal")
	}
	return &passphraseSeal{env: env}, nil
}

// Recipient asks for the passphrase twice on a terminal. age's scrypt API
// takes a Go string: one heap copy of the passphrase exists until collected
// (SECURITY.md lists it).
func (s *passphraseSeal) Recipient() (age.Recipient, error) {
	pw, err := s.env.Passphrase(true)
	if err != nil {
		return nil, err
	}
	defer pw.Destroy()
	return age.NewScryptRecipient(string(pw.Bytes()))
}

func (s *passphraseSeal) Identity() (age.Identity, error) {
	pw, err := s.env.Passphrase(false)
	if err != nil {
		return nil, err
	}
	defer pw.Destroy()
	return age.NewScryptIdentity(string(pw.Bytes()))
}
