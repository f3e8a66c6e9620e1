package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/config"
	"github.com/rapidvalue/tier3-agent/internal/wire"
	"github.com/rapidvalue/tier3-agent/vault"
)

// targets holds what the agent needs to reach target systems: one TLS
// configuration (system roots plus RV_AGENT_TARGET_CA) and transport.
type targets struct {
	tls       *tls.Config
	transport *http.Transport
	maxBody   int64
}

const maxRedirects = 5

// targetStreamWindow is the HTTP/2 receive window of one request to a
// target.
const targetStreamWindow = 1 << 20

func newTargets(cfg *config.Agent) (*targets, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if cfg.TargetCA != "" {
		pem, err := os.ReadFile(cfg.TargetCA)
		if err != nil {
			return nil, fmt.Errorf("RV_AGENT_TARGET_CA: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("RV_AGENT_TARGET_CA holds no PEM certificate")
		}
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	return &targets{
		tls: tc,
		transport: &http.Transport{
			// Targets sit in the customer's network: no proxy from the
			// environment unless the operator sets one for the agent.
			Proxy:                 http.ProxyFromEnvironment,
			TLSClientConfig:       tc,
			DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   15 * time.Second,
			ResponseHeaderTimeout: 120 * time.Second,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
			// A page is read as it streams; what the target may send
			// ahead of the reader is this window (Go's default, 4 MiB,
			// showed as ~9 MiB more peak RSS for a single large page:
			// docs/BENCHMARKS.md).
			HTTP2: &http.HTTP2Config{MaxReceiveBufferPerStream: targetStreamWindow},
		},
		maxBody: cfg.MaxResponse,
	}, nil
}

// errOtherOrigin stops a token endpoint's redirect.
var errOtherOrigin = errors.New("redirect refused")

// client returns an HTTP client for one origin: redirects are followed only
// within it, at most five. A redirect elsewhere is not followed: the
// redirect response itself is the answer, so a credential never follows
// it, whatever header carries it.
func (tg *targets) client(origin vault.Origin) *http.Client {
	return &http.Client{
		Transport: tg.transport,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			// via holds the requests made so far: the first and the
			// redirects already followed; this is redirect len(via).
			if len(via) > maxRedirects {
				return fmt.Errorf("more than %d redirects", maxRedirects)
			}
			o, err := vault.OriginOf(req.URL, false)
			if err != nil || o != origin || req.URL.Scheme != "https" {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
}

// classify turns a transport error into a task error class.
func classifyTargetError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && errors.Is(ue.Err, errOtherOrigin) {
		return fail(wire.ErrTargetAuthFailed, "the token endpoint redirected; the redirect was not followed")
	}
	if isTLSError(err) {
		return fail(wire.ErrTargetTLS, "TLS with the target failed: %v", scrubURLError(err))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fail(wire.ErrTargetUnreachable, "the target did not answer in time")
	}
	return fail(wire.ErrTargetUnreachable, "cannot reach the target: %v", scrubURLError(err))
}

// scrubURLError drops the URL (its query may carry data) from a url.Error.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// send authorizes req with the task's credentials and sends it to origin
// (redirects within it only), turning transport failures into task errors.
func (t *taskRun) send(ctx context.Context, req *http.Request, origin vault.Origin) (*http.Response, error) {
	if err := t.authorize(ctx, req); err != nil {
		return nil, err
	}
	resp, err := t.a.targets.client(origin).Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, classifyTargetError(err)
	}
	return resp, nil
}
