package main

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/awnumar/memguard"

	"github.com/rapidvalue/tier3-agent/internal/config"
	"github.com/rapidvalue/tier3-agent/internal/harden"
	"github.com/rapidvalue/tier3-agent/internal/hostvault"
	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/seal"
	"github.com/rapidvalue/tier3-agent/vault"
)

var errHarden = errors.New("process hardening failed")

// vaultCmd is one vault command's parsed flags and settings.
type vaultCmd struct {
	*cli
	name     string
	cfg      config.Vault
	identity string // --identity
	json     bool
	sealKind string
	recips   multiFlag
	pcrs     string
	version  int
	out      string
	pass     *passphrase
}

func (c *cli) vault(args []string) error {
	if len(args) == 0 {
		return usagef("vault: name a subcommand: see tier3-agent help")
	}
	vc := &vaultCmd{cli: c, name: "vault " + args[0]}
	fs := flag.NewFlagSet(vc.name, flag.ContinueOnError)
	vaultPath := fs.String("vault", "", "vault file")
	fs.StringVar(&vc.identity, "identity", "", "age identity file that opens the vault (recovery key)")
	switch args[0] {
	case "list", "status":
		fs.BoolVar(&vc.json, "json", false, "JSON output")
	case "init", "seal", "rekey", "recipient":
		fs.StringVar(&vc.sealKind, "seal", "", "seal kind")
		if args[0] != "recipient" {
			fs.Var(&vc.recips, "recipient", "extra recipient (repeatable)")
		}
		fs.StringVar(&vc.pcrs, "tpm-pcrs", "", "PCRs the tpm2 seal binds to, e.g. 7 or 0,7")
	case "set":
		fs.IntVar(&vc.version, "version", 0, "store as version N")
	case "unseal":
		fs.StringVar(&vc.out, "out", "", "plaintext output file (must not exist)")
	case "unset", "bind", "edit":
	default:
		return usagef("vault: unknown subcommand %q: see tier3-agent help", clip(args[0]))
	}
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	if vc.cfg, err = config.LoadVault(c.getenv); err != nil {
		return err
	}
	if *vaultPath != "" {
		if vc.cfg.Path, err = absPath(*vaultPath); err != nil {
			return err
		}
	}
	if vc.identity != "" {
		if vc.identity, err = absPath(vc.identity); err != nil {
			return err
		}
	}
	if err := harden.Process(); err != nil {
		return &hinted{fmt.Errorf("%w: %w", errHarden, err), "see SECURITY.md, 'Process hardening'"}
	}
	vc.pass = &passphrase{file: vc.cfg.PassphraseFile, stdin: c.stdin, stderr: c.stderr}
	defer vc.pass.destroy()

	switch args[0] {
	case "init":
		return vc.init(pos)
	case "set":
		return vc.set(pos)
	case "unset":
		return vc.unset(pos)
	case "bind":
		return vc.bind(pos)
	case "list":
		return vc.list(pos)
	case "status":
		return vc.status(pos)
	case "seal":
		return vc.seal(pos)
	case "unseal":
		return vc.unseal(pos)
	case "rekey":
		return vc.rekey(pos)
	case "edit":
		return vc.edit(pos)
	case "recipient":
		return vc.recipient(pos)
	}
	panic("unreachable")
}

func absPath(p string) (string, error) {
	a, err := filepathAbs(p)
	if err != nil {
		return "", usagef("bad path: %v", err)
	}
	return a, nil
}

func (vc *vaultCmd) env() (seal.Env, error) {
	env := seal.Env{
		VaultPath:    vc.cfg.Path,
		IdentityFile: vc.cfg.IdentityFile,
		TPMDevice:    vc.cfg.TPMDevice,
		Passphrase:   vc.pass.get,
	}
	if vc.pcrs != "" {
		for _, s := range strings.Split(vc.pcrs, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 0 || n > 23 {
				return env, usagef("--tpm-pcrs takes PCR numbers 0 to 23, comma-separated")
			}
			env.TPMPCRs = append(env.TPMPCRs, n)
		}
	}
	return env, nil
}

func (vc *vaultCmd) opts(allowPlaintext bool) (hostvault.Options, error) {
	env, err := vc.env()
	return hostvault.Options{Path: vc.cfg.Path, Env: env, RecoveryIdentity: vc.identity, AllowPlaintext: allowPlaintext}, err
}

func (vc *vaultCmd) kind() (seal.Kind, error) {
	sf, err := hostvault.ReadSealFile(vc.cfg.Path)
	if err != nil {
		return "", err
	}
	env, err := vc.env()
	if err != nil {
		return "", err
	}
	return hostvault.ChooseKind(vc.sealKind, sf, env, vc.cfg.PassphraseFile)
}

