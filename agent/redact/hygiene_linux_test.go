//go:build linux && !race

package redact

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/rapidvalue/tier3-agent/internal/secmem"
)

// TestNoSecretInMemory scans the whole process, as the product's memory
// hygiene test does, for the forms of a secret after the redactor has
// learnt it and redacted it from text and JSON (input and output then
// wiped by the test). The secret and its forms exist only in locked
// buffers the test owns; the one that holds the forms is left out of the
// scan.
func TestNoSecretInMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("scans the process memory")
	}
	const n = 32
	secretBuf, err := secmem.New(n)
	if err != nil {
		t.Fatal(err)
	}
	secret := secretBuf.Bytes()
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	for i := range secret {
		secret[i] = alnum[int(secret[i])%len(alnum)]
	}

	// The needles: every form, in one locked buffer.
	needleBuf, err := secmem.New(64 * n * 8)
	if err != nil {
		t.Fatal(err)
	}
	defer needleBuf.Destroy()
	scratch, err := secmem.New(srcSpace(n) + formSpace(n))
	if err != nil {
		t.Fatal(err)
	}
	var needles [][]byte
	used := 0
	err = eachForm(secret, scratch.Bytes()[:srcSpace(n)], scratch.Bytes()[srcSpace(n):], func(p []byte, m int, _ uint8) error {
		c := copy(needleBuf.Bytes()[used:], p[:m])
		needles = append(needles, needleBuf.Bytes()[used:used+c])
		used += c
		return nil
	})
	scratch.Destroy()
	if err != nil {
		t.Fatal(err)
	}

	r, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Destroy()
	if err := r.Add(secret); err != nil {
		t.Fatal(err)
	}

	// Redact text and JSON that hold the secret, then wipe them.
	in := make([]byte, 0, 100)
	in = append(in, "text: "...)
	in = append(in, secret...)
	in = append(in, " end"...)
	out := r.Bytes(in)
	if bytes.Contains(out, secret) {
		t.Fatal("not redacted")
	}
	clear(in)
	doc := make([]byte, 0, 100)
	doc = append(doc, `{"k": "\u00`...)
	doc = append(doc, fmt.Sprintf("%02x", secret[0])...)
	doc = append(doc, secret[1:]...)
	doc = append(doc, `"}`...)
	jout, err := r.JSON(doc)
	if err != nil || string(jout) != `{"k": "[REDACTED]"}` {
		t.Fatalf("JSON: %s %v", jout, err)
	}
	clear(doc)
	secretBuf.Destroy()

	runtime.GC()
	runtime.GC()

	skipLo := uintptr(unsafe.Pointer(unsafe.SliceData(needleBuf.Bytes())))
	skipHi := skipLo + uintptr(needleBuf.Size())
	found, scanned := scanProcess(t, needles, skipLo, skipHi)
	t.Logf("scanned %d MiB", scanned>>20)
	for _, f := range found {
		t.Error(f)
	}
}

// scanProcess reads every readable mapping of the process and reports
// where a needle occurs, outside [skipLo, skipHi).
func scanProcess(t *testing.T, needles [][]byte, skipLo, skipHi uintptr) (found []string, scanned int) {
	maps, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Skipf("no /proc/self/maps: %v", err)
	}
	defer maps.Close()
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		t.Skipf("no /proc/self/mem: %v", err)
	}
	defer mem.Close()
	longest := 0
	for _, n := range needles {
		longest = max(longest, len(n))
	}
	const chunk = 1 << 20
	buf := make([]byte, chunk+longest)
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[1][0] != 'r' {
			continue
		}
		if len(f) >= 6 && (f[5] == "[vvar]" || f[5] == "[vsyscall]" || f[5] == "[vvar_vclock]") {
			continue
		}
		lohi := strings.SplitN(f[0], "-", 2)
		lo, err1 := strconv.ParseUint(lohi[0], 16, 64)
		hi, err2 := strconv.ParseUint(lohi[1], 16, 64)
		if err1 != nil || err2 != nil || hi-lo > 1<<30 {
			continue
		}
		for a := lo; a < hi; a += chunk {
			end := min(a+chunk+uint64(longest), hi)
			b := buf[:end-a]
			m, _ := mem.ReadAt(b, int64(a))
			b = b[:m]
			scanned += min(m, chunk)
			for i, n := range needles {
				for off := 0; ; {
					j := bytes.Index(b[off:], n)
					if j < 0 {
						break
					}
					at := uintptr(a) + uintptr(off+j)
					if at < skipLo || at >= skipHi {
						found = append(found, fmt.Sprintf("form %d of the secret at %#x in %s", i, at, sc.Text()))
					}
					off += j + 1
				}
			}
		}
	}
	return found, scanned
}
