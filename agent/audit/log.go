package audit

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// ErrLocked is wrapped by Open's error when another process (or another
// Log in this one) has the log open for writing. Two writers would fork the
// chain.
var ErrLocked = errors.New("audit log is in use by another writer")

// ErrClosed is returned by Append after Close, and by Run and Close of a
// Queue that is closed.
var ErrClosed = errors.New("audit log or queue is closed")

// Log is an open audit log. Its methods are safe for concurrent use.
type Log struct {
	path string
	now  func() time.Time // AT of each record; time.Now but in tests

	mu     sync.Mutex
	f      *os.File
	unlock func()
	seq    uint64            // the last record's seq; 0 when empty
	prev   [sha256.Size]byte // the last record's hash, or the genesis
	size   int64             // bytes of intact records in the file
	err    error             // sticky: once set, Append refuses
	buf    []byte
}

// Open opens the log at path for appending, creating it (mode 0600) when
// it does not exist. It reads an existing log whole and verifies its chain
// (as Verify does) to learn where to continue. A log that is not intact is
// an error wrapping a *VerifyError (and ErrBroken) that names the first bad
// line; Open never appends to a broken chain. The caller decides: keep the
// file for inspection with MoveAside and Open a new log at path.
//
// On Unix the open file is locked (flock); a second writer gets ErrLocked.
// The mode of an existing file is left as it is.
func Open(path string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cannot open audit log: %w", err)
	}
	l := &Log{path: path, now: time.Now, f: f}
	if err := l.load(); err != nil {
		if l.unlock != nil {
			l.unlock()
		}
		f.Close()
		return nil, err
	}
	return l, nil
}

func (l *Log) load() error {
	fi, err := l.f.Stat()
	if err != nil {
		return fmt.Errorf("cannot stat audit log %s: %w", l.path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("audit log %s is not a regular file", l.path)
	}
	unlock, err := lockFile(l.f)
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return fmt.Errorf("cannot open audit log %s: %w", l.path, ErrLocked)
		}
		return fmt.Errorf("cannot lock audit log %s: %w", l.path, err)
	}
	l.unlock = unlock
	// O_APPEND writes go to the end whatever the offset; reads start at 0.
	var c chain
	if err := c.run(l.f); err != nil {
		var verr *VerifyError
		if errors.As(err, &verr) {
			return fmt.Errorf("audit log %s is broken at %w; move it aside and start a new log", l.path, err)
		}
		return fmt.Errorf("audit log %s: %w", l.path, err)
	}
	l.seq, l.size = c.seq, c.bytes
	if c.lines > 0 {
		l.prev = c.prev
	} else if _, err := rand.Read(l.prev[:]); err != nil {
		return fmt.Errorf("cannot choose the audit log's genesis: %w", err)
	}
	return nil
}

// Append writes ev as the next record and syncs it to disk before it
// returns. ev is normalized first: a zero At becomes now, At becomes UTC,
// strings longer than MaxFieldBytes are cut. An event of a type that
// PROTOCOL.md §6 does not list is refused (ErrInvalidEvent).
//
// The record is one write call. If the write fails, Append cuts the file
// back to its last intact record; if that or the sync fails, the Log
// refuses every later Append (the file's state is unknown) and the caller
// reopens it, which verifies it again.
func (l *Log) Append(ev wire.Event) error {
	ev, err := normalizeEvent(ev, l.now)
	if err != nil {
		return err
	}
	event, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	seq := l.seq + 1
	at := formatTime(l.now())
	var hash [sha256.Size]byte
	hash, l.buf = recordHash(l.buf, seq, []byte(at), &l.prev, event)
	line := appendRecord(l.buf[:0], seq, at, &l.prev, event, &hash)
	l.buf = line
	if len(line) > MaxLineBytes {
		return fmt.Errorf("%w: record of %d bytes is over the limit", ErrInvalidEvent, len(line))
	}
	if n, err := l.f.Write(line); err != nil || n != len(line) {
		if err == nil {
			err = errors.New("short write")
		}
		if terr := l.f.Truncate(l.size); terr != nil {
			l.err = fmt.Errorf("audit log %s is in an unknown state after a failed write (%v); reopen it: %w", l.path, terr, err)
		}
		return fmt.Errorf("cannot write audit log %s: %w", l.path, err)
	}
	if err := l.f.Sync(); err != nil {
		// After a failed fsync the kernel may have dropped the pages:
		// whether the record is on disk is unknown.
		l.err = fmt.Errorf("audit log %s is in an unknown state after a failed sync; reopen it: %w", l.path, err)
		return l.err
	}
	l.seq, l.prev, l.size = seq, hash, l.size+int64(len(line))
	return nil
}

// Head returns the last record's seq and hash (hex): the anchor to keep
// elsewhere and to check later with VerifyAgainst. An empty log's head is
// (0, "").
func (l *Log) Head() (seq uint64, hash string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seq == 0 {
		return 0, ""
	}
	return l.seq, hex.EncodeToString(l.prev[:])
}

// Path returns the log's path.
func (l *Log) Path() string { return l.path }

// Close closes the file. Later Appends return ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	if l.unlock != nil {
		l.unlock()
	}
	err := l.f.Close()
	l.f, l.err = nil, ErrClosed
	return err
}

// MoveAside renames the log at path to path.broken-<UTC time> (with a
// counter if that exists too) and returns the new name, so that a broken
// log is kept for inspection and Open can start a new one at path. It never
// replaces an existing file.
func MoveAside(path string) (string, error) {
	base := path + ".broken-" + time.Now().UTC().Format("20060102T150405Z")
	for i := 0; i < 100; i++ {
		dst := base
		if i > 0 {
			dst += "-" + strconv.Itoa(i)
		}
		if _, err := os.Lstat(dst); err == nil {
			continue
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("cannot move audit log aside: %w", err)
		}
		if err := os.Rename(path, dst); err != nil {
			return "", fmt.Errorf("cannot move audit log aside: %w", err)
		}
		if err := syncDir(filepath.Dir(path)); err != nil {
			return dst, err
		}
		return dst, nil
	}
	return "", fmt.Errorf("cannot move audit log aside: too many broken logs named %s*", base)
}
