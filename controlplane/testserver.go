package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/devca"
)

// TestServer is a Server that serves the agent API and the admin API with
// TLS on two loopback ports, with a certificate from a fresh development
// CA. It is for tests, in this package and the agent's.
type TestServer struct {
	*Server
	CA *devca.CA
	// URL is RV_CONTROL_PLANE_URL: https://127.0.0.1:PORT.
	URL string
	// AdminURL is the admin listener's base URL; its endpoints are under
	// AdminPrefix.
	AdminURL   string
	AdminToken string
	// Admin is a client of the admin API that trusts CA.
	Admin *AdminClient

	agentHTTP, adminHTTP *http.Server
	served               chan error
	clients              []*http.Client // guarded by Server.mu
}

// Start starts a TestServer. cfg.AdminToken and cfg.PublicURL are filled in
// when empty. Call Close when done.
func Start(cfg Config) (*TestServer, error) {
	ca, err := devca.New()
	if err != nil {
		return nil, err
	}
	cert, err := ca.Server()
	if err != nil {
		return nil, err
	}
	agentLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("failed to listen: %w", err)
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		agentLn.Close()
		return nil, fmt.Errorf("failed to listen: %w", err)
	}
	url := "https://" + agentLn.Addr().String()
	if cfg.PublicURL == "" {
		cfg.PublicURL = url
	}
	if cfg.AdminToken == "" {
		cfg.AdminToken = "rvadm_" + rand.Text()
	}
	s := New(cfg)
	ts := &TestServer{
		Server:     s,
		CA:         ca,
		URL:        url,
		AdminURL:   "https://" + adminLn.Addr().String(),
		AdminToken: cfg.AdminToken,
		agentHTTP:  s.NewHTTPServer(s, TLSConfig(cert)),
		adminHTTP:  s.NewHTTPServer(s.AdminHandler(), AdminTLSConfig(cert)),
		served:     make(chan error, 2),
	}
	ts.Admin = &AdminClient{BaseURL: ts.AdminURL, Token: cfg.AdminToken, HTTP: ts.Client(nil)}
	go func() { ts.served <- ts.agentHTTP.ServeTLS(agentLn, "", "") }()
	go func() { ts.served <- ts.adminHTTP.ServeTLS(adminLn, "", "") }()
	return ts, nil
}

// Client returns an HTTP client that trusts the test CA and presents
// clientCert when it is not nil.
func (ts *TestServer) Client(clientCert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: ts.CA.Pool(), MinVersion: tls.VersionTLS12}
	if clientCert != nil {
		cfg.Certificates = []tls.Certificate{*clientCert}
	}
	c := &http.Client{
		Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true},
		Timeout:   2 * time.Minute,
	}
	ts.mu.Lock()
	ts.clients = append(ts.clients, c)
	ts.mu.Unlock()
	return c
}

// CAPEM returns the CA certificate in PEM, for RV_CONTROL_PLANE_CA.
func (ts *TestServer) CAPEM() []byte { return ts.CA.CertPEM() }

// Close ends the long polls and stops both listeners. Connections still
// open after a short grace period (an HTTP/2 client waits up to a second to
// answer GOAWAY) are closed.
func (ts *TestServer) Close() error {
	ts.Server.Close()
	ts.mu.Lock()
	clients := ts.clients
	ts.mu.Unlock()
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	var err error
	for _, hs := range []*http.Server{ts.agentHTTP, ts.adminHTTP} {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		if e := hs.Shutdown(ctx); e != nil {
			if !errors.Is(e, context.DeadlineExceeded) {
				err = errors.Join(err, e)
			}
			hs.Close()
		}
		cancel()
	}
	for range 2 {
		if e := <-ts.served; e != nil && !errors.Is(e, http.ErrServerClosed) {
			err = errors.Join(err, e)
		}
	}
	return err
}
