package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// knownReasons is every Reason a DecodeError may carry; reasonWrongType is
// followed by a Go type name.
var knownReasons = []string{
	reasonTooLarge, reasonEmpty, reasonBOM, reasonTarget, reasonEOF, reasonChar,
	reasonNumber, reasonEscape, reasonSurrogate, reasonControl, reasonUTF8,
	reasonDepth, reasonDuplicate, reasonDuplicateCI, reasonTrailing,
	reasonInvalidValue, reasonSyntax,
}

func nested(depth int) string {
	return strings.Repeat(`{"a":`, depth-1) + `{}` + strings.Repeat(`}`, depth-1)
}

func nestedArrays(depth int) string {
	return strings.Repeat(`[`, depth) + strings.Repeat(`]`, depth)
}

func TestDecodeRejects(t *testing.T) {
	type target = map[string]any
	tests := []struct {
		name   string
		in     string
		limits Limits
		into   func() any // default: *map[string]any
		reason string
		offset int64
	}{
		{name: "empty", in: ``, reason: reasonEmpty, offset: 0},
		{name: "only whitespace", in: " \n\t ", reason: reasonEOF, offset: 4},
		{name: "too large", in: `{"a":"` + strings.Repeat("x", 100) + `"}`, limits: Limits{MaxBytes: 64}, reason: reasonTooLarge, offset: 64},
		{name: "too large default", in: `"` + strings.Repeat("x", MaxBodyBytes) + `"`, reason: reasonTooLarge, offset: MaxBodyBytes},
		{name: "bom", in: "\xEF\xBB\xBF{}", reason: reasonBOM, offset: 0},
		{name: "bom after space", in: " \xEF\xBB\xBF{}", reason: reasonChar, offset: 1},
		{name: "nesting 33 objects", in: nested(33), reason: reasonDepth, offset: 32 * 5},
		{name: "nesting 33 arrays", in: nestedArrays(33), reason: reasonDepth, offset: 32},
		{name: "nesting over custom limit", in: `{"a":[1]}`, limits: Limits{MaxDepth: 1}, reason: reasonDepth, offset: 5},
		{name: "duplicate key", in: `{"a":1,"a":2}`, reason: reasonDuplicate, offset: 7},
		{name: "duplicate key via escape", in: `{"a":1,"\u0061":2}`, reason: reasonDuplicate, offset: 7},
		{name: "duplicate key via surrogate pair", in: `{"😀":1,"\ud83d\ude00":2}`, reason: reasonDuplicate, offset: 10},
		{name: "duplicate key nested", in: `{"a":{"b":{"c":1,"c":1}}}`, reason: reasonDuplicate, offset: 17},
		{name: "duplicate key in array element", in: `{"a":[{"x":1},{"x":1,"y":2,"x":3}]}`, reason: reasonDuplicate, offset: 27},
		{name: "duplicate key in large object", in: manyKeys(40, true), reason: reasonDuplicate, offset: int64(len(manyKeys(40, false)))},
		{name: "duplicate key in raw request", in: `{"task_id":"t","request":{"q":1,"q":2}}`, into: func() any { return new(Envelope) }, reason: reasonDuplicate, offset: 32},
		{name: "duplicate map key in credentials", in: `{"auth":{"credentials":{"token":"vault://local/a/t","token":"x"}}}`, into: func() any { return new(Envelope) }, reason: reasonDuplicate, offset: 52},
		{name: "case variant of struct field", in: `{"task_id":"a","TASK_ID":"b"}`, into: func() any { return new(Envelope) }, reason: reasonDuplicateCI, offset: 15},
		{name: "case variant nested struct field", in: `{"connector":{"business_id":"a","Business_Id":"b"}}`, into: func() any { return new(Envelope) }, reason: reasonDuplicateCI, offset: 32},
		{name: "kelvin sign folds to k", in: `{"task_id":"a","tas\u212a_id":"b"}`, into: func() any { return new(Envelope) }, reason: reasonDuplicateCI, offset: 15},
		{name: "case variant in events list", in: `{"events":[{"type":"a","Type":"b"}]}`, into: func() any { return new(EventBatch) }, reason: reasonDuplicateCI, offset: 23},
		{name: "invalid utf-8 in string", in: "{\"a\":\"x\xffy\"}", reason: reasonUTF8, offset: 7},
		{name: "invalid utf-8 in key", in: "{\"\xc3\x28\":1}", reason: reasonUTF8, offset: 2},
		{name: "overlong utf-8", in: "\"\xc0\xaf\"", reason: reasonUTF8, offset: 1},
		{name: "utf-8 encoded surrogate", in: "\"\xed\xa0\x80\"", reason: reasonUTF8, offset: 1},
		{name: "truncated utf-8", in: "\"\xe2\x82\"", reason: reasonUTF8, offset: 1},
		{name: "invalid utf-8 outside string", in: "{\"a\":\xff}", reason: reasonUTF8, offset: 5},
		{name: "lone high surrogate", in: `"\ud800"`, reason: reasonSurrogate, offset: 1},
		{name: "lone low surrogate", in: `"\udc00"`, reason: reasonSurrogate, offset: 1},
		{name: "high surrogate then letter", in: `"\ud800\u0041"`, reason: reasonSurrogate, offset: 1},
		{name: "bad escape", in: `"\x"`, reason: reasonEscape, offset: 1},
		{name: "short unicode escape", in: `"\u12"`, reason: reasonEscape, offset: 1},
		{name: "control character", in: "\"a\tb\"", reason: reasonControl, offset: 2},
		{name: "newline in string", in: "\"a\nb\"", reason: reasonControl, offset: 2},
		{name: "trailing garbage", in: `{"a":1}x`, reason: reasonTrailing, offset: 7},
		{name: "trailing second value", in: `{"a":1} {"a":2}`, reason: reasonTrailing, offset: 8},
		{name: "trailing nul", in: "{}\x00", reason: reasonTrailing, offset: 2},
		{name: "unterminated object", in: `{"a":1`, reason: reasonEOF, offset: 6},
		{name: "unterminated string", in: `{"a":"b`, reason: reasonEOF, offset: 7},
		{name: "unterminated escape", in: `"\`, reason: reasonEOF, offset: 2},
		{name: "missing colon", in: `{"a" 1}`, reason: reasonChar, offset: 5},
		{name: "trailing comma in object", in: `{"a":1,}`, reason: reasonChar, offset: 7},
		{name: "trailing comma in array", in: `[1,]`, reason: reasonChar, offset: 3},
		{name: "unquoted key", in: `{a:1}`, reason: reasonChar, offset: 1},
		{name: "single quotes", in: `{'a':1}`, reason: reasonChar, offset: 1},
		{name: "leading zero", in: `01`, reason: reasonTrailing, offset: 1},
		{name: "bare minus", in: `-`, reason: reasonNumber, offset: 1},
		{name: "dot without digits", in: `1.`, reason: reasonNumber, offset: 2},
		{name: "exponent without digits", in: `1e+`, reason: reasonNumber, offset: 3},
		{name: "plus sign", in: `+1`, reason: reasonChar, offset: 0},
		{name: "NaN", in: `NaN`, reason: reasonChar, offset: 0},
		{name: "bad literal", in: `tru`, reason: reasonEOF, offset: 3},
		{name: "misspelt literal", in: `nul1`, reason: reasonChar, offset: 3},
		{name: "comment", in: `{"a":1/*x*/}`, reason: reasonChar, offset: 6},
		{name: "wrong type", in: `{"seq":"1"}`, into: func() any { return new(Chunk) }, reason: reasonWrongType + "int64", offset: 10},
		{name: "number overflows", in: `{"seq":99999999999999999999}`, into: func() any { return new(Chunk) }, reason: reasonWrongType + "int64", offset: 27},
		{name: "float overflows any", in: `[1e999]`, reason: reasonWrongType + "float64", offset: 7, into: func() any { return new(any) }},
		{name: "bad time", in: `{"type":"x","at":"yesterday"}`, into: func() any { return new(Event) }, reason: reasonInvalidValue, offset: -1},
		{name: "nil target", in: `{}`, into: func() any { return nil }, reason: reasonTarget, offset: -1},
		{name: "non-pointer target", in: `{}`, into: func() any { return Envelope{} }, reason: reasonTarget, offset: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v any = new(target)
			if tt.into != nil {
				v = tt.into()
			}
			err := Decode([]byte(tt.in), v, tt.limits)
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("Decode(%q) = %v, want a *DecodeError", tt.in, err)
			}
			if de.Reason != tt.reason || de.Offset != tt.offset {
				t.Errorf("Decode(%q) = {offset %d, %q}, want {offset %d, %q}", tt.in, de.Offset, de.Reason, tt.offset, tt.reason)
			}
			if got := errors.Is(err, ErrTooLarge); got != (tt.reason == reasonTooLarge) {
				t.Errorf("errors.Is(err, ErrTooLarge) = %v", got)
			}
		})
	}
}

func manyKeys(n int, dup bool) string {
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `"k%d":%d,`, i, i)
	}
	if dup {
		b.WriteString(`"k3":0}`)
		return b.String()
	}
	return b.String()
}

func TestDecodeAccepts(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		limits Limits
	}{
		{name: "nesting 32 objects", in: nested(32)},
		{name: "nesting 32 arrays", in: nestedArrays(32)},
		{name: "exactly the size limit", in: `"` + strings.Repeat("x", 62) + `"`, limits: Limits{MaxBytes: 64}},
		{name: "whitespace around", in: " \r\n\t{\"a\":[1, 2.5e-3, -0, true, false, null]} \n"},
		{name: "same key in sibling objects", in: `[{"a":1},{"a":2}]`},
		{name: "same key at different depths", in: `{"a":{"a":{"a":1}}}`},
		{name: "keys differing only in case in a map", in: `{"a":1,"A":2}`},
		{name: "many distinct keys", in: manyKeys(200, false) + `"end":0}`},
		{name: "escapes", in: `{"s":"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00\u0000"}`},
		{name: "non-ascii", in: `{"ключ":"значение","😀":"✓"}`},
		{name: "escaped key distinct from raw", in: `{"a\u0062":1,"ab\u0063":2}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v any
			if err := Decode([]byte(tt.in), &v, tt.limits); err != nil {
				t.Fatalf("Decode(%.80q) = %v", tt.in, err)
			}
		})
	}
}

