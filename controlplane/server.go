// Package controlplane is the project's reference control plane: the server
// side of the agent protocol (PROTOCOL.md, version 1), an admin API to drive
// it, and fault injection so that agent tests can reach every row of the
// protocol's status table.
//
// It keeps its state in memory. It never holds a vault secret: task
// envelopes carry vault references, which it checks for at enqueue. It does
// hold each agent's bearer token (as a SHA-256 hash) and update key, which it
// needs to authenticate the agent and to MAC update offers.
//
// By design this package imports nothing of the module but internal/wire and
// internal/devca: it cannot read a credential because it cannot even name
// the packages that hold them (deps_test.go holds the rule).
package controlplane

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// Config configures a Server. The zero value works (with an admin API that
// refuses every call, since it has no token).
type Config struct {
	// Logger receives one record per request and the state changes; nil
	// discards. Tokens, update keys and bodies are never logged.
	Logger *slog.Logger

	// Now is the clock of leases, heartbeats and timestamps; nil means
	// time.Now. The long-poll wait itself runs on real time, so that a poll
	// always ends; after moving a fake clock, call Wake so that waiting polls
	// look at the leases again.
	Now func() time.Time

	// AdminToken is the bearer token of the admin API. Empty: the admin API
	// answers 401 to everything.
	AdminToken string

	// TrustForwardedFingerprint makes the mTLS check read the client
	// certificate's fingerprint from the X-Client-Cert-Fingerprint header
	// (set by a load balancer that terminates TLS) when the header is
	// present. Without it, the header is ignored and only the TLS peer
	// certificate of this server's own handshake counts.
	TrustForwardedFingerprint bool

	// HeartbeatInterval and PollWait, when set, are sent to agents at
	// registration as overrides of their own settings.
	HeartbeatInterval time.Duration
	PollWait          time.Duration

	// DefaultLease is the lease of a task whose envelope has no lease_s;
	// default 300 s.
	DefaultLease time.Duration

	// MaxBodyBytes caps every agent request body and admin JSON body;
	// default 1 MiB.
	MaxBodyBytes int
	// MaxTaskBytes caps the chunk bytes stored for one task; a chunk past
	// it is answered 413. Default 256 MiB.
	MaxTaskBytes int64
	// Records, when set, receives the records of every chunk the control
	// plane accepts, once each, in seq order, and the control plane then
	// keeps none of them: the admin API shows a task's counts but no
	// chunks. For a consumer that streams results on (and for the sync
	// benchmark, where holding 100 MB of records in this process would
	// charge its page faults to the agent's figures). It is called with
	// the server's lock held, so it must not call the server; the records
	// are valid only during the call. final is the chunk's "final".
	Records func(taskID string, seq int64, records []json.RawMessage, final bool)
	// MaxReleaseBytes caps a release binary; default 256 MiB.
	MaxReleaseBytes int64
	// MaxEvents is how many events are kept (up to a tenth more between
	// trims); the oldest go first. Default 100000.
	MaxEvents int

	// InstallScript is served at GET /agent/install (default:
	// PlaceholderInstallScript, which installs nothing). Every
	// "{{RV_CONTROL_PLANE_URL}}" in it is replaced with PublicURL (or, when
	// PublicURL is empty, https:// and the request's Host).
	InstallScript string
	// PublicURL is the URL that agents use, RV_CONTROL_PLANE_URL.
	PublicURL string

	// ReleasePublicKey, when set, is used to check every Ed25519 signature
	// uploaded for a release; a signature that does not verify is refused.
	ReleasePublicKey ed25519.PublicKey

	// Rand is the source of tokens, keys and IDs; nil means crypto/rand.
	Rand io.Reader
}

// Server is the control plane. It is the http.Handler of the agent API;
// AdminHandler returns the admin API's, to be served on another listener.
type Server struct {
	cfg      Config
	log      *slog.Logger
	now      func() time.Time
	rand     io.Reader
	agentMux *http.ServeMux
	adminMux *http.ServeMux
	adminKey [sha256.Size]byte // SHA-256 of the admin token
	hasAdmin bool

	closeOnce sync.Once
	closing   chan struct{}

	// chunkBodies recycles chunk bodies (*[]byte) when Config.Records is
	// set.
	chunkBodies sync.Pool

	mu         sync.Mutex
	tokens     map[[sha256.Size]byte]*token
	tokensByID map[string]*token
	agents     map[string]*agent
	tasks      map[string]*task
	queues     map[string][]*task       // per tenant, unfinished tasks in enqueue order
	signals    map[string]chan struct{} // per tenant, closed when a task may have become claimable
	releases   map[releaseKey]*release
	events     []StoredEvent
	eventSeq   int64
	faults     []*fault
	faultSeq   int64
	tokenOrder []*token
	agentOrder []*agent
	taskOrder  []*task
}

