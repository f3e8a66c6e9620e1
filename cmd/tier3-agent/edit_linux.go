package main

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const (
	tmpfsMagic = 0x01021994
	ramfsMagic = 0x858458f6
)

// memoryDir returns a folder on tmpfs or ramfs that only this user can
// use: $XDG_RUNTIME_DIR, then /dev/shm, then /run/user/UID.
func memoryDir(getenv func(string) string) (string, error) {
	cands := []string{getenv("XDG_RUNTIME_DIR"), "/dev/shm", fmt.Sprintf("/run/user/%d", os.Getuid())}
	for _, d := range cands {
		if d == "" {
			continue
		}
		var st unix.Statfs_t
		if err := unix.Statfs(d, &st); err != nil {
			continue
		}
		if st.Type == tmpfsMagic || st.Type == ramfsMagic {
			return d, nil
		}
	}
	return "", errors.New("vault edit found no memory-backed folder (tmpfs at $XDG_RUNTIME_DIR or /dev/shm) and will not write plaintext to a disk")
}
