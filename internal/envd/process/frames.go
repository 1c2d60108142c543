package process

import (
	"context"
	"errors"
	"io"

	"connectrpc.com/connect"
)

// frameErrors reports malformed request streams (truncated envelopes, no
// message at all) as invalid_argument: connect-go calls them internal or
// unimplemented, but they are the client's fault.
type frameErrors struct{}

func (frameErrors) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (frameErrors) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (frameErrors) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		rc := &receiveConn{StreamingHandlerConn: conn}
		err := next(ctx, rc)
		if rc.empty && connect.CodeOf(err) == connect.CodeUnimplemented {
			return connect.NewError(connect.CodeInvalidArgument, errors.New("request stream has no message"))
		}
		return err
	}
}

type receiveConn struct {
	connect.StreamingHandlerConn
	received int
	empty    bool // the stream ended before its first message
}

func (c *receiveConn) Receive(m any) error {
	err := c.StreamingHandlerConn.Receive(m)
	switch {
	case err == nil:
		c.received++
	case errors.Is(err, io.EOF):
		c.empty = c.received == 0
	case connect.CodeOf(err) == connect.CodeInternal:
		var cerr *connect.Error
		if errors.As(err, &cerr) {
			return connect.NewError(connect.CodeInvalidArgument, errors.New(cerr.Message()))
		}
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	return err
}
