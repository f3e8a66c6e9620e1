// Package install holds the agent's installer (install.sh, served by the
// control plane at GET /agent/install, PROTOCOL.md §8) and the systemd unit
// it writes (rapidvalue-agent.service).
package install

import (
	_ "embed"
	"strings"
)

//go:embed install.sh
var rawScript string

// Unit is the systemd unit the installer writes to
// /etc/systemd/system/rapidvalue-agent.service. "{{RV_CONTROL_PLANE_URL}}"
// in it is the control plane's URL (the installer fills it in).
//
//go:embed rapidvalue-agent.service
var Unit string

// unitMarker is the line of install.sh that the unit replaces.
const unitMarker = "@@RAPIDVALUE_AGENT_SERVICE@@"

// Script is the installer as served: install.sh with the unit in place of
// its marker line. The control plane replaces {{RV_CONTROL_PLANE_URL}}.
var Script = strings.Replace(rawScript, unitMarker, strings.TrimSuffix(Unit, "\n"), 1)