func TestDecodeCaseVariantsOutsideStructs(t *testing.T) {
	// Keys that differ in case are distinct in maps and raw values: a
	// target's records or request headers may carry both.
	in := `{"task_id":"t","auth":{"scheme":"none","credentials":{"Token":"vault://local/a/t","token":"vault://local/a/u"}},` +
		`"request":{"headers":{"X-A":"1","x-a":"2"}},"unknown":{"k":1,"K":2}}`
	var env Envelope
	if err := Decode([]byte(in), &env, Limits{}); err != nil {
		t.Fatal(err)
	}
	if len(env.Auth.Credentials) != 2 {
		t.Errorf("credentials = %v", env.Auth.Credentials)
	}
	// Unknown keys bind to no field, so case variants of them are fine, and
	// a case variant alone binds like encoding/json binds it.
	if err := Decode([]byte(`{"Task_ID":"t","foo":1,"FOO":2}`), &env, Limits{}); err != nil {
		t.Fatal(err)
	}
	if env.TaskID != "t" {
		t.Errorf("TaskID = %q", env.TaskID)
	}
}

func TestDecodeUnknownFieldsIgnored(t *testing.T) {
	in := `{"agent_id":"agt_1","future":{"x":[1,2,{"y":null}]},"heartbeat_interval_s":5}`
	var r RegisterResponse
	if err := Decode([]byte(in), &r, Limits{}); err != nil {
		t.Fatal(err)
	}
	if r.AgentID != "agt_1" || r.HeartbeatIntervalS != 5 {
		t.Errorf("got %+v", r)
	}
}

