package main

import "syscall"

// workerSysProcAttr: the worker dies with its supervisor (SIGKILL from the
// kernel), so that a supervisor killed by anything (OOM, kill -9) leaves no
// worker behind to run beside the next one. A supervisor that stops
// normally stops its worker gracefully first.
func workerSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
