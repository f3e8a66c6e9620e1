// Command rv-demo runs the product's main job end to end on loopback: the
// reference control plane, an HTTPS target with an OAuth2 token endpoint,
// and the real tier3-agent binary with a sealed vault. It enqueues tasks,
// waits for their results and prints what happened: registration, the
// claimed and completed events, the redacted response, a refused hostile
// envelope, and the verified local audit log. It exits 0 when every step
// behaved.
//
//	go run ./cmd/rv-demo -agent ./tier3-agent
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/loopback"
)

func main() {
	agentBin := flag.String("agent", "", "path of the tier3-agent binary")
	flag.Parse()
	if err := run(*agentBin); err != nil {
		fmt.Fprintf(os.Stderr, "rv-demo: error: %v\n", err)
		os.Exit(1)
	}
}

const (
	clientSecret = "demo-client-secret-7f3a9c"
	accessToken  = "demo-access-token-issued-by-target-51e0"
)

func step(format string, a ...any) { fmt.Printf("\n\033[1m== %s\033[0m\n", fmt.Sprintf(format, a...)) }

func run(agentBin string) error {
	if agentBin == "" {
		return errors.New("-agent PATH is required")
	}
	ctx := context.Background()

	step("the reference control plane, TLS with a generated CA, on loopback")
	bed, err := loopback.New(agentBin, controlplane.Config{})
	if err != nil {
		return err
	}
	defer bed.Close()
	cp := bed.CP
	fmt.Println("agent API:", cp.URL, " admin API:", cp.AdminURL)
	fmt.Println("created an agent token (id", bed.Token.TokenID+")")

	step("a target: an HTTPS API with an OAuth2 token endpoint, which echoes what it is sent")
	tg, err := loopback.StartTarget(targetHandler())
	if err != nil {
		return err
	}
	defer tg.Close()
	if err := bed.TrustTarget(tg); err != nil {
		return err
	}
	fmt.Println("target:", tg.URL)

	step("a sealed vault holding the connector's secrets and the agent's own token and update key")
	for _, c := range []struct {
		stdin string
		args  []string
	}{
		{"", []string{"vault", "init", "--seal", "identity"}},
		{"rv-demo-client", []string{"vault", "set", "acme-api", "client_id"}},
		{clientSecret, []string{"vault", "set", "acme-api", "client_secret"}},
		{"", []string{"vault", "bind", "acme-api", tg.URL}},
		{bed.Token.Token, []string{"vault", "set", "_agent", "token"}},
		{bed.Token.UpdateKey, []string{"vault", "set", "_agent", "update_key"}},
	} {
		if _, err := bed.Run(c.stdin, c.args...); err != nil {
			return err
		}
	}
	out, _ := bed.Run("", "vault", "list")
	fmt.Print(out)

	step("the agent: tier3-agent run (it opens every connection; it listens on nothing)")
	agent, err := bed.Start()
	if err != nil {
		return err
	}
	defer agent.Stop(10 * time.Second)
	var agentID string
	if err := agent.WaitFor(20*time.Second, func() bool {
		as, err := cp.Admin.Agents(ctx)
		if err == nil && len(as) == 1 && as[0].AgentID != "" {
			agentID = as[0].AgentID
			fmt.Printf("registered: %s  version %s  %s/%s  vault sealed=%v seal=%s entries=%d\n",
				as[0].AgentID, as[0].Version, as[0].OS, as[0].Arch, as[0].Vault.Sealed, as[0].Vault.Seal, as[0].Vault.Entries)
			return true
		}
		return false
	}); err != nil {
		return fmt.Errorf("registration: %w\n%s", err, agent.Logs())
	}

	step("a task: http.request with oauth2_client_credentials, credentials as vault references")
	envelope := map[string]any{
		"method":    "http.request",
		"connector": map[string]any{"business_id": "acme-api", "type": "rest", "base_url": tg.URL},
		"auth": map[string]any{"scheme": "oauth2_client_credentials", "token_url": tg.URL + "/oauth2/token",
			"credentials": map[string]any{"client_id": "vault://local/acme-api/client_id", "client_secret": "vault://local/acme-api/client_secret"}},
		"request": map[string]any{"method": "GET", "path": "/api/users/7"},
		"lease_s": 60, "timeout_s": 30,
	}
	pretty, _ := json.MarshalIndent(envelope, "", "  ")
	fmt.Printf("enqueued:\n%s\n", pretty)
	ti, err := enqueueAndWait(ctx, cp, agent, envelope)
	if err != nil {
		return err
	}
	if ti.Result.Status != "completed" {
		return fmt.Errorf("the task failed: %s %s", ti.Result.ErrorClass, ti.Result.Error)
	}
	var resp any
	json.Unmarshal(ti.Result.Response, &resp)
	pretty, _ = json.MarshalIndent(resp, "", "  ")
	fmt.Printf("result: %s in %d ms; the response, as the control plane stored it (the target echoed the access token and our headers):\n%s\n",
		ti.Result.Status, ti.Result.DurationMS, pretty)
	if bytes.Contains(ti.Result.Response, []byte(accessToken)) || bytes.Contains(ti.Result.Response, []byte(clientSecret)) {
		return errors.New("a secret reached the control plane")
	}

	step("a hostile envelope: a literal secret where a vault reference belongs")
	envelope["auth"] = map[string]any{"scheme": "bearer", "credentials": map[string]any{"token": "literal-secret-from-the-cloud"}}
	ti, err = enqueueAndWait(ctx, cp, agent, envelope)
	if err != nil {
		return err
	}
	fmt.Printf("result: %s, error_class %s: %s\n", ti.Result.Status, ti.Result.ErrorClass, ti.Result.Error)
	if ti.Result.ErrorClass != "invalid_envelope" {
		return errors.New("the hostile envelope was not refused")
	}

	step("the audit trail the control plane received")
	var evs []controlplane.StoredEvent
	// Events are batched (up to 1 s): wait for registered, 2 × claimed,
	// completed and failed.
	if err := agent.WaitFor(20*time.Second, func() bool {
		evs, err = cp.Admin.Events(ctx, controlplane.EventQuery{AgentID: agentID})
		return err == nil && len(evs) >= 5
	}); err != nil {
		return fmt.Errorf("events: %w", err)
	}
	for _, ev := range evs {
		e := ev.Event
		fmt.Printf("  %s  %-26s %s %s %s\n", e.At.Format(time.TimeOnly), e.Type, e.TaskID, e.Method, e.ErrorClass)
	}

	step("stop: SIGTERM, running tasks finish, exit 0")
	if err := agent.Stop(30 * time.Second); err != nil {
		return fmt.Errorf("the agent exited with %v\n%s", err, agent.Logs())
	}
	fmt.Println("the agent exited 0")
	logs := agent.Logs()
	for _, s := range []string{accessToken, clientSecret, bed.Token.Token} {
		if strings.Contains(logs, s) {
			return errors.New("a secret reached the agent's log")
		}
	}
	fmt.Printf("its log: %d lines of JSON, no secret in them\n", strings.Count(logs, "\n"))

	step("the local hash-chained audit log")
	out, err = bed.Run("", "audit", "verify", filepath.Join(bed.Dir, "audit.log"))
	fmt.Print(out)
	if err != nil {
		return err
	}
	step("demo complete")
	return nil
}

