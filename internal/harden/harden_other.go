//go:build !linux

package harden

import "errors"

// On macOS and Windows, memguard's import already disables core dumps where
// the OS allows it; there is no PR_SET_DUMPABLE equivalent to set here.
// SECURITY.md lists this.
func platform() error { return nil }

// Dumpable is not available off Linux.
func Dumpable() (int, error) { return 0, errors.New("not supported on this OS") }
