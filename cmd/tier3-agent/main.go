// Command tier3-agent is the RapidValue tier-3 agent: it runs the agent
// (`run`) and manages its sealed vault (`vault …`). See SPEC.md.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/awnumar/memguard"

	"github.com/rapidvalue/tier3-agent/internal/config"
	"github.com/rapidvalue/tier3-agent/internal/hostvault"
	"github.com/rapidvalue/tier3-agent/internal/secmem"
	_ "github.com/rapidvalue/tier3-agent/seal" // identity and passphrase seals
)

// version is set at build time: -ldflags "-X main.version=1.4.0".
var version = "0.0.0-dev"

const usageText = `usage: tier3-agent COMMAND [flags]

  run                                   run the agent (configured by the environment)
  vault init    [--seal KIND] [--recipient R]... [--tpm-pcrs LIST]
  vault set     BUSINESS_ID FIELD [--version N]   (value on standard input)
  vault unset   BUSINESS_ID [FIELD]
  vault bind    BUSINESS_ID ORIGIN...
  vault list    [--json]
  vault status  [--json]
  vault seal    [--seal KIND] [--recipient R]...
  vault unseal  --out FILE
  vault rekey   [--seal KIND] [--recipient R]...
  vault edit
  vault recipient [--seal KIND]
  audit verify  [FILE]
  version

Every vault command takes --vault PATH and --identity FILE (a recovery key).
`

func main() {
	code := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	// Destroy every locked buffer and the enclave key before exiting.
	memguard.SafeExit(code)
}

// cli carries what a command needs from the process.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

// usageError is bad usage: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// hinted carries a second line telling the user what to do.
type hinted struct {
	err  error
	hint string
}

func (e *hinted) Error() string { return e.err.Error() }
func (e *hinted) Unwrap() error { return e.err }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv}
	err := c.dispatch(args)
	if err == nil {
		return 0
	}
	var es *exitStatus
	if errors.As(err, &es) {
		return es.code // the supervisor passes on its worker's exit (supervise.go)
	}
	fmt.Fprintf(stderr, "tier3-agent: error: %s\n", oneLine(err.Error()))
	var h *hinted
	if errors.As(err, &h) {
		fmt.Fprintf(stderr, "tier3-agent: hint: %s\n", oneLine(h.hint))
	}
	return exitCode(err)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func exitCode(err error) int {
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		return 2
	case errors.Is(err, hostvault.ErrConfig), errors.Is(err, config.ErrInvalid), errors.Is(err, secmem.ErrMemlock), errors.Is(err, errHarden),
		errors.Is(err, errAgentFatal):
		return 78
	}
	return 1
}

func (c *cli) dispatch(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, usageText)
		return usagef("no command given")
	}
	switch args[0] {
	case "version", "--version":
		if len(args) > 1 {
			return usagef("version takes no arguments")
		}
		fmt.Fprintln(c.stdout, version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(c.stdout, usageText)
		return nil
	case "vault":
		return c.vault(args[1:])
	case "run":
		return c.runAgent(args[1:])
	case "audit":
		return c.audit(args[1:])
	}
	return usagef("unknown command %q: see tier3-agent help", clip(args[0]))
}

// clip shortens user input quoted in a usage error (it is never a secret:
// secrets come on standard input or from files, never as arguments).
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
