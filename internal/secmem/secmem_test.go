package secmem

import (
	"bytes"
	"errors"
	"testing"
	"testing/iotest"
)

func TestReadAll(t *testing.T) {
	for _, size := range []int{0, 1, 4095, 4096, 4097, 100_000} {
		in := bytes.Repeat([]byte{'x'}, size)
		buf, n, err := ReadAll(iotest.OneByteReader(bytes.NewReader(in)), 100_000)
		if err != nil || n != size {
			t.Fatalf("size %d: n %d err %v", size, n, err)
		}
		if size == 0 {
			if buf != nil {
				t.Fatal("empty input gave a buffer")
			}
			continue
		}
		if !bytes.Equal(buf.Bytes()[:n], in) {
			t.Fatalf("size %d: contents differ", size)
		}
		if buf.Size() > 2*size+4096 {
			t.Fatalf("size %d: locked %d bytes", size, buf.Size())
		}
		buf.Destroy()
	}
	if _, _, err := ReadAll(bytes.NewReader(make([]byte, 101)), 100); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	if _, n, err := ReadAll(bytes.NewReader(make([]byte, 100)), 100); err != nil || n != 100 {
		t.Fatalf("at the limit: %d %v", n, err)
	}
}
