package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/awnumar/memguard"
	"golang.org/x/term"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
)

var filepathAbs = filepath.Abs

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// promptSecret reads one line without echo. x/term returns it on the heap;
// it is moved into locked memory and the heap slice wiped at once.
func promptSecret(in *os.File, out io.Writer, prompt string) (*memguard.LockedBuffer, error) {
	fmt.Fprint(out, prompt)
	b, err := term.ReadPassword(int(in.Fd()))
	fmt.Fprintln(out)
	if err != nil {
		return nil, fmt.Errorf("cannot read from the terminal: %w", err)
	}
	if len(b) == 0 {
		return nil, errors.New("nothing entered: nothing changed")
	}
	return secmem.FromBytes(b)
}

const maxPassphrase = 1024

// passphrase is the passphrase seal's source: RV_AGENT_VAULT_PASSPHRASE_FILE
// when set, else the terminal. It asks once per process and keeps the
// answer in locked memory for the writes that follow.
type passphrase struct {
	file   string
	stdin  io.Reader
	stderr io.Writer
	label  string
	cached *memguard.LockedBuffer
}

func (p *passphrase) get(confirm bool) (*memguard.LockedBuffer, error) {
	if p.cached == nil {
		b, err := p.read(confirm)
		if err != nil {
			return nil, err
		}
		p.cached = b
	}
	out, err := secmem.New(p.cached.Size())
	if err != nil {
		return nil, err
	}
	out.Copy(p.cached.Bytes())
	return out, nil
}

func (p *passphrase) read(confirm bool) (*memguard.LockedBuffer, error) {
	label := p.label
	if label == "" {
		label = "vault passphrase"
	}
	if p.file != "" {
		f, err := os.Open(p.file)
		if err != nil {
			return nil, fmt.Errorf("cannot read RV_AGENT_VAULT_PASSPHRASE_FILE: %w", err)
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o004 != 0 {
			return nil, fmt.Errorf("the passphrase file %s is readable by everyone: chmod 600 it", p.file)
		}
		buf, n, err := secmem.ReadAll(f, maxPassphrase)
		if err != nil {
			return nil, fmt.Errorf("cannot read the passphrase file (at most %d bytes): %w", maxPassphrase, err)
		}
		if n > 0 && buf.Bytes()[n-1] == '\n' {
			n--
		}
		if n == 0 {
			return nil, fmt.Errorf("the passphrase file %s is empty", p.file)
		}
		out, err := secmem.New(n)
		if err != nil {
			buf.Destroy()
			return nil, err
		}
		out.Copy(buf.Bytes()[:n])
		buf.Destroy()
		return out, nil
	}
	in, ok := p.stdin.(*os.File)
	if !ok || !isTerminal(in) {
		return nil, errors.New("the passphrase seal needs RV_AGENT_VAULT_PASSPHRASE_FILE when not on a terminal")
	}
	a, err := promptSecret(in, p.stderr, label+": ")
	if err != nil {
		return nil, err
	}
	if !confirm {
		return a, nil
	}
	b, err := promptSecret(in, p.stderr, label+" (again): ")
	if err != nil {
		a.Destroy()
		return nil, err
	}
	defer b.Destroy()
	if !a.EqualTo(b.Bytes()) {
		a.Destroy()
		return nil, errors.New("the passphrases differ")
	}
	return a, nil
}

func (p *passphrase) destroy() {
	if p.cached != nil {
		p.cached.Destroy()
	}
}
