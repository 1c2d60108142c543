package api

import (
	"archive/tar"
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
)

// TestBuildCacheNoCrossTeamHit is issue 18's cache poisoning: team B builds
// the same steps with the same filesHash as team A but other content. With
// keys from the claimed hash, B's build hit A's layer (and in the other
// order A's sandboxes read B's file). Keys now carry the team and the
// stored archive's own digest: B gets a layer of its own, and A's rebuild
// still hits A's.
func TestBuildCacheNoCrossTeamHit(t *testing.T) {
	e := newEnv(t, Config{TemplateFilesDir: filepath.Join(t.TempDir(), "uploads")})
	// The node's cache as the real one keys it: by CacheKey and LayerKey.
	var mu sync.Mutex
	layers := map[string]string{} // LayerKey → whose content
	e.onBuild(func(_ context.Context, req *orchestratorv1.BuildTemplateRequest) (*orchestratorv1.BuildTemplateResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		owner, hit := layers[req.GetLayerKey()]
		if !hit {
			owner = "built-" + req.GetLayerKey()
			layers[req.GetLayerKey()] = owner
		}
		return &orchestratorv1.BuildTemplateResponse{Dir: "/t/" + owner, Runtimes: []string{"gvisor"}, Cached: hit}, nil
	})
	const claimed = "3333333333333333333333333333333333333333333333333333333333333333"
	build := func(key, name, content string) (buildStatusJSON, string) {
		t.Helper()
		r := e.do(key, "POST", "/v3/templates", map[string]any{"name": name})
		var tr templateRequestReply
		r.decode(t, &tr)
		r = e.do(key, "GET", "/templates/"+tr.TemplateID+"/files/"+claimed, nil)
		var link struct {
			Present bool   `json:"present"`
			URL     string `json:"url"`
		}
		r.decode(t, &link)
		if !link.Present {
			data := tarGz(t, tarEntry{name: "app/secret.txt", typ: tar.TypeReg, body: content})
			if r := put(t, link.URL, data, false); r.status != http.StatusNoContent {
				t.Fatalf("upload: %d %s", r.status, r.body)
			}
		}
		r = e.do(key, "POST", "/v2/templates/"+tr.TemplateID+"/builds/"+tr.BuildID, map[string]any{
			"fromTemplate": "base",
			"steps":        []map[string]any{{"type": "COPY", "args": []string{"app", "/app"}, "filesHash": claimed}},
		})
		if r.status != http.StatusAccepted {
			t.Fatalf("start build: %d %s", r.status, r.body)
		}
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			var st buildStatusJSON
			e.do(key, "GET", "/templates/"+tr.TemplateID+"/builds/"+tr.BuildID+"/status", nil).decode(t, &st)
			if st.Status == "ready" || st.Status == "error" {
				b, err := e.store.GetBuild(context.Background(), tr.BuildID)
				if err != nil {
					t.Fatal(err)
				}
				return st, b.ArtifactDir
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("build of %s did not finish", name)
		return buildStatusJSON{}, ""
	}
	cached := func(st buildStatusJSON) bool {
		return strings.Contains(strings.Join(st.Logs, "\n"), "steps cached")
	}

	stA, dirA := build(e.keyA, "app", "team A's file")
	if stA.Status != "ready" || cached(stA) {
		t.Fatalf("team A: status %s, cached %v; want a fresh ready build", stA.Status, cached(stA))
	}
	stB, dirB := build(e.keyB, "app-b", "team B's file")
	if stB.Status == "ready" && (cached(stB) || dirB == dirA) {
		t.Fatalf("team B hit team A's layer: cached %v, dir %s (A's %s)", cached(stB), dirB, dirA)
	}
	// Same team, another template, same claimed hash, other content.
	stA2, dirA2 := build(e.keyA, "app-2", "other content")
	if cached(stA2) || dirA2 == dirA {
		t.Errorf("other content under the same hash hit the cache: dir %s", dirA2)
	}
	// The cache still works: the same content again hits A's layer.
	stA3, dirA3 := build(e.keyA, "app-3", "team A's file")
	if !cached(stA3) || dirA3 != dirA {
		t.Errorf("team A's rebuild: cached %v, dir %s; want a hit on %s", cached(stA3), dirA3, dirA)
	}
}

// TestUploadNotReplaced: a COPY archive, once stored, is not replaced by a
// second PUT under the same hash (a build reads the file after keying its
// step by the file's digest; a swap in between would put other content
// under that key).
func TestUploadNotReplaced(t *testing.T) {
	e := newEnv(t, Config{TemplateFilesDir: filepath.Join(t.TempDir(), "uploads")})
	r := e.do(e.keyA, "POST", "/v3/templates", map[string]any{"name": "immutable"})
	var tr templateRequestReply
	r.decode(t, &tr)
	const hash = "4444444444444444444444444444444444444444444444444444444444444444"
	var link struct {
		URL string `json:"url"`
	}
	e.do(e.keyA, "GET", "/templates/"+tr.TemplateID+"/files/"+hash, nil).decode(t, &link)
	for _, body := range []string{"first", "second"} {
		data := tarGz(t, tarEntry{name: "f", typ: tar.TypeReg, body: body})
		if r := put(t, link.URL, data, false); r.status != http.StatusNoContent {
			t.Fatalf("upload %s: %d %s", body, r.status, r.body)
		}
	}
	f, err := e.store.GetTemplateFile(context.Background(), tr.TemplateID, hash)
	if err != nil {
		t.Fatal(err)
	}
	want := tarGz(t, tarEntry{name: "f", typ: tar.TypeReg, body: "first"})
	if got, err := os.ReadFile(f.Path); err != nil || !bytes.Equal(got, want) {
		t.Errorf("stored archive: %d bytes (%v), want the first upload's %d", len(got), err, len(want))
	}
}
