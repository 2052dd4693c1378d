package worker

import (
	"bufio"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/weldr-proxy/weldr/internal/sockio"
)

// Bodies pass through weldr re-framed by weldr: a chunked body is decoded
// strictly and encoded again, so no byte of the sender's framing reaches the
// receiver as is (RFC 9112 §7.1).

var errChunk = errors.New("malformed chunked body")

// errBodyTooLarge is a request body over proxy.max_body_bytes.
var errBodyTooLarge = errors.New("body too large")

// spliceMin is the body size from which a fixed-length copy goes socket to
// socket (splice) instead of through the buffers.
const spliceMin = 64 << 10

// srcError marks a failure to read the body from its sender, as opposed to
// a failure to write it to its receiver.
type srcError struct{ err error }

func (e *srcError) Error() string { return "reading body: " + e.err.Error() }
func (e *srcError) Unwrap() error { return e.err }

// copyFixed copies n bytes from br to bw. Given the sockets under them
// (src and dst; nil for none), a large rest goes socket to socket once the
// buffers are drained (sockio.Splice). relayResponse gives them; sendBody
// does not, so request bodies go through the buffers (splicing them has
// not been measured).
func copyFixed(bw *bufio.Writer, dst *sockIO, br *bufio.Reader, src *sockIO, n int64) (int64, error) {
	var done int64
	for done < n {
		if br.Buffered() == 0 {
			rest := n - done
			if done > 0 && rest >= spliceMin && dst != nil && src != nil && dst.Raw != nil && src.Raw != nil {
				if err := bw.Flush(); err != nil {
					return done, err
				}
				k, err := sockio.Splice(&dst.Conn, &src.Conn, rest)
				done += k
				if !errors.Is(err, sockio.ErrNoPipe) {
					if err != nil {
						err = classify(err)
					}
					return done, err
				}
				// No pipe: the rest goes through the buffers.
			}
			// About to wait for the sender: pass on what is buffered first,
			// so a slow body streams instead of arriving all at the end.
			// Nothing is flushed before the first byte arrives, so that a
			// sender that fails at once can still be answered cleanly.
			if done > 0 {
				if err := bw.Flush(); err != nil {
					return done, err
				}
			}
			if _, err := br.Peek(1); err != nil {
				return done, classify(err)
			}
		}
		k, err := moveBuffered(bw, br, n-done)
		done += k
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// moveBuffered moves up to n of the bytes buffered in br to bw, without
// reading from br's connection.
func moveBuffered(bw *bufio.Writer, br *bufio.Reader, n int64) (int64, error) {
	k := min(int64(br.Buffered()), n)
	p, _ := br.Peek(int(k))
	if _, err := bw.Write(p); err != nil {
		return 0, err
	}
	br.Discard(int(k))
	return k, nil
}

// copyBuffered copies n bytes from br to bw through br's buffer, waiting
// for the sender as needed; it allocates nothing.
func copyBuffered(bw *bufio.Writer, br *bufio.Reader, n int64) (int64, error) {
	var done int64
	for done < n {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				return done, classify(err)
			}
		}
		k, err := moveBuffered(bw, br, n-done)
		done += k
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// peekOpen peeks at raw without blocking. Pending data counts as open only
// if dataOK: on an idle pooled connection, stray bytes make it unusable.
func peekOpen(raw syscall.RawConn, dataOK bool) bool {
	open := false
	var one byte
	raw.Control(func(fd uintptr) {
		n, e := peekRaw(fd, &one)
		open = e == syscall.EAGAIN || (dataOK && e == 0 && n > 0)
	})
	return open
}

// classify attributes a failed copy: an early end or a failed read is the
// sender's, anything else the receiver's.
func classify(err error) error {
	var se *srcError
	var oe *net.OpError
	switch {
	case errors.As(err, &se):
		return err
	case err == io.EOF:
		return &srcError{io.ErrUnexpectedEOF}
	case errors.As(err, &oe) && oe.Op != "read":
		return err
	}
	return &srcError{err}
}

// copyChunked decodes a chunked body from br and writes it to bw, encoded
// as chunked again with its trailers (rechunk), or as raw bytes. With
// flush, what was written goes out whenever the sender has nothing more
// buffered, so streams flow. It returns the body's size; limit, if
// positive, bounds it.
func copyChunked(bw *bufio.Writer, br *bufio.Reader, rechunk, flush bool, maxLine int, limit int64) (int64, error) {
	var total int64
	for {
		line, _, err := readLine(br, maxLine)
		if err != nil {
			if err == errLineTooLongSentinel {
				err = errChunk
			}
			return total, &srcError{err}
		}
		size, ok := parseChunkSize(line)
		if !ok {
			return total, &srcError{errChunk}
		}
		if size == 0 {
			break
		}
		if limit > 0 && total+size > limit {
			return total, errBodyTooLarge
		}
		if rechunk {
			writeChunkSize(bw, size)
		}
		k, err := copyBuffered(bw, br, size)
		total += k
		if err != nil {
			return total, err
		}
		if err := expectCRLF(br); err != nil {
			return total, &srcError{err}
		}
		if rechunk {
			bw.WriteString("\r\n")
		}
		if flush && br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return total, err
			}
		}
	}
	// Trailer section: field lines up to an empty line, checked like
	// headers.
	if rechunk {
		bw.WriteString("0\r\n")
	}
	for n := 0; ; n++ {
		line, _, err := readLine(br, maxLine)
		if err != nil || n > maxHeaderLines {
			return total, &srcError{errChunk}
		}
		if len(line) == 0 {
			break
		}
		if !validFieldLine(line) {
			return total, &srcError{errChunk}
		}
		if rechunk {
			bw.Write(line)
			bw.WriteString("\r\n")
		}
	}
	if rechunk {
		bw.WriteString("\r\n")
	}
	return total, nil
}

