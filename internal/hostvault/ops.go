package hostvault

import (
	"errors"
	"fmt"

	"github.com/rapidvalue/tier3-agent/internal/agefile"
	"github.com/rapidvalue/tier3-agent/internal/atomicfile"
	"github.com/rapidvalue/tier3-agent/seal"
	"github.com/rapidvalue/tier3-agent/vault"
)

// writeVault replaces the vault file. Callers hold vault.Lock, so leftovers
// of a writer that was killed mid-write can be removed first.
func writeVault(path string, data []byte) error {
	atomicfile.RemoveStale(path)
	return atomicfile.Write(path, data, 0o600)
}

// ChooseKind picks the seal for a command: the flag, else the seal file's,
// else what the environment points at.
func ChooseKind(flag string, sf *seal.File, env seal.Env, passphraseFile string) (seal.Kind, error) {
	switch {
	case flag != "":
		k := seal.Kind(flag)
		if _, err := seal.Lookup(k); err != nil {
			return "", &configError{err}
		}
		return k, nil
	case sf != nil:
		return sf.Seal.Kind, nil
	case env.IdentityFile != "":
		return seal.KindIdentity, nil
	case passphraseFile != "":
		return seal.KindPassphrase, nil
	}
	return "", configf("name a seal with --seal %v (or set RV_AGENT_VAULT_IDENTITY_FILE for the identity seal)", seal.Kinds())
}

func checkExtras(kind seal.Kind, extras []string) error {
	if kind == seal.KindPassphrase && len(extras) > 0 {
		return configf("the passphrase seal stands alone (age's scrypt): it takes no --recipient; use the identity, tpm2 or keyring seal with a recovery recipient")
	}
	seen := map[string]bool{}
	for i, r := range extras {
		if _, err := seal.ParseRecipient(r); err != nil {
			return configf("--recipient #%d: %w", i+1, err)
		}
		if seen[r] {
			return configf("--recipient #%d is given twice", i+1)
		}
		seen[r] = true
	}
	return nil
}

// newSeal provisions a seal of kind, reusing the seal file's state when it
// already is of that kind and reuse is asked for, and checks that what it
// seals, it opens.
func newSeal(opts Options, kind seal.Kind, sf *seal.File, reuse bool) (seal.State, error) {
	if reuse && sf != nil && sf.Seal.Kind == kind {
		return sf.Seal, nil
	}
	p, err := seal.Lookup(kind)
	if err != nil {
		return seal.State{}, &configError{err}
	}
	s, st, err := p.Create(opts.Env)
	if err != nil {
		if errors.Is(err, seal.ErrUnavailable) || errors.Is(err, seal.ErrPolicy) {
			return seal.State{}, &configError{err}
		}
		return seal.State{}, configf("cannot create the %s seal: %w", kind, err)
	}
	if err := selfTest(s); err != nil {
		return seal.State{}, configf("the new %s seal does not open what it seals: %w", kind, err)
	}
	return st, nil
}

// selfTest seals a marker to the seal's recipient and opens it again.
func selfTest(s seal.Seal) error {
	r, err := s.Recipient()
	if err != nil {
		return err
	}
	ct, err := agefile.Encrypt([]byte("tier3-agent seal self-test"), r)
	if err != nil {
		return err
	}
	id, err := s.Identity()
	if err != nil {
		return err
	}
	pt, _, err := agefile.Decrypt(ct, id)
	if err != nil {
		return err
	}
	pt.Destroy()
	return nil
}

// Init creates an empty sealed vault. It never overwrites one.
func Init(opts Options, kind seal.Kind, extras []string) (*seal.File, error) {
	if err := checkExtras(kind, extras); err != nil {
		return nil, err
	}
	unlock, err := vault.Lock(opts.Path)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if exists(opts.Path) {
		return nil, fmt.Errorf("a vault already exists at %s: vault init never overwrites one (vault rekey changes its seal)", opts.Path)
	}
	sf, err := ReadSealFile(opts.Path)
	if err != nil {
		return nil, err
	}
	st, err := newSeal(opts, kind, sf, true)
	if err != nil {
		return nil, err
	}
	v, err := vault.Parse([]byte("{}"))
	if err != nil {
		return nil, err
	}
	next := &seal.File{Seal: st, Recipients: extras}
	return next, Reseal(opts, v, nil, next)
}

