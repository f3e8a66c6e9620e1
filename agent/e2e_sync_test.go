package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// pagedSource is a REST target that serves `total` records in pages of
// `perPage`, generated on the fly (nothing is held in memory), linked the
// way `kind` says:
//
//	json_url        {"totalSize":…,"records":[…],"nextRecordsUrl":"/records?page=N"}
//	json_url_first  the same with the next link before the records
//	link_header     {"data":{"items":[…]}} and Link: <https://…?page=N>; rel="next"
//	none            one page, a bare array of every record
//
// Record i is {"id":i,"name":"user-000000i","email":…,"active":…,"note":…};
// its note is `secret` for i == secretAt.
type pagedSource struct {
	total, perPage int
	kind           string
	secretAt       int
	secret         string
	// pad makes each record longer by that many bytes.
	pad int
	// before, when set, is called before page p is served (it may block).
	before func(page int)
	// next, when set, overrides the next link of page p ("" keeps it).
	next func(page int) string

	mu    sync.Mutex
	pages []int // pages served, in order
}

func (s *pagedSource) pagesFor() int {
	if s.kind == "none" {
		return 1
	}
	return max(1, (s.total+s.perPage-1)/s.perPage)
}

// appendZeroPadded appends n in decimal, zero-padded to width digits: what
// fmt's %07d makes, without fmt's cost (the benchmark's target generates a
// million records, on the same cores as the agent).
func appendZeroPadded(b []byte, n, width int) []byte {
	var d [20]byte
	digits := strconv.AppendInt(d[:0], int64(n), 10)
	for k := len(digits); k < width; k++ {
		b = append(b, '0')
	}
	return append(b, digits...)
}

