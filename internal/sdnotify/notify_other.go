//go:build !linux

package sdnotify

// Notifier does nothing off Linux: there is no systemd to tell.
type Notifier struct{}

// New returns nil: off Linux there is no service manager to notify.
func New(getenv func(string) string) (*Notifier, error) { return nil, nil }

// Notify does nothing.
func (n *Notifier) Notify(states ...string) error { return nil }

// Monotonic is a MONOTONIC_USEC= line; off Linux nobody reads it.
func Monotonic() string { return "MONOTONIC_USEC=0" }
