package process

import (
	"context"
	"net/http"
)

// tailWriter lets the end of a process stream leave in one write.
//
// connect-go flushes after every message and again after the end-of-stream
// message, and net/http then writes the end of the body (the last HTTP/1.1
// chunk, the HTTP/2 END_STREAM). Those are three writes and as many wake-ups
// of the client for what is, at the end of a process, one piece of news; on
// a short command they are a measurable share of the round trip. Once the end
// event is about to be sent nothing else follows it, so its flushes are
// held and the server writes everything when the handler returns, at once.
type tailWriter struct {
	http.ResponseWriter
	held bool // only the handler's goroutine sends and flushes
}

// Flush sends what is buffered unless the stream's tail is being held.
func (w *tailWriter) Flush() {
	if w.held {
		return
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the server's writer.
func (w *tailWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type tailKey struct{}

// withTail wraps the streams of h in tailWriters that holdTail can reach.
func withTail(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tw := &tailWriter{ResponseWriter: w}
		h.ServeHTTP(tw, r.WithContext(context.WithValue(r.Context(), tailKey{}, tw)))
	})
}

// holdTail stops flushing the stream of ctx: the caller is about to send its
// last message and return.
func holdTail(ctx context.Context) {
	if tw, ok := ctx.Value(tailKey{}).(*tailWriter); ok {
		tw.held = true
	}
}