var _ http.Handler = (*Server)(nil)

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.DefaultLease <= 0 {
		cfg.DefaultLease = wire.DefaultLease
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = wire.MaxBodyBytes
	}
	if cfg.MaxTaskBytes <= 0 {
		cfg.MaxTaskBytes = 256 << 20
	}
	if cfg.MaxReleaseBytes <= 0 {
		cfg.MaxReleaseBytes = wire.MaxUpdateBytes
	}
	if cfg.MaxEvents <= 0 {
		cfg.MaxEvents = 100000
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger,
		now:        cfg.Now,
		rand:       cfg.Rand,
		agentMux:   http.NewServeMux(),
		adminMux:   http.NewServeMux(),
		closing:    make(chan struct{}),
		tokens:     map[[sha256.Size]byte]*token{},
		tokensByID: map[string]*token{},
		agents:     map[string]*agent{},
		tasks:      map[string]*task{},
		queues:     map[string][]*task{},
		signals:    map[string]chan struct{}{},
		releases:   map[releaseKey]*release{},
	}
	s.chunkBodies.New = func() any { return new([]byte) }
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	if cfg.AdminToken != "" {
		s.adminKey = sha256.Sum256([]byte(cfg.AdminToken))
		s.hasAdmin = true
	}
	s.routeAgentAPI()
	s.routeAdminAPI()
	return s
}

// ServeHTTP serves the agent API: /api/agent/v1/… and /agent/install.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.agentMux.ServeHTTP(w, r)
}

// AdminHandler returns the handler of the admin API, /admin/v1/…. Serve it
// on a listener of its own, never on the agents' one.
func (s *Server) AdminHandler() http.Handler { return s.adminMux }

// Close ends every waiting long-poll (with 204) and makes new ones return
// at once. Call it before http.Server.Shutdown, which would otherwise wait
// for the polls.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closing) })
}

// Wake makes every waiting long-poll look for a claimable task again. Tests
// that move a fake clock past a lease call it; with the real clock, polls
// wake by themselves when the next lease ends.
func (s *Server) Wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for tenant := range s.signals {
		s.broadcastLocked(tenant)
	}
}

// randomHex returns n random bytes in hex.
func (s *Server) randomHex(n int) string {
	b := make([]byte, n)
	if _, err := io.ReadFull(s.rand, b); err != nil {
		panic("controlplane: random source failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// AdminTLSConfig returns the TLS configuration of the admin listener: TLS
// 1.2 or newer, no client certificate.
func AdminTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

// TLSConfig returns the TLS configuration of the agent listener: TLS 1.2 or
// newer, and a client certificate requested but not required. The chain of a
// client certificate is not checked against any CA: the control plane pins
// each agent's certificate by fingerprint (the handshake still proves that
// the client holds the certificate's key).
func TLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		ClientAuth:   tls.RequestClientCert,
	}
}

// NewHTTPServer returns an http.Server for h with the timeouts this control
// plane needs (long polls of up to a minute, binaries of up to 256 MiB) and
// its error log going to the Server's logger.
func (s *Server) NewHTTPServer(h http.Handler, tlsConfig *tls.Config) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       5 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// Shutdown closes s (ending long polls) and shuts the HTTP servers down.
func (s *Server) Shutdown(ctx context.Context, servers ...*http.Server) error {
	s.Close()
	var errs []error
	for _, hs := range servers {
		if err := hs.Shutdown(ctx); err != nil {
			errs = append(errs, err)
			hs.Close()
		}
	}
	return errors.Join(errs...)
}

// writeJSON writes v with status. Encoding errors cannot happen for the
// types used here; a failed write means the client went away.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"internal error"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(b)
}

// writeError writes a JSON error body. msg is always one of this package's
// own messages, never request input.
func writeError(w http.ResponseWriter, status int, msg string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tier3-agent"`)
	}
	writeJSON(w, status, wire.ErrorBody{Error: msg})
}

// readBody reads a request body of at most limit bytes, into buf when
// its length is known and fits (buf nil: a new buffer). It returns the
// status to answer on failure: 413 over the limit, 400 otherwise.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, buf []byte) ([]byte, int, error) {
	if r.ContentLength > limit {
		return nil, http.StatusRequestEntityTooLarge, errors.New("body too large")
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	var b []byte
	var err error
	if n := r.ContentLength; n >= 0 {
		// The length is known (and net/http holds the client to it): one
		// buffer of the right size, where ReadAll would grow and copy its
		// way there, for every chunk of a large sync.
		if int64(cap(buf)) >= n {
			b = buf[:n]
		} else {
			b = make([]byte, n)
		}
		_, err = io.ReadFull(body, b)
	} else {
		b, err = io.ReadAll(body)
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, http.StatusRequestEntityTooLarge, errors.New("body too large")
		}
		return nil, http.StatusBadRequest, errors.New("failed to read body")
	}
	return b, 0, nil
}

// decodeBody reads and decodes a JSON body with wire.Decode, answering
// 413 or 400 itself when it fails.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	return s.decodeBodyWith(w, r, nil, func(b []byte) error {
		return wire.Decode(b, v, wire.Limits{MaxBytes: s.cfg.MaxBodyBytes})
	})
}

// decodeBodyWith reads the body (into buf when it fits, as readBody) and
// hands it to decode, answering 413 or 400 itself when either fails.
func (s *Server) decodeBodyWith(w http.ResponseWriter, r *http.Request, buf []byte, decode func([]byte) error) bool {
	b, status, err := readBody(w, r, int64(s.cfg.MaxBodyBytes), buf)
	if err != nil {
		writeError(w, status, err.Error())
		return false
	}
	if err := decode(b); err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, "body too large")
		} else {
			writeError(w, http.StatusBadRequest, err.Error()) // a DecodeError quotes no input
		}
		return false
	}
	return true
}

// bearer returns the token of an "Authorization: Bearer" header.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// statusWriter records the status for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
