// Package secmem wraps memguard so that running out of lockable memory is an
// error the caller can report, not a panic.
//
// memguard panics (after purging every buffer and the enclave key) when mlock
// fails. Every allocation of locked memory in this module goes through this
// package, which turns that panic into ErrMemlock with the limit to raise.
package secmem

import (
	"errors"
	"fmt"
	"io"

	"github.com/awnumar/memguard"
)

// ErrMemlock is returned when locked memory cannot be allocated. After it,
// memguard has purged its state: existing enclaves can no longer be opened and
// the process should exit.
var ErrMemlock = errors.New("cannot lock memory: raise RLIMIT_MEMLOCK (ulimit -l, or LimitMEMLOCK= in the systemd unit) or grant CAP_IPC_LOCK")

// ErrTooLarge is returned by ReadAll when the input exceeds its limit.
var ErrTooLarge = errors.New("input too large")

func guard(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			// memguard's panic values describe mlock/mmap failures; they
			// never carry buffer contents.
			err = fmt.Errorf("%w (%v)", ErrMemlock, r)
		}
	}()
	f()
	return nil
}

// New returns a zeroed locked buffer of n bytes (n > 0).
func New(n int) (*memguard.LockedBuffer, error) {
	if n <= 0 {
		n = 1
	}
	var b *memguard.LockedBuffer
	if err := guard(func() { b = memguard.NewBuffer(n) }); err != nil {
		return nil, err
	}
	return b, nil
}

// FromBytes moves src into a new locked buffer and wipes src.
func FromBytes(src []byte) (*memguard.LockedBuffer, error) {
	b, err := New(len(src))
	if err != nil {
		memguard.WipeBytes(src)
		return nil, err
	}
	b.Move(src)
	return b, nil
}

// Seal encrypts src into a new enclave and wipes src.
func Seal(src []byte) (*memguard.Enclave, error) {
	if len(src) == 0 {
		return nil, errors.New("cannot seal an empty value")
	}
	var e *memguard.Enclave
	if err := guard(func() { e = memguard.NewEnclave(src) }); err != nil {
		memguard.WipeBytes(src)
		return nil, err
	}
	return e, nil
}

// Open decrypts an enclave into a new locked buffer; the caller destroys it.
func Open(e *memguard.Enclave) (*memguard.LockedBuffer, error) {
	var (
		b    *memguard.LockedBuffer
		oerr error
	)
	if err := guard(func() { b, oerr = e.Open() }); err != nil {
		return nil, err
	}
	if oerr != nil {
		return nil, fmt.Errorf("cannot open enclave: %w", oerr)
	}
	return b, nil
}

// ReadAll reads r to EOF straight into locked memory, at most max bytes, so
// that no copy lands on the Go heap. Locked memory grows with what is read
// (doubling from 4 KiB), never to max up front: RLIMIT_MEMLOCK is often
// 8 MiB. An empty input gives a nil buffer and n == 0; otherwise the caller
// destroys the buffer, of which the first n bytes are the input.
func ReadAll(r io.Reader, max int) (*memguard.LockedBuffer, int, error) {
	size := min(4096, max+1)
	buf, err := New(size)
	if err != nil {
		return nil, 0, err
	}
	n := 0
	for {
		if n == buf.Size() {
			if n > max {
				buf.Destroy()
				return nil, 0, ErrTooLarge
			}
			bigger, err := New(min(2*buf.Size(), max+1))
			if err != nil {
				buf.Destroy()
				return nil, 0, err
			}
			bigger.Copy(buf.Bytes()[:n])
			buf.Destroy()
			buf = bigger
		}
		m, err := r.Read(buf.Bytes()[n:])
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			buf.Destroy()
			return nil, 0, err
		}
	}
	if n > max {
		buf.Destroy()
		return nil, 0, ErrTooLarge
	}
	if n == 0 {
		buf.Destroy()
		return nil, 0, nil
	}
	return buf, n, nil
}
