package update

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// fakeConn is the agent's connection for unit tests: it answers the offer
// and the binary from memory. A mock beside the real thing: the end-to-end
// tests run the real agent against the reference control plane.
type fakeConn struct {
	emitted chan struct{} // when set, signalled at each event
	mu      sync.Mutex
	offer   []byte // nil: 204
	binary  func(ctx context.Context) io.ReadCloser
	status  int // of the binary, default 200
	events  []wire.Event
	urls    []string
}

func (c *fakeConn) AgentID() string { return "agt_unit" }

func (c *fakeConn) Logger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func (c *fakeConn) Emit(ev wire.Event) {
	c.mu.Lock()
	c.events = append(c.events, ev)
	c.mu.Unlock()
	if c.emitted != nil {
		c.emitted <- struct{}{}
	}
}

func (c *fakeConn) Fetch(ctx context.Context, u string, limit int64) (int, io.ReadCloser, error) {
	c.mu.Lock()
	c.urls = append(c.urls, u)
	c.mu.Unlock()
	if strings.Contains(u, "/update?current=") {
		if c.offer == nil {
			return 204, io.NopCloser(strings.NewReader("")), nil
		}
		return 200, io.NopCloser(bytes.NewReader(c.offer)), nil
	}
	status := c.status
	if status == 0 {
		status = 200
	}
	return status, c.binary(ctx), nil
}

func (c *fakeConn) rejected() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range c.events {
		if e.Type == wire.EventSelfUpdateRejected {
			out = append(out, e.Reason)
		}
	}
	return out
}

const unitKey = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// unitChecker is a checker of a binary in a temporary folder, offered
// newBin as 2.0.0 by conn.
func unitChecker(t *testing.T, conn *fakeConn, opts Options) (*Checker, Files) {
	t.Helper()
	f := FilesFor(t.TempDir() + "/tier3-agent")
	if err := os.WriteFile(f.Binary, oldBin, 0o755); err != nil {
		t.Fatal(err)
	}
	cp, _ := url.Parse("https://cp.example.com")
	sum := sha256.Sum256(newBin)
	w := wire.UpdateOffer{Version: "2.0.0", OS: "linux", Arch: "amd64", Size: int64(len(newBin)), SHA256: hex.EncodeToString(sum[:]), URL: "/api/agent/v1/update/2.0.0/binary"}
	w.HMACSHA256 = wire.UpdateHMAC([]byte(unitKey), wire.UpdateManifest("agt_unit", w.Version, w.OS, w.Arch, w.Size, w.SHA256))
	conn.offer, _ = json.Marshal(w)
	if conn.binary == nil {
		conn.binary = func(context.Context) io.ReadCloser { return io.NopCloser(bytes.NewReader(newBin)) }
	}
	key, err := secmem.SealValue([]byte(unitKey))
	if err != nil {
		t.Fatal(err)
	}
	opts.Files, opts.Version, opts.OS, opts.Arch, opts.ControlPlane, opts.UpdateKey = f, "1.0.0", "linux", "amd64", cp, key
	opts.Enabled, opts.Supervised = true, true
	c := NewChecker(opts)
	return c, f
}

// blockingBody yields data, then blocks until ctx ends.
type blockingBody struct {
	ctx  context.Context
	data []byte
}

func (b *blockingBody) Read(p []byte) (int, error) {
	if len(b.data) > 0 {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

func (b *blockingBody) Close() error { return nil }

func TestDownloadRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   Options
		body   func(ctx context.Context) io.ReadCloser
		status int
		want   string
	}{
		{"stalls", Options{Stall: 50 * time.Millisecond}, func(ctx context.Context) io.ReadCloser {
			return &blockingBody{ctx: ctx, data: newBin[:10]}
		}, 0, "download too slow: no data for 50ms"},
		{"too slow overall", Options{DownloadGrace: 50 * time.Millisecond, MinRate: 1 << 40}, func(ctx context.Context) io.ReadCloser {
			return &blockingBody{ctx: ctx, data: newBin[:10]}
		}, 0, "download too slow: not done within"},
		{"longer than size", Options{}, func(context.Context) io.ReadCloser {
			return io.NopCloser(bytes.NewReader(append(append([]byte{}, newBin...), 'x')))
		}, 0, "longer than the offered size"},
		{"shorter than size", Options{}, func(context.Context) io.ReadCloser {
			return io.NopCloser(bytes.NewReader(newBin[:5]))
		}, 0, "ended after 5 of"},
		{"other bytes", Options{}, func(context.Context) io.ReadCloser {
			return io.NopCloser(bytes.NewReader(bytes.ToUpper(newBin)))
		}, 0, "sha256 differs"},
		{"not 200", Options{}, func(context.Context) io.ReadCloser { return io.NopCloser(strings.NewReader("")) }, 204, "answered 204"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := &fakeConn{binary: tc.body, status: tc.status}
			c, f := unitChecker(t, conn, tc.opts)
			if got := c.check(context.Background(), conn, "test"); got != refused {
				t.Fatalf("outcome %d", got)
			}
			rej := conn.rejected()
			if len(rej) != 1 || !strings.Contains(rej[0], tc.want) {
				t.Fatalf("rejected %q, want %q", rej, tc.want)
			}
			if !bytes.Equal(content(t, f.Binary), oldBin) {
				t.Fatal("the binary changed")
			}
			if got := files(t, f); len(got) != 1 {
				t.Fatalf("left %v where the agent is installed", got)
			}
		})
	}
}

