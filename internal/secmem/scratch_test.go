package secmem

import (
	"bytes"
	"sync"
	"testing"
)

func TestScratch(t *testing.T) {
	var sc Scratch
	defer sc.Destroy()
	short, err := SealValue([]byte("short secret"))
	if err != nil {
		t.Fatal(err)
	}
	long, err := SealValue(bytes.Repeat([]byte("L"), 300)) // grows the buffer past 64
	if err != nil {
		t.Fatal(err)
	}
	var kept []byte
	for _, c := range []struct {
		s    *Sealed
		want string
	}{{short, "short secret"}, {long, string(bytes.Repeat([]byte("L"), 300))}, {short, "short secret"}} {
		err := sc.With(c.s, func(p []byte) {
			if string(p) != c.want {
				t.Errorf("With gave %q, want %q", p, c.want)
			}
			kept = p[:cap(p)]
		})
		if err != nil {
			t.Fatal(err)
		}
		// The plaintext is wiped once f returns.
		if i := bytes.IndexFunc(kept, func(r rune) bool { return r != 0 }); i >= 0 {
			t.Fatalf("scratch memory not wiped after With: byte %d is %q", i, kept[i])
		}
	}

	// A value that does not authenticate is an error, and f is not called.
	bad, _ := SealValue([]byte("tampered value"))
	bad.ct[len(bad.ct)-1] ^= 1
	if err := sc.With(bad, func([]byte) { t.Error("f called for a value that does not authenticate") }); err == nil {
		t.Fatal("a modified Sealed opened")
	}

	// Concurrent callers take turns and each sees its own value.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				s, want := short, "short secret"
				if (i+j)%2 == 1 {
					s, want = long, string(bytes.Repeat([]byte("L"), 300))
				}
				if err := sc.With(s, func(p []byte) {
					if string(p) != want {
						t.Errorf("concurrent With gave %q", p)
					}
				}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkOpen and BenchmarkScratch compare the two ways of reading a
// 40-byte token, as the agent does per request to the control plane.
func BenchmarkOpen(b *testing.B) {
	s, _ := SealValue(bytes.Repeat([]byte("t"), 40))
	for b.Loop() {
		lb, err := s.Open()
		if err != nil {
			b.Fatal(err)
		}
		lb.Destroy()
	}
}

func BenchmarkScratch(b *testing.B) {
	s, _ := SealValue(bytes.Repeat([]byte("t"), 40))
	var sc Scratch
	defer sc.Destroy()
	for b.Loop() {
		if err := sc.With(s, func([]byte) {}); err != nil {
			b.Fatal(err)
		}
	}
}