// TestProtocolVectors decodes each example body of PROTOCOL.md (testdata)
// into its type and checks the fields.
func TestProtocolVectors(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", "protocol", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	decode := func(name string, v any) {
		t.Helper()
		if err := Decode(read(name), v, Limits{}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}

	var reg RegisterRequest
	decode("register.json", &reg)
	if reg.Hostname != "ldap-gw-01" || reg.OS != "linux" || len(reg.Methods) != 3 || !reg.Vault.Sealed || reg.Vault.Seal != "tpm2" || reg.Vault.Entries != 12 || reg.MTLSFingerprint != nil {
		t.Errorf("register: %+v", reg)
	}
	var hb Heartbeat
	decode("heartbeat.json", &hb)
	if hb.UptimeS != 3600 || hb.InFlight != 2 || hb.Completed != 1200 || hb.Failed != 3 || hb.VaultGeneration != 4 {
		t.Errorf("heartbeat: %+v", hb)
	}
	var hbr HeartbeatResponse
	decode("heartbeat_response.json", &hbr)
	if !hbr.UpdateAvailable {
		t.Error("heartbeat response: update_available not set")
	}
	var env Envelope
	decode("envelope_http_sync.json", &env)
	if env.TaskID != "tsk_01J9Z" || env.Method != MethodHTTPSync || env.Connector.BusinessID != "salesforce-prod" ||
		env.Auth.Scheme != SchemeOAuth2RefreshToken || len(env.Auth.Credentials) != 3 ||
		env.LeaseS != 300 || env.TimeoutS != 300 || env.ChunkSize != 500 {
		t.Errorf("envelope: %+v", env)
	}
	var req struct {
		Path string `json:"path"`
		Next struct {
			Kind    string `json:"kind"`
			Pointer string `json:"pointer"`
		} `json:"next"`
	}
	if err := Decode(env.Request, &req, Limits{}); err != nil || req.Next.Kind != "json_url" || req.Path != "/services/data/v60.0/query" {
		t.Errorf("request: %+v, %v", req, err)
	}
	if !ValidTaskID(env.TaskID) || !ValidBusinessID(env.Connector.BusinessID) {
		t.Error("example IDs do not validate")
	}
	for _, name := range []string{"envelope_http_request.json", "envelope_ldap_search.json"} {
		var e Envelope
		decode(name, &e)
		if !ValidTaskID(e.TaskID) || !ValidBusinessID(e.Connector.BusinessID) || len(e.Request) == 0 {
			t.Errorf("%s: %+v", name, e)
		}
	}
	var ch Chunk
	decode("chunk.json", &ch)
	if ch.Seq != 0 || len(ch.Records) != 2 || ch.Final {
		t.Errorf("chunk: %+v", ch)
	}
	var res Result
	decode("result.json", &res)
	if res.Status != StatusCompleted || res.Records != 120000 || res.ResultBytes != 48211230 || res.ErrorClass != "" || string(res.Response) != "null" {
		t.Errorf("result: %+v", res)
	}
	decode("result_failed.json", &res)
	if res.Status != StatusFailed || !ValidErrorClass(res.ErrorClass) {
		t.Errorf("result_failed: %+v", res)
	}
	var lr LeaseResponse
	decode("lease_response.json", &lr)
	if lr.LeaseS != 300 {
		t.Errorf("lease: %+v", lr)
	}
	var batch EventBatch
	decode("events.json", &batch)
	if len(batch.Events) != 4 || batch.Events[0].Type != EventTaskClaimed ||
		!batch.Events[0].At.Equal(time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)) ||
		batch.Events[1].ErrorClass != ErrTimeout || batch.Events[2].From != "1.5.0" || batch.Events[3].Count != 7 {
		t.Errorf("events: %+v", batch)
	}
	var offer UpdateOffer
	decode("update_offer.json", &offer)
	if offer.Size != 14680064 || offer.Ed25519 != "" || offer.URL != "/api/agent/v1/update/1.5.0/binary" {
		t.Errorf("offer: %+v", offer)
	}
	var m Manifest
	decode("manifest.json", &m)
	if m.Version != "1.5.0" || m.OS != "linux" || m.Arch != "amd64" || len(m.SHA256) != 64 {
		t.Errorf("manifest: %+v", m)
	}
	var rr RegisterResponse
	decode("register_response.json", &rr)
	if rr.AgentID != "agt_01J9Z3" || rr.PollWaitS != 25 {
		t.Errorf("register response: %+v", rr)
	}
}

