module github.com/rapidvalue/tier3-agent

go 1.26.8

require (
	c2sp.org/CCTV/age v0.0.0-20260829155415-4448f2097b2d
	filippo.io/age v1.3.2
	github.com/awnumar/memguard v0.23.0
	golang.org/x/crypto v0.58.0
	golang.org/x/sys v0.49.0
)

require (
	filippo.io/hpke v0.4.0 // indirect
	filippo.io/nistec v0.0.4 // indirect
	github.com/awnumar/memcall v0.4.0 // indirect
	golang.org/x/term v0.47.0 // indirect
)
