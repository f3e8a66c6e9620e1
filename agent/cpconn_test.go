package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

const cpTestToken = "agt_0123456789abcdefTOKEN"

// cpTestClient returns a client of the TLS server srv (its URL), whose
// requests go through cpConns.
func cpTestClient(t *testing.T, url string, roots *tls.Config, token string) *client {
	t.Helper()
	sealed, err := secmem.SealValue([]byte(token))
	if err != nil {
		t.Fatal(err)
	}
	c, err := newClient(url, roots, sealed, "test")
	if err != nil {
		t.Fatal(err)
	}
	if c.conns == nil {
		t.Fatal("no direct connections: is a proxy set in the environment?")
	}
	t.Cleanup(c.conns.closeIdle)
	return c
}

func tlsClientConfig(srv *httptest.Server) *tls.Config {
	return &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, MinVersion: tls.VersionTLS12}
}

// TestCPExchange: what the control plane receives (method, target, Host,
// headers, body), one connection for several requests, the answer decoded.
func TestCPExchange(t *testing.T) {
	type seen struct {
		method, uri, host, auth, ua, id, ctype, body, remote string
		length                                               int64
	}
	var mu sync.Mutex
	var got []seen
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, seen{r.Method, r.RequestURI, r.Host, r.Header.Get("Authorization"), r.Header.Get("User-Agent"),
			r.Header.Get(wire.HeaderAgentID), r.Header.Get("Content-Type"), string(b), r.RemoteAddr, r.ContentLength})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"lease_s":300}`)
	}))
	defer srv.Close()
	c := cpTestClient(t, srv.URL+"/tenant-a", tlsClientConfig(srv), cpTestToken)
	c.setAgentID("agt-1")

	var out wire.LeaseResponse
	if _, err := c.do(context.Background(), "POST", "/tasks/t-1/lease", struct{}{}, &out); err != nil {
		t.Fatal(err)
	}
	if out.LeaseS != 300 {
		t.Errorf("the answer was not decoded: %+v", out)
	}
	if _, err := c.do(context.Background(), "GET", "/tasks/next?wait=1", nil, nil); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("the server saw %d requests, want 2", len(got))
	}
	host := strings.TrimPrefix(srv.URL, "https://")
	want0 := seen{"POST", "/tenant-a/api/agent/v1/tasks/t-1/lease", host, "Bearer " + cpTestToken, "tier3-agent/test", "agt-1", "application/json", "{}", got[0].remote, 2}
	if got[0] != want0 {
		t.Errorf("first request:\n got %+v\nwant %+v", got[0], want0)
	}
	want1 := seen{"GET", "/tenant-a/api/agent/v1/tasks/next?wait=1", host, "Bearer " + cpTestToken, "tier3-agent/test", "agt-1", "", "", got[0].remote, 0}
	if got[1] != want1 {
		t.Errorf("second request:\n got %+v\nwant %+v", got[1], want1)
	}
}

// TestCPRequestWiped: once a request is written, its buffer holds no byte
// of the token.
func TestCPRequestWiped(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	c := cpTestClient(t, srv.URL, tlsClientConfig(srv), cpTestToken)
	if _, err := c.do(context.Background(), "POST", "/events", encodedJSON(`{"events":[]}`), nil); err != nil {
		t.Fatal(err)
	}
	c.conns.mu.Lock()
	defer c.conns.mu.Unlock()
	if len(c.conns.idle) != 1 {
		t.Fatalf("%d idle connections, want 1", len(c.conns.idle))
	}
	buf := c.conns.idle[0].req
	if cap(buf) == 0 {
		t.Fatal("the connection kept no request buffer: nothing was checked")
	}
	if bytes.Contains(buf[:cap(buf)], []byte(cpTestToken)) || bytes.Contains(buf[:cap(buf)], []byte("Bearer")) {
		t.Fatal("the request buffer still holds the token after the write")
	}
}

// TestCPRefusesUnsafeHead: an agent id or a token that would end a header
// line is not sent, and nothing of the request reaches the server.
func TestCPRefusesUnsafeHead(t *testing.T) {
	var requests int
	var mu sync.Mutex
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		mu.Unlock()
	}))
	defer srv.Close()

	c := cpTestClient(t, srv.URL, tlsClientConfig(srv), cpTestToken)
	c.setAgentID("agt-1\r\nX-Injected: 1")
	if _, err := c.do(context.Background(), "POST", "/heartbeat", struct{}{}, nil); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("an agent id with CRLF: err = %v", err)
	}

	c = cpTestClient(t, srv.URL, tlsClientConfig(srv), "s3cr3t\r\nX-Injected: 1")
	_, err := c.do(context.Background(), "POST", "/heartbeat", struct{}{}, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot go in a header") {
		t.Fatalf("a token with CRLF: err = %v", err)
	}
	if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "Injected") {
		t.Fatalf("the error shows the token: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if requests != 0 {
		t.Fatalf("the server saw %d requests", requests)
	}
}

// TestCPStaleConnection: a connection the control plane closed while it
// sat idle is replaced by a new one, and the request goes through once.
func TestCPStaleConnection(t *testing.T) {
	srv := httptest.NewUnstartedServer(nil)
	var conns []net.Conn
	var mu sync.Mutex
	srv.Config.ConnState = func(nc net.Conn, st http.ConnState) {
		if st == http.StateNew {
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
		}
	}
	var requests int
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		mu.Unlock()
	})
	srv.StartTLS()
	defer srv.Close()
	c := cpTestClient(t, srv.URL, tlsClientConfig(srv), cpTestToken)
	if _, err := c.do(context.Background(), "POST", "/heartbeat", struct{}{}, nil); err != nil {
		t.Fatal(err)
	}
	// The server drops the idle connection without a word.
	mu.Lock()
	conns[0].Close()
	mu.Unlock()
	if _, err := c.do(context.Background(), "POST", "/heartbeat", struct{}{}, nil); err != nil {
		t.Fatalf("the request after the idle connection was dropped: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if requests != 2 || len(conns) != 2 {
		t.Fatalf("%d requests on %d connections, want 2 on 2", requests, len(conns))
	}
}

// TestCPConnectionReuse: a connection is reused only when its answer was
// read to the end and the server did not ask to close it.
func TestCPConnectionReuse(t *testing.T) {
	var conns connCounter
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conns.saw(r)
		switch r.URL.Query().Get("answer") {
		case "close":
			w.Header().Set("Connection", "close")
		case "large-error":
			w.WriteHeader(500)
			w.Write(bytes.Repeat([]byte("x"), 64<<10)) // more than do reads of an error
		}
	}))
	defer srv.Close()
	c := cpTestClient(t, srv.URL, tlsClientConfig(srv), cpTestToken)
	for _, step := range []struct {
		answer string
		conns  int // connections seen so far, after the request
	}{
		{"", 1}, {"", 1}, {"close", 1}, {"", 2}, {"large-error", 2}, {"", 3},
	} {
		c.do(context.Background(), "GET", "/tasks/next?answer="+step.answer, nil, nil)
		if got := conns.count(); got != step.conns {
			t.Fatalf("after answer %q: %d connections, want %d", step.answer, got, step.conns)
		}
	}
}

// TestCPContext: a request waiting on its answer (a long poll) ends when
// its context is cancelled or its deadline passes, with the context's
// error, and its connection is not reused.
func TestCPContext(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 4)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c := cpTestClient(t, srv.URL, tlsClientConfig(srv), cpTestToken)

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.do(ctx, "GET", "/tasks/next?wait=30", nil, nil)
		errc <- err
	}()
	<-arrived
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: err = %v, want context.Canceled", err)
	}

	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(50*time.Millisecond))
	defer dcancel()
	if _, err := c.do(dctx, "GET", "/tasks/next?wait=30", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("past its deadline: err = %v, want context.DeadlineExceeded", err)
	}
	c.conns.mu.Lock()
	defer c.conns.mu.Unlock()
	if len(c.conns.idle) != 0 {
		t.Fatalf("%d connections kept after their requests were cut short", len(c.conns.idle))
	}
}

// TestCPNotTLS: a control plane that does not speak TLS is a TLS error
// (the agent stops rather than retrying).
func TestCPNotTLS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serveRaw(ln, func(nc net.Conn) {
		bufio.NewReader(nc).ReadByte()
		io.WriteString(nc, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
	})
	sealed, _ := secmem.SealValue([]byte(cpTestToken))
	c, err := newClient("https://"+ln.Addr().String(), &tls.Config{MinVersion: tls.VersionTLS12}, sealed, "test")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.do(context.Background(), "POST", "/register", struct{}{}, nil)
	if !errors.Is(err, ErrTLS) {
		t.Fatalf("err = %v, want ErrTLS", err)
	}
}

// TestCPThroughProxy: when the environment names a proxy for the control
// plane, requests go through it (net/http's CONNECT), with the same head.
func TestCPThroughProxy(t *testing.T) {
	var auth string
	var tunnels []string
	var mu sync.Mutex
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = r.Header.Get("Authorization")
		mu.Unlock()
	}))
	defer srv.Close()
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		mu.Lock()
		tunnels = append(tunnels, r.Host)
		mu.Unlock()
		up, err := net.Dial("tcp", r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		down, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		io.WriteString(down, "HTTP/1.1 200 Connection established\r\n\r\n")
		// brw holds whatever the client sent past its CONNECT request.
		go func() { io.Copy(up, brw); up.Close() }()
		io.Copy(down, up)
		down.Close()
	}))
	defer proxy.Close()
	proxyURL, _ := url.Parse(proxy.URL)
	defer func(f func(*http.Request) (*url.URL, error)) { proxyFromEnvironment = f }(proxyFromEnvironment)
	proxyFromEnvironment = func(*http.Request) (*url.URL, error) { return proxyURL, nil }

	sealed, _ := secmem.SealValue([]byte(cpTestToken))
	c, err := newClient(srv.URL, tlsClientConfig(srv), sealed, "test")
	if err != nil {
		t.Fatal(err)
	}
	if c.conns != nil {
		t.Fatal("a proxy is set, yet the agent would connect directly")
	}
	if _, err := c.do(context.Background(), "POST", "/heartbeat", struct{}{}, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(tunnels) != 1 || tunnels[0] != strings.TrimPrefix(srv.URL, "https://") {
		t.Fatalf("tunnels through the proxy: %q", tunnels)
	}
	if auth != "Bearer "+cpTestToken {
		t.Fatalf("the control plane saw Authorization %q", auth)
	}
}

// TestCPIdleLimit: an idle connection is reused until cpIdleLimit, and a
// new one is dialled after.
func TestCPIdleLimit(t *testing.T) {
	var conns connCounter
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { conns.saw(r) }))
	defer srv.Close()
	c := cpTestClient(t, srv.URL, tlsClientConfig(srv), cpTestToken)
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	c.conns.now = func() time.Time { return now }
	for _, step := range []struct {
		after time.Duration
		conns int
	}{
		{0, 1}, {cpIdleLimit - time.Second, 1}, {cpIdleLimit, 2},
	} {
		now = now.Add(step.after)
		if _, err := c.do(context.Background(), "POST", "/heartbeat", struct{}{}, nil); err != nil {
			t.Fatal(err)
		}
		if got := conns.count(); got != step.conns {
			t.Fatalf("after %v idle: %d connections, want %d", step.after, got, step.conns)
		}
	}
}

// TestCPInformational: 1xx answers before the final one are skipped (as
// net/http does), and an endless stream of them is a protocol error.
func TestCPInformational(t *testing.T) {
	for _, tc := range []struct {
		hints int
		ok    bool
	}{{1, true}, {maxInformational, true}, {maxInformational + 1, false}} {
		srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for range tc.hints {
				w.Header().Set("Link", "</x>; rel=preload")
				w.WriteHeader(http.StatusEarlyHints)
			}
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"lease_s":42}`)
		}))
		c := cpTestClient(t, srv.URL, tlsClientConfig(srv), cpTestToken)
		var out wire.LeaseResponse
		_, err := c.do(context.Background(), "POST", "/tasks/t-1/lease", struct{}{}, &out)
		switch {
		case tc.ok && (err != nil || out.LeaseS != 42):
			t.Errorf("%d early hints: err %v, lease_s %d", tc.hints, err, out.LeaseS)
		case !tc.ok && !errors.Is(err, ErrProtocol):
			t.Errorf("%d early hints: err %v, want ErrProtocol", tc.hints, err)
		}
		srv.Close()
	}
}

