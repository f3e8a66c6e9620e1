package agent_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/controlplane"
)

// hostileDirectory is an ldaps "directory" that accepts the bind and then
// answers the search with answer, bytes a real directory would never send
// (nil: it hangs up).
func hostileDirectory(t *testing.T, e *env, answer []byte) string {
	t.Helper()
	cert, err := e.targetCA().Server()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				if readBERMessage(r) != nil { // the bind
					return
				}
				// bind response, message 1: success
				c.Write([]byte{0x30, 0x0c, 0x02, 0x01, 0x01, 0x61, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00})
				if readBERMessage(r) != nil { // the search
					return
				}
				if answer == nil {
					return // hang up
				}
				c.Write(answer)
				io.Copy(io.Discard, r) // until the agent hangs up
			}()
		}
	}()
	return "ldaps://" + ln.Addr().String()
}

// readBERMessage reads one BER element (short or long definite length).
func readBERMessage(r *bufio.Reader) error {
	if _, err := r.ReadByte(); err != nil {
		return err
	}
	first, err := r.ReadByte()
	if err != nil {
		return err
	}
	n := int(first)
	if first >= 0x80 {
		n = 0
		for range int(first & 0x7f) {
			b, err := r.ReadByte()
			if err != nil {
				return err
			}
			n = n<<8 | int(b)
		}
	}
	_, err = io.CopyN(io.Discard, r, int64(n))
	return err
}

// TestLDAPHostileDirectory: whatever a directory sends after the bind, the
// task fails with one clear line, nothing is sent as a record, no secret
// is in the error, and the agent goes on serving.
func TestLDAPHostileDirectory(t *testing.T) {
	bindPW := e2eSecrets["basic_pw"]
	e := newEnv(t, controlplane.Config{})
	cases := []struct {
		name   string
		answer []byte
		class  string
		want   string
	}{
		{"a message over 8 MiB", []byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff}, "target_error", "over 8 MiB"},
		{"an entry longer than its message", []byte{0x30, 0x09, 0x02, 0x01, 0x02, 0x64, 0x04, 0x04, 0x00, 0x30, 0x05}, "target_error", "cannot take"},
		{"an indefinite length", []byte{0x30, 0x80, 0x02, 0x01, 0x02, 0x00, 0x00}, "target_error", "indefinite length"},
		{"an answer to another request", []byte{0x30, 0x0c, 0x02, 0x01, 0x07, 0x65, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00}, "target_error", "message 7"},
		{"a notice of disconnection", []byte{0x30, 0x0c, 0x02, 0x01, 0x00, 0x78, 0x07, 0x0a, 0x01, 0x34, 0x04, 0x00, 0x04, 0x00}, "target_error", "notice of disconnection"},
		{"the connection closed mid-page", nil, "target_unreachable", "connection to the directory broke"},
	}
	urls := make([]string, len(cases))
	for i, c := range cases {
		urls[i] = hostileDirectory(t, e, c.answer)
		bid := "hostile" + string(rune('a'+i))
		e.vaultIn(ldapBindDN, "set", bid, "bind_dn")
		e.vaultIn(bindPW, "set", bid, "bind_password")
		e.vault("bind", bid, urls[i])
	}
	e.start()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bid := "hostile" + string(rune('a'+i))
			ti := e.result(e.enqueue(ldapEnvelope(bid, urls[i], map[string]any{"base_dn": ldapSuffix})))
			r := ti.Result
			if r.Status != "failed" || r.ErrorClass != c.class || !strings.Contains(r.Error, c.want) {
				t.Fatalf("%s %s %q, want %s with %q", r.Status, r.ErrorClass, r.Error, c.class, c.want)
			}
			if strings.ContainsAny(r.Error, "\n\r") || strings.Contains(r.Error, bindPW) {
				t.Fatalf("error %q: not one line, or holds the password", r.Error)
			}
			if ti.Records != 0 {
				t.Fatalf("%d records sent", ti.Records)
			}
			t.Logf("%s: %s", r.ErrorClass, r.Error)
		})
	}
}
