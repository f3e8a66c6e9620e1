//go:build windows

package atomicfile

import (
	"os"

	"golang.org/x/sys/windows"
)

// Windows has no folder fsync; the rename is made durable by NTFS's journal.
func syncDir(string) error { return nil }

func lockFile(f *os.File) error {
	ol := new(windows.Overlapped)
	return windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK, 0, 1, 0, ol)
}

func unlockFile(f *os.File) {
	ol := new(windows.Overlapped)
	windows.UnlockFileEx(windows.Handle(f.Fd()), 0, 1, 0, ol)
}
