// Package update is the agent's self-update (PROTOCOL.md §7): it checks
// offers, verifies and downloads them, installs them beside the running
// binary, and keeps the state that lets a bad update be reverted and an
// old one never come back.
//
// # Offers
//
// The worker (the process that runs the agent) checks for an offer at
// start, when a heartbeat answers update_available (at most once a minute,
// backing off to an hour after refusals), and every hour ±10 %. ParseOffer
// is a pure parser (FuzzUpdateOffer); Verify refuses, in this order: self-
// update off, another os/arch, a version not newer than the running one,
// not newer than the highest ever committed here (anti-rollback) or
// reverted here before, a size over 256 MiB, a url off the control plane's
// origin, a MAC that differs (hmac.Equal), a missing or invalid Ed25519
// signature when RV_AGENT_RELEASE_PUBKEY is set. The download then streams
// into <binary>.unverified (O_EXCL, mode 0600: nothing can run it before it
// is verified), hashed as it streams, capped at the offered size, under a
// deadline of 60 s plus size/(128 KiB/s) and a 60 s stall watchdog; its
// SHA-256 must be the offer's. Each refusal is an
// agent.self_update_rejected event (version, reason), and nothing is left
// where the agent is installed.
//
// # Files beside the binary
//
//	tier3-agent              the install path; always a whole binary
//	tier3-agent.unverified   a download not yet verified (0600)
//	tier3-agent.bak          the previous binary, while a new one is on trial
//	tier3-agent.update.json  the State: committed floor, trial, reverted, pending events
//
// All in one folder, so every rename among them is atomic; the state is
// written with internal/atomicfile and the folder is fsynced after each
// rename. The folder itself is flock'ed around each change.
//
// # States
//
//	idle ──install──▶ on trial ──healthy for RV_AGENT_STABLE_AFTER──▶ committed (idle)
//	                     │
//	                     └─crash before healthy / not healthy in time / 3 starts──▶ reverting ──▶ reverted (idle)
//
// install: the verified download gets the installed binary's mode; the
// binary is hard-linked as .bak; the trial (from, to and both SHA-256s) is
// written to the state; then the download is renamed over the binary and
// the worker stops so that its supervisor starts the new one. The trial
// record is the "trial in progress" marker: it is written before the new
// binary moves in, so a crash can never leave a new binary that is taken
// for a committed one.
//
// commit: the worker of the new version, once registered, with a
// heartbeat answered and RV_AGENT_STABLE_AFTER later, writes the new floor
// and an agent.self_update_applied event into the state, then removes .bak.
//
// revert: the state records the revert's reason first, then .bak is
// renamed over the binary, then the state records the reverted version and
// an agent.self_update_reverted event (from: the failed version, to: the
// restored one). The restored agent sends the pending events once
// registered.
//
// Prepare is the start path, run before every worker by the supervisor
// (cmd/tier3-agent/supervise_unix.go), whichever version it is: it
// finishes a revert cut short, drops a trial whose install did not
// complete (the binary is still the old one), counts the starts of a
// binary on trial and reverts it after MaxTrialStarts, removes leftovers,
// and raises the floor to the version it runs outside a trial. With these,
// a SIGKILL after any step leaves a runnable binary at the install path
// and the next start finishes the job (TestKillAtEveryStep).
//
// # Supervision
//
// A binary that crashes can not revert itself, so on unix `tier3-agent
// run` is a small supervisor (no secret in it) that runs `tier3-agent run
// --worker` and outlives it; see cmd/tier3-agent/supervise.go. It starts a
// binary on trial with HealthTimeout to report healthy over its socket,
// reverts it if it crashes before that or does not make it, and lets
// Prepare count the exits after that. Under systemd (INVOCATION_ID or
// NOTIFY_SOCKET set) it passes ordinary exits on for Restart= to decide,
// and keeps only the restarts of the update itself; a supervisor killed
// mid-trial is restarted by systemd from the new binary, and its start
// path carries the trial on. After a revert, a supervisor that is not the
// restored binary execs it.
package update
