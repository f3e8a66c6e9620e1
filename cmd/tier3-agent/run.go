package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/awnumar/memguard"

	"github.com/rapidvalue/tier3-agent/agent"
	"github.com/rapidvalue/tier3-agent/agent/audit"
	"github.com/rapidvalue/tier3-agent/internal/config"
	"github.com/rapidvalue/tier3-agent/internal/harden"
	"github.com/rapidvalue/tier3-agent/internal/hostvault"
	"github.com/rapidvalue/tier3-agent/internal/secmem"
	"github.com/rapidvalue/tier3-agent/seal"
	"github.com/rapidvalue/tier3-agent/vault"
)

// errAgentFatal marks the agent's fatal answers (401, 403, TLS): exit 78.
var errAgentFatal = errors.New("agent stopped")

func (c *cli) runAgent(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	worker := fs.Bool("worker", false, "run as the supervisor's worker (supervise.go)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("run", pos, 0, 0); err != nil {
		return err
	}
	// Signals first: a stop asked for while the vault is still being
	// unsealed (systemctl stop right after a start) ends the run with 0
	// once the agent is up, rather than killing it half-started.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sigs)
	cfg, err := config.LoadAgent(c.getenv)
	if err != nil {
		return err
	}
	if err := harden.Process(); err != nil {
		return fmt.Errorf("%w: %w", errHarden, err)
	}
	if supervised, err := c.supervise(cfg, *worker, sigs); supervised {
		return err
	}
	pass := &passphrase{file: cfg.Vault.PassphraseFile}
	defer pass.destroy()
	opts := hostvault.Options{
		Path:           cfg.Vault.Path,
		AllowPlaintext: cfg.Vault.Migrate,
		Env:            seal.Env{VaultPath: cfg.Vault.Path, IdentityFile: cfg.Vault.IdentityFile, TPMDevice: cfg.Vault.TPMDevice, Passphrase: pass.get},
	}
	openVault := func() (*agent.VaultState, error) {
		h, err := hostvault.Open(opts)
		if err != nil {
			return nil, err
		}
		vs := &agent.VaultState{Vault: h.Vault, Sealed: h.Format != vault.FormatPlaintext, Seal: "plaintext"}
		if h.SealFile != nil && vs.Sealed {
			vs.Seal = string(h.SealFile.Seal.Kind)
		}
		return vs, nil
	}
	first, err := openVault()
	if err != nil {
		return err
	}
	if !first.Sealed {
		fmt.Fprintf(c.stderr, "tier3-agent: warning: running on the plaintext vault %s (RV_AGENT_VAULT_MODE=migrate): seal it with tier3-agent vault seal\n", cfg.Vault.Path)
	}
	token, err := agentSecret(cfg.TokenSource, first.Vault, 1)
	if err != nil {
		return err
	}
	updateKey, err := agentSecret(cfg.UpdateKeySource, first.Vault, 32)
	if err != nil {
		return err
	}
	selfUpdate, err := c.newSelfUpdate(cfg, updateKey, *worker)
	if err != nil {
		return err
	}
	defer selfUpdate.close()
	sum, err := selfSHA256()
	if err != nil {
		return err
	}
	auditLog, err := audit.Open(cfg.AuditLog)
	if errors.Is(err, audit.ErrBroken) {
		// A broken chain (a crash mid-line, or an edit) is kept for the
		// investigation, never appended to: a new log starts beside it.
		aside, merr := audit.MoveAside(cfg.AuditLog)
		if merr == nil {
			fmt.Fprintf(c.stderr, "tier3-agent: warning: the audit log %s is broken (%v); kept as %s, a new log starts\n", cfg.AuditLog, err, aside)
			auditLog, err = audit.Open(cfg.AuditLog)
		}
	}
	if err != nil {
		return &hinted{fmt.Errorf("%w: audit log %s: %w", config.ErrInvalid, cfg.AuditLog, err), "check RV_AGENT_AUDIT_LOG; tier3-agent audit verify names the first bad line"}
	}
	defer auditLog.Close()

	notify := c.serviceNotifier(*worker, selfUpdate.link)
	reopened := false
	a, err := agent.New(agent.Options{
		Config: cfg, Version: version, BinarySHA256: sum, Token: token,
		OpenVault: func() (*agent.VaultState, error) {
			if !reopened {
				reopened = true
				return first, nil
			}
			return openVault()
		},
		LogWriter: c.stderr,
		AuditLog:  auditLog,
		Updater:   selfUpdate.checker,
		Ready:     notify.ready,
		Alive:     notify.alive,
		Watchdog:  notify.every,
	})
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	selfUpdate.attach(a, stop)
	go func() {
		for s := range sigs {
			if s == syscall.SIGHUP {
				notify.reloading()
				err := a.Reload()
				if err != nil {
					a.Logger().Warn("vault reload failed; the old vault stays in service", "error", err)
				}
				notify.reloaded(err != nil)
				continue
			}
			notify.stopping()
			stop()
		}
	}()
	if err := a.Run(ctx); err != nil {
		return fmt.Errorf("%w: %w", errAgentFatal, err)
	}
	return nil
}

