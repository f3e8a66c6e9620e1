package sdnotify

import (
	"strings"
	"testing"
	"time"
)

func TestCheckSocket(t *testing.T) {
	for _, tc := range []struct {
		s, err string
	}{
		{"/run/systemd/notify", ""},
		{"@abstract", ""},
		{"", "empty"},
		{"@", "empty abstract"},
		{"relative/path", "neither an absolute path"},
		{"/" + strings.Repeat("x", 200), "longer than"},
	} {
		err := checkSocket(tc.s)
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("checkSocket(%q) = %v, want %q", tc.s, err, tc.err)
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	for _, tc := range []struct {
		env  func(string) string
		want time.Duration
		err  bool
	}{
		{env(), 0, false},
		{env(EnvWatchdogUS, "60000000"), time.Minute, false},
		{env(EnvWatchdogUS, "60000000", EnvWatchdogPID, "42"), time.Minute, false},
		{env(EnvWatchdogUS, "60000000", EnvWatchdogPID, "43"), 0, false}, // another process's
		{env(EnvWatchdogUS, "0"), 0, true},
		{env(EnvWatchdogUS, "-5"), 0, true},
		{env(EnvWatchdogUS, "1s"), 0, true},
		{env(EnvWatchdogUS, "5", EnvWatchdogPID, "x"), 0, true},
	} {
		got, err := WatchdogInterval(tc.env, 42)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("WatchdogInterval = %v, %v; want %v (error %v)", got, err, tc.want, tc.err)
		}
	}
}

func TestStatus(t *testing.T) {
	if got := Status("a\nb\x00c"); got != "STATUS=a b c" {
		t.Errorf("Status = %q", got)
	}
}
