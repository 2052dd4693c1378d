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
	n, err := frameSize(hdr[:])
	if err != nil {
		return nil, err
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, payloadError(err)
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
	// want is the payload size of a frame too large for r's buffer whose
	// header Receive has consumed; rbuf holds what of it has arrived.
	want int
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

// Buffered reports whether a whole frame waits to be read, that is whether
// Receive would return without reading from the pipe. The rest of a frame
// too large for the buffer, once begun, is never in it.
func (c *Conn) Buffered() bool {
	n := c.r.Buffered()
	if c.want != 0 || n < 4 {
		return false
	}
	hdr, _ := c.r.Peek(4)
	size, err := frameSize(hdr)
	return err != nil || n-4 >= size
}

// Receive reads the next frame into m. It returns io.EOF when the peer closed
// the pipe between frames. A read error, such as a passed deadline, loses
// nothing: the next Receive goes on with the same frame. A frame that does
// not decode is consumed; one over MaxFrameSize is not, and fails every
// Receive after.
func (c *Conn) Receive(m *Message) error {
	if c.want == 0 {
		hdr, err := c.r.Peek(4)
		if err != nil {
			if err == io.EOF && len(hdr) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return err // io.EOF here means the peer closed cleanly between frames
		}
		n, err := frameSize(hdr)
		if err != nil {
			return err
		}
		if n <= c.r.Size()-4 {
			// Decoded where it lies: Decode copies what it keeps.
			p, err := c.r.Peek(4 + n)
			if err != nil {
				return payloadError(err)
			}
			err = Decode(p[4:], m)
			c.r.Discard(4 + n)
			return err
		}
		c.r.Discard(4)
		c.want = n
		if cap(c.rbuf) < n {
			c.rbuf = make([]byte, 0, n)
		}
		c.rbuf = c.rbuf[:0]
	}
	for len(c.rbuf) < c.want {
		k, err := c.r.Read(c.rbuf[len(c.rbuf):c.want])
		c.rbuf = c.rbuf[:len(c.rbuf)+k]
		if err != nil && len(c.rbuf) < c.want {
			return payloadError(err)
		}
	}
	p := c.rbuf
	c.want = 0
	if cap(p) > 1<<20 {
		c.rbuf = nil // do not pin a large snapshot's buffer
	}
	return Decode(p, m)
}

// frameSize is the payload size a frame's 4-byte header gives, checked
// against MaxFrameSize before it becomes an int (which may be 32 bits).
func frameSize(hdr []byte) (int, error) {
	size := binary.BigEndian.Uint32(hdr)
	if size > MaxFrameSize {
		return 0, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, size, MaxFrameSize)
	}
	return int(size), nil
}

func payloadError(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("reading frame payload: %w", err)
}