// TestCPHeadTooLarge: a control plane that answers with an endless head is
// cut off at maxAnswerHead: a protocol error, not a memory that grows.
func TestCPHeadTooLarge(t *testing.T) {
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS() // for its certificate and listener; the answers are raw
	srv.Listener.Close()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv.TLS)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serveRaw(ln, func(nc net.Conn) {
		bufio.NewReader(nc).ReadString('\n')
		io.WriteString(nc, "HTTP/1.1 200 OK\r\n")
		line := "X-Filler: " + strings.Repeat("a", 1000) + "\r\n"
		for range 4 * maxAnswerHead / len(line) {
			if _, err := io.WriteString(nc, line); err != nil {
				return
			}
		}
	})
	sealed, _ := secmem.SealValue([]byte(cpTestToken))
	c, err := newClient("https://"+ln.Addr().String(), tlsClientConfig(srv), sealed, "test")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.do(context.Background(), "POST", "/heartbeat", struct{}{}, nil)
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "head is over") {
		t.Fatalf("err = %v, want ErrProtocol (head too large)", err)
	}
}

// serveRaw answers every connection to ln with answer, until ln is closed
// (the caller's defer), and closes each connection after.
func serveRaw(ln net.Listener, answer func(net.Conn)) {
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				answer(nc)
			}()
		}
	}()
}

// connCounter counts the connections a test server's requests came on
// (their remote addresses).
type connCounter struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (c *connCounter) saw(r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	c.seen[r.RemoteAddr] = true
}

func (c *connCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}
