// Command rv-release-sign keeps the Ed25519 release key of tier3-agent away
// from the control plane. It makes the key pair, and signs the per-agent
// update manifests (PROTOCOL.md §7) of one release: fetched from the
// control plane's admin API and uploaded back, or read from and written to
// files for a signing machine that is never online.
//
//	rv-release-sign keygen -key FILE
//	rv-release-sign pubkey -key FILE
//	rv-release-sign sign   -key FILE -binary BIN -version V [-os OS] [-arch ARCH]
//	                       (-admin URL [-admin-ca PEM] | -manifests IN.json -out OUT.json)
//
// keygen writes the private key (PKCS#8 PEM, mode 0600, never over an
// existing file) and FILE.pub, and prints the public key in the form
// RV_AGENT_RELEASE_PUBKEY takes (base64 of 32 bytes).
//
// sign does not sign what the control plane asks it to: it builds each
// manifest itself, from the agent IDs listed, the version, os and arch
// given, and the size and SHA-256 of BIN, the release artifact the signer
// vetted, and refuses a listed manifest that differs. A control plane that
// was compromised can therefore get no signature for a binary of its own.
// With -admin the token comes from RV_ADMIN_TOKEN or RV_ADMIN_TOKEN_FILE;
// IN.json is what GET …/manifests answers ({"manifests":[{"agent_id",
// "manifest"}]}) and OUT.json is the body of PUT …/signatures
// ({"signatures":{"agt_…":"base64"}}).
//
// Exit status: 0 done, 1 failed, 2 bad usage.
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

const usage = `usage:
  rv-release-sign keygen -key FILE
  rv-release-sign pubkey -key FILE
  rv-release-sign sign   -key FILE -binary BIN -version V [-os OS] [-arch ARCH]
                         (-admin URL [-admin-ca PEM] | -manifests IN.json -out OUT.json)
`

func run(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	err := dispatch(args, stdout, stderr, getenv)
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "rv-release-sign: error: %s\n", strings.Join(strings.Fields(err.Error()), " "))
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprint(stderr, usage)
		return 2
	}
	return 1
}

func dispatch(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		return usagef("no command given")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	keyFile := fs.String("key", "", "the private key file")
	switch args[0] {
	case "keygen", "pubkey":
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 || *keyFile == "" {
			return usagef("%s takes -key FILE", args[0])
		}
		if args[0] == "keygen" {
			return keygen(*keyFile, stdout)
		}
		key, err := readKey(*keyFile, stderr)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)))
		return nil
	case "sign":
		var o signOptions
		fs.StringVar(&o.binary, "binary", "", "the release binary")
		fs.StringVar(&o.version, "version", "", "the release's version")
		fs.StringVar(&o.goos, "os", runtime.GOOS, "the release's GOOS")
		fs.StringVar(&o.goarch, "arch", runtime.GOARCH, "the release's GOARCH")
		fs.StringVar(&o.admin, "admin", "", "the admin API's base URL")
		fs.StringVar(&o.adminCA, "admin-ca", "", "PEM roots trusted for the admin API")
		fs.StringVar(&o.in, "manifests", "", "manifests file (offline)")
		fs.StringVar(&o.out, "out", "", "signatures file to write (offline)")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 {
			return usagef("sign: bad flags")
		}
		switch {
		case *keyFile == "" || o.binary == "" || o.version == "":
			return usagef("sign needs -key, -binary and -version")
		case (o.admin == "") == (o.in == ""):
			return usagef("sign needs one of -admin URL or -manifests FILE")
		case (o.in == "") != (o.out == ""):
			return usagef("-manifests and -out go together")
		}
		if _, err := wire.ParseVersion(o.version); err != nil {
			return usagef("-version: %v", err)
		}
		key, err := readKey(*keyFile, stderr)
		if err != nil {
			return err
		}
		return sign(key, o, stdout, getenv)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usagef("unknown command %q", args[0])
}

// keygen writes a new key pair: the private key with O_EXCL and mode 0600.
func keygen(path string, stdout io.Writer) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	block := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	clear(der)
	clear(priv)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s exists: keygen never overwrites a key", path)
		}
		return fmt.Errorf("cannot create %s: %w", path, err)
	}
	_, err = f.Write(block)
	clear(block)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	pubB64 := base64.StdEncoding.EncodeToString(pub)
	if err := os.WriteFile(path+".pub", []byte(pubB64+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n", pubB64)
	return nil
}

func readKey(path string, stderr io.Writer) (ed25519.PrivateKey, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if info.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(stderr, "rv-release-sign: warning: %s is readable by others (mode %o): chmod 600 it\n", path, info.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	defer clear(data)
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s is not a PEM private key", path)
	}
	defer clear(block.Bytes)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: not a PKCS#8 private key", path)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s is not an Ed25519 key", path)
	}
	return key, nil
}

