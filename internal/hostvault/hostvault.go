// Package hostvault ties a vault file to the seal file beside it: it opens
// the vault with this host's seal (or a recovery identity) and writes new
// versions to the host's recipient and the extra recipients. The command
// line and the agent runtime both go through it.
package hostvault

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"filippo.io/age"

	"github.com/rapidvalue/tier3-agent/seal"
	"github.com/rapidvalue/tier3-agent/vault"
)

// ErrConfig marks errors that a setting or a file on this host must fix:
// the command line exits 78 for them.
var ErrConfig = errors.New("configuration")

type configError struct {
	err error
}

func (e *configError) Error() string        { return e.err.Error() }
func (e *configError) Unwrap() []error      { return []error{ErrConfig, e.err} }
func configf(format string, a ...any) error { return &configError{fmt.Errorf(format, a...)} }

// Options say which vault and how to open it.
type Options struct {
	Path string
	Env  seal.Env
	// RecoveryIdentity, when set, is an age identity file that opens the
	// vault instead of the host's seal (--identity).
	RecoveryIdentity string
	// AllowPlaintext accepts a plaintext vault (migration mode, vault seal).
	AllowPlaintext bool
}

// Handle is an open vault and what it takes to write it back.
type Handle struct {
	opts   Options
	Vault  *vault.Vault
	Format vault.Format
	// SealFile is the seal file beside the vault; nil when there is none.
	SealFile *seal.File
	// OpenedWith says what opened the vault: the seal kind, "recovery
	// identity", or "plaintext".
	OpenedWith string
}

// ReadSealFile reads the seal file; a missing one gives nil, nil.
func ReadSealFile(path string) (*seal.File, error) {
	sf, err := seal.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &configError{err}
	}
	return sf, nil
}

// Open opens the vault at opts.Path.
func Open(opts Options) (*Handle, error) {
	sf, err := ReadSealFile(opts.Path)
	if err != nil {
		return nil, err
	}
	buf, n, format, err := vault.ReadFile(opts.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, configf("no vault at %s: create one with tier3-agent vault init, or set RV_AGENT_VAULT_PATH", opts.Path)
	}
	if err != nil {
		return nil, &configError{err}
	}
	defer buf.Destroy()
	data := buf.Bytes()[:n]
	h := &Handle{opts: opts, Format: format, SealFile: sf}
	if format == vault.FormatPlaintext {
		if !opts.AllowPlaintext {
			return nil, &configError{fmt.Errorf("%w at %s: seal it with tier3-agent vault seal (or set RV_AGENT_VAULT_MODE=migrate to run on it for now)", vault.ErrPlaintext, opts.Path)}
		}
		h.Vault, err = vault.Parse(data)
		if err != nil {
			return nil, &configError{fmt.Errorf("plaintext vault %s: %w", opts.Path, err)}
		}
		h.OpenedWith = "plaintext"
		return h, nil
	}

	var ids []age.Identity
	if opts.RecoveryIdentity != "" {
		id, err := seal.ReadIdentityFile(opts.RecoveryIdentity)
		if err != nil {
			return nil, &configError{err}
		}
		ids, h.OpenedWith = []age.Identity{id}, "recovery identity"
	} else {
		if sf == nil {
			return nil, configf("no seal file %s beside the sealed vault: open it with --identity RECOVERY_KEY, and re-seal it for this host with vault rekey --identity RECOVERY_KEY --seal KIND", seal.FilePath(opts.Path))
		}
		var firstErr error
		for _, st := range sf.States() {
			id, err := identityFor(opts.Env, st)
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			ids = append(ids, id)
		}
		if len(ids) == 0 {
			return nil, &configError{fmt.Errorf("cannot use this host's %s seal: %w", sf.Seal.Kind, firstErr)}
		}
		h.OpenedWith = string(sf.Seal.Kind)
	}
	h.Vault, err = vault.Decrypt(data, ids...)
	switch {
	case errors.Is(err, vault.ErrNoMatch) && opts.RecoveryIdentity != "":
		return nil, configf("the identity in %s does not open the vault %s: check that it is the recovery key this vault was sealed to", opts.RecoveryIdentity, opts.Path)
	case errors.Is(err, vault.ErrNoMatch) && sf.Seal.Kind == seal.KindPassphrase:
		return nil, configf("wrong passphrase for the vault %s", opts.Path)
	case errors.Is(err, vault.ErrNoMatch):
		return nil, configf("this host's %s seal does not open the vault %s (sealed for another host or key?): open it with --identity RECOVERY_KEY and run vault rekey --identity RECOVERY_KEY --seal %s", sf.Seal.Kind, opts.Path, sf.Seal.Kind)
	case errors.Is(err, vault.ErrCorrupt):
		return nil, configf("the vault %s is damaged or was modified (%v): restore it from a backup", opts.Path, err)
	case err != nil:
		var pe *vault.ParseError
		if errors.As(err, &pe) {
			return nil, configf("the vault %s decrypts but its JSON is invalid: %w", opts.Path, err)
		}
		// What is left is the seal's own failure while unwrapping (a TPM
		// that is not the one the vault was sealed with, a PCR policy that
		// no longer holds, a backend that went away): all fixed on the host.
		return nil, &configError{err}
	}
	return h, nil
}

