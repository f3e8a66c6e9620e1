// Command rv-bench measures the agent on loopback, each figure next to its
// baseline in the same run: dispatch latency (enqueue → claimed), the
// throughput of http.request at several concurrencies next to calling the
// same target directly from this harness, and the agent's memory idle and
// under load. It prints a Markdown table for docs/BENCHMARKS.md.
//
//	go build -o /tmp/tier3-agent ./cmd/tier3-agent
//	go run ./cmd/rv-bench -agent /tmp/tier3-agent
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/rapidvalue/tier3-agent/controlplane"
	"github.com/rapidvalue/tier3-agent/internal/loopback"
)

const bearer = "rv-bench-bearer-token-0123456789"

func main() {
	agentBin := flag.String("agent", "", "path of the tier3-agent binary")
	dispatchN := flag.Int("dispatch", 200, "tasks for the dispatch latency")
	tasksN := flag.Int("tasks", 600, "tasks per throughput run")
	flag.Parse()
	if err := run(*agentBin, *dispatchN, *tasksN); err != nil {
		fmt.Fprintf(os.Stderr, "rv-bench: error: %v\n", err)
		os.Exit(1)
	}
}

// payload is what the target answers: a small JSON user record.
var payload = []byte(`{"id":7,"email":"ada@example.com","name":"Ada Lovelace","groups":["eng","ops"],"active":true}`)

func handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+bearer {
			http.Error(w, "unauthorized", 401)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(payload)
	})
}

func run(agentBin string, dispatchN, tasksN int) error {
	if agentBin == "" {
		return errors.New("-agent PATH is required")
	}
	tg, err := loopback.StartTarget(handler())
	if err != nil {
		return err
	}
	defer tg.Close()
	fmt.Printf("machine: %d CPUs, %s/%s, %s\n\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())

	// Dispatch latency and idle memory, concurrency 4.
	bed, agent, err := startAgent(agentBin, tg, 4)
	if err != nil {
		return err
	}
	idle, _, _ := agent.RSS()
	lat, err := dispatch(bed, tg, dispatchN)
	if err != nil {
		return err
	}
	agent.Stop(30 * time.Second)
	bed.Close()
	fmt.Printf("| dispatch latency, enqueue → claimed (%d tasks, one at a time, agent long-polling) | p50 %.2f ms | p99 %.2f ms |\n\n",
		dispatchN, ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100]))

	fmt.Println("| concurrency | agent: http.request tasks/s | direct from the harness: requests/s | agent peak RSS |")
	fmt.Println("|---|---|---|---|")
	for _, c := range []int{1, 4, 16} {
		bed, agent, err := startAgent(agentBin, tg, c)
		if err != nil {
			return err
		}
		rate, err := throughput(bed, tg, tasksN)
		if err != nil {
			return fmt.Errorf("concurrency %d: %w\n%s", c, err, agent.Logs())
		}
		_, peak, _ := agent.RSS()
		agent.Stop(30 * time.Second)
		bed.Close()
		direct := directRate(tg, c, tasksN)
		fmt.Printf("| %d | %.0f | %.0f | %.1f MiB |\n", c, rate, direct, float64(peak)/1024)
	}
	fmt.Printf("\nagent RSS idle after registration: %.1f MiB\n", float64(idle)/1024)
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func startAgent(agentBin string, tg *loopback.Target, concurrency int) (*loopback.Bed, *loopback.Agent, error) {
	bed, err := loopback.New(agentBin, controlplane.Config{MaxEvents: 1_000_000})
	if err != nil {
		return nil, nil, err
	}
	bed.TrustTarget(tg)
	bed.Setenv("RV_AGENT_CONCURRENCY", strconv.Itoa(concurrency))
	bed.Setenv("RV_AGENT_TOKEN", bed.Token.Token)
	bed.Setenv("RV_AGENT_UPDATE_KEY", bed.Token.UpdateKey)
	bed.Setenv("RV_POLL_WAIT", "25")
	for _, c := range [][]string{
		{"", "vault", "init", "--seal", "identity"},
		{bearer, "vault", "set", "bench", "token"},
		{"", "vault", "bind", "bench", tg.URL},
	} {
		if _, err := bed.Run(c[0], c[1:]...); err != nil {
			bed.Close()
			return nil, nil, err
		}
	}
	agent, err := bed.Start()
	if err != nil {
		bed.Close()
		return nil, nil, err
	}
	ctx := context.Background()
	err = agent.WaitFor(20*time.Second, func() bool {
		as, err := bed.CP.Admin.Agents(ctx)
		return err == nil && len(as) == 1
	})
	if err != nil {
		agent.Stop(time.Second)
		bed.Close()
		return nil, nil, err
	}
	return bed, agent, nil
}

