// Package config reads the process environment once, validates it, and
// hands typed settings to the rest of the program. Nothing else calls
// os.Getenv.
package config

import (
	"errors"
	"fmt"
	"path/filepath"
)

// DefaultVaultPath is where the installer puts the vault.
const DefaultVaultPath = "/opt/rapidvalue/agent-vault.json"

// Vault holds the settings every vault command and the agent share.
type Vault struct {
	Path           string // RV_AGENT_VAULT_PATH, or --vault
	IdentityFile   string // RV_AGENT_VAULT_IDENTITY_FILE
	PassphraseFile string // RV_AGENT_VAULT_PASSPHRASE_FILE
	TPMDevice      string // RV_AGENT_TPM_DEVICE; empty for the seal's default
	Migrate        bool   // RV_AGENT_VAULT_MODE=migrate
}

// ErrInvalid marks a setting that cannot work; the command line exits 78.
var ErrInvalid = errors.New("invalid setting")

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// LoadVault reads the vault settings from getenv (os.Getenv in main).
func LoadVault(getenv func(string) string) (Vault, error) {
	v := Vault{
		Path:           getenv("RV_AGENT_VAULT_PATH"),
		IdentityFile:   getenv("RV_AGENT_VAULT_IDENTITY_FILE"),
		PassphraseFile: getenv("RV_AGENT_VAULT_PASSPHRASE_FILE"),
		TPMDevice:      getenv("RV_AGENT_TPM_DEVICE"),
	}
	if v.Path == "" {
		v.Path = DefaultVaultPath
	}
	// An unset RV_AGENT_TPM_DEVICE stays empty: the tpm2 seal then uses
	// the device recorded when it was sealed, else /dev/tpmrm0.
	switch m := getenv("RV_AGENT_VAULT_MODE"); m {
	case "", "sealed":
	case "migrate":
		v.Migrate = true
	default:
		return v, invalid("RV_AGENT_VAULT_MODE must be sealed or migrate")
	}
	for name, p := range map[string]*string{"RV_AGENT_VAULT_PATH": &v.Path, "RV_AGENT_VAULT_IDENTITY_FILE": &v.IdentityFile, "RV_AGENT_VAULT_PASSPHRASE_FILE": &v.PassphraseFile} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return v, invalid("%s: %v", name, err)
		}
		*p = abs
	}
	return v, nil
}
