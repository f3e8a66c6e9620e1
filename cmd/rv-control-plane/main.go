// Command rv-control-plane runs the project's reference control plane: the
// agent API (PROTOCOL.md) on -listen and the admin API on -admin-listen,
// both over TLS. Its state lives in memory and is lost when it stops.
//
//	rv-control-plane -dev-ca ./dev                       a development CA and certificates in ./dev
//	rv-control-plane -tls-cert C -tls-key K -admin-token-file F
//
// It prints what an agent and an operator need as KEY=VALUE lines on
// stdout, logs on stderr, and stops on SIGTERM or SIGINT.
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/install"
	"github.com/rapidvalue/tier3-agent/internal/devca"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

const name = "rv-control-plane"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ue usageError
		fmt.Fprintf(os.Stderr, "%s: error: %v\n", name, err)
		if errors.As(err, &ue) {
			if ue.hint != "" {
				fmt.Fprintf(os.Stderr, "%s: hint: %s\n", name, ue.hint)
			}
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct {
	msg, hint string
}

func (e usageError) Error() string { return e.msg }

type options struct {
	listen, adminListen      string
	tlsCert, tlsKey, devCA   string
	adminTokenFile           string
	publicURL, installScript string
	releasePubKey, logLevel  string
	trustForwarded           bool
	heartbeatInterval, poll  time.Duration
	defaultLease             time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fl := flag.NewFlagSet(name, flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.StringVar(&o.listen, "listen", "127.0.0.1:8443", "address of the agent API")
	fl.StringVar(&o.adminListen, "admin-listen", "127.0.0.1:8444", "address of the admin API")
	fl.StringVar(&o.tlsCert, "tls-cert", "", "server certificate (PEM)")
	fl.StringVar(&o.tlsKey, "tls-key", "", "server key (PEM)")
	fl.StringVar(&o.devCA, "dev-ca", "", "make (or reuse) a development CA in `DIR` and a server certificate from it, instead of -tls-cert/-tls-key")
	fl.StringVar(&o.adminTokenFile, "admin-token-file", "", "file holding the admin API's bearer token; created (0600) when missing (default with -dev-ca: DIR/admin-token)")
	fl.StringVar(&o.publicURL, "public-url", "", "the URL agents use (default https:// and -listen)")
	fl.StringVar(&o.installScript, "install-script", "", "`FILE` served at /agent/install instead of the built-in installer (install/install.sh; {{RV_CONTROL_PLANE_URL}} is replaced)")
	fl.StringVar(&o.releasePubKey, "release-pubkey", "", "Ed25519 release public key (base64); uploaded signatures must verify with it")
	fl.BoolVar(&o.trustForwarded, "trust-forwarded-fingerprint", false, "take the client certificate fingerprint from X-Client-Cert-Fingerprint (behind a TLS-terminating load balancer)")
	fl.DurationVar(&o.heartbeatInterval, "heartbeat-interval", 0, "heartbeat interval sent to agents at registration (0: none sent)")
	fl.DurationVar(&o.poll, "poll-wait", 0, "long-poll wait sent to agents at registration (0: none sent)")
	fl.DurationVar(&o.defaultLease, "default-lease", wire.DefaultLease, "lease of a task whose envelope has no lease_s")
	fl.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{msg: err.Error()}
	}
	if fl.NArg() > 0 {
		return nil, usageError{msg: "unexpected argument " + fl.Arg(0), hint: "every option is a flag; see -h"}
	}
	switch {
	case o.devCA != "" && (o.tlsCert != "" || o.tlsKey != ""):
		return nil, usageError{msg: "-dev-ca and -tls-cert/-tls-key exclude each other"}
	case o.devCA == "" && (o.tlsCert == "" || o.tlsKey == ""):
		return nil, usageError{msg: "no server certificate", hint: "give -tls-cert and -tls-key, or -dev-ca DIR for a development CA"}
	case o.adminTokenFile == "" && o.devCA == "":
		return nil, usageError{msg: "no admin token", hint: "give -admin-token-file FILE (created when missing)"}
	}
	if o.adminTokenFile == "" {
		o.adminTokenFile = filepath.Join(o.devCA, "admin-token")
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return usageError{msg: "-log-level: want debug, info, warn or error"}
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	agentLn, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("failed to listen on %s: %w", o.listen, err)
	}
	defer agentLn.Close()
	adminLn, err := net.Listen("tcp", o.adminListen)
	if err != nil {
		return fmt.Errorf("failed to listen on %s: %w", o.adminListen, err)
	}
	defer adminLn.Close()

	agentURL := "https://" + agentLn.Addr().String()
	if o.publicURL == "" {
		o.publicURL = agentURL
	}
	pub, err := url.Parse(o.publicURL)
	if err != nil || pub.Scheme != "https" || pub.Host == "" {
		return usageError{msg: "-public-url: want an https:// URL"}
	}

	var out []string // KEY=VALUE lines for stdout
	var cert tls.Certificate
	if o.devCA != "" {
		var lines []string
		cert, lines, err = devCertificates(o.devCA, hostOf(o.listen), pub.Hostname())
		if err != nil {
			return err
		}
		out = append(out, lines...)
	} else if cert, err = tls.LoadX509KeyPair(o.tlsCert, o.tlsKey); err != nil {
		return fmt.Errorf("failed to load -tls-cert/-tls-key: %w", err)
	}

	adminToken, created, err := adminToken(o.adminTokenFile, logger)
	if err != nil {
		return err
	}
	if created {
		logger.Info("admin token created", "file", o.adminTokenFile)
	}

	cfg := controlplane.Config{
		Logger:                    logger,
		AdminToken:                adminToken,
		TrustForwardedFingerprint: o.trustForwarded,
		HeartbeatInterval:         o.heartbeatInterval,
		PollWait:                  o.poll,
		DefaultLease:              o.defaultLease,
		PublicURL:                 strings.TrimSuffix(o.publicURL, "/"),
		InstallScript:             install.Script,
	}
	if o.installScript != "" {
		b, err := os.ReadFile(o.installScript)
		if err != nil {
			return fmt.Errorf("failed to read -install-script: %w", err)
		}
		cfg.InstallScript = string(b)
	}
	if o.releasePubKey != "" {
		k, err := base64.StdEncoding.DecodeString(o.releasePubKey)
		if err != nil || len(k) != ed25519.PublicKeySize {
			return usageError{msg: "-release-pubkey: want base64 of 32 bytes"}
		}
		cfg.ReleasePublicKey = ed25519.PublicKey(k)
	}

	srv := controlplane.New(cfg)
	agentHTTP := srv.NewHTTPServer(srv, controlplane.TLSConfig(cert))
	adminHTTP := srv.NewHTTPServer(srv.AdminHandler(), controlplane.AdminTLSConfig(cert))
	served := make(chan error, 2)
	go func() { served <- agentHTTP.ServeTLS(agentLn, "", "") }()
	go func() { served <- adminHTTP.ServeTLS(adminLn, "", "") }()

	out = append([]string{
		"RV_CONTROL_PLANE_URL=" + cfg.PublicURL,
		"RV_ADMIN_URL=https://" + adminLn.Addr().String() + controlplane.AdminPrefix,
		"RV_ADMIN_TOKEN_FILE=" + o.adminTokenFile,
	}, out...)
	fmt.Fprintln(stdout, strings.Join(out, "\n"))
	logger.Info("serving", "agent_api", agentURL, "admin_api", "https://"+adminLn.Addr().String())

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	logger.Info("stopping")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = srv.Shutdown(shutdownCtx, agentHTTP, adminHTTP)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("failed to serve: %w", serveErr)
	}
	return err
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return h
}

