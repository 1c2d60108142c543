// Package qmp is a minimal client of the QEMU Machine Protocol over a unix
// socket: it negotiates capabilities, runs commands one at a time, passes
// file descriptors (for getfd) and skips asynchronous events.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Error is an error answered by QEMU.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc) }

// Conn is a QMP connection. Its methods are safe for concurrent use; commands
// are serialized.
type Conn struct {
	mu   sync.Mutex
	conn *net.UnixConn
	r    *bufio.Reader
}

type response struct {
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	Event  string          `json:"event"`
	QMP    json.RawMessage `json:"QMP"`
}

// Dial connects to the QMP socket at path, retrying until ctx is done (QEMU
// may not have created the socket yet), reads the greeting and enters
// command mode.
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return New(ctx, c.(*net.UnixConn))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial qmp %s: %w", path, errors.Join(ctx.Err(), err))
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// New speaks QMP over an established connection: it reads the greeting
// and negotiates capabilities.
func New(ctx context.Context, c *net.UnixConn) (*Conn, error) {
	q := &Conn{conn: c, r: bufio.NewReaderSize(c, 64<<10)}
	stop := q.watch(ctx)
	defer stop()
	var greet response
	if err := q.read(&greet); err != nil {
		c.Close()
		return nil, fmt.Errorf("read qmp greeting: %w", err)
	}
	if greet.QMP == nil {
		c.Close()
		return nil, fmt.Errorf("read qmp greeting: not a qmp server")
	}
	if err := q.exec(nil, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

// watch makes blocked I/O return when ctx is done.
func (q *Conn) watch(ctx context.Context) (stop func()) {
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetDeadline(dl)
	}
	s := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Unix(1, 0)) })
	return func() {
		s()
		q.conn.SetDeadline(time.Time{})
	}
}

func (q *Conn) read(v *response) error {
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return err
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("decode %q: %w", line, err)
	}
	return nil
}

// Execute runs command with args (nil for none) and decodes its return
// value into ret (nil to discard it).
func (q *Conn) Execute(ctx context.Context, command string, args, ret any) error {
	return q.ExecuteWithFile(ctx, command, args, ret, nil)
}

// ExecuteWithFile is Execute, passing f's descriptor along with the command
// (SCM_RIGHTS), as getfd and add-fd require.
func (q *Conn) ExecuteWithFile(ctx context.Context, command string, args, ret any, f *os.File) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	stop := q.watch(ctx)
	defer stop()
	return q.exec(f, command, args, ret)
}

func (q *Conn) exec(f *os.File, command string, args, ret any) error {
	msg := map[string]any{"execute": command}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encode %s: %w", command, err)
	}
	var oob []byte
	if f != nil {
		oob = syscall.UnixRights(int(f.Fd()))
	}
	if _, _, err := q.conn.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("send %s: %w", command, err)
	}
	for {
		var r response
		if err := q.read(&r); err != nil {
			return fmt.Errorf("%s: %w", command, err)
		}
		switch {
		case r.Event != "":
			continue
		case r.Error != nil:
			return fmt.Errorf("%s: %w", command, r.Error)
		case ret != nil:
			if err := json.Unmarshal(r.Return, ret); err != nil {
				return fmt.Errorf("decode %s reply: %w", command, err)
			}
		}
		return nil
	}
}

// Close closes the connection; QEMU keeps running.
func (q *Conn) Close() error { return q.conn.Close() }
