package main

import (
	"errors"
	"flag"
	"fmt"

	"github.com/rapidvalue/tier3-agent/internal/config"
	"github.com/rapidvalue/tier3-agent/internal/harden"
	"github.com/rapidvalue/tier3-agent/internal/hostvault"
	"github.com/rapidvalue/tier3-agent/seal"
)

func (c *cli) runAgent(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("run", pos, 0, 0); err != nil {
		return err
	}
	cfg, err := config.LoadVault(c.getenv)
	if err != nil {
		return err
	}
	if err := harden.Process(); err != nil {
		return fmt.Errorf("%w: %w", errHarden, err)
	}
	pass := &passphrase{file: cfg.PassphraseFile}
	defer pass.destroy()
	h, err := hostvault.Open(hostvault.Options{
		Path:           cfg.Path,
		AllowPlaintext: cfg.Migrate,
		Env:            seal.Env{VaultPath: cfg.Path, IdentityFile: cfg.IdentityFile, TPMDevice: cfg.TPMDevice, Passphrase: pass.get},
	})
	if err != nil {
		return err
	}
	if h.OpenedWith == "plaintext" {
		fmt.Fprintf(c.stderr, "tier3-agent: warning: running on the plaintext vault %s (RV_AGENT_VAULT_MODE=migrate): seal it with tier3-agent vault seal\n", cfg.Path)
	}
	return errors.New("the agent runtime is not part of this build yet")
}

func (c *cli) audit(args []string) error {
	return errors.New("audit verify is not part of this build yet")
}
