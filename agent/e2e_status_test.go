package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/devca"
	"github.com/rapidvalue/tier3-agent/internal/testbin"
)

// End-to-end tests of PROTOCOL.md's status table and of the signals of
// SPEC.md: the real binary against the reference control plane.

// bearerEnv is a test bed with the connector "crm": a bearer token in the
// vault, bound to a target served by h.
func bearerEnv(t *testing.T, h http.HandlerFunc) (*env, *target) {
	t.Helper()
	e := newEnv(t, controlplane.Config{})
	tg := e.newTarget(h)
	e.vaultIn(e2eSecrets["bearer"], "set", "crm", "token")
	e.vault("bind", "crm", tg.URL)
	return e, tg
}

// withLease sets lease_s (and so the renewal period, a third of it).
func withLease(env map[string]any, leaseS int) map[string]any {
	env["lease_s"] = leaseS
	return env
}

func TestStatus401RevokedTokenDisablesAgent(t *testing.T) {
	t.Parallel()
	g := newGate(echo)
	e, tg := bearerEnv(t, g.ServeHTTP)
	e.start()
	e.registered()
	// A task in flight when the token is revoked: its result must not be
	// sent either.
	id := e.enqueue(bearerTask("crm", tg.URL, "/slow"))
	e.receive("the task to reach the target", g.arrived, 30*time.Second)
	revoked := time.Now()
	if err := e.cp.Admin.RevokeToken(context.Background(), e.token.TokenID); err != nil {
		t.Fatal(err)
	}
	if code := e.wait(30 * time.Second); code != 78 {
		t.Fatalf("exit %d after the token was revoked, want 78; output:\n%s", code, e.out)
	}
	e.receive("the running task to be cancelled", g.abandoned, 10*time.Second)

	// The agent stopped all traffic at the first 401: nothing about the
	// task, and no loop tried again (at most one 401 per loop: heartbeat,
	// poll, events).
	after := e.cpLog.requests(func(q cpRequest) bool { return q.End.After(revoked) })
	per := map[string]int{}
	for _, q := range after {
		if q.Status == 401 {
			per[q.Endpoint]++
		}
		if q.TaskID == id {
			t.Errorf("after the revocation the agent sent %s for the task (answered %d)", q.Endpoint, q.Status)
		}
	}
	for ep, n := range per {
		if n > 1 {
			t.Errorf("%d requests to %s were answered 401: the agent went on after the first", n, ep)
		}
	}
	if ti, _ := e.cp.Admin.Task(context.Background(), id); ti.Result != nil {
		t.Errorf("the task has a result after the token was revoked: %+v", ti.Result)
	}

	if !strings.Contains(e.out.String(), "revoked") {
		t.Errorf("the agent's output does not say the token was revoked:\n%s", e.out)
	}

	// Started again with the revoked token, it stops at registration the
	// same way.
	e.start()
	if code := e.wait(30 * time.Second); code != 78 {
		t.Fatalf("exit %d when started with a revoked token, want 78; output:\n%s", code, e.out)
	}

	// agent.disabled is in the local audit log beside the vault, once per
	// run, the chain holds, and it was never sent.
	log := e.auditLog()
	if n := strings.Count(log, `"type":"agent.disabled"`); n != 2 {
		t.Errorf("the audit log has %d agent.disabled records, want 2:\n%s", n, log)
	}
	verify := exec.Command(testbin.Agent(t), "audit", "verify") // the log beside RV_AGENT_VAULT_PATH
	verify.Env = e.environ()
	if out, err := verify.CombinedOutput(); err != nil {
		t.Errorf("audit verify: %v\n%s", err, out)
	}
	if evs := e.events("agent.disabled"); len(evs) != 0 {
		t.Errorf("agent.disabled reached the control plane: %+v", evs)
	}
}

// clientCert writes a client certificate from ca and returns its files and
// fingerprint.
func clientCert(t *testing.T, ca *devca.CA, dir, name string) (certFile, keyFile, fp string) {
	t.Helper()
	c, err := ca.Client(name)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := devca.WritePEM(certFile, keyFile, c); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, devca.Fingerprint(c.Certificate[0])
}

