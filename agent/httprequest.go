package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/rapidvalue/tier3-agent/internal/wire"
	"github.com/rapidvalue/tier3-agent/vault"
)

func init() { methods[wire.MethodHTTPRequest] = httpRequest{} }

// httpRequest is the method http.request: one call to the connector's
// base_url origin.
type httpRequest struct{}

type httpRequestSpec struct {
	Method     string            `json:"method"`
	Path       string            `json:"path"`
	Query      map[string]string `json:"query"`
	Headers    map[string]string `json:"headers"`
	Body       json.RawMessage   `json:"body"`
	BodyBase64 string            `json:"body_base64"`
}

// parsed is what parse leaves for run.
type parsedHTTPRequest struct {
	spec   httpRequestSpec
	url    *url.URL
	origin vault.Origin
	body   []byte
}

var allowedMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

// targetURL builds base_url's origin + path + query, and refuses anything
// whose origin would differ from base_url's.
func targetURL(base, path string, query map[string]string) (*url.URL, vault.Origin, error) {
	origin, err := httpsOrigin(base, false)
	if err != nil {
		return nil, origin, invalid("connector.base_url: %v", err)
	}
	if !strings.HasPrefix(path, "/") || strings.HasPrefix(path, "//") || strings.ContainsAny(path, "\\#\r\n\x00") {
		return nil, origin, invalid("request.path must start with a single / and hold no \\, # or control characters")
	}
	bu, _ := url.Parse(base)
	p, rawQuery, _ := strings.Cut(path, "?")
	u := &url.URL{Scheme: "https", Host: bu.Host}
	pu, err := url.Parse(p)
	if err != nil || pu.Host != "" || pu.Scheme != "" {
		return nil, origin, invalid("request.path is not a path")
	}
	u.Path, u.RawPath = pu.Path, pu.RawPath
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, origin, invalid("request.path has a malformed query")
	}
	keys := make([]string, 0, len(query))
	for k := range query {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		q.Add(k, query[k])
	}
	u.RawQuery = q.Encode()
	got, err := vault.OriginOf(u, false)
	if err != nil || got != origin {
		return nil, origin, fail(wire.ErrBindingViolation, "the request would leave base_url's origin")
	}
	return u, origin, nil
}

func (httpRequest) parse(t *taskRun) ([]vault.Origin, error) {
	var p parsedHTTPRequest
	if len(t.env.Request) == 0 {
		return nil, invalid("http.request needs a request object")
	}
	if err := wire.Decode(t.env.Request, &p.spec, wire.Limits{}); err != nil {
		return nil, invalid("request: %v", err)
	}
	s := &p.spec
	if s.Method == "" {
		s.Method = "GET"
	}
	s.Method = strings.ToUpper(s.Method)
	if !allowedMethods[s.Method] {
		return nil, invalid("request.method must be one of GET HEAD POST PUT PATCH DELETE OPTIONS")
	}
	var err error
	if p.url, p.origin, err = targetURL(t.env.Connector.BaseURL, s.Path, s.Query); err != nil {
		return nil, err
	}
	for k, v := range s.Headers {
		if !validHeaderName(k) || strings.ContainsAny(v, "\r\n\x00") {
			return nil, invalid("request.headers: names are tokens and values hold no CR, LF or NUL")
		}
		if forbiddenHeader(k, t.env.Auth.Header) {
			return nil, invalid("request.headers may not set %s", http.CanonicalHeaderKey(k))
		}
	}
	switch {
	case len(s.Body) > 0 && s.BodyBase64 != "":
		return nil, invalid("request takes body or body_base64, not both")
	case len(s.Body) > 0 && string(s.Body) != "null":
		p.body = s.Body
	case s.BodyBase64 != "":
		if p.body, err = base64.StdEncoding.DecodeString(s.BodyBase64); err != nil {
			return nil, invalid("request.body_base64 is not base64")
		}
	}
	t.req = &p
	return tokenOrigins(t, []vault.Origin{p.origin}), nil
}

// httpResponse is the result's response object.
type httpResponse struct {
	Status     int               `json:"status"`
	Headers    map[string]string `json:"headers"`
	Body       json.RawMessage   `json:"body,omitempty"`
	BodyBase64 string            `json:"body_base64,omitempty"`
}

func (httpRequest) run(ctx context.Context, t *taskRun) (*outcome, error) {
	p := t.req.(*parsedHTTPRequest)
	var body io.Reader
	if p.body != nil {
		body = bytes.NewReader(p.body)
	}
	req, err := http.NewRequestWithContext(ctx, p.spec.Method, p.url.String(), body)
	if err != nil {
		return nil, invalid("request: %v", err)
	}
	for k, v := range p.spec.Headers {
		req.Header.Set(k, v)
	}
	if len(p.spec.Body) > 0 && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := t.send(ctx, req, p.origin)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	max := t.a.targets.maxBody
	raw, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fail(wire.ErrTargetUnreachable, "reading the response failed: %v", err)
	}
	if int64(len(raw)) > max {
		return nil, fail(wire.ErrResponseTooLarge, "the response is over RV_AGENT_MAX_RESPONSE (%d bytes)", max)
	}
	r := t.st.redact
	out := httpResponse{Status: resp.StatusCode, Headers: map[string]string{}}
	for k, vs := range r.header(resp.Header, t.env.Auth.Header) {
		// The body may change length once redacted.
		if k != "Content-Length" {
			out.Headers[k] = strings.Join(vs, ", ")
		}
	}
	if isJSON(resp.Header.Get("Content-Type")) && json.Valid(raw) {
		if out.Body, err = r.json(raw); err != nil {
			return nil, fail(wire.ErrInternal, "redacting the response failed")
		}
	} else if len(raw) > 0 {
		out.BodyBase64 = base64.StdEncoding.EncodeToString(r.bytes(raw))
	}
	enc, err := json.Marshal(out)
	if err != nil {
		return nil, fail(wire.ErrInternal, "encoding the response: %v", err)
	}
	if len(enc) > wire.MaxBodyBytes-4096 {
		return nil, fail(wire.ErrResultTooLarge, "the response (%d bytes once encoded) does not fit in a result body of %d bytes: use http.sync for large reads", len(enc), wire.MaxBodyBytes)
	}
	return &outcome{response: enc, bytes: int64(len(raw))}, nil
}

func isJSON(ct string) bool {
	ct = strings.ToLower(strings.TrimSpace(strings.SplitN(ct, ";", 2)[0]))
	return ct == "application/json" || strings.HasSuffix(ct, "+json")
}
