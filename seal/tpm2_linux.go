//go:build linux

package seal

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// openDeviceTPM opens a TPM character device: /dev/tpmrm0 (the kernel's
// resource manager, which also flushes what a crashed agent left loaded) or
// /dev/tpm0.
func openDeviceTPM(path string) (transport.TPMCloser, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("RV_AGENT_TPM_DEVICE %q: want a device path like %s or tcp://HOST:PORT", path, DefaultTPMDevice)
	}
	t, err := linuxtpm.Open(path)
	switch {
	case err == nil:
		return t, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("tpm2 seal: %w: no TPM 2.0 at %s (none in this machine, disabled in firmware, or no driver loaded): choose --seal keyring or --seal identity", ErrUnavailable, path)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("tpm2 seal: %w: cannot open %s: permission denied: run the agent in group tss (systemd: SupplementaryGroups=tss and DeviceAllow=%s rw), or choose --seal keyring or --seal identity", ErrUnavailable, path, path)
	case errors.Is(err, linuxtpm.ErrFileIsNotDevice):
		return nil, fmt.Errorf("RV_AGENT_TPM_DEVICE %s is not a device: want %s or tcp://HOST:PORT", path, DefaultTPMDevice)
	default:
		return nil, fmt.Errorf("tpm2 seal: %w: cannot open the TPM at %s: %v: choose --seal keyring or --seal identity", ErrUnavailable, path, err)
	}
}
