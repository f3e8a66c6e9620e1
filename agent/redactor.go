package agent

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/rapidvalue/tier3-agent/agent/redact"
	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/vault"
)

// redactor scrubs every value of the vault, and every token obtained with
// it, from what leaves the agent.
//
// One redact.Redactor serves the agent's whole life: a reload adds the new
// vault's values to it and never removes the old ones (scrubbing a value
// that is no longer in the vault is the safe side), so no locked memory is
// left behind by a reload.
type redactor struct {
	r *redact.Redactor
	// unredactable names the entry/field values too short to be found
	// reliably in output (under redact.MinLen bytes): tasks may not use
	// them, since nothing could keep them out of a result.
	unredactable map[string]bool
}

// newRedactor adds every value of v to base (a new redact.Redactor when
// base is nil). The identifier fields client_id, username and bind_dn are
// not secrets (SPEC.md) and are left out, except in the _agent entry.
func newRedactor(base *redact.Redactor, v *vault.Vault) (*redactor, error) {
	if base == nil {
		var err error
		if base, err = redact.New(); err != nil {
			return nil, err
		}
	}
	red := &redactor{r: base, unredactable: map[string]bool{}}
	err := v.Each(func(entry, field string, value []byte) error {
		if vault.IdentifierFields[field] && entry != vault.AgentEntry {
			return nil
		}
		err := base.Add(value)
		if errors.Is(err, redact.ErrTooShort) || errors.Is(err, redact.ErrLikeMarker) {
			red.unredactable[entry+"/"+field] = true
			return nil
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return red, nil
}

// add learns a secret obtained at run time (an access token). A secret it
// cannot redact is an error: the caller must not use it.
func (r *redactor) add(secret []byte) error {
	if err := r.r.Add(secret); err != nil {
		return fmt.Errorf("cannot keep an obtained credential out of results: %w", err)
	}
	return nil
}

func (r *redactor) addSealed(s *secmem.Sealed) error {
	b, err := s.Open()
	if err != nil {
		return err
	}
	defer b.Destroy()
	return r.add(b.Bytes())
}

func (r *redactor) String(s string) string { return r.r.String(s) }

func (r *redactor) bytes(b []byte) []byte { return r.r.Bytes(b) }

func (r *redactor) json(raw []byte) ([]byte, error) { return r.r.JSON(raw) }

// header drops the auth headers (and the api_key scheme's own) and scrubs
// the rest.
func (r *redactor) header(h http.Header, schemeHeader string) http.Header {
	if schemeHeader != "" {
		return r.r.Header(h, schemeHeader)
	}
	return r.r.Header(h)
}
