//go:build !unix

package audit

import "os"

// lockFile does nothing outside Unix: there a second writer is not
// detected, and the agent relies on running once per host.
func lockFile(*os.File) (unlock func(), err error) { return func() {}, nil }

// syncDir does nothing outside Unix: Windows has no folder fsync, and its
// renames are made durable by NTFS's journal.
func syncDir(string) error { return nil }