// copyUntilClose copies a body delimited by the end of the connection,
// chunk-encoding it if asked.
func copyUntilClose(bw *bufio.Writer, br *bufio.Reader, rechunk bool) (int64, error) {
	var total int64
	buf := make([]byte, 32<<10)
	for {
		n, err := br.Read(buf)
		if n > 0 {
			if rechunk {
				writeChunkSize(bw, int64(n))
			}
			if _, werr := bw.Write(buf[:n]); werr != nil {
				return total, werr
			}
			if rechunk {
				bw.WriteString("\r\n")
			}
			total += int64(n)
			if werr := bw.Flush(); werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			if rechunk {
				bw.WriteString("0\r\n\r\n")
			}
			return total, nil
		}
		if err != nil {
			return total, &srcError{err}
		}
	}
}

// writeChunkSize writes a chunk-size line in hex.
func writeChunkSize(bw *bufio.Writer, n int64) {
	const digits = "0123456789abcdef"
	shift := 60
	for shift > 0 && n>>shift == 0 {
		shift -= 4
	}
	for ; shift >= 0; shift -= 4 {
		bw.WriteByte(digits[n>>shift&0xf])
	}
	bw.WriteString("\r\n")
}

// parseChunkSize parses "1*HEXDIG [ BWS ; chunk-ext ]" (RFC 9112 §7.1).
func parseChunkSize(line []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			goto ext
		}
		if i >= 15 {
			return 0, false // over 2^60: nobody sends that, and it would overflow
		}
		n = n<<4 | int64(d)
	}
ext:
	if i == 0 {
		return 0, false
	}
	rest := line[i:]
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		rest = rest[1:]
	}
	if len(rest) > 0 {
		if rest[0] != ';' {
			return 0, false
		}
		for _, c := range rest {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return 0, false
			}
		}
	}
	return n, true
}

func expectCRLF(br *bufio.Reader) error {
	c, err := br.ReadByte()
	if err != nil {
		return err
	}
	if c == '\r' {
		if c, err = br.ReadByte(); err != nil {
			return err
		}
	}
	if c != '\n' {
		return errChunk
	}
	return nil
}

// validFieldLine checks a trailer field line like a header line.
func validFieldLine(line []byte) bool {
	if line[0] == ' ' || line[0] == '\t' {
		return false
	}
	colon := -1
	for i, c := range line {
		if c == ':' {
			colon = i
			break
		}
	}
	if colon <= 0 || !isToken(line[:colon]) {
		return false
	}
	for _, c := range line[colon+1:] {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
