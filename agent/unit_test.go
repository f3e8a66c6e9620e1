package agent

import (
	"net/http"
	"testing"
	"time"
)

func TestBackoffFullJitter(t *testing.T) {
	b := newBackoff()
	var ceilings []int64
	b.rand = func(n int64) int64 { ceilings = append(ceilings, n-1); return n - 1 }
	for i := 0; i < 10; i++ {
		b.next()
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60, 60}
	for i, w := range want {
		if time.Duration(ceilings[i]) != w*time.Second {
			t.Fatalf("attempt %d: ceiling %v, want %v", i, time.Duration(ceilings[i]), w*time.Second)
		}
	}
	b.reset()
	ceilings = nil
	b.next()
	if time.Duration(ceilings[0]) != time.Second {
		t.Fatal("reset did not restart at the base")
	}
	// Full jitter: the wait is anywhere in [0, ceiling].
	b.rand = func(int64) int64 { return 0 }
	if b.next() != 0 {
		t.Fatal("full jitter must allow a zero wait")
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"":        0,
		"7":       7 * time.Second,
		" 3 ":     3 * time.Second,
		"-5":      0,
		"100000":  300 * time.Second, // capped
		"garbage": 0,
		now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):       0,
	} {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestTargetURLStaysOnOrigin(t *testing.T) {
	base := "https://acme.example.com"
	for _, path := range []string{"//evil.example.com/x", "/\\evil", "/a#frag", "/a\r\nHost: x", "relative", "https://evil.example.com/"} {
		if _, _, err := targetURL(base, path, nil); err == nil {
			t.Errorf("path %q accepted", path)
		}
	}
	u, o, err := targetURL(base, "/api/users/7?expand=1", map[string]string{"q": "a b&c=d"})
	if err != nil {
		t.Fatal(err)
	}
	if u.Host != "acme.example.com" || o.Port != 443 || u.Query().Get("q") != "a b&c=d" || u.Query().Get("expand") != "1" {
		t.Fatalf("url %s origin %v", u, o)
	}
}

func TestForbiddenHeaders(t *testing.T) {
	for _, h := range []string{"Authorization", "proxy-authorization", "COOKIE", "Host", "X-Api-Key"} {
		if !forbiddenHeader(h, "X-API-Key") {
			t.Errorf("%s allowed", h)
		}
	}
	if forbiddenHeader("Accept", "X-API-Key") {
		t.Error("Accept refused")
	}
}
