//go:build goexperiment.runtimesecret

package agent

import "runtime/secret"

// eraseAfter runs f under Go 1.26's experimental runtime/secret (built
// with GOEXPERIMENT=runtimesecret): the registers and stack f used are
// erased when it returns, and the heap it allocated once that is
// unreachable. It covers the Go strings net/http needs for credentials
// (header values, form bodies); it does not cover goroutines f starts,
// such as the transport's connection writers.
func eraseAfter(f func()) { secret.Do(f) }

// runtimeSecret reports whether eraseAfter really erases.
const runtimeSecret = true