// TestRoundTrip encodes each type and decodes it back.
func TestRoundTrip(t *testing.T) {
	fp := "ab"
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	values := []any{
		&RegisterRequest{Hostname: "h", Version: "1.0.0", Methods: []string{"http.sync"}, MTLSFingerprint: &fp},
		&RegisterResponse{AgentID: "agt_1"},
		&Heartbeat{AgentID: "agt_1", UptimeS: 1},
		&HeartbeatResponse{UpdateAvailable: true},
		&Envelope{TaskID: "t", Method: "http.request", Auth: Auth{Scheme: "bearer", Credentials: map[string]string{"token": "vault://local/a/token"}}, Request: json.RawMessage(`{"path":"/"}`)},
		&Chunk{Seq: 3, Records: []json.RawMessage{json.RawMessage(`{"a":1}`)}, Final: true},
		&Result{Status: StatusFailed, ErrorClass: ErrTimeout, Error: "timed out"},
		&EventBatch{Events: []Event{{Type: EventTaskClaimed, At: at, TaskID: "t"}}},
		&UpdateOffer{Version: "1.5.0", Size: 10},
		&Manifest{Version: "1.5.0"},
	}
	for _, v := range values {
		t.Run(reflect.TypeOf(v).Elem().Name(), func(t *testing.T) {
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			got := reflect.New(reflect.TypeOf(v).Elem()).Interface()
			if err := Decode(b, got, Limits{}); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, v) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, v)
			}
		})
	}
}