// agentSecret reads the token or the update key from exactly one source:
// the environment, NAME_FILE, or the vault's _agent entry.
func agentSecret(src config.SecretSource, v *vault.Vault, minLen int) (*secmem.Sealed, error) {
	var found []string
	var value *memguard.LockedBuffer
	if src.Env != "" {
		found = append(found, src.Name)
		b, err := secmem.New(len(src.Env))
		if err != nil {
			return nil, err
		}
		b.Copy([]byte(src.Env))
		value = b
	}
	if src.File != "" {
		found = append(found, src.Name+"_FILE")
		f, err := os.Open(src.File)
		if err != nil {
			return nil, fmt.Errorf("%w: %s_FILE: %w", config.ErrInvalid, src.Name, err)
		}
		b, n, err := secmem.ReadAll(f, 4096)
		f.Close()
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%w: %s_FILE %s is empty or larger than 4 KiB", config.ErrInvalid, src.Name, src.File)
		}
		if b.Bytes()[n-1] == '\n' {
			n--
		}
		value = trimmed(b, n)
	}
	if b, err := v.AgentSecret(src.Field); err == nil {
		found = append(found, "the vault's _agent/"+src.Field)
		if value != nil {
			value.Destroy()
		}
		value = b
	} else if !errors.Is(err, vault.ErrMissing) {
		return nil, err
	}
	switch {
	case len(found) == 0:
		return nil, fmt.Errorf("%w: %s is required: set it, or %s_FILE, or store it in the vault (tier3-agent vault set _agent %s)", config.ErrInvalid, src.Name, src.Name, src.Field)
	case len(found) > 1:
		value.Destroy()
		return nil, fmt.Errorf("%w: %s comes from %d sources (%v): keep one", config.ErrInvalid, src.Name, len(found), found)
	}
	defer value.Destroy()
	if value.Size() < minLen {
		return nil, fmt.Errorf("%w: %s must be at least %d bytes", config.ErrInvalid, src.Name, minLen)
	}
	return secmem.SealValue(append([]byte(nil), value.Bytes()...))
}

func trimmed(b *memguard.LockedBuffer, n int) *memguard.LockedBuffer {
	out, err := secmem.New(n)
	if err != nil {
		return b
	}
	out.Copy(b.Bytes()[:n])
	b.Destroy()
	return out
}

func selfSHA256() (string, error) {
	p, err := os.Executable()
	if err != nil {
		return "", err
	}
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (c *cli) audit(args []string) error {
	if len(args) == 0 || args[0] != "verify" {
		return usagef("audit: the only subcommand is verify [FILE]")
	}
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	if err := wantArgs("audit verify", pos, 0, 1); err != nil {
		return err
	}
	path := ""
	if len(pos) == 1 {
		path = pos[0]
	} else {
		cfg, err := config.LoadVault(c.getenv)
		if err != nil {
			return err
		}
		path = c.getenv("RV_AGENT_AUDIT_LOG")
		if path == "" {
			path = filepath.Join(filepath.Dir(cfg.Path), "audit.log")
		}
	}
	return audit.VerifyFile(path, c.stdout)
}
