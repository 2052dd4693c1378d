package ipc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/vmihailenco/msgpack/v5"
)

// MaxFrameSize is the largest payload a frame may carry: room for a snapshot
// of well over 100,000 servers.
const MaxFrameSize = 16 << 20

// ErrFrameTooLarge is returned for a frame whose length prefix exceeds
// MaxFrameSize. The payload is not read: the stream can no longer be trusted.
var ErrFrameTooLarge = errors.New("ipc: frame too large")

// ReadFrame reads one frame from r and returns its payload, reusing buf when
// it is large enough.
func ReadFrame(r io.Reader, buf []byte) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err // io.EOF here means the peer closed cleanly between frames
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrameSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, MaxFrameSize)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading frame payload: %w", err)
	}
	return buf, nil
}

// Decode unmarshals one payload into m and validates it.
func Decode(payload []byte, m *Message) error {
	*m = Message{}
	rd := bytes.NewReader(payload)
	dec := msgpack.NewDecoder(rd)
	if err := dec.Decode(m); err != nil {
		return fmt.Errorf("decoding message: %w", err)
	}
	if rd.Len() != 0 {
		return errors.New("decoding message: trailing bytes after message")
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("invalid message: %w", err)
	}
	return nil
}

// AppendFrame appends m, framed, to dst.
func AppendFrame(dst []byte, m *Message) ([]byte, error) {
	start := len(dst)
	b := bytes.NewBuffer(append(dst, 0, 0, 0, 0))
	enc := msgpack.GetEncoder()
	enc.Reset(b)
	err := enc.Encode(m)
	msgpack.PutEncoder(enc)
	if err != nil {
		return dst, fmt.Errorf("encoding %s: %w", m.Kind, err)
	}
	out := b.Bytes()
	n := len(out) - start - 4
	if n > MaxFrameSize {
		return dst, fmt.Errorf("encoding %s: %w: %d bytes", m.Kind, ErrFrameTooLarge, n)
	}
	binary.BigEndian.PutUint32(out[start:], uint32(n))
	return out, nil
}

// Conn reads and writes frames on one end of a pipe. Send and Receive may run
// concurrently with each other, but each must have a single caller at a time.
type Conn struct {
	r    *bufio.Reader
	w    io.Writer
	rbuf []byte
	wbuf []byte
}

// NewConn returns a Conn over rw, typically a *net.UnixConn.
func NewConn(rw io.ReadWriter) *Conn {
	return &Conn{r: bufio.NewReaderSize(rw, 64<<10), w: rw}
}

// Send writes m as one frame.
func (c *Conn) Send(m *Message) error {
	b, err := AppendFrame(c.wbuf[:0], m)
	if err != nil {
		return err
	}
	c.wbuf = b
	if cap(c.wbuf) > 1<<20 {
		c.wbuf = nil // do not pin a large snapshot's buffer
	}
	if _, err := c.w.Write(b); err != nil {
		return fmt.Errorf("writing %s: %w", m.Kind, err)
	}
	return nil
}

// Buffered reports whether received bytes wait to be read, that is whether
// Receive would return without reading from the pipe.
func (c *Conn) Buffered() bool { return c.r.Buffered() > 0 }

// Receive reads the next frame into m. It returns io.EOF when the peer closed
// the pipe between frames.
func (c *Conn) Receive(m *Message) error {
	p, err := ReadFrame(c.r, c.rbuf)
	if err != nil {
		return err
	}
	if cap(p) <= 1<<20 {
		c.rbuf = p
	}
	return Decode(p, m)
}
