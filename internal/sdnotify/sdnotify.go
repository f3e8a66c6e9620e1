// Package sdnotify speaks systemd's service notification protocol
// (sd_notify(3)): a service started with Type=notify tells the manager
// READY=1 once it serves, WATCHDOG=1 while it is alive (WatchdogSec=),
// RELOADING=1 then READY=1 around a reload, and STOPPING=1 when it begins
// to stop. Each state is one datagram on the
// unix socket named by NOTIFY_SOCKET (a path, or an abstract name written
// with a leading '@').
//
// Off Linux, and on Linux without NOTIFY_SOCKET, New returns a nil
// Notifier, whose methods do nothing.
package sdnotify

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// Environment variables systemd sets for the service's main process.
const (
	EnvSocket      = "NOTIFY_SOCKET"
	EnvWatchdogUS  = "WATCHDOG_USEC"
	EnvWatchdogPID = "WATCHDOG_PID"
)

// States this package's callers send.
const (
	Ready    = "READY=1"
	Watchdog = "WATCHDOG=1"
	Stopping = "STOPPING=1"
	// Reloading starts a reload; READY=1 ends it. Send it with Monotonic
	// (systemd 253 and later match reload cycles by it).
	Reloading = "RELOADING=1"
)

// maxSocketPath is sun_path's size less the terminating NUL (Linux).
const maxSocketPath = 107

// checkSocket validates NOTIFY_SOCKET's value: an absolute path or an
// abstract name ('@…'), short enough for a sockaddr_un.
func checkSocket(s string) error {
	switch {
	case s == "":
		return errors.New("NOTIFY_SOCKET is empty")
	case len(s) > maxSocketPath:
		return errors.New("NOTIFY_SOCKET is longer than a unix socket address can be (" + strconv.Itoa(maxSocketPath) + " bytes)")
	case s[0] == '@':
		if len(s) == 1 {
			return errors.New("NOTIFY_SOCKET names an empty abstract socket")
		}
		return nil
	case s[0] == '/':
		return nil
	default:
		return errors.New("NOTIFY_SOCKET is neither an absolute path nor an abstract socket (@name)")
	}
}

// WatchdogInterval is the watchdog timeout systemd asks this process to
// beat (WATCHDOG_USEC), or 0 when there is none or it is meant for another
// process (WATCHDOG_PID names another PID). Beat at half of it.
func WatchdogInterval(getenv func(string) string, pid int) (time.Duration, error) {
	us := getenv(EnvWatchdogUS)
	if us == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(us, 10, 63)
	if err != nil || n == 0 {
		return 0, errors.New("WATCHDOG_USEC is not a positive whole number of microseconds")
	}
	if p := getenv(EnvWatchdogPID); p != "" {
		want, err := strconv.Atoi(p)
		if err != nil || want <= 0 {
			return 0, errors.New("WATCHDOG_PID is not a process ID")
		}
		if want != pid {
			return 0, nil
		}
	}
	return time.Duration(n) * time.Microsecond, nil
}

// Status is a STATUS= line: one line of text, without control characters.
func Status(s string) string {
	return "STATUS=" + strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
