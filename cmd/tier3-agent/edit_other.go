//go:build !linux

package main

import "errors"

func memoryDir(func(string) string) (string, error) {
	return "", errors.New("vault edit needs a memory-backed folder (tmpfs), which this OS does not offer: it will not write plaintext to a disk")
}
