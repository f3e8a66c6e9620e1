package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// StatusError is a control plane answer the agent must act on. Which kind
// it is decides what the caller does (PROTOCOL.md's status table).
type StatusError struct {
	Code       int
	RetryAfter time.Duration // for 429 and 503; 0 when absent
	Endpoint   string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("control plane answered %d to %s", e.Code, e.Endpoint)
}

var (
	// ErrDisabled: 401, the token is unknown or revoked.
	ErrDisabled = errors.New("the control plane does not accept this agent's token (unknown or revoked)")
	// ErrForbidden: 403, the mTLS fingerprint is missing or wrong.
	ErrForbidden = errors.New("the control plane refused this agent's client certificate")
	// ErrTLS: the control plane's TLS cannot be negotiated or verified.
	ErrTLS = errors.New("cannot establish TLS with the control plane")
	// ErrProtocol: a response the agent cannot accept (too large,
	// malformed); it backs off.
	ErrProtocol = errors.New("control plane protocol error")
)

// client speaks PROTOCOL.md to the control plane.
type client struct {
	base   string // RV_CONTROL_PLANE_URL + /api/agent/v1
	origin string // scheme://host of RV_CONTROL_PLANE_URL
	target string // base's path, escaped: the start of every request target
	http   *http.Client
	// conns carries every request (cpconn.go), unless the environment
	// names a proxy for the control plane: then http does.
	conns     *cpConns
	userAgent string
	token     *secmem.Sealed
	// tokenMem is where the token is opened for each request: opening it
	// into fresh locked pages every time cost a quarter of the agent's CPU
	// during a large sync (docs/BENCHMARKS.md).
	tokenMem secmem.Scratch

	mu      sync.Mutex
	agentID string

	// halted is the first 401 or 403 answer. Once it is set every call
	// returns it without sending anything: a disabled agent stops all
	// traffic at once (PROTOCOL.md's status table), its pending results
	// and audit events included.
	halted atomic.Pointer[error]
}

const maxErrorBody = 4 << 10

func newTLSConfig(caFile, certFile, keyFile string) (*tls.Config, string, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, "", fmt.Errorf("RV_CONTROL_PLANE_CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "", errors.New("RV_CONTROL_PLANE_CA holds no PEM certificate")
		}
		cfg.RootCAs = pool
	}
	fingerprint := ""
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, "", fmt.Errorf("RV_AGENT_TLS_CERT/RV_AGENT_TLS_KEY: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
		fingerprint = wire.CertFingerprint(cert.Certificate[0])
	}
	return cfg, fingerprint, nil
}

func newClient(base string, tlsCfg *tls.Config, token *secmem.Sealed, version string) (*client, error) {
	u, err := url.Parse(base + wire.APIPrefix)
	if err != nil {
		return nil, err
	}
	conns, err := newCPConns(base, tlsCfg)
	if err != nil {
		return nil, err
	}
	// The Transport carries the requests only through a proxy (conns is
	// nil then), and speaks HTTP/1.1 like conns.
	tr := &http.Transport{
		Proxy:                 proxyFromEnvironment,
		TLSClientConfig:       tlsCfg,
		DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 0, // long polls: each request has its own deadline
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		// HTTP/1.1 (PROTOCOL.md allows either): a chunk upload is one
		// write through 64 KiB buffers, where HTTP/2 frames, flow-controls
		// and hands each body between goroutines on both ends. The
		// long-poll, heartbeats and uploads each hold their own
		// connection; there are a few, reused.
		ForceAttemptHTTP2: false,
		WriteBufferSize:   64 << 10,
		ReadBufferSize:    64 << 10,
	}
	return &client{
		base:      base + wire.APIPrefix,
		origin:    u.Scheme + "://" + u.Host,
		target:    u.EscapedPath(),
		http:      &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		conns:     conns,
		userAgent: "tier3-agent/" + version,
		token:     token,
	}, nil
}

// send sends one request to the control plane, target being its escaped
// path and query, and returns the answer, whose body the caller must
// close.
func (c *client) send(ctx context.Context, method, target string, body []byte) (*http.Response, error) {
	if c.conns != nil {
		return c.conns.roundTrip(ctx, &cpRequest{
			method: method, target: target, body: body,
			authorize: c.appendAuthorization, authLen: len("Bearer ") + c.token.Size(),
			userAgent: c.userAgent, agentID: c.id(),
		})
	}
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.origin+target, r)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("User-Agent", c.userAgent)
	if id := c.id(); id != "" {
		req.Header.Set(wire.HeaderAgentID, id)
	}
	if err := c.authorize(req); err != nil {
		return nil, err
	}
	return c.http.Do(req)
}

// appendAuthorization appends the Authorization header's value, the
// agent token as a bearer, opened from locked memory straight into b.
func (c *client) appendAuthorization(b []byte) ([]byte, error) {
	bad := false
	err := c.tokenMem.With(c.token, func(tok []byte) {
		for _, x := range tok {
			if x <= ' ' || x >= 0x7f {
				bad = true
				return
			}
		}
		b = append(b, "Bearer "...)
		b = append(b, tok...)
	})
	if err == nil && bad {
		err = errors.New("the agent token holds a character that cannot go in a header")
	}
	return b, err
}

// authorize sets the agent token as req's bearer, when requests go through
// a proxy (net/http). net/http takes header values as Go strings: the
// token has a heap copy per request (SECURITY.md lists it); its plaintext
// is otherwise only in locked memory, and only while the header is built.
func (c *client) authorize(req *http.Request) error {
	return c.tokenMem.With(c.token, func(tok []byte) {
		eraseAfter(func() { req.Header.Set("Authorization", "Bearer "+string(tok)) })
	})
}