func (vc *vaultCmd) say(format string, a ...any) {
	fmt.Fprintf(vc.stderr, "tier3-agent: "+format+"\n", a...)
}

// sealTarget reads what init, seal and rekey share: no positional
// arguments, the seal kind, and the options to open the vault with.
func (vc *vaultCmd) sealTarget(pos []string, allowPlaintext bool) (seal.Kind, hostvault.Options, error) {
	if err := wantArgs(vc.name, pos, 0, 0); err != nil {
		return "", hostvault.Options{}, err
	}
	kind, err := vc.kind()
	if err != nil {
		return "", hostvault.Options{}, err
	}
	opts, err := vc.opts(allowPlaintext)
	return kind, opts, err
}

func (vc *vaultCmd) init(pos []string) error {
	kind, opts, err := vc.sealTarget(pos, false)
	if err != nil {
		return err
	}
	sf, err := hostvault.Init(opts, kind, vc.recips)
	if err != nil {
		return err
	}
	vc.say("created an empty vault at %s, sealed with %s", vc.cfg.Path, kind)
	vc.warnNoRecovery(sf)
	return nil
}

func (vc *vaultCmd) warnNoRecovery(sf *seal.File) {
	if len(sf.Recipients) == 0 {
		vc.say("warning: no recovery recipient: if this host's seal is lost, so is the vault (add one: vault rekey --recipient $(age-keygen -y recovery.key))")
	}
}

// openLocked takes the vault's lock and opens it for a change; the caller
// saves and unlocks.
func (vc *vaultCmd) openLocked() (*hostvault.Handle, func(), error) {
	opts, err := vc.opts(false)
	if err != nil {
		return nil, nil, err
	}
	unlock, err := vault.Lock(opts.Path)
	if err != nil {
		return nil, nil, err
	}
	h, err := hostvault.Open(opts)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return h, unlock, nil
}

// modify opens the vault under the lock, applies f, and saves it.
func (vc *vaultCmd) modify(f func(v *vault.Vault) error) error {
	h, unlock, err := vc.openLocked()
	if err != nil {
		return err
	}
	defer unlock()
	if err := f(h.Vault); err != nil {
		return err
	}
	return h.Save()
}

func (vc *vaultCmd) set(pos []string) error {
	if err := wantArgs(vc.name, pos, 2, 2); err != nil {
		return err
	}
	entry, field := pos[0], pos[1]
	if vc.version < 0 || vc.version > 999999 {
		return usagef("--version takes 1 to 999999")
	}
	value, err := vc.readValue(entry, field)
	if err != nil {
		return err
	}
	defer value.Destroy()
	return vc.modify(func(v *vault.Vault) error {
		return v.Set(entry, field, vc.version, value.Bytes())
	})
}

// readValue reads the secret for vault set: asked twice without echo on a
// terminal, else standard input with one trailing newline dropped.
func (vc *vaultCmd) readValue(entry, field string) (*memguard.LockedBuffer, error) {
	if f, ok := vc.stdin.(*os.File); ok && isTerminal(f) {
		a, err := promptSecret(f, vc.stderr, fmt.Sprintf("value for %s/%s: ", entry, field))
		if err != nil {
			return nil, err
		}
		b, err := promptSecret(f, vc.stderr, "again: ")
		if err != nil {
			a.Destroy()
			return nil, err
		}
		defer b.Destroy()
		if subtle.ConstantTimeCompare(a.Bytes(), b.Bytes()) != 1 {
			a.Destroy()
			return nil, errors.New("the two values differ: nothing changed")
		}
		return a, nil
	}
	buf, n, err := secmem.ReadAll(vc.stdin, vault.MaxValue+1)
	if errors.Is(err, secmem.ErrTooLarge) || n > vault.MaxValue+1 {
		return nil, fmt.Errorf("the value on standard input is longer than %d bytes", vault.MaxValue)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read the value from standard input: %w", err)
	}
	if n > 0 && buf.Bytes()[n-1] == '\n' {
		n--
	}
	if n == 0 {
		if buf != nil {
			buf.Destroy()
		}
		return nil, &hinted{errors.New("empty value on standard input: nothing changed"), "printf %s \"$SECRET\" | tier3-agent vault set BUSINESS_ID FIELD"}
	}
	out, err := secmem.New(n)
	if err != nil {
		buf.Destroy()
		return nil, err
	}
	out.Copy(buf.Bytes()[:n])
	buf.Destroy()
	return out, nil
}

func (vc *vaultCmd) unset(pos []string) error {
	if err := wantArgs(vc.name, pos, 1, 2); err != nil {
		return err
	}
	field := ""
	if len(pos) == 2 {
		field = pos[1]
	}
	return vc.modify(func(v *vault.Vault) error { return v.Unset(pos[0], field) })
}