func identityFor(env seal.Env, st seal.State) (age.Identity, error) {
	s, err := seal.Load(env, st)
	if err != nil {
		return nil, err
	}
	return s.Identity()
}

// Recipients returns every recipient a new version is encrypted to: the
// host's seal and the extra recipients of the seal file.
func Recipients(env seal.Env, sf *seal.File) ([]age.Recipient, error) {
	var host age.Recipient
	if sf.Seal.Recipient != "" {
		r, err := seal.ParseRecipient(sf.Seal.Recipient)
		if err != nil {
			return nil, configf("seal file: this host's recipient: %w", err)
		}
		host = r
	} else {
		s, err := seal.Load(env, sf.Seal)
		if err != nil {
			return nil, &configError{err}
		}
		if host, err = s.Recipient(); err != nil {
			return nil, &configError{err}
		}
	}
	rs := []age.Recipient{host}
	for _, r := range sf.Recipients {
		x, err := seal.ParseRecipient(r)
		if err != nil {
			return nil, configf("seal file: %w", err)
		}
		rs = append(rs, x)
	}
	return rs, nil
}

// Save writes the handle's vault back, sealed to the seal file's
// recipients. The caller holds vault.Lock.
func (h *Handle) Save() error {
	if h.Format == vault.FormatPlaintext {
		return configf("the vault %s is plaintext: seal it first with tier3-agent vault seal", h.opts.Path)
	}
	if h.SealFile == nil {
		return configf("no seal file beside %s, so the recipients are unknown: run vault rekey --identity RECOVERY_KEY --seal KIND", h.opts.Path)
	}
	rs, err := Recipients(h.opts.Env, h.SealFile)
	if err != nil {
		return err
	}
	data, err := h.Vault.Seal(rs...)
	if err != nil {
		return fmt.Errorf("cannot seal the vault: %w", err)
	}
	return writeVault(h.opts.Path, data)
}

// Reseal moves the vault to a new seal file: it records the new seal with
// the old one as Previous, writes the vault for the new recipients, then
// drops Previous. A crash at any point leaves a vault that the seal file
// opens. The caller holds vault.Lock.
func Reseal(opts Options, v *vault.Vault, old *seal.File, next *seal.File) error {
	rs, err := Recipients(opts.Env, next)
	if err != nil {
		return err
	}
	// Seal in memory first, so a recipient problem stops us before any
	// file changes.
	data, err := v.Seal(rs...)
	if err != nil {
		return fmt.Errorf("cannot seal the vault: %w", err)
	}
	staged := *next
	if old != nil && old.Seal.Kind != "" {
		prev := old.Seal
		staged.Previous = &prev
	}
	if err := seal.WriteFile(opts.Path, &staged); err != nil {
		return err
	}
	if err := writeVault(opts.Path, data); err != nil {
		return err
	}
	next.Previous = nil
	return seal.WriteFile(opts.Path, next)
}

// exists reports whether path exists (any error but not-exist counts as
// existing, so that nothing is overwritten on doubt).
func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}