func enqueueAndWait(ctx context.Context, cp *controlplane.TestServer, agent *loopback.Agent, envelope map[string]any) (controlplane.TaskInfo, error) {
	id, err := cp.Admin.Enqueue(ctx, envelope, controlplane.EnqueueOptions{Unchecked: true})
	if err != nil {
		return controlplane.TaskInfo{}, err
	}
	var ti controlplane.TaskInfo
	err = agent.WaitFor(60*time.Second, func() bool {
		ti, err = cp.Admin.Task(ctx, id)
		return err == nil && ti.Result != nil
	})
	return ti, err
}

// targetHandler serves an OAuth2 token endpoint and an API that echoes the
// request's headers and the access token: a target that gives secrets back.
func targetHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /oauth2/token", func(w http.ResponseWriter, r *http.Request) {
		if r.ParseForm() != nil || r.PostForm.Get("client_secret") != clientSecret || r.PostForm.Get("grant_type") != "client_credentials" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3600}`, accessToken)
	})
	mux.HandleFunc("GET /api/users/7", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+accessToken {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Debug-Authorization", r.Header.Get("Authorization"))
		json.NewEncoder(w).Encode(map[string]any{
			"id": 7, "email": "ada@example.com",
			"debug": map[string]any{"you_sent": r.Header.Get("Authorization"), "session": accessToken},
		})
	})
	return mux
}