func TestDownloadIsPrivateUntilVerified(t *testing.T) {
	seen := make(chan os.FileMode, 1)
	var f Files
	conn := &fakeConn{}
	conn.binary = func(ctx context.Context) io.ReadCloser {
		return io.NopCloser(io.MultiReader(bytes.NewReader(newBin[:10]), readerFunc(func(p []byte) (int, error) {
			info, err := os.Stat(f.Unverified)
			if err == nil {
				seen <- info.Mode().Perm()
			}
			return copy(p, newBin[10:]), io.EOF
		})))
	}
	c, files := unitChecker(t, conn, Options{})
	f = files
	installed := false
	c.Attach(conn, func() { installed = true })
	c.Run(context.Background()) // returns after the install
	if !installed {
		t.Fatalf("not installed: %q", conn.rejected())
	}
	if m := <-seen; m != 0o600 {
		t.Fatalf("the download is mode %o while unverified, want 0600", m)
	}
	if !bytes.Equal(content(t, f.Binary), newBin) || !bytes.Equal(content(t, f.Backup), oldBin) {
		t.Fatal("not installed as it should be")
	}
	if info, _ := os.Stat(f.Binary); info.Mode().Perm() != 0o755 {
		t.Fatalf("mode %o", info.Mode().Perm())
	}
	st, _ := Load(f)
	if st.Trial == nil || st.Trial.From != "1.0.0" || st.Trial.To != "2.0.0" || st.Trial.ToSHA256 != hexSHA(newBin) || st.Trial.FromSHA256 != hexSHA(oldBin) {
		t.Fatalf("%+v", st.Trial)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// A binary on trial checks no offer; it reports healthy at its first
// heartbeat and commits once StableAfter has passed, then sends the
// applied event.
func TestTrialCommits(t *testing.T) {
	conn := &fakeConn{emitted: make(chan struct{}, 1)}
	healthy := make(chan struct{})
	c, f := unitChecker(t, conn, Options{StableAfter: time.Nanosecond, Healthy: func() { close(healthy) }})
	save(f, &State{Committed: "0.9.0", Trial: &Trial{From: "0.9.0", To: "1.0.0", FromSHA256: hexSHA(newBin), ToSHA256: hexSHA(oldBin)}})
	conn.offer = nil
	c.Attach(conn, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	c.Heartbeat(false)
	<-healthy
	conn.mu.Lock()
	if len(conn.urls) != 0 {
		t.Errorf("checked for an offer while on trial: %q", conn.urls)
	}
	conn.mu.Unlock()
	c.Heartbeat(false) // after StableAfter: the commit
	<-conn.emitted
	cancel()
	<-done
	if conn.events[0].Type != wire.EventSelfUpdateApplied || conn.events[0].From != "0.9.0" || conn.events[0].To != "1.0.0" {
		t.Fatalf("%+v", conn.events)
	}
	st, _ := Load(f)
	if st.Trial != nil || st.Committed != "1.0.0" || len(st.Pending) != 0 {
		t.Fatalf("%+v", st)
	}
}

// Without a supervisor (off unix, or run --worker by hand) nothing is
// installed: the offer is refused with a reason.
func TestUnsupervisedInstallsNothing(t *testing.T) {
	conn := &fakeConn{}
	c, f := unitChecker(t, conn, Options{})
	c.opts.Supervised = false
	c.check(context.Background(), conn, "test")
	if rej := conn.rejected(); len(rej) != 1 || !strings.Contains(rej[0], "cannot install updates") {
		t.Fatalf("%q", rej)
	}
	if got := files(t, f); len(got) != 1 {
		t.Fatalf("%v", got)
	}
}

func TestHealthTimeout(t *testing.T) {
	for _, tc := range []struct{ hb, want time.Duration }{
		{time.Second, 10 * time.Second}, {30 * time.Second, 5 * time.Minute}, {5 * time.Minute, 10 * time.Minute},
	} {
		if got := HealthTimeout(tc.hb); got != tc.want {
			t.Errorf("HealthTimeout(%s) = %s, want %s", tc.hb, got, tc.want)
		}
	}
}
