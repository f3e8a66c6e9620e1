package controlplane

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/rapidvalue/tier3-agent/internal/wire"
)

// AdminClient is a Go client of the admin API, for tests and tools.
type AdminClient struct {
	// BaseURL is the admin listener's URL, without AdminPrefix.
	BaseURL string
	Token   string
	HTTP    *http.Client
}

// AdminError is a non-2xx answer of the admin API.
type AdminError struct {
	Status  int
	Message string
}

func (e *AdminError) Error() string {
	return fmt.Sprintf("admin API: %d %s", e.Status, e.Message)
}

// maxAdminResponse caps an admin response (a task with its chunks can be large).
const maxAdminResponse = 1 << 30

func (c *AdminClient) do(ctx context.Context, method, path string, query url.Values, body []byte, contentType string, out any) error {
	u := c.BaseURL + AdminPrefix + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminResponse))
	if err != nil {
		return fmt.Errorf("admin API: failed to read response: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var eb wire.ErrorBody
		if wire.Decode(b, &eb, wire.Limits{}) != nil || eb.Error == "" {
			eb.Error = http.StatusText(resp.StatusCode)
		}
		return &AdminError{Status: resp.StatusCode, Message: eb.Error}
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := wire.Decode(b, out, wire.Limits{MaxBytes: maxAdminResponse, MaxDepth: 64}); err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	return nil
}

func (c *AdminClient) doJSON(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("admin API: %w", err)
		}
	}
	return c.do(ctx, method, path, nil, body, "application/json", out)
}

// CreateToken creates an agent token: POST /admin/v1/tokens.
func (c *AdminClient) CreateToken(ctx context.Context, req CreateTokenRequest) (CreateTokenResponse, error) {
	var out CreateTokenResponse
	err := c.doJSON(ctx, http.MethodPost, "/tokens", req, &out)
	return out, err
}

// RevokeToken revokes a token: POST /admin/v1/tokens/{id}/revoke.
func (c *AdminClient) RevokeToken(ctx context.Context, tokenID string) error {
	return c.doJSON(ctx, http.MethodPost, "/tokens/"+url.PathEscape(tokenID)+"/revoke", nil, nil)
}

