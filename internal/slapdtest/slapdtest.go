// Package slapdtest starts OpenLDAP's slapd for tests: a directory loaded
// offline with slapadd, on loopback ports, with ldaps:// and ldap:// (which
// offers StartTLS) listeners and a TLS certificate from a devca CA.
//
// Each Server is a slapd process with its own configuration and database
// under the test's temporary directory, stopped at t.Cleanup. Tests skip
// when slapd is not installed, unless CI=true: in CI its absence fails the
// test (scripts/install-deps.sh installs it).
//
// The configuration is an old-style slapd.conf (NOTES.md): core, cosine and
// inetorgperson schemas, back_mdb, "sizelimit unlimited" (a non-root bind
// is otherwise held to 500 entries, paged searches included), and no
// access lines: anyone who binds reads everything, userPassword included.
package slapdtest

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/rapidvalue/tier3-agent/internal/childproc"
	"github.com/rapidvalue/tier3-agent/internal/syncbuf"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/internal/devca"
)

// Options configure a Server.
type Options struct {
	// Suffix is the database's suffix; default dc=example,dc=com.
	Suffix string
	// CA signs the server's certificate (for 127.0.0.1, ::1, localhost);
	// nil: a new CA. Server.CAFile holds its certificate either way.
	CA *devca.CA
	// LDIF writes the directory's entries, loaded with slapadd before slapd
	// starts. Nil: only the suffix entry (an organization). It must write
	// the suffix entry itself when it is not nil.
	LDIF func(w io.Writer) error
	// Schemas names more schema files of /etc/ldap/schema to include
	// (without .schema), after core, cosine and inetorgperson.
	Schemas []string
	// DatabaseConfig is added to the database section (e.g. limits).
	DatabaseConfig string
}

// Server is a running slapd.
type Server struct {
	// LDAPSURL is the ldaps:// listener, LDAPURL the ldap:// one (which
	// offers StartTLS): ldaps://127.0.0.1:PORT, no trailing slash.
	LDAPSURL, LDAPURL string
	Suffix            string
	// RootDN and RootPW are the database's rootdn and rootpw.
	RootDN, RootPW string
	// CAFile is the PEM certificate of the CA that signed the server's
	// certificate (LDAPTLS_CACERT for ldapsearch, RV_AGENT_TARGET_CA for
	// the agent).
	CAFile string
	// Dir holds slapd.conf, the database and the certificates.
	Dir string

	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
}

// Binaries returns the paths of slapd and slapadd, skipping the test (or
// failing it when CI=true) when they are not installed.
func Binaries(t testing.TB) (slapd, slapadd string) {
	t.Helper()
	find := func(name string) string {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
			p := filepath.Join(dir, name)
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
		return ""
	}
	slapd, slapadd = find("slapd"), find("slapadd")
	if slapd != "" && slapadd != "" {
		return slapd, slapadd
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("slapd is not installed, and CI=true: scripts/install-deps.sh installs it (apt-get install slapd ldap-utils)")
	}
	t.Skipf("slapd is not installed: apt-get install slapd ldap-utils to run this test (with CI=true its absence fails)")
	return "", ""
}

