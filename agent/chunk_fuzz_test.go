package agent

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/internal/config"
	"github.com/rapidvalue/tier3-agent/internal/wire"
	"github.com/rapidvalue/tier3-agent/vault"
)

const chunkSecret = "Fuzz-Chunk-Secret-Value-31Zt"

// FuzzChunkEncoding feeds any record a target may return through what the
// agent does before it goes into a chunk (redaction, compaction, the
// control plane's strict checks), and checks: no panic; a refusal is a
// taskError with a protocol class; an accepted record makes a chunk body
// that the control plane's decoder takes, that holds the record's data, and
// that holds no vault value.
func FuzzChunkEncoding(f *testing.F) {
	for _, s := range []string{
		`{"id":1,"email":"a@example.com"}`,
		`{"token":"` + chunkSecret + `","n":[1,2.5e3,null,true]}`,
		`{"a":{"b":{"c":"\u00e9\ud83d\ude00 \/ \"q\""}}}`,
		`{"` + chunkSecret + `":1,"k":"x` + chunkSecret + `y"}`,
		`{"dup":1,"dup":2}`,
		`"plain string record"`,
		`[` + strings.Repeat(`[`, 40) + strings.Repeat(`]`, 40) + `]`,
		`{"bad":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	a, st := fuzzRunState(f, `{"crm": {"token": "`+chunkSecret+`"}}`)
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return // the page decoder hands over only valid JSON values
		}
		s := &recordStream{t: &taskRun{a: a, env: &wire.Envelope{TaskID: "t"}, st: st}}
		rec, err := s.encode(raw)
		if err != nil {
			var te *taskError
			if !errors.As(err, &te) || !wire.ValidErrorClass(te.class) {
				t.Fatalf("encode returned %T %v", err, err)
			}
			if strings.Contains(err.Error(), chunkSecret) {
				t.Fatal("an error quotes a vault value")
			}
			return
		}
		body := append(s.start(nil), rec...)
		body = append(body, `],"final":true}`...)
		var c wire.Chunk
		if err := wire.Decode(body, &c, wire.Limits{}); err != nil {
			t.Fatalf("the control plane would refuse the chunk: %v", err)
		}
		if len(c.Records) != 1 || !c.Final {
			t.Fatalf("chunk decodes to %d records", len(c.Records))
		}
		if strings.Contains(string(body), chunkSecret) {
			t.Fatal("a vault value reached a chunk")
		}
	})
}

// fuzzRunState is an agent and its run state over a plaintext vault, for
// fuzzing what a task does with them (the chunk encoder, the page path).
func fuzzRunState(f *testing.F, vaultJSON string) (*Agent, *runState) {
	v, err := vault.Parse([]byte(vaultJSON))
	if err != nil {
		f.Fatal(err)
	}
	red, err := newRedactor(nil, v)
	if err != nil {
		f.Fatal(err)
	}
	a := &Agent{cfg: &config.Agent{ChunkSize: 500}, clock: realClock{}}
	return a, &runState{vs: &VaultState{Vault: v, Sealed: true}, redact: red, generation: 1}
}
