//go:build unix && !linux

package main

import "syscall"

// workerSysProcAttr: there is no parent-death signal here; a worker whose
// supervisor is gone sees its socket close and stops (supervisorLink.watch).
func workerSysProcAttr() *syscall.SysProcAttr { return nil }