func (vc *vaultCmd) bind(pos []string) error {
	if err := wantArgs(vc.name, pos, 2, -1); err != nil {
		return err
	}
	return vc.modify(func(v *vault.Vault) error { return v.Bind(pos[0], pos[1:]) })
}

// openRead opens the vault for reading; plaintext is allowed (list and
// status describe a vault still to migrate).
func (vc *vaultCmd) openRead() (*hostvault.Handle, error) {
	opts, err := vc.opts(true)
	if err != nil {
		return nil, err
	}
	return hostvault.Open(opts)
}

type listEntry struct {
	BusinessID string      `json:"business_id"`
	Fields     []listField `json:"fields"`
	Targets    []string    `json:"targets"`
}

type listField struct {
	Name     string `json:"name"`
	Versions []int  `json:"versions,omitempty"`
}

func describe(v *vault.Vault) []listEntry {
	out := []listEntry{}
	for _, e := range v.Entries() {
		le := listEntry{BusinessID: e.Name, Fields: []listField{}, Targets: e.Targets}
		for _, f := range e.Fields() {
			le.Fields = append(le.Fields, listField{Name: f.Name, Versions: f.Versions()})
		}
		out = append(out, le)
	}
	return out
}

func (vc *vaultCmd) list(pos []string) error {
	if err := wantArgs(vc.name, pos, 0, 0); err != nil {
		return err
	}
	h, err := vc.openRead()
	if err != nil {
		return err
	}
	entries := describe(h.Vault)
	if vc.json {
		return writeJSON(vc.stdout, map[string]any{"entries": entries})
	}
	if len(entries) == 0 {
		fmt.Fprintln(vc.stdout, "(no entries)")
	}
	tw := tabwriter.NewWriter(vc.stdout, 2, 4, 2, ' ', 0)
	for _, e := range entries {
		fmt.Fprintln(tw, e.BusinessID)
		for _, f := range e.Fields {
			vs := ""
			for i, n := range f.Versions {
				if i > 0 {
					vs += " "
				}
				vs += "v" + strconv.Itoa(n)
			}
			fmt.Fprintf(tw, "  %s\t%s\n", f.Name, vs)
		}
		if e.Targets == nil {
			fmt.Fprintln(tw, "  (unbound: its credentials may go to any target)")
		} else {
			fmt.Fprintf(tw, "  bound to\t%s\n", strings.Join(e.Targets, " "))
		}
	}
	return tw.Flush()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// minSecretLen is the length under which status calls a secret short.
const minSecretLen = 16

type statusReport struct {
	Vault      string   `json:"vault"`
	Format     string   `json:"format"`
	Sealed     bool     `json:"sealed"`
	Seal       string   `json:"seal,omitempty"`
	Recipient  string   `json:"recipient,omitempty"`
	Recipients []string `json:"recipients"`
	SealFile   string   `json:"seal_file,omitempty"`
	SealInfo   []string `json:"seal_info,omitempty"`
	Pending    string   `json:"interrupted_rekey_from,omitempty"`
	OpenedWith string   `json:"opened_with"`
	Entries    int      `json:"entries"`
	Warnings   []string `json:"warnings"`
}

func (vc *vaultCmd) status(pos []string) error {
	if err := wantArgs(vc.name, pos, 0, 0); err != nil {
		return err
	}
	h, err := vc.openRead()
	if err != nil {
		return err
	}
	r := statusReport{Vault: vc.cfg.Path, Format: h.Format.String(), Sealed: h.Format != vault.FormatPlaintext,
		OpenedWith: h.OpenedWith, Entries: h.Vault.Len(), Recipients: []string{}, Warnings: []string{}}
	if !r.Sealed {
		r.Warnings = append(r.Warnings, "the vault is plaintext: seal it with tier3-agent vault seal")
	}
	if sf := h.SealFile; sf != nil && r.Sealed {
		r.Seal, r.Recipient, r.SealFile = string(sf.Seal.Kind), sf.Seal.Recipient, seal.FilePath(vc.cfg.Path)
		r.Recipients = append(r.Recipients, sf.Recipients...)
		if p, err := seal.Lookup(sf.Seal.Kind); err == nil {
			if d, ok := p.(seal.Describer); ok {
				r.SealInfo = d.Describe(sf.Seal)
			}
		}
		if sf.Previous != nil {
			r.Pending = string(sf.Previous.Kind)
			r.Warnings = append(r.Warnings, "a rekey was interrupted: run vault rekey again to finish it")
		}
		if len(sf.Recipients) == 0 {
			r.Warnings = append(r.Warnings, "no recovery recipient: if this host's seal is lost, so is the vault (vault rekey --recipient RECOVERY_RECIPIENT)")
		}
	}
	for _, e := range h.Vault.Entries() {
		if e.Name != vault.AgentEntry && e.Targets == nil {
			r.Warnings = append(r.Warnings, fmt.Sprintf("entry %s is unbound: bind it to its targets (vault bind %s ORIGIN...)", e.Name, e.Name))
		}
		for _, f := range e.Fields() {
			if vault.IdentifierFields[f.Name] {
				continue
			}
			for _, n := range f.ValueSizes() {
				if n < minSecretLen {
					r.Warnings = append(r.Warnings, fmt.Sprintf("%s/%s is shorter than %d characters", e.Name, f.Name, minSecretLen))
					break
				}
			}
		}
	}
	if vc.json {
		return writeJSON(vc.stdout, r)
	}
	tw := tabwriter.NewWriter(vc.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "vault:\t%s\n", r.Vault)
	fmt.Fprintf(tw, "format:\t%s\n", r.Format)
	if r.Seal != "" {
		fmt.Fprintf(tw, "seal:\t%s\n", r.Seal)
		for _, l := range r.SealInfo {
			fmt.Fprintf(tw, "\t%s\n", l)
		}
		if r.Recipient != "" {
			fmt.Fprintf(tw, "this host:\t%s\n", r.Recipient)
		}
		fmt.Fprintf(tw, "seal file:\t%s\n", r.SealFile)
		fmt.Fprintf(tw, "recipients:\t%d extra\n", len(r.Recipients))
		for _, x := range r.Recipients {
			fmt.Fprintf(tw, "\t%s\n", x)
		}
	}
	fmt.Fprintf(tw, "opened with:\t%s\n", r.OpenedWith)
	fmt.Fprintf(tw, "entries:\t%d\n", r.Entries)
	tw.Flush()
	if len(r.Warnings) > 0 {
		fmt.Fprintln(vc.stdout, "warnings:")
		sort.Strings(r.Warnings)
		for _, w := range r.Warnings {
			fmt.Fprintf(vc.stdout, "  - %s\n", w)
		}
	}
	return nil
}

func (vc *vaultCmd) seal(pos []string) error {
	kind, opts, err := vc.sealTarget(pos, true)
	if err != nil {
		return err
	}
	sf, n, err := hostvault.SealPlaintext(opts, kind, vc.recips)
	if err != nil {
		return err
	}
	vc.say("sealed %s with %s: %d entries, no plaintext left in the file (copies in backups or free disk blocks are not reached: see SECURITY.md)", vc.cfg.Path, kind, n)
	vc.warnNoRecovery(sf)
	return nil
}

func (vc *vaultCmd) unseal(pos []string) error {
	if err := wantArgs(vc.name, pos, 0, 0); err != nil {
		return err
	}
	if vc.out == "" {
		return usagef("vault unseal needs --out FILE: it writes the plaintext there (0600, never overwriting)")
	}
	out, err := absPath(vc.out)
	if err != nil {
		return err
	}
	h, err := vc.openRead()
	if err != nil {
		return err
	}
	if err := h.Vault.WritePlaintextNew(out); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists: vault unseal never overwrites a file", out)
		}
		return err
	}
	vc.say("wrote the plaintext vault to %s (mode 0600): remove it when done", out)
	return nil
}

