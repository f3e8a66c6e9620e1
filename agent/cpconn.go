package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// The agent's own HTTP/1.1 exchanges with the control plane.
//
// A request to the control plane goes out on a connection that the calling
// goroutine writes and then reads itself: one request, then its answer.
//
//   - The agent token is written into the request from locked memory, and
//     the request's bytes are wiped once written: the token never becomes
//     a Go string. net/http takes header values as strings, and the
//     connection goroutines of its Transport kept copies of them
//     (SECURITY.md, TestMemoryHygiene).
//   - A chunk upload is one write and one read by the chunk sender, with
//     no hand-off to net/http's connection goroutines, whose wake-ups were
//     the largest per-chunk cost left on a busy host (docs/BENCHMARKS.md).
//
// The answer is parsed by net/http (http.ReadResponse). When the
// environment names a proxy for the control plane, the agent uses
// net/http's Transport instead (it speaks CONNECT), token and all.
type cpConns struct {
	addr    string      // host:port to dial
	host    string      // the Host header
	tls     *tls.Config // ServerName set, HTTP/1.1 only
	dialer  net.Dialer
	timeout time.Duration // for the TLS handshake

	mu   sync.Mutex
	idle []*cpConn // most recently used last
	now  func() time.Time
}

// proxyFromEnvironment is http.ProxyFromEnvironment, which reads the
// environment once per process; tests replace it.
var proxyFromEnvironment = http.ProxyFromEnvironment

// cpConn is one connection to the control plane.
type cpConn struct {
	nc       net.Conn   // a *tls.Conn, handshake done
	lim      *headLimit // under br
	br       *bufio.Reader
	req      []byte // the request being written
	lastUsed time.Time
}

const (
	maxIdleCPConns = 8
	// cpIdleLimit: an idle connection older than this is closed rather
	// than reused. The reference control plane closes them after 2 min;
	// load balancers in front of a control plane often after 60 s. One
	// closed under the agent anyway is replaced once (closedBeforeAnswer).
	cpIdleLimit = 45 * time.Second
	// maxKeptRequestBuffer caps the request buffer a connection keeps.
	maxKeptRequestBuffer = 2 << 20
)

// newCPConns returns the connections to the control plane at base (its
// URL, without the API prefix), or nil when they cannot be used: the
// environment names a proxy for it.
func newCPConns(base string, tlsCfg *tls.Config) (*cpConns, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("the control plane URL must be https, not %q", u.Scheme)
	}
	if p, err := proxyFromEnvironment(&http.Request{URL: u}); err != nil || p != nil {
		return nil, nil
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	cfg := tlsCfg.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	cfg.NextProtos = []string{"http/1.1"}
	return &cpConns{
		addr:    net.JoinHostPort(u.Hostname(), port),
		host:    u.Host,
		tls:     cfg,
		dialer:  net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second},
		timeout: 15 * time.Second,
		now:     time.Now,
	}, nil
}

// get returns an idle connection, or a new one; reused reports which.
func (p *cpConns) get(ctx context.Context) (cc *cpConn, reused bool, err error) {
	p.mu.Lock()
	for len(p.idle) > 0 {
		cc = p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if p.now().Sub(cc.lastUsed) < cpIdleLimit {
			p.mu.Unlock()
			return cc, true, nil
		}
		cc.nc.Close()
	}
	p.mu.Unlock()
	cc, err = p.dial(ctx)
	return cc, false, err
}

func (p *cpConns) dial(ctx context.Context) (*cpConn, error) {
	raw, err := p.dialer.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	nc := tls.Client(raw, p.tls)
	hctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if err := nc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, err
	}
	return newCPConn(nc), nil
}

func newCPConn(nc net.Conn) *cpConn {
	lim := &headLimit{r: nc, left: math.MaxInt64}
	return &cpConn{nc: nc, lim: lim, br: bufio.NewReaderSize(lim, 64<<10)}
}

// maxAnswerHead caps what is read from the connection while an answer's
// head (status line and headers) is parsed: http.ReadResponse has no limit
// of its own, and net/http's Transport applies one too. Bodies have their
// own caps (client.do, client.stream).
const maxAnswerHead = 1 << 20

// headLimit is the connection under a cpConn's reader: while left is
// finite, reading past it is an error.
type headLimit struct {
	r    io.Reader
	left int64
}

func (h *headLimit) Read(p []byte) (int, error) {
	if h.left <= 0 {
		return 0, fmt.Errorf("%w: the answer's head is over %d bytes", ErrProtocol, maxAnswerHead)
	}
	if int64(len(p)) > h.left {
		p = p[:h.left]
	}
	n, err := h.r.Read(p)
	h.left -= int64(n)
	return n, err
}

// put keeps cc for the next request (at most maxIdleCPConns are kept).
func (p *cpConns) put(cc *cpConn) {
	if cap(cc.req) > maxKeptRequestBuffer {
		cc.req = nil
	}
	cc.lastUsed = p.now()
	p.mu.Lock()
	if len(p.idle) < maxIdleCPConns {
		p.idle = append(p.idle, cc)
		cc = nil
	}
	p.mu.Unlock()
	if cc != nil {
		cc.nc.Close()
	}
}

// closeIdle closes the idle connections.
func (p *cpConns) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, cc := range idle {
		cc.nc.Close()
	}
}

