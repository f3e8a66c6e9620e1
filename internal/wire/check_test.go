package wire

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheck: Check accepts exactly what Decode accepts into a raw value,
// with the same reason when it refuses.
func TestCheck(t *testing.T) {
	inputs := []string{
		`{"a":1}`, `[1,2,{"b":[true,null,"x"]}]`, `"s"`, `1e999`, ` {"a":1} `,
		`{"a":1,"a":2}`, `{"a":1,"\u0061":2}`, `{"a":1,"A":2}`, `"\ud800"`, "\"\xff\"", "\xEF\xBB\xBF{}",
		`{"a":1} {}`, `{"a":`, ``, `[` + strings.Repeat(`[`, 40) + strings.Repeat(`]`, 41),
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "protocol", "*.json"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, string(b))
	}
	for _, limits := range []Limits{{}, {MaxBytes: 16, MaxDepth: 3}} {
		for _, in := range inputs {
			var raw json.RawMessage
			want := Decode([]byte(in), &raw, limits)
			got := Check([]byte(in), limits)
			if (got == nil) != (want == nil) || (got != nil && got.Error() != want.Error()) {
				t.Errorf("Check(%q, %+v) = %v, Decode says %v", in, limits, got, want)
			}
		}
	}
}
