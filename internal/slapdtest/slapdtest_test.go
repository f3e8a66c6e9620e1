package slapdtest

import (
	"crypto/tls"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/rapidvalue/tier3-agent/internal/devca"
)

// TestStart: a started slapd answers on both listeners with the CA's
// certificate, and ldapsearch (when installed) reads the suffix entry
// over ldaps and over StartTLS.
func TestStart(t *testing.T) {
	ca, err := devca.New()
	if err != nil {
		t.Fatal(err)
	}
	s := Start(t, Options{CA: ca})
	addr := strings.TrimPrefix(s.LDAPSURL, "ldaps://")
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("ldaps listener: %v", err)
	}
	c.Close()

	ldapsearch, err := exec.LookPath("ldapsearch")
	if err != nil {
		t.Log("ldapsearch is not installed: the listeners were checked with TLS only")
		return
	}
	for _, args := range [][]string{{"-H", s.LDAPSURL}, {"-H", s.LDAPURL, "-ZZ"}} {
		cmd := exec.Command(ldapsearch, append(args, "-LLL", "-x", "-D", s.RootDN, "-w", s.RootPW, "-b", s.Suffix, "-s", "base", "dc")...)
		cmd.Env = append(os.Environ(), "LDAPTLS_CACERT="+s.CAFile, "LDAPTLS_REQCERT=demand")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "dc: example") {
			t.Fatalf("ldapsearch %v: %v\n%s\nslapd:\n%s", args, err, out, s.Output())
		}
	}
	s.Stop()
	s.Stop() // idempotent
}
