package runtime

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/cocoon-run/cocoon/api/gen/process"
	"github.com/cocoon-run/cocoon/api/gen/process/processconnect"
	"github.com/cocoon-run/cocoon/internal/envd/identity"
	"github.com/cocoon-run/cocoon/internal/envd/initreq"
)

// WarmInit sends a pooled sandbox's envd (at base, e.g. "http://ip:49983")
// an /init that changes nothing a create relies on (the host's clock and
// fresh entropy, no token, no variables), so that the code of /init has
// run once before a create sends the real one. Under emulation (TCG) the
// first run of a code path in a restored guest costs ≈ 10× a later one.
func WarmInit(ctx context.Context, c *http.Client, base string) error {
	seed := make([]byte, 32)
	_, _ = rand.Read(seed)
	err := initreq.Send(ctx, c, base, "", initreq.Request{Timestamp: time.Now().UTC().Format(time.RFC3339Nano), Seed: seed})
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	return nil
}

// WarmExecUser is the account WarmExec runs as: the base image's, which
// the SDK's commands.run uses by default.
const WarmExecUser = "user"

// WarmExec runs `/bin/bash -l -c true` through the process service of the
// envd at base, as the SDK's first commands.run('true') does, and waits
// for its end: the first exec in a restored sandbox otherwise pays for
// what the second one finds ready (the sentry's or guest's page cache of
// bash, its libraries and /etc/profile, envd's process code path, and
// under gVisor's systrap the stub processes of new address spaces). It
// leaves nothing behind. A failure to run is reported; the exit status of
// bash is not checked (an image without bash still warms envd).
func WarmExec(ctx context.Context, c *http.Client, base string) error {
	pc := processconnect.NewProcessClient(c, base, connect.WithProtoJSON())
	stdin := false
	req := connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", "true"}},
		Stdin:   &stdin,
	})
	identity.SetBasicAuth(req.Header(), WarmExecUser)
	stream, err := pc.Start(ctx, req)
	if err != nil {
		return fmt.Errorf("warm-up exec: %w", err)
	}
	defer stream.Close()
	for stream.Receive() {
		if stream.Msg().GetEvent().GetEnd() != nil {
			return nil
		}
	}
	if err := stream.Err(); err != nil {
		return fmt.Errorf("warm-up exec: %w", err)
	}
	return errors.New("warm-up exec: the stream ended without an end event")
}
