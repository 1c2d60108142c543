// Package frames makes envd report malformed Connect request streams as the
// client's fault (invalid_argument) rather than a server error.
package frames

import (
	"context"
	"errors"
	"io"

	"connectrpc.com/connect"
)

// Interceptor reports a malformed request of a server stream (truncated
// envelope, no message at all) as invalid_argument: connect-go calls those
// internal or unimplemented, but they are the client's fault.
type Interceptor struct{}

func (Interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (Interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (Interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		c := &frameConn{StreamingHandlerConn: conn}
		err := next(ctx, c)
		if c.sawEOF && c.got == 0 && connect.CodeOf(err) == connect.CodeUnimplemented {
			return connect.NewError(connect.CodeInvalidArgument, errors.New("request has no message"))
		}
		return err
	}
}

type frameConn struct {
	connect.StreamingHandlerConn
	got    int
	sawEOF bool
}

func (c *frameConn) Receive(m any) error {
	err := c.StreamingHandlerConn.Receive(m)
	switch {
	case err == nil:
		c.got++
	case errors.Is(err, io.EOF):
		c.sawEOF = true
	case connect.CodeOf(err) == connect.CodeInternal || connect.CodeOf(err) == connect.CodeUnknown:
		var ce *connect.Error
		if errors.As(err, &ce) {
			return connect.NewError(connect.CodeInvalidArgument, errors.New(ce.Message()))
		}
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	return err
}

// CompressMinBytes is the smallest message envd compresses when the client
// accepts compression: process events and file entries are tiny, and
// gzipping them costs more time than the bytes it saves on a local link.
const CompressMinBytes = 4096
