//go:build !linux

package seal

import (
	"fmt"

	"github.com/google/go-tpm/tpm2/transport"
)

// openDeviceTPM: this build talks to TPM devices on Linux only. (go-tpm has
// a Windows TBS transport; it is not wired in until a Windows host needs it.)
func openDeviceTPM(path string) (transport.TPMCloser, error) {
	return nil, fmt.Errorf("tpm2 seal: %w: %w: RV_AGENT_TPM_DEVICE %s: set it to tcp://HOST:PORT for a software TPM, or choose --seal keyring or --seal identity",
		ErrUnavailable, ErrTPMDeviceUnsupported, path)
}
