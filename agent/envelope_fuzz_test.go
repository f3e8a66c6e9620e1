package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/config"
	"github.com/rapidvalue/tier3-agent/internal/wire"
	"github.com/rapidvalue/tier3-agent/vault"
)

const envelopeSecret = "Fuzz-Vault-Secret-Value-77Kq"

// FuzzEnvelope runs any bytes through what the agent does with a poll
// answer before a target is contacted: the strict decode, then every
// envelope check and the method's request parsing. It must never panic;
// every refusal is a taskError with a protocol error class; no error text
// holds a vault value.
func FuzzEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"task_id":"t1","method":"http.request","connector":{"business_id":"crm","base_url":"https://crm.example.com"},"auth":{"scheme":"bearer","credentials":{"token":"vault://local/crm/token"}},"request":{"method":"GET","path":"/u"}}`,
		`{"task_id":"t2","method":"http.request","connector":{"business_id":"crm","base_url":"https://crm.example.com"},"auth":{"scheme":"bearer","credentials":{"token":"` + envelopeSecret + `"}},"request":{"path":"/u"}}`,
		`{"task_id":"t3","method":"http.request","connector":{"business_id":"crm","base_url":"https://crm.example.com"},"auth":{"scheme":"oauth2_client_credentials","token_url":"https://evil.example.com/t","credentials":{"client_id":"vault://local/crm/client_id","client_secret":"vault://local/crm/token"}},"request":{"path":"/u"}}`,
		`{"task_id":"t4","method":"http.sync","connector":{"business_id":"crm","base_url":"https://crm.example.com"},"auth":{"scheme":"none"},"request":{"path":"/u","items":"/records","next":{"kind":"link_header"}}}`,
		`{"task_id":"t5","method":"ldap.search","connector":{"business_id":"crm","base_url":"ldaps://dc1:636"},"auth":{"scheme":"ldap_simple","credentials":{"bind_dn":"vault://local/crm/bind_dn","bind_password":"vault://local/crm/token"}},"request":{"base_dn":"dc=x","scope":"sub","filter":"(cn=*)"}}`,
		`{"task_id":"t6","method":"http.request","connector":{"business_id":"crm","base_url":"https://crm.example.com"},"auth":{"scheme":"api_key","header":"Authorization","credentials":{"key":"vault://local/crm/token"}},"request":{"path":"//evil/x","headers":{"A":"b\r\nc"}}}`,
	} {
		f.Add([]byte(s))
	}
	v, err := vault.Parse([]byte(`{"crm": {"token": "` + envelopeSecret + `", "client_id": "cid-1", "bind_dn": "cn=svc", "_targets": ["https://crm.example.com", "ldaps://dc1:636"]}}`))
	if err != nil {
		f.Fatal(err)
	}
	red, err := newRedactor(nil, v)
	if err != nil {
		f.Fatal(err)
	}
	a := &Agent{cfg: &config.Agent{}, clock: realClock{}}
	st := &runState{vs: &VaultState{Vault: v, Sealed: true}, redact: red, generation: 1}
	f.Fuzz(func(t *testing.T, data []byte) {
		var env wire.Envelope
		if err := wire.Decode(data, &env, wire.Limits{}); err != nil {
			if strings.Contains(err.Error(), envelopeSecret[:10]) {
				t.Fatal("a decode error quotes a vault value")
			}
			return
		}
		tr := &taskRun{a: a, env: &env, st: st, start: time.Now(), lease: time.Minute}
		_, err := tr.check()
		if err == nil {
			return
		}
		var te *taskError
		if !errors.As(err, &te) || !wire.ValidErrorClass(te.class) {
			t.Fatalf("check returned %T %v, not a taskError with a protocol class", err, err)
		}
		if strings.Contains(err.Error(), envelopeSecret[:10]) && !strings.Contains(string(data), envelopeSecret[:10]) {
			t.Fatal("a check error quotes a vault value")
		}
		if strings.Contains(red.String(err.Error()), envelopeSecret[:10]) {
			t.Fatal("a check error survives redaction with a vault value")
		}
	})
}