// Tokens lists the tokens: GET /admin/v1/tokens.
func (c *AdminClient) Tokens(ctx context.Context) ([]TokenInfo, error) {
	var out struct {
		Tokens []TokenInfo `json:"tokens"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/tokens", nil, &out)
	return out.Tokens, err
}

// Agents lists the registered agents: GET /admin/v1/agents.
func (c *AdminClient) Agents(ctx context.Context) ([]AgentInfo, error) {
	var out struct {
		Agents []AgentInfo `json:"agents"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/agents", nil, &out)
	return out.Agents, err
}

// Agent returns one agent: GET /admin/v1/agents/{id}.
func (c *AdminClient) Agent(ctx context.Context, agentID string) (AgentInfo, error) {
	var out AgentInfo
	err := c.doJSON(ctx, http.MethodGet, "/agents/"+url.PathEscape(agentID), nil, &out)
	return out, err
}

// EnqueueOptions are the query parameters of POST /admin/v1/tasks.
type EnqueueOptions struct {
	Tenant    string // default DefaultTenant
	Unchecked bool   // skip the control plane's envelope checks
}

// Enqueue enqueues a task: POST /admin/v1/tasks. envelope is sent as it is
// when it is []byte or json.RawMessage, else JSON-encoded.
func (c *AdminClient) Enqueue(ctx context.Context, envelope any, opts EnqueueOptions) (string, error) {
	var body []byte
	switch e := envelope.(type) {
	case []byte:
		body = e
	case json.RawMessage:
		body = e
	case string:
		body = []byte(e)
	default:
		var err error
		if body, err = json.Marshal(envelope); err != nil {
			return "", fmt.Errorf("admin API: %w", err)
		}
	}
	q := url.Values{}
	if opts.Tenant != "" {
		q.Set("tenant", opts.Tenant)
	}
	if opts.Unchecked {
		q.Set("unchecked", "1")
	}
	var out EnqueueResponse
	err := c.do(ctx, http.MethodPost, "/tasks", q, body, "application/json", &out)
	return out.TaskID, err
}

// Task returns a task with its envelope, chunks and result:
// GET /admin/v1/tasks/{id}.
func (c *AdminClient) Task(ctx context.Context, taskID string) (TaskInfo, error) {
	var out TaskInfo
	err := c.doJSON(ctx, http.MethodGet, "/tasks/"+url.PathEscape(taskID), nil, &out)
	return out, err
}

// Tasks lists the tasks: GET /admin/v1/tasks.
func (c *AdminClient) Tasks(ctx context.Context) ([]TaskInfo, error) {
	var out struct {
		Tasks []TaskInfo `json:"tasks"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/tasks", nil, &out)
	return out.Tasks, err
}

// CancelTask cancels a task: POST /admin/v1/tasks/{id}/cancel.
func (c *AdminClient) CancelTask(ctx context.Context, taskID string) (TaskInfo, error) {
	var out TaskInfo
	err := c.doJSON(ctx, http.MethodPost, "/tasks/"+url.PathEscape(taskID)+"/cancel", nil, &out)
	return out, err
}

// EventQuery filters Events; zero fields do not filter.
type EventQuery struct {
	AgentID, Type, TaskID string
	After                 int64 // only events with a greater seq
	Limit                 int
}

// Events lists stored events: GET /admin/v1/events.
func (c *AdminClient) Events(ctx context.Context, eq EventQuery) ([]StoredEvent, error) {
	q := url.Values{}
	for k, v := range map[string]string{"agent_id": eq.AgentID, "type": eq.Type, "task_id": eq.TaskID} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if eq.After > 0 {
		q.Set("after", strconv.FormatInt(eq.After, 10))
	}
	if eq.Limit > 0 {
		q.Set("limit", strconv.Itoa(eq.Limit))
	}
	var out struct {
		Events []StoredEvent `json:"events"`
	}
	err := c.do(ctx, http.MethodGet, "/events", q, nil, "", &out)
	return out.Events, err
}

// PublishRelease publishes a binary: POST /admin/v1/releases.
func (c *AdminClient) PublishRelease(ctx context.Context, version, goos, goarch string, binary []byte) (ReleaseInfo, error) {
	q := url.Values{"version": {version}, "os": {goos}, "arch": {goarch}}
	var out ReleaseInfo
	err := c.do(ctx, http.MethodPost, "/releases", q, binary, "application/octet-stream", &out)
	return out, err
}

// Releases lists the releases: GET /admin/v1/releases.
func (c *AdminClient) Releases(ctx context.Context) ([]ReleaseInfo, error) {
	var out struct {
		Releases []ReleaseInfo `json:"releases"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/releases", nil, &out)
	return out.Releases, err
}

func releasePath(version, goos, goarch string) string {
	return "/releases/" + url.PathEscape(version) + "/" + url.PathEscape(goos) + "/" + url.PathEscape(goarch)
}

// DeleteRelease deletes a release: DELETE /admin/v1/releases/{v}/{os}/{arch}.
func (c *AdminClient) DeleteRelease(ctx context.Context, version, goos, goarch string) error {
	return c.doJSON(ctx, http.MethodDelete, releasePath(version, goos, goarch), nil, nil)
}

// ReleaseManifests returns each agent's manifest of a release, to sign
// offline: GET /admin/v1/releases/{v}/{os}/{arch}/manifests.
func (c *AdminClient) ReleaseManifests(ctx context.Context, version, goos, goarch string) ([]AgentManifest, error) {
	var out struct {
		Manifests []AgentManifest `json:"manifests"`
	}
	err := c.doJSON(ctx, http.MethodGet, releasePath(version, goos, goarch)+"/manifests", nil, &out)
	return out.Manifests, err
}

// PutSignatures uploads Ed25519 signatures by agent ID:
// PUT /admin/v1/releases/{v}/{os}/{arch}/signatures.
func (c *AdminClient) PutSignatures(ctx context.Context, version, goos, goarch string, sigs map[string][]byte) (ReleaseInfo, error) {
	req := SignaturesRequest{Signatures: map[string]string{}}
	for id, sig := range sigs {
		req.Signatures[id] = base64.StdEncoding.EncodeToString(sig)
	}
	var out ReleaseInfo
	err := c.doJSON(ctx, http.MethodPut, releasePath(version, goos, goarch)+"/signatures", req, &out)
	return out, err
}

// AddFault queues a fault: POST /admin/v1/faults.
func (c *AdminClient) AddFault(ctx context.Context, f Fault) (FaultInfo, error) {
	var out FaultInfo
	err := c.doJSON(ctx, http.MethodPost, "/faults", f, &out)
	return out, err
}

// Faults lists the queued faults: GET /admin/v1/faults.
func (c *AdminClient) Faults(ctx context.Context) ([]FaultInfo, error) {
	var out struct {
		Faults []FaultInfo `json:"faults"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/faults", nil, &out)
	return out.Faults, err
}

// ClearFaults drops every queued fault: DELETE /admin/v1/faults.
func (c *AdminClient) ClearFaults(ctx context.Context) error {
	return c.doJSON(ctx, http.MethodDelete, "/faults", nil, nil)
}
