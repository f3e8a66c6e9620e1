package agent

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/rapidvalue/tier3-agent/internal/wire"
	"github.com/rapidvalue/tier3-agent/vault"
)

func init() { methods[wire.MethodHTTPSync] = httpSync{} }

// httpSync is the method http.sync: GET pages from the connector's
// base_url origin, following next links, and stream the records of each
// page back as chunks (chunks.go).
//
// Memory: a page is decoded as a stream (syncpage.go), one record at a
// time, so the agent holds the scanner's buffer (the record being read:
// at most about twice the 1 MiB record limit), the chunk being filled and
// the chunk in flight: a few MiB, bounded by the 1 MiB record limit,
// whatever the size of a page or of the sync.
//
// Limits: one record (and any single JSON value of a page) at most 1 MiB;
// one page at most 4 GiB (decompressed), which only time bounds, and
// timeout_s bounds the time; max_pages pages (default 100000). A sync that
// reaches max_pages with a next link left completes with the pages read
// (the caller asked for at most that many); the log says so.
type httpSync struct{}

const (
	defaultMaxPages = 100_000
	maxMaxPages     = 10_000_000
)

type httpSyncSpec struct {
	Path     string            `json:"path"`
	Query    map[string]string `json:"query"`
	Items    *string           `json:"items"`
	Next     *syncNext         `json:"next"`
	MaxPages int               `json:"max_pages"`
}

type syncNext struct {
	Kind    string `json:"kind"`
	Pointer string `json:"pointer"`
}

// Kinds of next link.
const (
	nextJSONURL    = "json_url"
	nextLinkHeader = "link_header"
	nextNone       = "none"
)

type parsedHTTPSync struct {
	spec     httpSyncSpec
	url      *url.URL
	origin   vault.Origin
	items    jsonPointer
	next     jsonPointer // for json_url
	kind     string
	maxPages int
}

func (httpSync) parse(t *taskRun) ([]vault.Origin, error) {
	var p parsedHTTPSync
	if len(t.env.Request) == 0 {
		return nil, invalid("http.sync needs a request object")
	}
	if err := wire.Decode(t.env.Request, &p.spec, wire.Limits{}); err != nil {
		return nil, invalid("request: %v", err)
	}
	if t.env.Auth.Scheme == wire.SchemeLDAPSimple {
		return nil, invalid("auth scheme ldap_simple does not apply to http.sync")
	}
	s := &p.spec
	var err error
	if p.url, p.origin, err = targetURL(t.env.Connector.BaseURL, s.Path, s.Query); err != nil {
		return nil, err
	}
	if s.Items == nil {
		return nil, invalid("request.items must be the JSON pointer of the record array (\"\" for a page that is the array)")
	}
	if p.items, err = parseJSONPointer(*s.Items); err != nil {
		return nil, invalid("request.items: %v", err)
	}
	if s.Next == nil {
		return nil, invalid("request.next must say how pages link: {\"kind\": \"json_url\", \"pointer\": …}, {\"kind\": \"link_header\"} or {\"kind\": \"none\"}")
	}
	p.kind = s.Next.Kind
	switch p.kind {
	case nextJSONURL:
		if p.next, err = parseJSONPointer(s.Next.Pointer); err != nil {
			return nil, invalid("request.next.pointer: %v", err)
		}
		if p.next.hasPrefix(p.items) || p.items.hasPrefix(p.next) {
			return nil, invalid("request.next.pointer and request.items must name separate values, neither inside the other")
		}
	case nextLinkHeader, nextNone:
		if s.Next.Pointer != "" {
			return nil, invalid("request.next.pointer applies only to kind json_url")
		}
	default:
		return nil, invalid("request.next.kind must be json_url, link_header or none")
	}
	switch {
	case s.MaxPages == 0:
		p.maxPages = defaultMaxPages
	case s.MaxPages < 1 || s.MaxPages > maxMaxPages:
		return nil, invalid("request.max_pages must be 1 to %d", maxMaxPages)
	default:
		p.maxPages = s.MaxPages
	}
	if _, err := t.chunkSize(); err != nil {
		return nil, err
	}
	t.req = &p
	return tokenOrigins(t, []vault.Origin{p.origin}), nil
}

func (httpSync) run(ctx context.Context, t *taskRun) (*outcome, error) {
	p := t.req.(*parsedHTTPSync)
	rs, err := t.records(ctx)
	if err != nil {
		return nil, err
	}
	defer rs.abort()
	u := p.url
	for page := 0; ; page++ {
		if page == p.maxPages {
			t.a.logInfo("http.sync stopped at max_pages with a next link left", "task_id", t.env.TaskID, "max_pages", p.maxPages)
			break
		}
		next, err := p.readPage(ctx, t, rs, u, page)
		if err != nil {
			return nil, err
		}
		if next == nil {
			break
		}
		if err := rs.sendFull(); err != nil {
			return nil, err
		}
		u = next
	}
	return rs.close()
}