// TestDecodeErrorIsNotSecret puts a secret in every place of a body that a
// parser might quote and checks that no 8-byte run of it is in the error.
func TestDecodeErrorIsNotSecret(t *testing.T) {
	const secret = "hunter2-Sup3rS3cret-Tok3n"
	bodies := []struct {
		in   string
		into func() any
	}{
		{in: `{"` + secret + `":1,"` + secret + `":2}`},
		{in: `{"token":"` + secret + "\xff\"}"},
		{in: `{"token":"` + secret + `\q"}`},
		{in: `{"token":"` + secret + `\ud800"}`},
		{in: `{"token":"` + secret + "\x01\"}"},
		{in: `{"token":"` + secret + `"} ` + secret},
		{in: `{"token":` + secret + `}`},
		{in: `{"token":"` + secret},
		{in: "\xEF\xBB\xBF" + `{"token":"` + secret + `"}`},
		{in: `{"a":` + strings.Repeat("[", 40) + `"` + secret + `"` + strings.Repeat("]", 40) + `}`},
		{in: `{"task_id":"` + secret + `","TASK_ID":"` + secret + `"}`, into: func() any { return new(Envelope) }},
		{in: `{"auth":{"credentials":{"token":["` + secret + `"]}}}`, into: func() any { return new(Envelope) }},
		{in: `{"auth":{"credentials":{"` + secret + `":1}}}`, into: func() any { return new(Envelope) }},
		{in: `{"lease_s":"` + secret + `"}`, into: func() any { return new(Envelope) }},
		{in: `{"lease_s":123456789012345678901234567890}`, into: func() any { return new(Envelope) }},
		{in: `{"type":"x","at":"` + secret + `"}`, into: func() any { return new(Event) }},
		{in: `{"events":[{"at":"` + secret + `"}]}`, into: func() any { return new(EventBatch) }},
		{in: `"` + strings.Repeat(secret, 10) + `"`, into: func() any { return new(int) }},
	}
	for i, b := range bodies {
		var v any = new(map[string]any)
		if b.into != nil {
			v = b.into()
		}
		err := Decode([]byte(b.in), v, Limits{MaxDepth: 32})
		if err == nil {
			t.Errorf("body %d: accepted", i)
			continue
		}
		checkErrorNotSecret(t, []byte(b.in), err)
		if strings.Contains(err.Error(), secret[:8]) {
			t.Errorf("body %d: error %q contains the secret", i, err)
		}
	}
}