// devCertificates makes or reuses the development CA in dir and writes a
// fresh server certificate for the given hosts, and a client certificate
// for mTLS demos unless one is there. It returns the server certificate and
// the lines to print.
func devCertificates(dir string, hosts ...string) (tls.Certificate, []string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("failed to create -dev-ca directory: %w", err)
	}
	p := func(f string) string { return filepath.Join(dir, f) }
	caCert, caKey := p("ca.pem"), p("ca-key.pem")
	ca, err := devca.LoadFiles(caCert, caKey)
	if errors.Is(err, fs.ErrNotExist) {
		if ca, err = devca.New(); err == nil {
			err = ca.WritePEM(caCert, caKey)
		}
	}
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("failed to set up the development CA in %s: %w", dir, err)
	}
	var names []string
	for _, h := range hosts {
		switch h {
		case "", "0.0.0.0", "::":
			if hn, err := os.Hostname(); err == nil {
				names = append(names, hn)
			}
		default:
			names = append(names, h)
		}
	}
	server, err := ca.Server(names...)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	if err := devca.WritePEM(p("server.pem"), p("server-key.pem"), server); err != nil {
		return tls.Certificate{}, nil, err
	}
	clientCert, clientKey := p("agent-client.pem"), p("agent-client-key.pem")
	client, err := tls.LoadX509KeyPair(clientCert, clientKey)
	if err != nil {
		if client, err = ca.Client("tier3-agent dev client"); err != nil {
			return tls.Certificate{}, nil, err
		}
		if err := devca.WritePEM(clientCert, clientKey, client); err != nil {
			return tls.Certificate{}, nil, err
		}
	}
	return server, []string{
		"RV_CONTROL_PLANE_CA=" + caCert,
		"RV_DEV_SERVER_CERT=" + p("server.pem"),
		"RV_DEV_SERVER_KEY=" + p("server-key.pem"),
		"RV_DEV_CLIENT_CERT=" + clientCert,
		"RV_DEV_CLIENT_KEY=" + clientKey,
		"RV_DEV_CLIENT_FINGERPRINT=" + wire.CertFingerprint(client.Certificate[0]),
	}, nil
}

// adminToken reads the admin token from file, or creates the file (0600,
// never overwriting) with a new token when it does not exist.
func adminToken(file string, logger *slog.Logger) (string, bool, error) {
	b, err := os.ReadFile(file)
	if err == nil {
		if fi, err := os.Stat(file); err == nil && fi.Mode().Perm()&0o077 != 0 {
			logger.Warn("admin token file is readable by others", "file", file, "mode", fi.Mode().Perm().String())
		}
		tok := strings.TrimRight(string(b), "\r\n")
		if len(tok) < 16 || strings.ContainsAny(tok, " \t\r\n") {
			return "", false, errors.New("the admin token file must hold one token of at least 16 characters")
		}
		return tok, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", false, fmt.Errorf("failed to read the admin token file: %w", err)
	}
	tok := "rvadm_" + rand.Text()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("failed to create the admin token file: %w", err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", false, fmt.Errorf("failed to write the admin token file: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", false, fmt.Errorf("failed to write the admin token file: %w", err)
	}
	return tok, true, nil
}
