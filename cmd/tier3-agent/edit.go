package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/awnumar/memguard"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/vault"
)

// edit opens the plaintext in $VISUAL or $EDITOR on a copy in
// memory-backed storage (tmpfs), re-validates it and re-seals it. The copy
// is 0600 in a 0700 folder, overwritten and removed on every exit path.
// Where no memory-backed folder exists it refuses rather than write
// plaintext to a disk.
func (vc *vaultCmd) edit(pos []string) error {
	if err := wantArgs(vc.name, pos, 0, 0); err != nil {
		return err
	}
	editor := vc.getenv("VISUAL")
	if editor == "" {
		editor = vc.getenv("EDITOR")
	}
	if editor == "" {
		editor = "vi"
	}
	base, err := memoryDir(vc.getenv)
	if err != nil {
		return &hinted{err, "vault set, unset and bind change the vault without an editor"}
	}
	h, unlock, err := vc.openLocked()
	if err != nil {
		return err
	}
	defer unlock()
	pt, n, err := h.Vault.Marshal()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(base, "tier3-agent-edit-*")
	if err != nil {
		pt.Destroy()
		return fmt.Errorf("cannot create a folder in %s: %w", base, err)
	}
	path := filepath.Join(dir, "vault.json")
	cleanup := func() { wipeFile(path); os.RemoveAll(dir) }
	defer cleanup()
	// A signal while the editor runs must not skip the wipe.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		if _, ok := <-sigs; ok {
			cleanup()
			memguard.SafeExit(1)
		}
	}()

	err = writeFileMode(path, pt.Bytes()[:n], 0o600)
	pt.Destroy()
	if err != nil {
		return err
	}
	for {
		if err := runEditor(editor, path); err != nil {
			return fmt.Errorf("the editor failed, nothing changed: %w", err)
		}
		nv, err := readEdited(path)
		if err == nil {
			h.Vault = nv
			break
		}
		vc.say("error: %s", oneLine(err.Error()))
		if !vc.askAgain() {
			return errors.New("the edited vault is not valid: nothing changed")
		}
	}
	if err := h.Save(); err != nil {
		return err
	}
	vc.say("saved and re-sealed %s", vc.cfg.Path)
	return nil
}

func (vc *vaultCmd) askAgain() bool {
	in, ok := vc.stdin.(*os.File)
	if !ok || !isTerminal(in) {
		return false
	}
	fmt.Fprint(vc.stderr, "edit again? [Y/n] ")
	line, _ := bufio.NewReader(in).ReadString('\n')
	return !strings.HasPrefix(strings.ToLower(strings.TrimSpace(line)), "n")
}

func runEditor(editor, path string) error {
	// $EDITOR may carry arguments ("code -w"); it is the user's own setting.
	fields := strings.Fields(editor)
	cmd := exec.Command(fields[0], append(fields[1:], path)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd.Run()
}

func readEdited(path string) (*vault.Vault, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("the edited file is gone: %w", err)
	}
	defer f.Close()
	buf, n, err := secmem.ReadAll(f, vault.MaxSize)
	if err != nil {
		return nil, err
	}
	if buf == nil {
		return nil, errors.New("the edited file is empty")
	}
	defer buf.Destroy()
	return vault.Parse(buf.Bytes()[:n])
}

func writeFileMode(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// wipeFile overwrites a file with zeros before it is removed, so that the
// tmpfs pages it used hold no plaintext when they are reused.
func wipeFile(path string) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil {
		zero := make([]byte, 4096)
		for left := fi.Size(); left > 0; left -= int64(len(zero)) {
			f.Write(zero[:min(left, int64(len(zero)))])
		}
		f.Sync()
	}
}
