package audit

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// BenchmarkAppend is one record written and fsynced: what every audit
// event costs the agent.
func BenchmarkAppend(b *testing.B) {
	l, err := Open(filepath.Join(b.TempDir(), "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ev := testEvent(1, "target answered 502")
	b.ResetTimer()
	for b.Loop() {
		if err := l.Append(ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify100k verifies a log of 100,000 records (about 42 MB), as
// Open does at every start.
func BenchmarkVerify100k(b *testing.B) {
	data := join(buildLines(100_000, "target answered 502"))
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		rep, err := Verify(bytes.NewReader(data))
		if err != nil || rep.Events != 100_000 {
			b.Fatal(rep, err)
		}
	}
}

// BenchmarkEmit is Emit without a local log: the queue's own cost.
func BenchmarkEmit(b *testing.B) {
	q, err := NewQueue(QueueConfig{Send: func(context.Context, []wire.Event) error { return nil }})
	if err != nil {
		b.Fatal(err)
	}
	ev := testEvent(1, "")
	for b.Loop() {
		q.Emit(ev)
	}
}
