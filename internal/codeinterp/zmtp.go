package codeinterp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// A minimal ZMTP 3.0 peer (rfc.zeromq.org/spec/23) with the NULL mechanism:
// enough to be a DEALER on a kernel's shell and control ROUTERs and a SUB on
// its iopub PUB, over TCP on loopback. No reconnects: a kernel that goes
// away is restarted with new connections.

const (
	flagMore    = 0x01
	flagLong    = 0x02
	flagCommand = 0x04
	// maxFrame bounds one frame (a PNG of a big figure is a few MiB).
	maxFrame = 1 << 30
)

// zconn is one ZMTP connection.
type zconn struct {
	c  net.Conn
	r  *bufio.Reader
	mu sync.Mutex // serializes writers
}

// zdial connects to addr as a socket of type typ ("DEALER", "SUB") and
// completes the handshake.
func zdial(ctx context.Context, addr, typ string) (*zconn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	z := &zconn{c: c, r: bufio.NewReaderSize(c, 64<<10)}
	if err := z.handshake(typ); err != nil {
		c.Close()
		return nil, fmt.Errorf("zmtp handshake with %s: %w", addr, err)
	}
	_ = c.SetDeadline(time.Time{})
	return z, nil
}

func (z *zconn) handshake(typ string) error {
	// Greeting: signature, version 3.0, mechanism NULL, as-server 0, filler.
	g := make([]byte, 64)
	g[0], g[9], g[10], g[11] = 0xff, 0x7f, 3, 0
	copy(g[12:], "NULL")
	if _, err := z.c.Write(g); err != nil {
		return err
	}
	peer := make([]byte, 64)
	if _, err := io.ReadFull(z.r, peer); err != nil {
		return err
	}
	if peer[0] != 0xff || peer[9] != 0x7f || peer[10] < 3 {
		return errors.New("peer is not a ZMTP 3 socket")
	}
	if m := string(bytes.TrimRight(peer[12:32], "\x00")); m != "NULL" {
		return fmt.Errorf("peer wants mechanism %q", m)
	}
	// READY with our socket type.
	var cmd bytes.Buffer
	cmd.WriteByte(5)
	cmd.WriteString("READY")
	prop := func(name string, value []byte) {
		cmd.WriteByte(byte(len(name)))
		cmd.WriteString(name)
		_ = binary.Write(&cmd, binary.BigEndian, uint32(len(value)))
		cmd.Write(value)
	}
	prop("Socket-Type", []byte(typ))
	if typ == "DEALER" {
		prop("Identity", nil)
	}
	if err := z.writeFrame(flagCommand, cmd.Bytes()); err != nil {
		return err
	}
	flags, body, err := z.readFrame()
	if err != nil {
		return err
	}
	if flags&flagCommand == 0 || len(body) < 6 || string(body[1:6]) != "READY" {
		return errors.New("peer did not send READY")
	}
	return nil
}

func (z *zconn) writeFrame(flags byte, body []byte) error {
	var hdr [9]byte
	n := 2
	if len(body) > 255 {
		hdr[0] = flags | flagLong
		binary.BigEndian.PutUint64(hdr[1:], uint64(len(body)))
		n = 9
	} else {
		hdr[0] = flags
		hdr[1] = byte(len(body))
	}
	if _, err := z.c.Write(hdr[:n]); err != nil {
		return err
	}
	_, err := z.c.Write(body)
	return err
}

func (z *zconn) readFrame() (byte, []byte, error) {
	flags, err := z.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	var size uint64
	if flags&flagLong != 0 {
		var b [8]byte
		if _, err := io.ReadFull(z.r, b[:]); err != nil {
			return 0, nil, err
		}
		size = binary.BigEndian.Uint64(b[:])
	} else {
		b, err := z.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		size = uint64(b)
	}
	if size > maxFrame {
		return 0, nil, fmt.Errorf("zmtp frame of %d bytes", size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(z.r, body); err != nil {
		return 0, nil, err
	}
	return flags, body, nil
}

// send writes a multipart message. A writev would save syscalls; a message
// of six small frames is ≈ 12 writes on loopback, well under a millisecond.
func (z *zconn) send(parts [][]byte) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	var buf bytes.Buffer
	for i, p := range parts {
		var flags byte
		if i < len(parts)-1 {
			flags = flagMore
		}
		if len(p) > 255 {
			buf.WriteByte(flags | flagLong)
			_ = binary.Write(&buf, binary.BigEndian, uint64(len(p)))
		} else {
			buf.WriteByte(flags)
			buf.WriteByte(byte(len(p)))
		}
		buf.Write(p)
	}
	_, err := z.c.Write(buf.Bytes())
	return err
}

// recv reads the next multipart message, skipping commands.
func (z *zconn) recv() ([][]byte, error) {
	var parts [][]byte
	for {
		flags, body, err := z.readFrame()
		if err != nil {
			return nil, err
		}
		if flags&flagCommand != 0 {
			continue
		}
		parts = append(parts, body)
		if flags&flagMore == 0 {
			return parts, nil
		}
	}
}

// subscribe subscribes a SUB connection to every topic (ZMTP 3.0 form:
// a message whose first byte is 1).
func (z *zconn) subscribe() error {
	return z.send([][]byte{{1}})
}

func (z *zconn) Close() error { return z.c.Close() }
