package sdnotify

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Notifier sends states to the service manager. A nil *Notifier does
// nothing.
type Notifier struct {
	addr *net.UnixAddr
}

// New returns a Notifier for NOTIFY_SOCKET, or nil when it is unset. A
// malformed value is an error (and a nil Notifier): the caller logs it and
// runs on.
func New(getenv func(string) string) (*Notifier, error) {
	s := getenv(EnvSocket)
	if s == "" {
		return nil, nil
	}
	if err := checkSocket(s); err != nil {
		return nil, err
	}
	name := s
	if s[0] == '@' {
		name = "\x00" + s[1:] // Go's spelling of an abstract address
	}
	return &Notifier{addr: &net.UnixAddr{Name: name, Net: "unixgram"}}, nil
}

// Notify sends one datagram holding the states, newline-separated.
func (n *Notifier) Notify(states ...string) error {
	if n == nil || len(states) == 0 {
		return nil
	}
	msg := states[0]
	for _, s := range states[1:] {
		msg += "\n" + s
	}
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	// The manager reads promptly; a full queue must not hang the agent.
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(msg)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// Monotonic is a MONOTONIC_USEC= line: CLOCK_MONOTONIC now, in
// microseconds, the clock systemd reads.
func Monotonic() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return "MONOTONIC_USEC=0"
	}
	return "MONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10)
}
