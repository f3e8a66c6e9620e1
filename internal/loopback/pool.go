package loopback

import (
	"crypto/x509"
	"errors"
)

func devcaPool(pem []byte) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		return nil, errors.New("no certificate in PEM")
	}
	return p, nil
}
