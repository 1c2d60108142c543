package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestAdminCommands(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Admin-Token") != "from-file" {
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(map[string]any{"code": 401, "message": "invalid or missing admin token"})
			return
		}
		got = append(got, r.Method+" "+r.URL.Path)
		switch r.Method + " " + r.URL.Path {
		case "POST /admin/teams":
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(map[string]any{"teamID": "t1", "name": "acme", "createdAt": "2025-01-01T00:00:00Z"})
		case "POST /admin/teams/t1/keys":
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(map[string]any{"keyID": "k1", "teamID": "t1", "key": "e2b_secret", "createdAt": "2025-01-01T00:00:00Z"})
		case "DELETE /admin/keys/k1":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]any{"code": 404, "message": "api key \"k2\" not found"})
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("COCOON_ADMIN_TOKEN", "")

	tests := []struct {
		args    []string
		out     string
		wantErr string
	}{
		{[]string{"team", "create", "acme"}, "t1\n", ""},
		{[]string{"key", "create", "--team", "t1"}, "e2b_secret\n", ""},
		{[]string{"key", "delete", "k1"}, "", ""},
		{[]string{"key", "delete", "k2"}, "", "not found"},
		{[]string{"key", "delete", "k1", "--admin-token", "wrong"}, "", "401"},
	}
	for _, tt := range tests {
		g := &globalFlags{dataDir: dir}
		// A bare root, independent of how main wires the verbs in.
		root := &cobra.Command{Use: "cocoon", SilenceUsage: true, SilenceErrors: true}
		root.AddCommand(newTeamCmd(g), newKeyCmd(g))
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&bytes.Buffer{})
		root.SetArgs(append(tt.args, "--api-url", srv.URL))
		err := root.ExecuteContext(context.Background())
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%v: err = %v, want %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil || out.String() != tt.out {
			t.Errorf("%v: out %q err %v, want %q", tt.args, out.String(), err, tt.out)
		}
	}
	if want := "POST /admin/teams,POST /admin/teams/t1/keys,DELETE /admin/keys/k1,DELETE /admin/keys/k2"; strings.Join(got, ",") != want {
		t.Errorf("calls = %v, want %s", got, want)
	}
}
