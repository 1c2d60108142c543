package proxy

import (
	"crypto/subtle"
	"net/http"
)

// TrafficTokenHeader carries a sandbox's traffic access token (the
// trafficAccessToken of its create reply), as E2B names it.
const TrafficTokenHeader = "E2b-Traffic-Access-Token"

// envdTokenHeader is envd's own access token header.
const envdTokenHeader = "X-Access-Token"

// allow reports whether r may reach port of the sandbox t, and answers the
// request when it may not. A sandbox created with
// network.allowPublicTraffic = false (t.TrafficToken set) demands its
// traffic token on every port and route, header or host routed: missing is
// 401, wrong is 403. The one exception is envd's port with envd's own
// token, which the SDK sends (it has no traffic token to send) and envd
// checks itself. The traffic token never reaches the sandbox.
func allow(w http.ResponseWriter, r *http.Request, t Target, port int) bool {
	got := r.Header.Get(TrafficTokenHeader)
	r.Header.Del(TrafficTokenHeader)
	if t.TrafficToken == "" {
		return true
	}
	if got != "" {
		if subtle.ConstantTimeCompare([]byte(got), []byte(t.TrafficToken)) == 1 {
			return true
		}
		writeError(w, http.StatusForbidden, "invalid traffic access token for this sandbox")
		return false
	}
	if e := r.Header.Get(envdTokenHeader); port == t.EnvdPort && t.EnvdToken != "" && e != "" &&
		subtle.ConstantTimeCompare([]byte(e), []byte(t.EnvdToken)) == 1 {
		return true
	}
	writeError(w, http.StatusUnauthorized, "this sandbox's traffic is private: send its traffic access token in the "+TrafficTokenHeader+" header")
	return false
}
