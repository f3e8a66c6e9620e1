package seal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/age"
	"filippo.io/age/tag"
	"github.com/rapidvalue/tier3-agent/internal/atomicfile"
)

// File is the seal file kept beside the vault (VAULT.seal). It is public:
// anyone who reads it learns which recipients the vault is encrypted to and
// the host-bound key blobs, none of which opens the vault off this host.
//
// Its integrity matters as much as the folder's: whoever can add a recipient
// here sees the next version of the vault. It is written 0600 in the vault's
// folder, which already holds the agent binary.
type File struct {
	Version int `json:"version"`
	// Seal is this host's seal.
	Seal State `json:"seal"`
	// Previous is the seal a rekey is replacing. It is recorded before the
	// vault is rewritten and dropped after, so that a crash in between
	// leaves a vault that one of the two opens.
	Previous *State `json:"previous,omitempty"`
	// Recipients are the extra recipients every version is also encrypted
	// to: recovery keys and other hosts' seals.
	Recipients []string `json:"recipients,omitempty"`
}

const maxFileSize = 1 << 20

// FilePath is where the seal file of the vault at vaultPath lives.
func FilePath(vaultPath string) string { return vaultPath + ".seal" }

// ReadFile reads the seal file of the vault at vaultPath. A missing file is
// an error that wraps os.ErrNotExist.
func ReadFile(vaultPath string) (*File, error) {
	f, err := os.Open(FilePath(vaultPath))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read the seal file %s: %w", f.Name(), err)
	}
	sf, err := ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("seal file %s: %w", f.Name(), err)
	}
	return sf, nil
}

// ParseFile parses a seal file.
func ParseFile(data []byte) (*File, error) {
	if len(data) > maxFileSize {
		return nil, errors.New("larger than 1 MiB: restore it from a backup or re-create it with vault rekey --identity RECOVERY_KEY")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var sf File
	if err := dec.Decode(&sf); err != nil {
		return nil, errors.New("not valid JSON: restore it from a backup or re-create it with vault rekey --identity RECOVERY_KEY")
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON object")
	}
	if sf.Version != 1 {
		return nil, fmt.Errorf("unsupported version %d (this agent reads version 1)", sf.Version)
	}
	if sf.Seal.Kind == "" {
		return nil, errors.New("names no seal")
	}
	for i, r := range sf.Recipients {
		if _, err := ParseRecipient(r); err != nil {
			return nil, fmt.Errorf("recipient #%d: %w", i+1, err)
		}
	}
	return &sf, nil
}

// WriteFile writes sf beside the vault at vaultPath, atomically.
func WriteFile(vaultPath string, sf *File) error {
	sf.Version = 1
	data, err := json.MarshalIndent(sf, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(FilePath(vaultPath), append(data, '\n'), 0o600)
}

// ParseRecipient parses a recipient in any form a vault may be encrypted to:
// X25519 (age1…), post-quantum hybrid (age1pq1…) and tag (age1tag1…,
// age1tagpq1…, the tpm2 seal's form). The error never repeats the input: a
// private key pasted by mistake must not be printed.
func ParseRecipient(s string) (age.Recipient, error) {
	s = strings.TrimSpace(s)
	var (
		r   age.Recipient
		err error
	)
	switch {
	case strings.HasPrefix(s, "age1tag"):
		r, err = tag.ParseRecipient(s)
	case strings.HasPrefix(s, "age1pq1"):
		r, err = age.ParseHybridRecipient(s)
	case strings.HasPrefix(s, "age1"):
		r, err = age.ParseX25519Recipient(s)
	case strings.HasPrefix(strings.ToUpper(s), "AGE-SECRET-KEY-"):
		return nil, errors.New("this is a private key, not a recipient: give its public recipient (age-keygen -y KEY)")
	default:
		return nil, errors.New("not an age recipient (want age1…)")
	}
	if err != nil {
		return nil, errors.New("malformed age recipient: check that it was copied whole")
	}
	return r, nil
}

// States returns the seals that may open the vault: this host's, then the
// one a rekey was replacing if it was interrupted.
func (sf *File) States() []State {
	sts := []State{sf.Seal}
	if sf.Previous != nil {
		sts = append(sts, *sf.Previous)
	}
	return sts
}
