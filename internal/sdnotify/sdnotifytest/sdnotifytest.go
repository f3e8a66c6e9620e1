//go:build linux

// Package sdnotifytest is a NOTIFY_SOCKET for tests: it receives what a
// service tells systemd, with each sender's PID, as systemd sees it.
package sdnotifytest

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Listener is a test's NOTIFY_SOCKET: a unixgram socket that records the
// sender's PID of each datagram (SO_PASSCRED), as systemd does to decide
// NotifyAccess=main.
type Listener struct {
	Addr string
	conn *net.UnixConn
}

// Message is one datagram and its sender's PID.
type Message struct {
	States string
	PID    int
}

// Listen opens a Listener on a path, or on an abstract name.
func Listen(t testing.TB, abstract bool) *Listener {
	t.Helper()
	name := filepath.Join(t.TempDir(), "notify")
	addr := name
	if abstract {
		addr = "@tier3-sdnotify-test-" + filepath.Base(t.TempDir())
		name = "\x00" + addr[1:]
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	return &Listener{Addr: addr, conn: conn}
}

// Next waits (10 s at most) for the next datagram.
func (l *Listener) Next(t testing.TB) Message {
	t.Helper()
	buf, oob := make([]byte, 4096), make([]byte, 1024)
	l.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, oobn, _, _, err := l.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	m := Message{States: string(buf[:n])}
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, c := range msgs {
			if cred, err := unix.ParseUnixCredentials(&c); err == nil {
				m.PID = int(cred.Pid)
			}
		}
	}
	return m
}