// cpRequest is one request to the control plane.
type cpRequest struct {
	method string
	target string // the request target: path and query, escaped
	body   []byte // nil: no body
	// authorize appends the Authorization header's value to b, which has
	// room for it (authLen bytes).
	authorize func(b []byte) ([]byte, error)
	authLen   int
	userAgent string
	agentID   string
}

// roundTrip sends req and returns the answer, whose body the caller must
// close. A reused connection that turns out closed by the control plane
// before it answered (an idle connection it dropped) is replaced once by a
// new one.
func (p *cpConns) roundTrip(ctx context.Context, req *cpRequest) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		cc, reused, err := p.get(ctx)
		if err != nil {
			return nil, ctxErr(ctx, err)
		}
		resp, err := p.exchange(ctx, cc, req)
		if err == nil {
			return resp, nil
		}
		cc.nc.Close()
		if reused && attempt == 0 && ctx.Err() == nil && closedBeforeAnswer(err) {
			continue
		}
		return nil, ctxErr(ctx, err)
	}
}

// exchange writes req on cc and reads the answer's head.
func (p *cpConns) exchange(ctx context.Context, cc *cpConn, req *cpRequest) (*http.Response, error) {
	if d, ok := ctx.Deadline(); ok {
		cc.nc.SetDeadline(d)
	} else {
		cc.nc.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { cc.nc.SetDeadline(time.Unix(1, 0)) })
	if err := p.write(cc, req); err != nil {
		stop()
		return nil, err
	}
	cc.lim.left = maxAnswerHead - int64(cc.br.Buffered())
	resp, err := readFinalResponse(cc.br, req.method)
	cc.lim.left = math.MaxInt64
	if err != nil {
		stop()
		return nil, err
	}
	resp.Body = &cpBody{rc: resp.Body, p: p, cc: cc, resp: resp, stop: stop}
	return resp, nil
}

// maxInformational caps the 1xx answers (103 Early Hints, say) skipped
// before the final one.
const maxInformational = 5

// readFinalResponse reads an answer's head, skipping informational (1xx)
// answers as net/http's Transport does; 101 is not expected, and final.
func readFinalResponse(br *bufio.Reader, method string) (*http.Response, error) {
	for n := 0; ; n++ {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			return nil, err
		}
		if resp.StatusCode < 100 || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
		if n == maxInformational {
			return nil, fmt.Errorf("%w: more than %d informational answers", ErrProtocol, maxInformational)
		}
	}
}

// write sends req's head and body in one write. The buffer is sized
// before anything is written into it, so that it never moves once the
// token is in it; the head is wiped once sent.
func (p *cpConns) write(cc *cpConn, req *cpRequest) error {
	for _, f := range []string{req.method, req.target, req.userAgent, req.agentID} {
		if !headerSafe(f) {
			return errors.New("refusing to send a request with a control character or space in its head")
		}
	}
	b := cc.req[:0]
	b = slices.Grow(b, 256+len(req.target)+len(p.host)+len(req.userAgent)+len(req.agentID)+req.authLen+len(req.body))
	b = append(b, req.method...)
	b = append(b, ' ')
	b = append(b, req.target...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, p.host...)
	b = append(b, "\r\nUser-Agent: "...)
	b = append(b, req.userAgent...)
	if req.body != nil {
		b = append(b, "\r\nContent-Type: application/json\r\nContent-Length: "...)
		b = strconv.AppendInt(b, int64(len(req.body)), 10)
	}
	if req.agentID != "" {
		b = append(b, "\r\n"+wire.HeaderAgentID+": "...)
		b = append(b, req.agentID...)
	}
	b = append(b, "\r\nAuthorization: "...)
	start := cap(b)
	b, err := req.authorize(b)
	if err != nil || cap(b) != start {
		clear(b[:cap(b)])
		if err == nil {
			err = errors.New("the request buffer moved") // authLen was wrong: a bug
		}
		return err
	}
	b = append(b, "\r\n\r\n"...)
	head := len(b)
	b = append(b, req.body...)
	_, err = cc.nc.Write(b)
	clear(b[:head])
	cc.req = b[:0]
	return err
}

// headerSafe reports whether s can go into a request's head as it is.
func headerSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' && s[i] != ' ' || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// cpBody is an answer's body: closing it puts the connection back for the
// next request when the body was read to its end, and closes it otherwise.
type cpBody struct {
	rc   io.ReadCloser
	p    *cpConns
	cc   *cpConn
	resp *http.Response
	stop func() bool
	eof  bool
	done bool
}

func (b *cpBody) Read(buf []byte) (int, error) {
	n, err := b.rc.Read(buf)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *cpBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	b.rc.Close()
	// stop is false when the context ended: the connection's deadline
	// has been set in the past.
	if b.stop() && b.eof && !b.resp.Close && b.cc.br.Buffered() == 0 {
		b.cc.nc.SetDeadline(time.Time{})
		b.p.put(b.cc)
		return nil
	}
	b.cc.nc.Close()
	return nil
}

// closedBeforeAnswer reports whether err says the connection was closed
// before any answer came: the control plane dropped an idle connection.
func closedBeforeAnswer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// ctxErr returns the context's error when it has ended (the connection's
// deadline, which is the context's, shows as a timeout), else err.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			return context.DeadlineExceeded
		}
	}
	return err
}