// SealPlaintext turns a plaintext vault into a sealed one in place.
func SealPlaintext(opts Options, kind seal.Kind, extras []string) (*seal.File, int, error) {
	if err := checkExtras(kind, extras); err != nil {
		return nil, 0, err
	}
	unlock, err := vault.Lock(opts.Path)
	if err != nil {
		return nil, 0, err
	}
	defer unlock()
	o := opts
	o.AllowPlaintext = true
	o.RecoveryIdentity = ""
	buf, n, format, err := vault.ReadFile(opts.Path)
	if err != nil {
		return nil, 0, &configError{err}
	}
	if format != vault.FormatPlaintext {
		buf.Destroy()
		return nil, 0, configf("the vault %s is already sealed: vault rekey changes its seal", opts.Path)
	}
	v, err := vault.Parse(buf.Bytes()[:n])
	buf.Destroy()
	if err != nil {
		return nil, 0, configf("the plaintext vault %s is not valid, nothing changed: %w", opts.Path, err)
	}
	sf, err := ReadSealFile(opts.Path)
	if err != nil {
		return nil, 0, err
	}
	st, err := newSeal(opts, kind, sf, true)
	if err != nil {
		return nil, 0, err
	}
	next := &seal.File{Seal: st, Recipients: extras}
	return next, v.Len(), Reseal(opts, v, nil, next)
}

// Rekey re-seals the vault with a new seal of kind and, when extras is not
// nil, exactly those extra recipients. It opens with opts (host seal or
// recovery identity) and provisions the new seal with newEnv.
func Rekey(opts Options, newEnv seal.Env, kind seal.Kind, extras []string) (*seal.File, error) {
	unlock, err := vault.Lock(opts.Path)
	if err != nil {
		return nil, err
	}
	defer unlock()
	h, err := Open(opts)
	if err != nil {
		return nil, err
	}
	if h.Format == vault.FormatPlaintext {
		return nil, configf("the vault %s is plaintext: use vault seal", opts.Path)
	}
	if extras == nil && h.SealFile != nil {
		extras = h.SealFile.Recipients
	}
	if err := checkExtras(kind, extras); err != nil {
		return nil, err
	}
	nopts := opts
	nopts.Env = newEnv
	st, err := newSeal(nopts, kind, h.SealFile, false)
	if err != nil {
		return nil, err
	}
	next := &seal.File{Seal: st, Recipients: extras}
	return next, Reseal(nopts, h.Vault, h.SealFile, next)
}

// HostRecipient returns this host's recipient for the vault at opts.Path,
// provisioning the seal (and writing the seal file) when there is none.
func HostRecipient(opts Options, kindFlag, passphraseFile string) (string, seal.Kind, error) {
	unlock, err := vault.Lock(opts.Path)
	if err != nil {
		return "", "", err
	}
	defer unlock()
	sf, err := ReadSealFile(opts.Path)
	if err != nil {
		return "", "", err
	}
	kind, err := ChooseKind(kindFlag, sf, opts.Env, passphraseFile)
	if err != nil {
		return "", "", err
	}
	if kind == seal.KindPassphrase {
		return "", kind, configf("the passphrase seal has no recipient: a passphrase vault cannot be shared with other hosts")
	}
	if sf != nil && sf.Seal.Kind == kind {
		return sf.Seal.Recipient, kind, nil
	}
	if sf != nil && exists(opts.Path) {
		return "", kind, configf("this host's vault is sealed with %s; to move it to %s run vault rekey --seal %s", sf.Seal.Kind, kind, kind)
	}
	st, err := newSeal(opts, kind, nil, false)
	if err != nil {
		return "", kind, err
	}
	if err := seal.WriteFile(opts.Path, &seal.File{Seal: st}); err != nil {
		return "", kind, err
	}
	return st.Recipient, kind, nil
}
