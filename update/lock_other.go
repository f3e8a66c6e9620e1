//go:build !unix

package update

// installSupported is false off unix: the agent checks and verifies offers
// there, but installs none (a running .exe cannot be replaced in place,
// and there is no supervisor to run the new one). Offers are refused with
// ErrUnsupported's text.
const installSupported = false

func lockDir(string) (func(), error) { return func() {}, nil }

func syncDir(string) error { return nil }
