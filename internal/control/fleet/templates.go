package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/cocoon-run/cocoon/internal/nodeauth"
	"github.com/cocoon-run/cocoon/internal/store"
)

// Custom templates across nodes: a node that lacks a custom template asks
// the control plane where it is (GET TemplateHoldersPath?ref=…&node=<self>,
// node token) and fetches its artifact from one of those nodes (their
// orchestrator.TemplatePath, node token), then snapshots it itself.

// TemplateHoldersPath answers which nodes to fetch a template from.
const TemplateHoldersPath = "/nodes/templates"

// maxHolders bounds the nodes a fetch tries.
const maxHolders = 8

// holdersJSON is TemplateHoldersPath's reply.
type holdersJSON struct {
	URLs []string `json:"urls"`
}

// Holders returns the node RPC URLs to fetch the template ref from, best
// first: the nodes (not lost) whose heartbeat lists it, then other ready
// nodes (a node that has just built it lists it at its next heartbeat,
// ≤ 3 s later; one that lacks it answers 404 at once), except the node
// asking, at most maxHolders.
func (r *Registry) Holders(ref, except string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var have, others []string
	for id, n := range r.nodes {
		if id == except || n.State == store.NodeLost {
			continue
		}
		if slices.Contains(n.Templates, ref) {
			have = append(have, n.URL)
		} else if n.State == store.NodeReady {
			others = append(others, n.URL)
		}
	}
	slices.Sort(have)
	slices.Sort(others)
	out := append(have, others...)
	return out[:min(len(out), maxHolders)]
}

func (r *Registry) templateHolders(w http.ResponseWriter, req *http.Request) {
	if !tokenOK(bearer(req.Header), r.cfg.NodeToken) {
		writeError(w, http.StatusUnauthorized, "missing or wrong node token")
		return
	}
	ref := req.URL.Query().Get("ref")
	if ref == "" {
		writeError(w, http.StatusBadRequest, "ref is required")
		return
	}
	writeJSON(w, http.StatusOK, holdersJSON{URLs: r.Holders(ref, req.URL.Query().Get("node"))})
}

// TemplateFetcher is a node's side: FetchTemplate is its
// orchestrator.Config.FetchTemplate.
type TemplateFetcher struct {
	ControlURL string
	NodeToken  string
	NodeID     string
	// ArtifactPath is the path under a node's URL that serves refs
	// (orchestrator.TemplatePath).
	ArtifactPath string
	HTTPClient   *http.Client // no overall timeout: an artifact is large
}

// FetchTemplate returns the artifact stream of ref from the first node
// that has it.
func (f *TemplateFetcher) FetchTemplate(ctx context.Context, ref string) (io.ReadCloser, error) {
	q := url.Values{"ref": {ref}, "node": {f.NodeID}}
	resp, err := f.get(ctx, strings.TrimRight(f.ControlURL, "/")+TemplateHoldersPath+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("where is template %s: %w", ref, err)
	}
	var h holdersJSON
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&h)
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("where is template %s: %w", ref, err)
	}
	var errs []error
	for _, u := range h.URLs {
		resp, err := f.get(ctx, strings.TrimRight(u, "/")+f.ArtifactPath+ref)
		if err == nil {
			return resp.Body, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", u, err))
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("template %s: no other node to fetch it from", ref)
	}
	return nil, fmt.Errorf("template %s: no node has it: %w", ref, errors.Join(errs...))
}

// get GETs u with the node token; the caller closes a 200's body.
func (f *TemplateFetcher) get(ctx context.Context, u string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	nodeauth.Set(req.Header, f.NodeToken)
	hc := f.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return resp, nil
}
