//go:build unix

package update

import (
	"os"

	"golang.org/x/sys/unix"
)

// installSupported: a new binary can move in while the old one runs, and a
// supervisor can run it (cmd/tier3-agent/supervise_unix.go).
const installSupported = true

// lockDir takes an exclusive flock on the folder itself, so that no lock
// file is left where the agent is installed.
func lockDir(dir string) (func(), error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(d.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	return func() { unix.Flock(int(d.Fd()), unix.LOCK_UN); d.Close() }, nil
}

// syncDir makes the renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
