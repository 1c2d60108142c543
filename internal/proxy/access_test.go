package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

type tokenResolver struct{ t Target }

func (r tokenResolver) Resolve(context.Context, string) (Target, error) { return r.t, nil }

// TestPrivateTraffic is issue 18's "private ports are public": a sandbox
// created with allowPublicTraffic: false was served without its traffic
// token (200), by header and by host. Now every port demands it.
func TestPrivateTraffic(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "token seen by the sandbox: %q", r.Header.Get(TrafficTokenHeader))
	})
	up := httptest.NewServer(mux)
	defer up.Close()
	upHost, upPort, _ := net.SplitHostPort(up.Listener.Addr().String())
	port, _ := strconv.Atoi(upPort)

	const traffic, envd = "traffic-secret", "envd-secret"
	private := Target{Addr: upHost, Epoch: 1, TrafficToken: traffic, EnvdPort: port, EnvdToken: envd}
	otherEnvdPort := private
	otherEnvdPort.EnvdPort = port + 1
	public := Target{Addr: upHost, Epoch: 1, EnvdPort: port, EnvdToken: envd}

	tests := []struct {
		name    string
		target  Target
		byHost  bool
		headers map[string]string
		want    int
	}{
		{"private, no token, header route", private, false, nil, http.StatusUnauthorized},
		{"private, no token, host route", private, true, nil, http.StatusUnauthorized},
		{"private, wrong token", private, false, map[string]string{TrafficTokenHeader: "guess"}, http.StatusForbidden},
		{"private, wrong token, host route", private, true, map[string]string{TrafficTokenHeader: "guess"}, http.StatusForbidden},
		{"private, token, header route", private, false, map[string]string{TrafficTokenHeader: traffic}, http.StatusOK},
		{"private, token, host route", private, true, map[string]string{TrafficTokenHeader: traffic}, http.StatusOK},
		{"private, lower-case header", private, false, map[string]string{"e2b-traffic-access-token": traffic}, http.StatusOK},
		{"private, envd port with envd's token", private, false, map[string]string{"X-Access-Token": envd}, http.StatusOK},
		{"private, envd port with a wrong envd token", private, false, map[string]string{"X-Access-Token": "guess"}, http.StatusUnauthorized},
		{"private, envd's token on another port", otherEnvdPort, false, map[string]string{"X-Access-Token": envd}, http.StatusUnauthorized},
		{"public, no token", public, false, nil, http.StatusOK},
		{"public, host route", public, true, nil, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(New(tokenResolver{tt.target}, "sb.example", nil))
			defer srv.Close()
			req, _ := http.NewRequest("GET", srv.URL+"/x", nil)
			if tt.byHost {
				req.Host = upPort + "-sbx1.sb.example"
			} else {
				req.Header.Set("E2b-Sandbox-Id", "sbx1")
				req.Header.Set("E2b-Sandbox-Port", upPort)
			}
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.want {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, body, tt.want)
			}
			if tt.want != http.StatusOK {
				var e struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				}
				if err := json.Unmarshal(body, &e); err != nil || e.Code != tt.want || e.Message == "" {
					t.Errorf("body %s: want JSON {code: %d, message}", body, tt.want)
				}
				return
			}
			if want := `token seen by the sandbox: ""`; string(body) != want {
				t.Errorf("upstream got %s, want %s (the token stays at the proxy)", body, want)
			}
		})
	}
}
