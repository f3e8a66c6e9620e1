//go:build !unix

package main

import (
	"os"

	"github.com/rapidvalue/tier3-agent/internal/config"
)

// supervise: off unix the agent always runs in this process, unsupervised,
// and so installs no update (update.Checker refuses offers with a reason).
func (c *cli) supervise(cfg *config.Agent, worker bool, sigs chan os.Signal) (bool, error) {
	if worker {
		c.workerTestHooks()
	}
	return false, nil
}

func openSupervisorLink() *supervisorLink { return nil }

func killProcessGroup() { os.Exit(137) }