// Start loads the directory and starts slapd.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	slapd, slapadd := Binaries(t)
	if opts.Suffix == "" {
		opts.Suffix = "dc=example,dc=com"
	}
	ca := opts.CA
	if ca == nil {
		var err error
		if ca, err = devca.New(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	s := &Server{Suffix: opts.Suffix, RootDN: "cn=admin," + opts.Suffix, RootPW: randomPassword(), Dir: dir}
	s.CAFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(s.CAFile, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	if err := devca.WritePEM(certFile, keyFile, cert); err != nil {
		t.Fatal(err)
	}
	dbDir := filepath.Join(dir, "db")
	if err := os.Mkdir(dbDir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "slapd.conf")
	if err := os.WriteFile(conf, []byte(s.config(opts, dbDir, certFile, keyFile)), 0o600); err != nil {
		t.Fatal(err)
	}

	ldifFile := filepath.Join(dir, "data.ldif")
	if err := writeLDIF(ldifFile, opts); err != nil {
		t.Fatalf("writing the LDIF: %v", err)
	}
	if out, err := exec.Command(slapadd, "-q", "-f", conf, "-l", ldifFile).CombinedOutput(); err != nil {
		t.Fatalf("slapadd: %v\n%s", err, out)
	}
	os.Remove(ldifFile)

	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			t.Fatal(err)
		}
		s.LDAPSURL = "ldaps://127.0.0.1:" + strconv.Itoa(ports[0])
		s.LDAPURL = "ldap://127.0.0.1:" + strconv.Itoa(ports[1])
		if lastErr = s.start(slapd, conf); lastErr == nil {
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatalf("slapd did not start: %v", lastErr)
	return nil
}

func (s *Server) config(opts Options, dbDir, certFile, keyFile string) string {
	var b strings.Builder
	for _, schema := range append([]string{"core", "cosine", "inetorgperson"}, opts.Schemas...) {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", schema)
	}
	fmt.Fprintf(&b, `modulepath /usr/lib/ldap
moduleload back_mdb
pidfile %s
argsfile %s
sizelimit unlimited
TLSCACertificateFile %s
TLSCertificateFile %s
TLSCertificateKeyFile %s

database mdb
maxsize 4294967296
suffix %q
rootdn %q
rootpw %s
directory %s
%s
`, filepath.Join(s.Dir, "slapd.pid"), filepath.Join(s.Dir, "slapd.args"), s.CAFile, certFile, keyFile,
		opts.Suffix, s.RootDN, s.RootPW, dbDir, opts.DatabaseConfig)
	return b.String()
}

func writeLDIF(name string, opts Options) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if opts.LDIF != nil {
		err = opts.LDIF(w)
	} else {
		dc, _, _ := strings.Cut(strings.TrimPrefix(opts.Suffix, "dc="), ",")
		_, err = fmt.Fprintf(w, "dn: %s\nobjectClass: dcObject\nobjectClass: organization\no: %s\ndc: %s\n\n", opts.Suffix, dc, dc)
	}
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// start runs slapd in the foreground (-d) and waits for it to say that it
// serves ("slapd starting", logged after the listeners are bound).
func (s *Server) start(slapd, conf string) error {
	// -d 32768 ("none"): only the messages slapd logs at every level,
	// start-up and errors; not a line per operation.
	s.cmd = exec.Command(slapd, "-d", "32768", "-f", conf, "-h", s.LDAPSURL+"/ "+s.LDAPURL+"/")
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		return err
	}
	s.cmd.Stdout = nil
	s.out = &syncbuf.Buffer{}
	s.done = make(chan struct{})
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("cannot start slapd: %w", err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			s.out.Write(append(sc.Bytes(), '\n'))
			if !signalled && strings.HasSuffix(sc.Text(), "slapd starting") {
				signalled = true
				close(ready)
			}
		}
		io.Copy(io.Discard, stderr)
		s.cmd.Wait()
		close(s.done)
	}()
	deadline := time.After(30 * time.Second)
	select {
	case <-ready:
	case <-s.done:
		return fmt.Errorf("slapd exited: %s", s.out.String())
	case <-deadline:
		s.Stop()
		return errors.New("slapd did not start within 30 s: " + s.out.String())
	}
	// "slapd starting" comes after the listeners are bound but before its
	// listener thread calls listen(2): until then a connection is refused.
	// No log line marks that moment below a debug level that logs every
	// read, so probe the two ports (a connection is accepted and closed).
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for _, u := range []string{s.LDAPSURL, s.LDAPURL} {
		addr := u[strings.Index(u, "://")+3:]
		for {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-tick.C:
			case <-s.done:
				return fmt.Errorf("slapd exited: %s", s.out.String())
			case <-deadline:
				s.Stop()
				return fmt.Errorf("slapd does not accept connections on %s after 30 s: %v", addr, err)
			}
		}
	}
	return nil
}

// Output returns what slapd printed.
func (s *Server) Output() string { return s.out.String() }

// Pid is slapd's process ID.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Stop stops slapd (idempotent).
func (s *Server) Stop() {
	childproc.Stop(s.cmd.Process, s.done, 10*time.Second)
}

func randomPassword() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// freePorts returns n ports that were free on 127.0.0.1 a moment ago.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
