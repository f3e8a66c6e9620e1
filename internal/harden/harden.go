// Package harden sets the process up to hold plaintext secrets: no core
// dumps, not dumpable or ptrace-attachable by same-uid processes, and enough
// lockable memory for memguard, checked before any secret is read.
package harden

import "fmt"

// MinMemlock is the least RLIMIT_MEMLOCK this program runs with: memguard
// locks at least one page per live buffer plus its key, and the vault's
// plaintext while it is parsed or written.
const MinMemlock = 1 << 20

// Process applies the hardening for a command that touches plaintext. Its
// errors say which limit or setting to change.
func Process() error {
	if err := platform(); err != nil {
		return fmt.Errorf("cannot harden the process: %w", err)
	}
	return nil
}