func (vc *vaultCmd) rekey(pos []string) error {
	kind, opts, err := vc.sealTarget(pos, false)
	if err != nil {
		return err
	}
	var extras []string
	if len(vc.recips) > 0 {
		extras = vc.recips
	}
	// The current passphrase (if any) opens; a new passphrase seal asks
	// for its own.
	newEnv := opts.Env
	newPass := &passphrase{file: vc.cfg.PassphraseFile, stdin: vc.stdin, stderr: vc.stderr, label: "new passphrase"}
	defer newPass.destroy()
	newEnv.Passphrase = newPass.get
	sf, err := hostvault.Rekey(opts, newEnv, kind, extras)
	if err != nil {
		return err
	}
	vc.say("re-sealed %s with %s for this host and %d extra recipients", vc.cfg.Path, kind, len(sf.Recipients))
	vc.warnNoRecovery(sf)
	return nil
}

func (vc *vaultCmd) recipient(pos []string) error {
	if err := wantArgs(vc.name, pos, 0, 0); err != nil {
		return err
	}
	opts, err := vc.opts(false)
	if err != nil {
		return err
	}
	r, _, err := hostvault.HostRecipient(opts, vc.sealKind, vc.cfg.PassphraseFile)
	if err != nil {
		return err
	}
	fmt.Fprintln(vc.stdout, r)
	return nil
}