// checkErrorNotSecret checks the properties that every Decode error has: it
// is a *DecodeError, its text is exactly the format with a known reason, and
// no 8-byte run of the input is in its reason unless the run is text of the
// known reasons themselves.
func checkErrorNotSecret(t testing.TB, data []byte, err error) {
	t.Helper()
	de, ok := err.(*DecodeError)
	if !ok {
		t.Fatalf("error %T is not a *DecodeError", err)
	}
	known := false
	for _, r := range knownReasons {
		if de.Reason == r {
			known = true
		}
	}
	if rest, ok := strings.CutPrefix(de.Reason, reasonWrongType); ok && rest != "" && !strings.ContainsAny(rest, "\"\\ \n") {
		known = true
	}
	if !known {
		t.Fatalf("unknown reason %q", de.Reason)
	}
	want := fmt.Sprintf("invalid JSON body at offset %d: %s", de.Offset, de.Reason)
	if de.Offset < 0 {
		want = "invalid JSON body: " + de.Reason
	}
	if err.Error() != want {
		t.Fatalf("error text %q, want %q", err.Error(), want)
	}
	corpus := strings.Join(knownReasons, "\x00") + "\x00" + reasonWrongType
	if rest, ok := strings.CutPrefix(de.Reason, reasonWrongType); ok {
		// The rest names a Go type of this package (reflect), not input:
		// "want wire.Connector" must not count as quoting "Connector".
		corpus += "\x00" + rest
	}
	for i := 0; i+8 <= len(data); i++ {
		w := string(data[i : i+8])
		if strings.Contains(de.Reason, w) && !strings.Contains(corpus, w) {
			t.Fatalf("error %q contains input bytes %q", err, w)
		}
	}
}

func BenchmarkDecodeEnvelope(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("testdata", "protocol", "envelope_http_sync.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		var env Envelope
		if err := Decode(data, &env, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeEnvelopeUnmarshalOnly(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("testdata", "protocol", "envelope_http_sync.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		var env Envelope
		if err := json.Unmarshal(data, &env); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScanChunk measures the validation pass alone over a chunk of
// 500 records.
func BenchmarkScanChunk(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"seq":1,"final":false,"records":[`)
	for i := 0; i < 500; i++ {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `{"Id":"005xx%06d","Email":"user%d@example.com","Name":"User \u00e9 %d","Active":true}`, i, i, i)
	}
	sb.WriteString(`]}`)
	data := []byte(sb.String())
	sh := shapeOf(reflect.TypeFor[Chunk]())
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		s := scannerPool.Get().(*scanner)
		err := s.scan(data, sh, MaxDepth)
		s.release()
		if err != nil {
			b.Fatal(err)
		}
	}
}
