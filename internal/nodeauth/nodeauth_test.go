package nodeauth

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"connectrpc.com/connect"

	orchv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1/orchestratorv1connect"
)

type nodeOnly struct {
	orchestratorv1connect.UnimplementedOrchestratorServiceHandler
}

func (nodeOnly) Node(context.Context, *connect.Request[orchv1.NodeRequest]) (*connect.Response[orchv1.NodeResponse], error) {
	return connect.NewResponse(&orchv1.NodeResponse{NodeId: "n1"}), nil
}

func TestTokens(t *testing.T) {
	path, h := orchestratorv1connect.NewOrchestratorServiceHandler(nodeOnly{}, connect.WithInterceptors(Server("s3cret")))
	mux := http.NewServeMux()
	mux.Handle(path, h)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	tests := []struct {
		name     string
		opts     []connect.ClientOption
		wantCode connect.Code // 0: success
	}{
		{name: "right token", opts: []connect.ClientOption{connect.WithInterceptors(Client("s3cret"))}},
		{name: "wrong token", opts: []connect.ClientOption{connect.WithInterceptors(Client("nope"))}, wantCode: connect.CodeUnauthenticated},
		{name: "no token", wantCode: connect.CodeUnauthenticated},
		{name: "empty token", opts: []connect.ClientOption{connect.WithInterceptors(Client(""))}, wantCode: connect.CodeUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := orchestratorv1connect.NewOrchestratorServiceClient(srv.Client(), srv.URL, tt.opts...)
			resp, err := c.Node(context.Background(), connect.NewRequest(&orchv1.NodeRequest{}))
			var ce *connect.Error
			switch {
			case tt.wantCode == 0 && err != nil:
				t.Fatalf("got error %v, want success", err)
			case tt.wantCode == 0 && resp.Msg.NodeId != "n1":
				t.Fatalf("got node %q, want n1", resp.Msg.NodeId)
			case tt.wantCode != 0 && (!errors.As(err, &ce) || ce.Code() != tt.wantCode):
				t.Fatalf("got %v, want code %v", err, tt.wantCode)
			}
		})
	}
}

func TestServerRefusesEmptyConfiguredToken(t *testing.T) {
	i := Server("").(*interceptor)
	h := http.Header{}
	h.Set("Authorization", "Bearer ")
	if err := i.check(h); err == nil {
		t.Fatal("an empty configured token accepted an empty bearer")
	}
}
