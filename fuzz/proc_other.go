//go:build !unix

package main

import "os/exec"

// killGroupOnCancel leaves cmd as it is: without process groups, the
// context's cancellation kills the go command only.
func killGroupOnCancel(cmd *exec.Cmd) {}
