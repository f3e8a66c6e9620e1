//go:build !goexperiment.runtimesecret

package agent

// eraseAfter runs f. Built with GOEXPERIMENT=runtimesecret it also erases
// what f leaves behind (erase_runtimesecret.go).
func eraseAfter(f func()) { f() }

// runtimeSecret reports whether eraseAfter really erases.
const runtimeSecret = false
