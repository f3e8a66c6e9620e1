package agent

import (
	"errors"
	"net/http"

	"github.com/rapidvalue/tier3-agent/agent/redact"
	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/vault"
)

// redactor scrubs every value of one vault generation, and every token
// obtained while it serves, from what leaves the agent.
type redactor struct {
	r *redact.Redactor
	// unredactable names the entry/field values too short to be found
	// reliably in output (under redact.MinLen bytes): tasks may not use
	// them, since nothing could keep them out of a result.
	unredactable map[string]bool
}

// newRedactor loads every value of the vault (identifier fields and the
// _agent entry included: SPEC.md lets client_id, username and bind_dn
// appear in results, but scrubbing them too is the safe side only where
// they are not also data; they are skipped so that directory results
// keep their DNs).
func newRedactor(v *vault.Vault) (*redactor, error) {
	r, err := redact.New()
	if err != nil {
		return nil, err
	}
	red := &redactor{r: r, unredactable: map[string]bool{}}
	err = v.Each(func(entry, field string, value []byte) error {
		if vault.IdentifierFields[field] && entry != vault.AgentEntry {
			return nil
		}
		err := r.Add(value)
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

// add learns a secret obtained at run time (an access token). It copies
// secret: the caller keeps and destroys its own buffer.
func (r *redactor) add(secret []byte) { r.r.Add(secret) }

func (r *redactor) addSealed(s *secmem.Sealed) {
	if s == nil {
		return
	}
	b, err := s.Open()
	if err != nil {
		return
	}
	r.r.Add(b.Bytes())
	b.Destroy()
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
