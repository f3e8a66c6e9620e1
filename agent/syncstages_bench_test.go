package agent

import (
	"bytes"
	"io"
	"testing"

	"github.com/rapidvalue/tier3-agent/agent/redact"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// benchPage is a page of 10,000 records as the e2e source makes them.
func benchPage(b *testing.B) []byte {
	b.Helper()
	r := &recordsReader{n: 10_000}
	page, err := io.ReadAll(r)
	if err != nil {
		b.Fatal(err)
	}
	return page
}

func benchRedactor(b *testing.B) *redactor {
	b.Helper()
	r, err := redact.New()
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range []string{"Bearer-Token-Zq81-VaultValue-0001", "Basic-Password-Xk29!@#-0002", "Api-Key-Value-Mm47-0003", "agent-token-xxxxxxxxxxxxxxxxxxxxxx"} {
		if err := r.Add([]byte(s)); err != nil {
			b.Fatal(err)
		}
	}
	return &redactor{r: r}
}

// BenchmarkSyncStages measures each stage a record goes through in the
// agent, per 10,000-record page (ns/op is per page). The decode… rows are
// the path http.sync took before the single-pass scanner (encoding/json's
// decoder, kept as readPageOracle, then redact.JSON, appendCompactJSON and
// wire.Check, each a pass of its own); scan and scan+encode are the path
// it takes now (readPageRecords, then encodeRecord).
func BenchmarkSyncStages(b *testing.B) {
	page := benchPage(b)
	red := benchRedactor(b)
	items := jsonPointer{"records"}
	next := jsonPointer{"next"}
	run := func(b *testing.B, emit func([]byte) error) {
		b.SetBytes(int64(len(page)))
		b.ReportAllocs()
		for b.Loop() {
			if _, n, err := readPageOracle(bytes.NewReader(page), items, next, defaultPageLimits, emit); err != nil || n != 10_000 {
				b.Fatal(n, err)
			}
		}
	}
	b.Run("decode", func(b *testing.B) { run(b, func([]byte) error { return nil }) })
	b.Run("decode+redact", func(b *testing.B) {
		run(b, func(r []byte) error { _, err := red.json(r); return err })
	})
	var scratch []byte
	b.Run("decode+redact+compact", func(b *testing.B) {
		run(b, func(r []byte) error {
			out, err := red.json(r)
			scratch = appendCompactJSON(scratch[:0], out)
			return err
		})
	})
	b.Run("decode+redact+compact+check", func(b *testing.B) {
		run(b, func(r []byte) error {
			out, err := red.json(r)
			scratch = appendCompactJSON(scratch[:0], out)
			if err == nil {
				err = wire.Check(scratch, wire.Limits{MaxDepth: maxRecordDepth})
			}
			return err
		})
	})
	// The single-pass path http.sync takes: scan (compacting and checking
	// on the way), then ask the redactor (encodeRecord).
	runScan := func(b *testing.B, emit func(*pageRecord) error) {
		b.SetBytes(int64(len(page)))
		b.ReportAllocs()
		for b.Loop() {
			if _, n, err := readPageRecords(bytes.NewReader(page), items, next, defaultPageLimits, emit); err != nil || n != 10_000 {
				b.Fatal(n, err)
			}
		}
	}
	b.Run("scan", func(b *testing.B) { runScan(b, func(*pageRecord) error { return nil }) })
	rs := &recordStream{t: &taskRun{st: &runState{redact: red}}}
	b.Run("scan+encode", func(b *testing.B) {
		runScan(b, func(pr *pageRecord) error {
			_, err := rs.encodeRecord(pr)
			return err
		})
	})
	b.Run("controlplane-decode", func(b *testing.B) {
		// What the control plane does with a chunk of 500 such records
		// (per page: 20 chunks).
		var recs [][]byte
		readPage(bytes.NewReader(page), items, next, defaultPageLimits, func(r []byte) error {
			recs = append(recs, bytes.Clone(r))
			return nil
		})
		chunk := []byte(`{"seq":1,"records":[` + string(bytes.Join(recs[:500], []byte(","))) + `],"final":false}`)
		b.SetBytes(int64(len(page)))
		for b.Loop() {
			for range 20 {
				var c wire.Chunk
				if err := wire.Decode(chunk, &c, wire.Limits{}); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
