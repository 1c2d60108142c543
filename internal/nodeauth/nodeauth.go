// Package nodeauth authenticates the node RPC between the control plane and
// an orchestrator: every call carries `Authorization: Bearer <node token>`.
package nodeauth

import (
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1/orchestratorv1connect"
)

// Server returns the interceptor that refuses calls without the token.
func Server(token string) connect.Interceptor { return &interceptor{server: true, token: token} }

// Client returns the interceptor that adds the token to every call.
func Client(token string) connect.Interceptor { return &interceptor{token: token} }

type interceptor struct {
	server bool
	token  string
}

// Valid tells whether h carries `Authorization: Bearer <token>`; an empty
// token is never valid. Plain HTTP endpoints between nodes (a template's
// artifact) check it as the RPC does.
func Valid(h http.Header, token string) bool {
	got, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	return ok && token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// Set adds the token to h.
func Set(h http.Header, token string) { h.Set("Authorization", "Bearer "+token) }

func (a *interceptor) check(h http.Header) error {
	if !Valid(h, a.token) {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("missing or wrong node token"))
	}
	return nil
}

func (a *interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if a.server {
			if err := a.check(req.Header()); err != nil {
				return nil, err
			}
		} else {
			Set(req.Header(), a.token)
		}
		return next(ctx, req)
	}
}

func (a *interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if !a.server {
			Set(conn.RequestHeader(), a.token)
		}
		return conn
	}
}

func (a *interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if a.server {
			if err := a.check(conn.RequestHeader()); err != nil {
				return err
			}
		}
		return next(ctx, conn)
	}
}

// NewClient returns a node RPC client for the orchestrator at baseURL that
// authenticates every call with token.
func NewClient(httpClient connect.HTTPClient, baseURL, token string, opts ...connect.ClientOption) orchestratorv1connect.OrchestratorServiceClient {
	opts = append([]connect.ClientOption{connect.WithInterceptors(Client(token))}, opts...)
	return orchestratorv1connect.NewOrchestratorServiceClient(httpClient, baseURL, opts...)
}
