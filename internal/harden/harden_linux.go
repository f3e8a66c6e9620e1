package harden

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const capIPCLock = 14

func platform() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("setting RLIMIT_CORE to 0: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_DUMPABLE: %w", err)
	}
	return checkMemlock()
}

func checkMemlock() error {
	if hasCap(capIPCLock) {
		return nil // the limit does not apply
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		return fmt.Errorf("reading RLIMIT_MEMLOCK: %w", err)
	}
	if lim.Cur != unix.RLIM_INFINITY && lim.Cur < MinMemlock {
		return fmt.Errorf("RLIMIT_MEMLOCK is %d KiB, below the %d KiB needed to keep secrets in locked memory: raise it (ulimit -l %d, or LimitMEMLOCK=%dK in the systemd unit)",
			lim.Cur>>10, MinMemlock>>10, 8192, 8192)
	}
	return nil
}

// hasCap reads the effective capability set from /proc/self/status.
func hasCap(bit uint) bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<bit) != 0
		}
	}
	return false
}

// Dumpable reports the process's PR_GET_DUMPABLE value (for tests).
func Dumpable() (int, error) {
	r, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	return r, err
}