// readPage GETs one page, streams its records to rs and returns the next
// page's URL (nil for none), checked to be on base_url's origin.
func (p *parsedHTTPSync) readPage(ctx context.Context, t *taskRun, rs *recordStream, u *url.URL, page int) (*url.URL, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u.String(), nil)
	if err != nil {
		return nil, fail(wire.ErrInternal, "page %d: cannot build the request", page)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := t.send(ctx, req, p.origin)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch code := resp.StatusCode; {
	case code == 401 || code == 403:
		return nil, fail(wire.ErrTargetAuthFailed, "page %d: the target answered %d", page, code)
	case code/100 == 3:
		return nil, fail(wire.ErrTargetError, "page %d: the target redirected outside base_url's origin (%d); the redirect was not followed", page, code)
	case code/100 != 2:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return nil, fail(wire.ErrTargetError, "page %d: the target answered %d", page, code)
	}
	var nextPtr jsonPointer
	if p.kind == nextJSONURL {
		nextPtr = p.next
	}
	rawNext, n, err := readPageRecords(resp.Body, p.items, nextPtr, defaultPageLimits, rs.addRecord)
	if err != nil {
		var pe *pageError
		switch {
		case ctx.Err() != nil:
			// Cancelled (lease lost, 410, shutdown) or timed out: runTask
			// reads the cause.
			return nil, ctx.Err()
		case errors.As(err, &pe) && pe.TooLarge:
			return nil, fail(wire.ErrResponseTooLarge, "page %d, after %d records: %v", page, n, pe)
		case errors.As(err, &pe):
			return nil, fail(wire.ErrTargetError, "page %d, after %d records: %v", page, n, pe)
		}
		var te *taskError
		if errors.As(err, &te) || errors.Is(err, errLeaseLost) || errors.Is(err, errCancelled) {
			return nil, err
		}
		return nil, fail(wire.ErrTargetUnreachable, "page %d: reading the page failed: %v", page, scrubURLError(err))
	}
	if p.kind == nextLinkHeader {
		rawNext = linkNext(resp.Header.Values("Link"))
	}
	if rawNext == "" {
		return nil, nil
	}
	// Relative links resolve against the page's own URL (after same-origin
	// redirects).
	next, err := resp.Request.URL.Parse(rawNext)
	if err != nil {
		return nil, fail(wire.ErrTargetError, "page %d: the next link is not a URL", page)
	}
	next.Fragment, next.RawFragment = "", ""
	if o, err := vault.OriginOf(next, false); err != nil || o != p.origin || next.Scheme != "https" {
		return nil, fail(wire.ErrBindingViolation, "page %d: the next link leads outside base_url's origin %s; it was not followed", page, p.origin)
	}
	return next, nil
}

// linkNext returns the target of the first rel="next" link of RFC 8288
// Link header values, "" when there is none.
func linkNext(values []string) string {
	for _, v := range values {
		for rest := v; ; {
			rest = strings.TrimLeft(rest, " \t,")
			if !strings.HasPrefix(rest, "<") {
				break
			}
			end := strings.IndexByte(rest, '>')
			if end < 0 {
				break
			}
			target := rest[1:end]
			rest = rest[end+1:]
			// Parameters up to the next link: ;name=value or ;name="value".
			isNext := false
			for {
				rest = strings.TrimLeft(rest, " \t")
				if !strings.HasPrefix(rest, ";") {
					break
				}
				rest = strings.TrimLeft(rest[1:], " \t")
				name, val := "", ""
				i := strings.IndexAny(rest, "=;,")
				if i < 0 {
					name, rest = rest, ""
				} else {
					name, rest = rest[:i], rest[i:]
				}
				if strings.HasPrefix(rest, "=") {
					rest = strings.TrimLeft(rest[1:], " \t")
					if strings.HasPrefix(rest, `"`) {
						j := 1
						var b strings.Builder
						for ; j < len(rest) && rest[j] != '"'; j++ {
							if rest[j] == '\\' && j+1 < len(rest) {
								j++
							}
							b.WriteByte(rest[j])
						}
						val = b.String()
						rest = rest[min(j+1, len(rest)):]
					} else {
						k := strings.IndexAny(rest, ";,")
						if k < 0 {
							k = len(rest)
						}
						val, rest = strings.TrimSpace(rest[:k]), rest[k:]
					}
				}
				if strings.EqualFold(strings.TrimSpace(name), "rel") {
					for _, r := range strings.Fields(val) {
						if strings.EqualFold(r, "next") {
							isNext = true
						}
					}
				}
			}
			if isNext {
				return target
			}
		}
	}
	return ""
}