func (c *client) setAgentID(id string) {
	c.mu.Lock()
	c.agentID = id
	c.mu.Unlock()
}

func (c *client) id() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.agentID
}

// encodedJSON is a request body already encoded as JSON, sent as it is
// (json.Marshal would only copy and re-check it): a chunk, which its
// sender builds record by record (chunks.go).
type encodedJSON []byte

// do sends one request and decodes a 2xx JSON body into out (when out is
// not nil and the body is not empty). Everything else is an error: a
// *StatusError for status codes, ErrTLS for TLS failures, ErrProtocol for
// bodies it cannot accept, and the network error otherwise.
func (c *client) do(ctx context.Context, method, path string, in, out any) (int, error) {
	if h := c.halted.Load(); h != nil {
		return 0, *h
	}
	var body []byte
	if in != nil {
		b, ok := in.(encodedJSON)
		if !ok {
			var err error
			if b, err = json.Marshal(in); err != nil {
				return 0, err
			}
		}
		body = b
	}
	resp, err := c.send(ctx, method, c.target+path, body)
	if err != nil {
		if isTLSError(err) {
			return 0, fmt.Errorf("%w: %v", ErrTLS, err)
		}
		return 0, err
	}
	defer resp.Body.Close()
	endpoint := strings.SplitN(path, "?", 2)[0]
	if resp.StatusCode/100 != 2 {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		se := &StatusError{Code: resp.StatusCode, Endpoint: endpoint}
		if resp.StatusCode == 429 || resp.StatusCode == 503 {
			se.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
		var fatal error
		switch resp.StatusCode {
		case 401:
			fatal = fmt.Errorf("%w: %w", ErrDisabled, se)
		case 403:
			fatal = fmt.Errorf("%w: %w", ErrForbidden, se)
		}
		if fatal != nil {
			c.halted.CompareAndSwap(nil, &fatal)
			return se.Code, fatal
		}
		return se.Code, se
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxBodyBytes+1))
	if err != nil {
		return resp.StatusCode, err
	}
	if len(data) > wire.MaxBodyBytes {
		return resp.StatusCode, fmt.Errorf("%w: %s answered more than %d bytes", ErrProtocol, endpoint, wire.MaxBodyBytes)
	}
	if rb, ok := out.(*rawBody); ok {
		// A task envelope is checked by the task runner, which can fail
		// the task with invalid_envelope when it names its task_id.
		*rb = data
		return resp.StatusCode, nil
	}
	if out != nil && len(bytes.TrimSpace(data)) > 0 && resp.StatusCode != http.StatusNoContent {
		if err := wire.Decode(data, out, wire.Limits{}); err != nil {
			return resp.StatusCode, fmt.Errorf("%w: %s: %v", ErrProtocol, endpoint, err)
		}
	}
	return resp.StatusCode, nil
}

// parseRetryAfter reads seconds or an HTTP date, capped at 300 s.
func parseRetryAfter(v string, now time.Time) time.Duration {
	const limit = 300 * time.Second
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), limit)
}

func isTLSError(err error) bool {
	var (
		recErr  tls.RecordHeaderError
		alert   tls.AlertError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		inval   x509.CertificateInvalidError
		verr    *tls.CertificateVerificationError
	)
	switch {
	case errors.As(err, &verr), errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &inval),
		errors.As(err, &alert), errors.As(err, &recErr):
		return true
	}
	s := err.Error()
	// net/http turns a plain-HTTP answer to a TLS hello into this error:
	// the peer cannot speak TLS, which retrying will not change.
	if strings.Contains(s, "server gave HTTP response to HTTPS client") {
		return true
	}
	return strings.Contains(s, "tls: ") && !strings.Contains(s, "timeout")
}

// stream sends GET rawURL, which must be on the control plane's origin (the
// bearer token goes nowhere else), and returns the status and the body for
// the caller to read and close. A 2xx body yields at most limit bytes; one
// more is an ErrProtocol error. The self-update download uses it: its body
// is larger than any JSON answer and is hashed as it streams. Non-2xx
// answers are errors as do returns them.
func (c *client) stream(ctx context.Context, rawURL string, limit int64) (int, io.ReadCloser, error) {
	u, err := url.Parse(rawURL)
	base, berr := url.Parse(c.base)
	if err != nil || berr != nil || u.Scheme != base.Scheme || !strings.EqualFold(u.Host, base.Host) || u.User != nil {
		return 0, nil, fmt.Errorf("%w: a download URL is not on the control plane's origin", ErrProtocol)
	}
	resp, err := c.send(ctx, http.MethodGet, u.RequestURI(), nil)
	if err != nil {
		if isTLSError(err) {
			return 0, nil, fmt.Errorf("%w: %v", ErrTLS, err)
		}
		return 0, nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		se := &StatusError{Code: resp.StatusCode, Endpoint: u.Path}
		if resp.StatusCode == 429 || resp.StatusCode == 503 {
			se.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
		switch resp.StatusCode {
		case 401:
			return se.Code, nil, fmt.Errorf("%w: %w", ErrDisabled, se)
		case 403:
			return se.Code, nil, fmt.Errorf("%w: %w", ErrForbidden, se)
		}
		return se.Code, nil, se
	}
	return resp.StatusCode, &cappedBody{rc: resp.Body, limit: limit, left: limit}, nil
}

// cappedBody reads at most limit bytes of a body; more is an error.
type cappedBody struct {
	rc          io.ReadCloser
	limit, left int64
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	if int64(n) > b.left {
		n = int(b.left)
		b.left = 0
		return n, fmt.Errorf("%w: the body is longer than %d bytes", ErrProtocol, b.limit)
	}
	b.left -= int64(n)
	return n, err
}

func (b *cappedBody) Close() error { return b.rc.Close() }
