// Package seal holds the ways a host opens its vault unattended.
//
// A vault is an age file. A seal is what gives this host an age.Identity that
// decrypts it and the age.Recipient that new versions are encrypted to. Each
// kind (identity, passphrase, tpm2, keyring) is a Provider registered under its
// Kind; the vault package knows nothing of them, it only takes identities and
// recipients.
//
// What a seal keeps beside the vault (a TPM-wrapped key blob, the name of a
// keyring item, the path of an identity file) is its State: public data,
// useless off this host, recorded in the seal file next to the vault.
package seal

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"

	"filippo.io/age"
	"github.com/awnumar/memguard"
)

// Kind names a seal.
type Kind string

const (
	KindIdentity   Kind = "identity"
	KindPassphrase Kind = "passphrase"
	KindTPM2       Kind = "tpm2"
	KindKeyring    Kind = "keyring"
)

// Env is what a seal may take from the host. The caller reads the process
// environment and flags once and fills it in; seals never call os.Getenv.
type Env struct {
	// VaultPath is the vault the seal serves; seals that need a per-vault
	// name (a keyring item) derive it from here.
	VaultPath string
	// IdentityFile is RV_AGENT_VAULT_IDENTITY_FILE.
	IdentityFile string
	// TPMDevice is RV_AGENT_TPM_DEVICE: a device path or tcp://HOST:PORT.
	TPMDevice string
	// TPMPCRs are the PCRs a new tpm2 seal binds to (--tpm-pcrs); empty for none.
	TPMPCRs []int
	// Passphrase returns the passphrase in locked memory (from
	// RV_AGENT_VAULT_PASSPHRASE_FILE, or asked on the terminal; confirm asks
	// twice). The caller destroys the buffer. Nil when none can be had.
	Passphrase func(confirm bool) (*memguard.LockedBuffer, error)
}

// Seal opens vaults sealed for this host.
type Seal interface {
	// Recipient returns the recipient that vaults for this host are
	// encrypted to. It needs no secret except for the passphrase seal.
	Recipient() (age.Recipient, error)
	// Identity returns an identity that decrypts files encrypted to
	// Recipient. Errors wrap ErrUnavailable when the backend (TPM, keyring)
	// cannot be reached and ErrPolicy when the backend refuses (PCRs changed).
	Identity() (age.Identity, error)
}

// State is what a seal keeps beside the vault. It holds no secret.
type State struct {
	Kind Kind `json:"kind"`
	// Recipient is the host's recipient in age's string form; empty for the
	// passphrase seal, which has none.
	Recipient string `json:"recipient,omitempty"`
	// Data is the provider's own record (key blobs, PCRs, item names).
	Data json.RawMessage `json:"data,omitempty"`
}

// Provider creates and reopens seals of one kind.
type Provider interface {
	// Create provisions this host's key material for a new seal, reusing
	// material that already exists where the kind says so (an identity file
	// is never overwritten).
	Create(env Env) (Seal, State, error)
	// Load reopens a seal from the State that Create returned.
	Load(env Env, st State) (Seal, error)
}

// Describer is an optional Provider ability: lines for `vault status`.
type Describer interface {
	Describe(st State) []string
}

var (
	// ErrUnavailable means the seal's backend cannot be reached on this host.
	ErrUnavailable = errors.New("seal backend unavailable")
	// ErrPolicy means the backend refused to release the key (a PCR policy
	// no longer matches, say).
	ErrPolicy = errors.New("seal policy no longer satisfied")
	// ErrUnknownKind is returned by Lookup for a kind with no provider in
	// this build.
	ErrUnknownKind = errors.New("unknown seal")
)

var (
	mu        sync.Mutex
	providers = map[Kind]Provider{}
)

// Register makes a provider available under kind. It panics on a duplicate,
// which is a programming error.
func Register(kind Kind, p Provider) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := providers[kind]; dup {
		panic("seal: duplicate provider " + string(kind))
	}
	providers[kind] = p
}

// Lookup returns the provider registered under kind.
func Lookup(kind Kind) (Provider, error) {
	mu.Lock()
	defer mu.Unlock()
	p, ok := providers[kind]
	if !ok {
		return nil, fmt.Errorf("%w %q: choose one of %v", ErrUnknownKind, kind, kindsLocked())
	}
	return p, nil
}

// Kinds lists the registered kinds, sorted.
func Kinds() []Kind {
	mu.Lock()
	defer mu.Unlock()
	return kindsLocked()
}

func kindsLocked() []Kind {
	ks := make([]Kind, 0, len(providers))
	for k := range providers {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i] < ks[j] })
	return ks
}

// Load reopens the seal described by st.
func Load(env Env, st State) (Seal, error) {
	p, err := Lookup(st.Kind)
	if err != nil {
		return nil, err
	}
	return p.Load(env, st)
}