func TestStatus403WrongClientCertificate(t *testing.T) {
	t.Parallel()
	e, tg := bearerEnv(t, echo)
	ca, err := devca.New()
	if err != nil {
		t.Fatal(err)
	}
	goodCert, goodKey, goodFP := clientCert(t, ca, e.dir, "agent-good")
	badCert, badKey, badFP := clientCert(t, ca, e.dir, "agent-other")
	tok, err := e.cp.Admin.CreateToken(context.Background(), controlplane.CreateTokenRequest{MTLSFingerprint: goodFP})
	if err != nil {
		t.Fatal(err)
	}
	e.addSecret(e.token.Token)
	e.token = tok
	e.vars["RV_AGENT_TOKEN"], e.vars["RV_AGENT_UPDATE_KEY"] = tok.Token, tok.UpdateKey

	// Another certificate: 403, exit 78, and the message names the
	// fingerprint presented.
	e.vars["RV_AGENT_TLS_CERT"], e.vars["RV_AGENT_TLS_KEY"] = badCert, badKey
	e.start()
	if code := e.wait(30 * time.Second); code != 78 {
		t.Fatalf("exit %d with the wrong client certificate, want 78; output:\n%s", code, e.out)
	}
	if !strings.Contains(e.out.String(), badFP) {
		t.Errorf("the message does not name the fingerprint presented (%s):\n%s", badFP, e.out)
	}

	// No certificate at all: the same.
	delete(e.vars, "RV_AGENT_TLS_CERT")
	delete(e.vars, "RV_AGENT_TLS_KEY")
	e.start()
	if code := e.wait(30 * time.Second); code != 78 {
		t.Fatalf("exit %d without a client certificate, want 78; output:\n%s", code, e.out)
	}
	if as, _ := e.cp.Admin.Agents(context.Background()); len(as) != 0 {
		t.Fatalf("an agent registered without the pinned certificate: %+v", as)
	}

	// The pinned certificate works.
	e.vars["RV_AGENT_TLS_CERT"], e.vars["RV_AGENT_TLS_KEY"] = goodCert, goodKey
	e.start()
	if a := e.registered(); a.MTLSFingerprint != goodFP {
		t.Errorf("registered fingerprint %q, want %q", a.MTLSFingerprint, goodFP)
	}
	id := e.enqueue(bearerTask("crm", tg.URL, "/mtls"))
	e.response(e.result(id))
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

func TestStatus409LeaseLostOnRenewal(t *testing.T) {
	t.Parallel()
	g := newGate(echo)
	defer g.open()
	e, tg := bearerEnv(t, g.ServeHTTP)
	e.start()
	agentID := e.registered().AgentID
	e.fault(controlplane.Fault{Endpoint: controlplane.EndpointLease, Status: 409, AgentID: agentID})
	// lease_s 6: the agent renews after 2 s and gets the 409; the control
	// plane would hand the task out again only after 6 s.
	id := e.enqueue(withLease(bearerTask("crm", tg.URL, "/slow"), 6))
	e.receive("the task to reach the target", g.arrived, 30*time.Second)
	e.receive("the agent to abandon the task", g.abandoned, 30*time.Second)
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
	// Every request about the task: the renewal answered 409, and nothing
	// after it.
	reqs := e.cpLog.requests(forTask(id))
	if len(reqs) != 1 || reqs[0].Endpoint != controlplane.EndpointLease || reqs[0].Status != 409 {
		t.Errorf("requests about the task: %+v, want only the renewal answered 409", reqs)
	}
	ti, err := e.cp.Admin.Task(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if ti.Result != nil || ti.Attempts != 1 {
		t.Errorf("task after the lease was lost: attempts %d, result %+v", ti.Attempts, ti.Result)
	}
}

func TestStatus409LeaseLostOnResult(t *testing.T) {
	t.Parallel()
	e, tg := bearerEnv(t, echo)
	e.start()
	agentID := e.registered().AgentID
	e.fault(controlplane.Fault{Endpoint: controlplane.EndpointResult, Status: 409, AgentID: agentID})
	id := e.enqueue(bearerTask("crm", tg.URL, "/quick"))
	e.waitFor("the result to be refused", 30*time.Second, func() bool { return len(e.cpLog.faultHits(controlplane.EndpointResult)) == 1 })
	// Another task goes through after it, so the agent is past the first.
	id2 := e.enqueue(bearerTask("crm", tg.URL, "/next"))
	e.response(e.result(id2))
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
	reqs := e.cpLog.requests(forTask(id))
	if len(reqs) != 1 || reqs[0].Endpoint != controlplane.EndpointResult || reqs[0].Status != 409 {
		t.Errorf("requests about the task: %+v, want one result answered 409", reqs)
	}
	if len(tg.requests()) != 2 {
		t.Errorf("the target got %d requests, want 2", len(tg.requests()))
	}
}

func TestStatus410CancelledTaskStops(t *testing.T) {
	t.Parallel()
	g := newGate(echo)
	defer g.open()
	e, tg := bearerEnv(t, g.ServeHTTP)
	e.start()
	// lease_s 3: renewals every second tell the agent of the cancel.
	id := e.enqueue(withLease(bearerTask("crm", tg.URL, "/slow"), 3))
	e.receive("the task to reach the target", g.arrived, 30*time.Second)
	if _, err := e.cp.Admin.CancelTask(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	cancelled := time.Now()
	e.receive("the agent to stop the task", g.abandoned, 10*time.Second)
	if d := time.Since(cancelled); d > 5*time.Second {
		t.Errorf("the agent stopped the task %v after the cancel; a renewal is due every second", d)
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
	for _, q := range e.cpLog.requests(forTask(id)) {
		if q.Endpoint != controlplane.EndpointLease {
			t.Errorf("the agent sent %s for the cancelled task (answered %d)", q.Endpoint, q.Status)
		}
	}
	if last := e.cpLog.requests(forTask(id)); len(last) == 0 || last[len(last)-1].Status != 410 {
		t.Errorf("requests about the task: %+v, want renewals ending with 410", last)
	}
	if ti, _ := e.cp.Admin.Task(context.Background(), id); ti.State != controlplane.TaskCancelled || ti.Result != nil {
		t.Errorf("task: state %s, result %+v", ti.State, ti.Result)
	}
}

func TestStatus413ResultTooLarge(t *testing.T) {
	t.Parallel()
	e, tg := bearerEnv(t, echo)
	e.start()
	agentID := e.registered().AgentID
	e.fault(controlplane.Fault{Endpoint: controlplane.EndpointResult, Status: 413, AgentID: agentID})
	id := e.enqueue(bearerTask("crm", tg.URL, "/big"))
	e.wantFailed(e.result(id), "result_too_large")
	reqs := e.cpLog.requests(forTask(id))
	if len(reqs) != 2 || reqs[0].Status != 413 || reqs[1].Status != 200 {
		t.Errorf("result requests: %+v, want 413 then 200", reqs)
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

func TestStatusRetryAfter(t *testing.T) {
	t.Parallel()
	for _, code := range []int{429, 503} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			t.Parallel()
			e, tg := bearerEnv(t, echo)
			// The first two polls are refused with Retry-After: 2. The
			// fault is logged when the request arrives, before the answer
			// leaves, so the gap between the two arrivals is at least the
			// agent's wait.
			e.fault(controlplane.Fault{Endpoint: controlplane.EndpointTasksNext, Status: code, Count: 2, RetryAfter: "2"})
			e.start()
			id := e.enqueue(bearerTask("crm", tg.URL, "/after"))
			e.response(e.result(id))
			hits := e.cpLog.faultHits(controlplane.EndpointTasksNext)
			if len(hits) != 2 {
				t.Fatalf("%d polls answered %d, want 2", len(hits), code)
			}
			if gap := hits[1].Start.Sub(hits[0].Start); gap < 2*time.Second {
				t.Errorf("the agent polled again %v after a %d with Retry-After: 2", gap, code)
			}
			// The poll that got the task came at least 2 s after the
			// second refusal too.
			var ok []cpRequest
			for _, q := range e.cpLog.requests(onEndpoint(controlplane.EndpointTasksNext)) {
				if q.Status != code {
					ok = append(ok, q)
				}
			}
			if len(ok) == 0 || ok[0].Start.Sub(hits[1].Start) < 2*time.Second-time.Millisecond {
				t.Errorf("first poll answered normally: %+v, second refusal at %v", ok, hits[1].Start)
			}
			if code := e.stop(); code != 0 {
				t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
			}
		})
	}
}

// The heartbeat is periodic, but a 429 or 503 with Retry-After longer
// than its interval holds it back as well (PROTOCOL.md: on every endpoint).
func TestStatusRetryAfterOnHeartbeat(t *testing.T) {
	t.Parallel()
	e, _ := bearerEnv(t, echo)
	e.fault(controlplane.Fault{Endpoint: controlplane.EndpointHeartbeat, Status: 503, Count: 2, RetryAfter: "3"})
	e.start()
	e.waitFor("two refused heartbeats", 30*time.Second, func() bool {
		return len(e.cpLog.faultHits(controlplane.EndpointHeartbeat)) == 2
	})
	hits := e.cpLog.faultHits(controlplane.EndpointHeartbeat)
	if gap := hits[1].Start.Sub(hits[0].Start); gap < 3*time.Second {
		t.Errorf("the agent sent a heartbeat %v after a 503 with Retry-After: 3 (interval 1 s)", gap)
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

func TestStatus5xxRecovers(t *testing.T) {
	t.Parallel()
	e, tg := bearerEnv(t, echo)
	e.fault(controlplane.Fault{Endpoint: controlplane.EndpointTasksNext, Status: 500, Count: 3})
	e.fault(controlplane.Fault{Endpoint: controlplane.EndpointResult, Status: 502, Count: 2})
	e.fault(controlplane.Fault{Endpoint: controlplane.EndpointHeartbeat, Status: 504, Count: 2})
	// A task envelope over the 1 MiB limit is a protocol error: dropped,
	// never run, and the agent backs off and goes on.
	fake := bearerTask("crm", tg.URL, "/oversized")
	fake["task_id"] = "tsk_oversized"
	body, _ := json.Marshal(fake)
	e.fault(controlplane.Fault{Endpoint: controlplane.EndpointTasksNext, Status: 200, Body: string(body), BodyBytes: 2 << 20})
	e.start()
	id := e.enqueue(bearerTask("crm", tg.URL, "/after-5xx"))
	e.response(e.result(id))
	for _, r := range tg.requests() {
		if r.URL.Path == "/oversized" {
			t.Errorf("the agent ran a task from an envelope over 1 MiB")
		}
	}
	if reqs := e.cpLog.requests(forTask("tsk_oversized")); len(reqs) != 0 {
		t.Errorf("the agent reported on a task from an envelope over 1 MiB: %+v", reqs)
	}
	byStatus := map[int]int{}
	for _, q := range e.cpLog.faultHits(controlplane.EndpointTasksNext) {
		byStatus[q.Status]++
	}
	if byStatus[500] != 3 || byStatus[200] != 1 {
		t.Errorf("polls answered by faults: %v, want 3 × 500 and the oversized 200", byStatus)
	}
	if n := len(e.cpLog.faultHits(controlplane.EndpointResult)); n != 2 {
		t.Errorf("%d results answered 502, want 2", n)
	}
	if !e.alive() {
		t.Fatal("the agent exited")
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

func TestSIGHUPReloadsVault(t *testing.T) {
	t.Parallel()
	e, tg := bearerEnv(t, echo)
	const rotated = "Bearer-Token-Rotated-Zq82-0007"
	e.addSecret(rotated)
	e.start()
	sent := func(id string) string {
		t.Helper()
		e.response(e.result(id))
		for _, r := range tg.requests() {
			if r.URL.Path == "/"+id {
				return strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
			}
		}
		t.Fatalf("the target never saw task %s", id)
		return ""
	}
	// enqueueNamed puts the task's own ID in the path, to find its request.
	enqueueNamed := func(name string) string {
		env := bearerTask("crm", tg.URL, "/"+name)
		env["task_id"] = name
		return e.enqueue(env)
	}
	if got := sent(enqueueNamed("before-reload")); got != e2eSecrets["bearer"] {
		t.Fatalf("first task sent another token")
	}

	// A good reload: the next task uses the new value.
	e.vaultIn(rotated, "set", "crm", "token")
	e.signal(syscall.SIGHUP)
	e.waitFor("agent.vault_reloaded", 30*time.Second, func() bool { return len(e.events("agent.vault_reloaded")) == 1 })
	if ev := e.events("agent.vault_reloaded")[0]; ev.Event.Generation != 2 {
		t.Errorf("agent.vault_reloaded generation %d, want 2", ev.Event.Generation)
	}
	if got := sent(enqueueNamed("after-reload")); got != rotated {
		t.Fatalf("the task after SIGHUP did not use the new value")
	}

	// A reload that fails keeps the old vault in service and is logged.
	vaultPath := e.vars["RV_AGENT_VAULT_PATH"]
	if err := os.WriteFile(vaultPath+".garbage", []byte("this is not a vault\x00\xff"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(vaultPath+".garbage", vaultPath); err != nil {
		t.Fatal(err)
	}
	e.signal(syscall.SIGHUP)
	e.waitFor("the failed reload in the log", 30*time.Second, func() bool {
		return strings.Contains(e.out.String(), "vault reload failed")
	})
	if got := sent(enqueueNamed("after-failed-reload")); got != rotated {
		t.Fatalf("after a failed reload the task did not use the vault in service")
	}
	if n := len(e.events("agent.vault_reloaded")); n != 1 {
		t.Errorf("%d agent.vault_reloaded events, want 1 (the failed reload sends none)", n)
	}
	// Neither reload dropped a long poll: every poll so far ended with an
	// answer (a poll the agent gave up would be logged without one).
	for _, q := range e.cpLog.requests(onEndpoint(controlplane.EndpointTasksNext)) {
		if q.Status == 0 {
			t.Errorf("a poll was dropped: %+v", q)
		}
	}
	if code := e.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, e.out)
	}
}

func TestSIGTERMLetsRunningTaskFinish(t *testing.T) {
	t.Parallel()
	g := newGate(echo)
	defer g.open()
	e, tg := bearerEnv(t, g.ServeHTTP)
	// One task at a time: while the held task runs the agent does not
	// poll, so none of its polls is in flight at SIGTERM, and any poll
	// after it would claim the second task.
	e.vars["RV_AGENT_CONCURRENCY"] = "1"
	e.start()
	id := e.enqueue(bearerTask("crm", tg.URL, "/held"))
	e.receive("the task to reach the target", g.arrived, 30*time.Second)
	id2 := e.enqueue(bearerTask("crm", tg.URL, "/never"))
	sigAt := time.Now()
	e.signal(syscall.SIGTERM)
	e.waitFor("the agent to stop polling", 30*time.Second, func() bool {
		return strings.Contains(e.out.String(), "stopping")
	})
	if !e.alive() {
		t.Fatal("the agent exited with a task in flight")
	}
	g.open()
	if code := e.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0; output:\n%s", code, e.out)
	}
	ti, err := e.cp.Admin.Task(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if resp := e.response(ti); resp.Status != 200 {
		t.Errorf("the held task's response status %d", resp.Status)
	}
	ti2, err := e.cp.Admin.Task(context.Background(), id2)
	if err != nil {
		t.Fatal(err)
	}
	if ti2.State != controlplane.TaskQueued || ti2.Attempts != 0 {
		t.Errorf("after SIGTERM the agent claimed another task: state %s, attempts %d", ti2.State, ti2.Attempts)
	}
	for _, q := range e.cpLog.requests(onEndpoint(controlplane.EndpointTasksNext)) {
		if q.Start.After(sigAt) {
			t.Errorf("a poll started after SIGTERM: %+v", q)
		}
	}
	n := 0
	for _, ev := range e.events("agent.task_completed") {
		if ev.Event.TaskID == id {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d agent.task_completed events for the held task, want 1", n)
	}
	if len(tg.requests()) != 1 {
		t.Errorf("the target got %d requests, want 1", len(tg.requests()))
	}
}