type signOptions struct {
	binary, version, goos, goarch string
	admin, adminCA                string
	in, out                       string
}

type manifestsFile struct {
	Manifests []controlplane.AgentManifest `json:"manifests"`
}

func sign(key ed25519.PrivateKey, o signOptions, stdout io.Writer, getenv func(string) string) error {
	size, sum, err := hashFile(o.binary)
	if err != nil {
		return err
	}
	if size > wire.MaxUpdateBytes {
		return fmt.Errorf("%s is over the %d MiB an agent accepts", o.binary, wire.MaxUpdateBytes>>20)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var ms []controlplane.AgentManifest
	var admin *controlplane.AdminClient
	if o.admin != "" {
		if admin, err = adminClient(o, getenv); err != nil {
			return err
		}
		if ms, err = admin.ReleaseManifests(ctx, o.version, o.goos, o.goarch); err != nil {
			return err
		}
	} else {
		data, err := os.ReadFile(o.in)
		if err != nil {
			return err
		}
		var mf manifestsFile
		if err := wire.Decode(data, &mf, wire.Limits{MaxBytes: 64 << 20}); err != nil {
			return fmt.Errorf("%s: %w", o.in, err)
		}
		ms = mf.Manifests
	}
	sigs := map[string][]byte{}
	for _, m := range ms {
		if !validAgentID(m.AgentID) {
			return fmt.Errorf("a listed agent ID is not one (want [A-Za-z0-9_-], 1 to 64 characters)")
		}
		if _, dup := sigs[m.AgentID]; dup {
			return fmt.Errorf("agent %s is listed twice", m.AgentID)
		}
		want := wire.UpdateManifest(m.AgentID, o.version, o.goos, o.goarch, size, sum)
		if !bytes.Equal([]byte(m.Manifest), want) {
			return fmt.Errorf("the manifest listed for agent %s is not the one of %s (version %s, %s/%s, %d bytes, sha256 %s): refusing to sign it",
				m.AgentID, o.binary, o.version, o.goos, o.goarch, size, sum)
		}
		sigs[m.AgentID] = ed25519.Sign(key, want)
	}
	if len(sigs) == 0 {
		return errors.New("no agent to sign for: no registered agent runs this os/arch")
	}
	if admin != nil {
		info, err := admin.PutSignatures(ctx, o.version, o.goos, o.goarch, sigs)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "signed %s %s/%s (sha256 %s) for %d agents; signed for %d in all\n", o.version, o.goos, o.goarch, sum, len(sigs), len(info.SignedFor))
		return nil
	}
	req := controlplane.SignaturesRequest{Signatures: map[string]string{}}
	for id, s := range sigs {
		req.Signatures[id] = base64.StdEncoding.EncodeToString(s)
	}
	data, err := json.MarshalIndent(req, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(o.out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("cannot create %s (never overwritten): %w", o.out, err)
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signed %s %s/%s (sha256 %s) for %d agents into %s\n", o.version, o.goos, o.goarch, sum, len(sigs), o.out)
	return nil
}

func hashFile(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

func validAgentID(s string) bool { return wire.ValidTaskID(s) }

func adminClient(o signOptions, getenv func(string) string) (*controlplane.AdminClient, error) {
	token := getenv("RV_ADMIN_TOKEN")
	if f := getenv("RV_ADMIN_TOKEN_FILE"); f != "" {
		if token != "" {
			return nil, usagef("RV_ADMIN_TOKEN and RV_ADMIN_TOKEN_FILE are both set: keep one")
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, usagef("-admin needs the admin token in RV_ADMIN_TOKEN or RV_ADMIN_TOKEN_FILE")
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.adminCA != "" {
		pemData, err := os.ReadFile(o.adminCA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("%s holds no PEM certificate", o.adminCA)
		}
		tlsCfg.RootCAs = pool
	}
	if !strings.HasPrefix(o.admin, "https://") {
		return nil, usagef("-admin must be an https:// URL")
	}
	return &controlplane.AdminClient{
		BaseURL: strings.TrimSuffix(o.admin, "/"), Token: token,
		HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: time.Minute},
	}, nil
}