func envelope(base string) map[string]any {
	return map[string]any{
		"method":    "http.request",
		"connector": map[string]any{"business_id": "bench", "base_url": base},
		"auth":      map[string]any{"scheme": "bearer", "credentials": map[string]any{"token": "vault://local/bench/token"}},
		"request":   map[string]any{"method": "GET", "path": "/api/users/7"},
	}
}

// dispatch enqueues tasks one at a time and measures how long each took to
// reach the agent: from just before the enqueue call to the agent's own
// agent.task_claimed event (same machine, same clock).
func dispatch(bed *loopback.Bed, tg *loopback.Target, n int) ([]time.Duration, error) {
	ctx := context.Background()
	enqueued := map[string]time.Time{}
	for i := 0; i < n; i++ {
		t0 := time.Now()
		id, err := bed.CP.Admin.Enqueue(ctx, envelope(tg.URL), controlplane.EnqueueOptions{})
		if err != nil {
			return nil, err
		}
		enqueued[id] = t0
		if err := waitDone(bed, map[string]bool{id: true}); err != nil {
			return nil, err
		}
	}
	var lat []time.Duration
	deadline := time.Now().Add(30 * time.Second)
	for len(lat) < n {
		lat = lat[:0]
		evs, err := bed.CP.Admin.Events(ctx, controlplane.EventQuery{Type: "agent.task_claimed", Limit: n + 10})
		if err != nil {
			return nil, err
		}
		for _, ev := range evs {
			if t0, ok := enqueued[ev.Event.TaskID]; ok {
				lat = append(lat, ev.Event.At.Sub(t0))
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("only %d of %d claim events arrived", len(lat), n)
		}
		time.Sleep(100 * time.Millisecond) // events are batched for up to 1 s
	}
	slices.Sort(lat)
	return lat, nil
}

// waitDone polls the admin API (every 5 ms, so that the harness does not
// take the CPU the agent needs) until every task in ids has a result.
func waitDone(bed *loopback.Bed, ids map[string]bool) error {
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		tasks, err := bed.CP.Admin.Tasks(ctx)
		if err != nil {
			return err
		}
		left := 0
		for _, ti := range tasks {
			if !ids[ti.TaskID] {
				continue
			}
			switch ti.State {
			case "completed":
			case "failed", "cancelled":
				return fmt.Errorf("task %s %s", ti.TaskID, ti.State)
			default:
				left++
			}
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out waiting for results")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// throughput enqueues n tasks at once and measures until the last result.
func throughput(bed *loopback.Bed, tg *loopback.Target, n int) (float64, error) {
	ctx := context.Background()
	start := time.Now()
	ids := map[string]bool{}
	for i := 0; i < n; i++ {
		id, err := bed.CP.Admin.Enqueue(ctx, envelope(tg.URL), controlplane.EnqueueOptions{})
		if err != nil {
			return 0, err
		}
		ids[id] = true
	}
	if err := waitDone(bed, ids); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// directRate is the baseline: the same GET with the same credential, from
// this process, with c concurrent clients over TLS.
func directRate(tg *loopback.Target, c, n int) float64 {
	hc := tg.Client()
	var wg sync.WaitGroup
	next := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		next <- struct{}{}
	}
	close(next)
	start := time.Now()
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				req, _ := http.NewRequest("GET", tg.URL+"/api/users/7", nil)
				req.Header.Set("Authorization", "Bearer "+bearer)
				resp, err := hc.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}