func (s *pagedSource) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	page, _ := strconv.Atoi(r.URL.Query().Get("page"))
	s.mu.Lock()
	s.pages = append(s.pages, page)
	s.mu.Unlock()
	if s.before != nil {
		s.before(page)
	}
	from, to := page*s.perPage, min((page+1)*s.perPage, s.total)
	if s.kind == "none" {
		from, to = 0, s.total
	}
	next := ""
	if page+1 < s.pagesFor() {
		next = "/records?page=" + strconv.Itoa(page+1)
		if s.kind == "link_header" {
			next = "https://" + r.Host + next
		}
	}
	if s.next != nil {
		if n := s.next(page); n != "" {
			next = n
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if s.kind == "link_header" && next != "" {
		w.Header().Add("Link", `<https://`+r.Host+`/records?page=0>; rel="first"`)
		w.Header().Add("Link", `<`+next+`>; rel="next", <https://`+r.Host+`/records?page=999>; rel="last"`)
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	nextJSON := "null"
	if next != "" {
		nextJSON = strconv.Quote(next)
	}
	switch s.kind {
	case "json_url":
		fmt.Fprintf(bw, `{"totalSize":%d,"done":%t,"records":[`, s.total, next == "")
	case "json_url_first":
		fmt.Fprintf(bw, `{"totalSize":%d,"nextRecordsUrl":%s,"meta":{"skip":[1,{"x":"y"}]},"records":[`, s.total, nextJSON)
	case "link_header":
		bw.WriteString(`{"data":{"count":1,"items":[`)
	case "none":
		bw.WriteString(`[`)
	}
	var buf []byte
	padding := strings.Repeat("p", s.pad)
	for i := from; i < to; i++ {
		buf = buf[:0]
		if i > from {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"id":`...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		buf = append(buf, `,"name":"user-`...)
		buf = appendZeroPadded(buf, i, 7)
		buf = append(buf, `","email":"user`...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		buf = append(buf, `@example.com","active":`...)
		buf = strconv.AppendBool(buf, i%3 != 0)
		buf = append(buf, `,"note":`...)
		if i == s.secretAt {
			buf = strconv.AppendQuote(buf, "token "+s.secret+" leaked")
		} else {
			buf = append(buf, `"<ok> & fine"`...)
		}
		if s.pad > 0 {
			buf = append(buf, `,"pad":"`...)
			buf = append(buf, padding...)
			buf = append(buf, '"')
		}
		buf = append(buf, '}')
		bw.Write(buf)
	}
	switch s.kind {
	case "json_url":
		fmt.Fprintf(bw, `],"nextRecordsUrl":%s}`, nextJSON)
	case "json_url_first":
		bw.WriteString(`]}`)
	case "link_header":
		bw.WriteString(`]}}`)
	case "none":
		bw.WriteString(`]`)
	}
	bw.Flush()
}

func (s *pagedSource) served() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.pages...)
}

// syncRequest is the http.sync request for a source's kind.
func syncRequest(kind string) map[string]any {
	switch kind {
	case "json_url", "json_url_first":
		return map[string]any{"path": "/records", "query": map[string]any{"page": "0"}, "items": "/records",
			"next": map[string]any{"kind": "json_url", "pointer": "/nextRecordsUrl"}}
	case "link_header":
		return map[string]any{"path": "/records", "items": "/data/items", "next": map[string]any{"kind": "link_header"}}
	}
	return map[string]any{"path": "/records", "items": "", "next": map[string]any{"kind": "none"}}
}

// syncEnv is an env with a bearer-token connector "crm" bound to a paged
// source, and a control plane that stores large syncs.
func syncEnv(t *testing.T, src *pagedSource) (*env, *target) {
	t.Helper()
	return syncEnvWith(t, src, controlplane.Config{MaxTaskBytes: 1 << 30})
}

func syncEnvWith(t *testing.T, src *pagedSource, cfg controlplane.Config) (*env, *target) {
	t.Helper()
	e := newEnv(t, cfg)
	tg := e.newTarget(src.ServeHTTP)
	e.vaultIn(e2eSecrets["bearer"], "set", "crm", "token")
	e.vault("bind", "crm", tg.URL)
	return e, tg
}

func bearerSync(tg *target, request map[string]any) map[string]any {
	return envelope("http.sync", "crm", tg.URL,
		map[string]any{"scheme": "bearer", "credentials": map[string]any{"token": ref("crm", "token")}}, request)
}

// syncResult waits for a task's result like e.result, polling the task
// list (which carries no chunks) rather than the task with its chunks,
// then reads the task once.
func (e *env) syncResult(id string) controlplane.TaskInfo {
	e.t.Helper()
	ctx := context.Background()
	e.waitFor("the result of "+id, 120*time.Second, func() bool {
		tasks, err := e.cp.Admin.Tasks(ctx)
		if err != nil {
			return false
		}
		for _, ti := range tasks {
			if ti.TaskID == id {
				return ti.State == controlplane.TaskCompleted || ti.State == controlplane.TaskFailed
			}
		}
		return false
	})
	ti, err := e.cp.Admin.Task(ctx, id)
	if err != nil || ti.Result == nil {
		e.t.Fatalf("task %s: %v (result %v)", id, err, ti.Result)
	}
	return ti
}

// nothingAfter checks, from the control plane's request log, that the
// agent's requests about task id were: `ok` chunks answered 200 (any
// number when ok < 0), then one chunk answered `status`, then nothing (no
// chunk, lease or result).
func nothingAfter(t *testing.T, e *env, id string, ok, status int) {
	t.Helper()
	reqs := e.cpLog.requests(forTask(id))
	var got []string
	for _, q := range reqs {
		got = append(got, q.Endpoint+":"+strconv.Itoa(q.Status))
	}
	if ok < 0 {
		ok = max(0, len(got)-1)
	}
	want := slices.Repeat([]string{controlplane.EndpointChunks + ":200"}, ok)
	want = append(want, controlplane.EndpointChunks+":"+strconv.Itoa(status))
	if !slices.Equal(got, want) {
		t.Fatalf("requests about the task: %v, want %d chunks then one %d and nothing more", got, ok, status)
	}
}

type syncedRecord struct {
	ID   int    `json:"id"`
	Note string `json:"note"`
}

// checkChunks checks the chunks of a completed task: seq 0, 1, 2… with no
// gap, only the last one final, each body under the protocol's 1 MiB,
// and returns the records in order.
func checkChunks(t *testing.T, ti controlplane.TaskInfo) []json.RawMessage {
	t.Helper()
	var recs []json.RawMessage
	for i, c := range ti.Chunks {
		if c.Seq != int64(i) {
			t.Fatalf("chunk %d has seq %d", i, c.Seq)
		}
		if c.Final != (i == len(ti.Chunks)-1) {
			t.Fatalf("chunk %d of %d: final=%v", i, len(ti.Chunks), c.Final)
		}
		body, _ := json.Marshal(c)
		if len(body) > wire.MaxBodyBytes {
			t.Fatalf("chunk %d is %d bytes encoded", i, len(body))
		}
		recs = append(recs, c.Records...)
	}
	if len(ti.Chunks) == 0 || !ti.Final {
		t.Fatalf("no final chunk (%d chunks)", len(ti.Chunks))
	}
	if ti.Result == nil || ti.Result.Records != int64(len(recs)) || ti.Result.Chunks != int64(len(ti.Chunks)) {
		t.Fatalf("result %+v does not match %d records in %d chunks", ti.Result, len(recs), len(ti.Chunks))
	}
	return recs
}

// checkSequence checks that records are 0…n-1 by id, each once, in order.
func checkSequence(t *testing.T, recs []json.RawMessage, n int, secretAt int) {
	t.Helper()
	if len(recs) != n {
		t.Fatalf("%d records, want %d", len(recs), n)
	}
	for i, raw := range recs {
		var r syncedRecord
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if r.ID != i {
			t.Fatalf("record %d has id %d: records lost, repeated or out of order", i, r.ID)
		}
		switch {
		case i == secretAt && r.Note != "token [REDACTED] leaked":
			t.Fatalf("record %d: note %q, want the secret redacted", i, r.Note)
		case i != secretAt && r.Note != "<ok> & fine":
			t.Fatalf("record %d: note %q", i, r.Note)
		}
	}
}

func TestHTTPSyncPages(t *testing.T) {
	for _, tt := range []struct {
		kind             string
		total, perPage   int
		chunkSize, pages int
	}{
		{kind: "json_url", total: 100_000, perPage: 2_000, chunkSize: 0, pages: 50},
		{kind: "json_url_first", total: 12_345, perPage: 1_000, chunkSize: 777, pages: 13},
		{kind: "link_header", total: 30_000, perPage: 3_000, chunkSize: 1000, pages: 10},
		{kind: "none", total: 50_000, chunkSize: 2000, pages: 1},
		{kind: "json_url", total: 0, perPage: 100, pages: 1},
	} {
		t.Run(fmt.Sprintf("%s/%d", tt.kind, tt.total), func(t *testing.T) {
			src := &pagedSource{total: tt.total, perPage: tt.perPage, kind: tt.kind, secretAt: tt.total / 2, secret: e2eSecrets["bearer"]}
			e, tg := syncEnv(t, src)
			e.start()
			env := bearerSync(tg, syncRequest(tt.kind))
			env["timeout_s"] = 120 // slow CI machines, a control plane under -race
			if tt.chunkSize > 0 {
				env["chunk_size"] = tt.chunkSize
			}
			id := e.enqueue(env)
			ti := e.syncResult(id)
			if ti.Result.Status != "completed" {
				t.Fatalf("status %s: %s %s", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
			}
			recs := checkChunks(t, ti)
			checkSequence(t, recs, tt.total, src.secretAt)
			size := tt.chunkSize
			if size == 0 {
				size = wire.DefaultChunkSize
			}
			for i, c := range ti.Chunks {
				if len(c.Records) > size || (i < len(ti.Chunks)-1 && len(c.Records) != size) {
					t.Fatalf("chunk %d holds %d records, chunk_size %d", i, len(c.Records), size)
				}
			}
			// The last records go in the final chunk: no empty final
			// chunk after records that fill the chunks exactly.
			if want := max(1, (tt.total+size-1)/size); len(ti.Chunks) != want {
				t.Fatalf("%d chunks for %d records, chunk_size %d: want %d", len(ti.Chunks), tt.total, size, want)
			}
			if got := src.served(); len(got) != tt.pages {
				t.Fatalf("pages served %v, want %d", got, tt.pages)
			}
			for _, r := range tg.requests() {
				if r.Header.Get("Authorization") != "Bearer "+e2eSecrets["bearer"] {
					t.Fatalf("page %s without the bearer token", r.URL)
				}
			}
		})
	}
}

// TestHTTPSyncChunkBytes: records of 300 KB with chunk_size 500 go out
// three to a chunk, under the 1 MiB body limit; a record that cannot fit
// in a chunk fails the task.
func TestHTTPSyncChunkBytes(t *testing.T) {
	src := &pagedSource{total: 20, perPage: 7, kind: "json_url", secretAt: 3, secret: e2eSecrets["bearer"], pad: 300 << 10}
	e, tg := syncEnv(t, src)
	big := &pagedSource{total: 3, perPage: 10, kind: "json_url", secretAt: -1, pad: 2 << 20}
	bigTarget := e.newTarget(big.ServeHTTP)
	e.vaultIn(e2eSecrets["bearer"], "set", "big", "token")
	e.vault("bind", "big", bigTarget.URL)
	e.start()

	id := e.enqueue(bearerSync(tg, syncRequest("json_url")))
	ti := e.result(id)
	if ti.Result.Status != "completed" {
		t.Fatalf("status %s: %s %s", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
	}
	recs := checkChunks(t, ti)
	checkSequence(t, recs, 20, 3)
	for i, c := range ti.Chunks {
		if len(c.Records) > 3 {
			t.Fatalf("chunk %d holds %d records of 300 KB", i, len(c.Records))
		}
	}

	env := envelope("http.sync", "big", bigTarget.URL,
		map[string]any{"scheme": "bearer", "credentials": map[string]any{"token": ref("big", "token")}}, syncRequest("json_url"))
	ti = e.result(e.enqueue(env))
	if ti.Result.Status != "failed" || ti.Result.ErrorClass != "response_too_large" {
		t.Fatalf("a 2 MiB record: %s %s %s", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
	}
	if len(ti.Chunks) != 0 {
		t.Fatalf("%d chunks sent before the record that does not fit", len(ti.Chunks))
	}
}

// TestHTTPSyncTransientChunkErrors: 500 and 503 on the chunks endpoint are
// retried with the same seq; nothing is lost or repeated.
func TestHTTPSyncTransientChunkErrors(t *testing.T) {
	src := &pagedSource{total: 5_000, perPage: 1_000, kind: "json_url", secretAt: 10, secret: e2eSecrets["bearer"]}
	e, tg := syncEnv(t, src)
	ctx := context.Background()
	for _, f := range []controlplane.Fault{
		{Endpoint: controlplane.EndpointChunks, Status: 500},
		{Endpoint: controlplane.EndpointChunks, Status: 503, RetryAfter: "1"},
	} {
		if _, err := e.cp.Admin.AddFault(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	e.start()
	id := e.enqueue(bearerSync(tg, syncRequest("json_url")))
	ti := e.syncResult(id)
	if ti.Result.Status != "completed" {
		t.Fatalf("status %s: %s %s", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
	}
	checkSequence(t, checkChunks(t, ti), 5_000, 10)
	if hits := e.cpLog.faultHits(controlplane.EndpointChunks); len(hits) != 2 {
		t.Fatalf("%d faults met, want 2", len(hits))
	}
	// Ten chunks stored, each posted once but the first, posted three
	// times (500, 503, then 200).
	var seqs []int
	for _, q := range e.cpLog.requests(forTask(id)) {
		if q.Endpoint == controlplane.EndpointChunks {
			seqs = append(seqs, q.Status)
		}
	}
	if want := append([]int{500, 503}, slices.Repeat([]int{200}, len(ti.Chunks))...); !slices.Equal(seqs, want) {
		t.Fatalf("chunk requests answered %v, want %v", seqs, want)
	}
}

// gatedSource serves pages 0-2 at once and holds page 3 until release:
// the test acts while the sync is known to be in the middle.
func gatedSource() (*pagedSource, func()) {
	gate := make(chan struct{})
	src := &pagedSource{total: 20_000, perPage: 1_000, kind: "json_url", secretAt: -1}
	src.before = func(page int) {
		if page == 3 {
			<-gate
		}
	}
	var once sync.Once
	return src, func() { once.Do(func() { close(gate) }) }
}

// midSync starts a sync of a gated source and waits until the control
// plane holds the chunks of pages 0-2 (chunk_size 500: six chunks) while
// the agent waits for page 3.
func midSync(t *testing.T, e *env, tg *target, src *pagedSource) string {
	t.Helper()
	env := bearerSync(tg, syncRequest("json_url"))
	env["chunk_size"] = 500
	id := e.enqueue(env)
	e.waitFor("six chunks and the request for page 3", 30*time.Second, func() bool {
		ti, err := e.cp.Admin.Task(context.Background(), id)
		return err == nil && ti.NextSeq == 6 && len(src.served()) == 4
	})
	return id
}

// TestHTTPSyncLeaseLost: a 409 on the chunks endpoint stops the task at
// once: nothing more is sent for it (no chunk, no result) and no other
// page is read.
func TestHTTPSyncLeaseLost(t *testing.T) {
	src, release := gatedSource()
	e, tg := syncEnv(t, src)
	t.Cleanup(release)
	e.start()
	id := midSync(t, e, tg, src)
	ctx := context.Background()
	if _, err := e.cp.Admin.AddFault(ctx, controlplane.Fault{Endpoint: controlplane.EndpointChunks, Status: 409}); err != nil {
		t.Fatal(err)
	}
	release()
	e.waitFor("the agent to abandon the task", 30*time.Second, func() bool {
		return strings.Contains(e.out.String(), "task abandoned: its lease was lost")
	})
	ti, err := e.cp.Admin.Task(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ti.NextSeq != 6 || ti.Final || ti.Result != nil {
		t.Fatalf("after the 409: next_seq %d, final %v, result %+v", ti.NextSeq, ti.Final, ti.Result)
	}
	nothingAfter(t, e, id, 6, 409)
	if got := src.served(); len(got) != 4 {
		t.Fatalf("pages read after the lease was lost: %v", got)
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d:\n%s", code, e.out)
	}
	nothingAfter(t, e, id, 6, 409)
}

// TestHTTPSyncCancelled: a task cancelled by the control plane stops at
// its next chunk (410): no more chunks, no result, an agent.task_failed
// event with error_class cancelled.
func TestHTTPSyncCancelled(t *testing.T) {
	src, release := gatedSource()
	e, tg := syncEnv(t, src)
	t.Cleanup(release)
	e.start()
	id := midSync(t, e, tg, src)
	ctx := context.Background()
	if _, err := e.cp.Admin.CancelTask(ctx, id); err != nil {
		t.Fatal(err)
	}
	release()
	var evs []controlplane.StoredEvent
	e.waitFor("the agent.task_failed event", 30*time.Second, func() bool {
		evs, _ = e.cp.Admin.Events(ctx, controlplane.EventQuery{TaskID: id, Type: wire.EventTaskFailed})
		return len(evs) > 0
	})
	if evs[0].Event.ErrorClass != wire.ErrCancelled {
		t.Fatalf("event %+v", evs[0].Event)
	}
	if !strings.Contains(e.out.String(), "task cancelled by the control plane") {
		t.Fatalf("agent output:\n%s", e.out)
	}
	ti, err := e.cp.Admin.Task(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ti.State != controlplane.TaskCancelled || ti.NextSeq != 6 || ti.Result != nil {
		t.Fatalf("after cancelling: state %s, next_seq %d, result %+v", ti.State, ti.NextSeq, ti.Result)
	}
	if got := src.served(); len(got) != 4 {
		t.Fatalf("pages read after the cancel: %v", got)
	}
	nothingAfter(t, e, id, 6, 410)
}

// TestHTTPSyncNextLinkOtherOrigin: a next link to another origin (another
// port, another host name for the same address, plain http) fails the
// task with binding_violation, and the link is never requested.
func TestHTTPSyncNextLinkOtherOrigin(t *testing.T) {
	e := newEnv(t, controlplane.Config{})
	other := e.newTarget(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"records":[],"nextRecordsUrl":null}`))
	})
	otherPort := other.URL[strings.LastIndex(other.URL, ":")+1:]
	cases := map[string]string{
		"other port":   other.URL + "/records?page=1",
		"other host":   "https://localhost:" + otherPort + "/records?page=1",
		"plain http":   "http://" + strings.TrimPrefix(other.URL, "https://") + "/records?page=1",
		"network path": "//localhost:" + otherPort + "/records",
	}
	srcs := map[string]*pagedSource{}
	e.vaultIn(e2eSecrets["bearer"], "set", "crm", "token")
	var bind []string
	for name, link := range cases {
		src := &pagedSource{total: 3_000, perPage: 1_000, kind: "json_url", secretAt: -1}
		src.next = func(page int) string {
			if page == 1 {
				return link
			}
			return ""
		}
		srcs[name] = src
	}
	targets := map[string]*target{}
	for name, src := range srcs {
		targets[name] = e.newTarget(src.ServeHTTP)
		bind = append(bind, targets[name].URL)
	}
	e.vault(append([]string{"bind", "crm"}, bind...)...)
	e.start()
	ids := map[string]string{}
	for name := range cases {
		ids[name] = e.enqueue(bearerSync(targets[name], syncRequest("json_url")))
	}
	for name, id := range ids {
		ti := e.result(id)
		if ti.Result.Status != "failed" || ti.Result.ErrorClass != "binding_violation" {
			t.Errorf("%s: %s %s %s", name, ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
		}
		if got := srcs[name].served(); len(got) != 2 {
			t.Errorf("%s: pages served %v, want 0 and 1", name, got)
		}
	}
	if n := len(other.requests()); n != 0 {
		t.Fatalf("the other origin got %d requests", n)
	}
}

// TestHTTPSyncTimeout: timeout_s applies to the whole sync: a page that
// never comes fails the task with timeout, and the agent gives the request
// up.
func TestHTTPSyncTimeout(t *testing.T) {
	src := &pagedSource{total: 3_000, perPage: 1_000, kind: "json_url", secretAt: -1}
	gone := make(chan struct{})
	e := newEnv(t, controlplane.Config{})
	tg := e.newTarget(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("page") == "1" {
			<-r.Context().Done() // the agent gave up
			close(gone)
			return
		}
		src.ServeHTTP(w, r)
	})
	e.vaultIn(e2eSecrets["bearer"], "set", "crm", "token")
	e.vault("bind", "crm", tg.URL)
	e.start()
	env := bearerSync(tg, syncRequest("json_url"))
	env["timeout_s"] = 2
	ti := e.result(e.enqueue(env))
	if ti.Result.Status != "failed" || ti.Result.ErrorClass != "timeout" {
		t.Fatalf("%s %s %s", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
	}
	if ti.Final {
		t.Fatal("a final chunk was sent for a sync that timed out")
	}
	e.receive("the agent to give up page 1", gone, 30*time.Second)
}

// TestHTTPSyncMaxPages: max_pages caps the pages read; the sync completes
// with their records.
func TestHTTPSyncMaxPages(t *testing.T) {
	src := &pagedSource{total: 10_000, perPage: 1_000, kind: "link_header", secretAt: -1}
	e, tg := syncEnv(t, src)
	e.start()
	req := syncRequest("link_header")
	req["max_pages"] = 3
	ti := e.result(e.enqueue(bearerSync(tg, req)))
	if ti.Result.Status != "completed" {
		t.Fatalf("status %s: %s %s", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
	}
	checkSequence(t, checkChunks(t, ti), 3_000, -1)
	if got := src.served(); len(got) != 3 {
		t.Fatalf("pages served %v", got)
	}
}

// TestHTTPSyncInvalidRequests: requests refused before any target is
// contacted.
func TestHTTPSyncInvalidRequests(t *testing.T) {
	src := &pagedSource{total: 10, perPage: 10, kind: "json_url", secretAt: -1}
	e, tg := syncEnv(t, src)
	e.start()
	for name, req := range map[string]map[string]any{
		"no items":        {"path": "/records", "next": map[string]any{"kind": "none"}},
		"bad pointer":     {"path": "/records", "items": "records", "next": map[string]any{"kind": "none"}},
		"no next":         {"path": "/records", "items": "/records"},
		"unknown kind":    {"path": "/records", "items": "/records", "next": map[string]any{"kind": "cursor"}},
		"overlapping":     {"path": "/records", "items": "/records", "next": map[string]any{"kind": "json_url", "pointer": "/records/0"}},
		"max_pages":       {"path": "/records", "items": "/records", "next": map[string]any{"kind": "none"}, "max_pages": -1},
		"absolute path":   {"path": "https://evil.example/records", "items": "/records", "next": map[string]any{"kind": "none"}},
		"pointer on none": {"path": "/records", "items": "/records", "next": map[string]any{"kind": "none", "pointer": "/x"}},
	} {
		ti := e.result(e.enqueue(bearerSync(tg, req)))
		if ti.Result.Status != "failed" || ti.Result.ErrorClass != "invalid_envelope" {
			t.Errorf("%s: %s %s %s", name, ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
		}
	}
	env := bearerSync(tg, syncRequest("json_url"))
	env["chunk_size"] = 100_001
	if ti := e.result(e.enqueue(env)); ti.Result.ErrorClass != "invalid_envelope" {
		t.Errorf("chunk_size 100001: %s %s", ti.Result.ErrorClass, ti.Result.Error)
	}
	if n := len(tg.requests()); n != 0 {
		t.Fatalf("the target got %d requests", n)
	}
}
