// Package threatmodel holds the executable threat model: THREATS.md lists
// every threat with the test that proves its mitigation, and the tests in
// this folder attack the real binary (a hostile control plane, memory
// scans). It has no code of its own.
package threatmodel
