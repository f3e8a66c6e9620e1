package secmem

import (
	"sync"

	"github.com/awnumar/memguard"
)

// Scratch is locked memory kept for opening Sealed values briefly, over and
// over: the agent's own token on every request to the control plane, say.
// Open maps, locks, guards and then unmaps fresh pages for each value,
// several system calls (BenchmarkOpen against BenchmarkScratch); With
// decrypts into the same locked pages every time and wipes them after.
//
// A Scratch is safe for concurrent use: calls take turns.
type Scratch struct {
	mu  sync.Mutex
	buf *memguard.LockedBuffer
}

// With opens s into the scratch memory, calls f with the plaintext and
// wipes it before returning. f must not keep the slice or anything that
// aliases it.
func (sc *Scratch) With(s *Sealed, f func(plain []byte)) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	n := s.Size()
	if sc.buf == nil || sc.buf.Size() < n {
		b, err := New(max(n, 64))
		if err != nil {
			return err
		}
		if sc.buf != nil {
			sc.buf.Destroy()
		}
		sc.buf = b
	}
	p := sc.buf.Bytes()[:n]
	defer memguard.WipeBytes(p)
	if _, err := s.OpenInto(p); err != nil {
		return err
	}
	f(p)
	return nil
}

// Destroy releases the locked memory. The Scratch can be used again.
func (sc *Scratch) Destroy() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.buf != nil {
		sc.buf.Destroy()
		sc.buf = nil
	}
}
