package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// scriptedConn is a connection to the control plane whose answer is given
// bytes; what the agent writes is kept.
type scriptedConn struct {
	answer *bytes.Reader
	wrote  bytes.Buffer
}

func (c *scriptedConn) Read(p []byte) (int, error)       { return c.answer.Read(p) }
func (c *scriptedConn) Write(p []byte) (int, error)      { return c.wrote.Write(p) }
func (c *scriptedConn) Close() error                     { return nil }
func (c *scriptedConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptedConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptedConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptedConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzCPAnswer: whatever the control plane answers (status line, headers,
// informational answers, bodies of every framing, garbage, more than one
// answer), the agent's exchange returns an answer or one error, never
// panics, never names the token in an error, and keeps a connection for
// reuse only when nothing is left unread on it.
func FuzzCPAnswer(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"lease_s\":42}",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\ne\r\n{\"lease_s\":42}\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"lease_s\":1}",
		"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
		"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nnope\n",
		"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 409 Conflict\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\n{\"lease_s\":\"x\"}",
		"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n{}",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"SSH-2.0-OpenSSH_9.6\r\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	sealed, err := secmem.SealValue([]byte(cpTestToken))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, answer []byte) {
		c, err := newClient("https://cp.invalid", &tls.Config{MinVersion: tls.VersionTLS12}, sealed, "test")
		if err != nil {
			t.Fatal(err)
		}
		defer c.tokenMem.Destroy() // locked memory: one client per input here
		// A second connection (the retry of an idle one found closed)
		// is refused at once.
		c.conns.addr = "127.0.0.1:1"
		sc := &scriptedConn{answer: bytes.NewReader(answer)}
		cc := newCPConn(sc)
		cc.lastUsed = c.conns.now()
		c.conns.idle = []*cpConn{cc}

		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var out wire.LeaseResponse
		if _, err := c.do(ctx, "POST", "/tasks/t-1/lease", struct{}{}, &out); err != nil {
			if strings.Contains(err.Error(), cpTestToken) {
				t.Fatalf("the error names the token: %v", err)
			}
		}
		for _, kept := range c.conns.idle {
			if kept.br.Buffered() != 0 {
				t.Fatalf("a connection was kept with %d bytes unread", kept.br.Buffered())
			}
		}
		if !bytes.Contains(sc.wrote.Bytes(), []byte("POST /api/agent/v1/tasks/t-1/lease HTTP/1.1\r\n")) {
			t.Fatalf("the request was not written: %q", sc.wrote.Bytes())
		}
	})
}
