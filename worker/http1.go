package worker

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
)

// This file is weldr's HTTP/1.1 message parser (RFC 9112). It is strict on
// purpose: a message two parsers could read differently is how requests are
// smuggled, so anything ambiguous is rejected rather than repaired, and what
// weldr forwards is always re-framed by weldr itself. It parses into an arena
// owned by the connection, so a request costs no allocation.

// header is one field line; name and value point into the message's arena.
type header struct {
	name, value []byte
}

// message is a parsed request or response head.
type message struct {
	arena   []byte   // backing store of every slice below
	headers []header // in the order received, duplicates kept

	// request line
	method, target []byte
	// status line
	status int
	reason []byte

	minor int // HTTP/1.minor

	// Framing, from Content-Length and Transfer-Encoding.
	contentLength int64 // -1: none given
	chunked       bool

	// From Connection and friends.
	close     bool // the sender will close, or asks us to, after this message
	keepAlive bool // an HTTP/1.0 "Connection: keep-alive"
	upgrade   []byte
	host      []byte // the request's Host (or absolute-form authority)
	expect    bool   // Expect: 100-continue
	teTrailer bool   // TE: trailers
	headBytes int    // size of the head on the wire
}

func (m *message) reset() {
	m.arena = m.arena[:0]
	m.headers = m.headers[:0]
	m.method, m.target, m.reason, m.upgrade, m.host = nil, nil, nil, nil, nil
	m.status, m.minor, m.headBytes = 0, 1, 0
	m.contentLength = -1
	m.chunked, m.close, m.keepAlive, m.expect, m.teTrailer = false, false, false, false, false
}

// parseError is a request weldr refuses, with the status that says why.
type parseError struct {
	status int
	msg    string
}

func (e *parseError) Error() string { return e.msg }

func badRequest(msg string) error { return &parseError{http.StatusBadRequest, msg} }

var (
	errHeaderTooLarge = &parseError{http.StatusRequestHeaderFieldsTooLarge, "request header fields too large"}
	errLineTooLong    = &parseError{http.StatusRequestURITooLong, "request line too long"}
	errVersion        = &parseError{http.StatusHTTPVersionNotSupported, "HTTP version not supported"}

	errResponseTooLarge = &parseError{http.StatusBadGateway, "response head too large"}
)

// maxHeaderLines bounds the number of field lines in a head.
const maxHeaderLines = 256

// limits bound what a head may hold.
type limits struct {
	headerBytes int // the whole head
	lineBytes   int // the request line
}

// readLine returns the next line without its CRLF (or bare LF, which RFC
// 9112 §2.2 lets a recipient accept: weldr always sends CRLF onwards, so
// the two cannot be read differently downstream). The line is only valid
// until the next read. A CR anywhere else is an error.
func readLine(br *bufio.Reader, max int) ([]byte, int, error) {
	line, err := br.ReadSlice('\n')
	n := len(line)
	if err == bufio.ErrBufferFull || n > max {
		return nil, n, errLineTooLongSentinel
	}
	if err != nil {
		if err == io.EOF && n > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, n, err
	}
	line = line[:n-1]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, n, badRequest("bare CR in message head")
	}
	return line, n, nil
}

var errLineTooLongSentinel = errors.New("line too long")

// readRequest parses a request head from br into m.
func readRequest(br *bufio.Reader, m *message, lim limits) error {
	m.reset()
	// RFC 9112 §2.2: ignore at least one empty line before a request.
	var line []byte
	var n int
	var err error
	for range 2 {
		line, n, err = readLine(br, lim.lineBytes)
		m.headBytes += n
		if err == errLineTooLongSentinel {
			return errLineTooLong
		}
		if err != nil {
			return err
		}
		if len(line) > 0 {
			break
		}
	}
	if err := m.parseRequestLine(line); err != nil {
		return err
	}
	if err := m.readHeaders(br, lim.headerBytes, true); err != nil {
		return err
	}
	return m.requestFraming()
}

// readResponse parses a response head from br into m. Errors are plain:
// any malformed answer is a 502 for the client.
func readResponse(br *bufio.Reader, m *message, lim limits) error {
	m.reset()
	line, n, err := readLine(br, lim.headerBytes)
	m.headBytes += n
	if err == errLineTooLongSentinel {
		return errors.New("status line too long")
	}
	if err != nil {
		return err
	}
	if err := m.parseStatusLine(line); err != nil {
		return err
	}
	if err := m.readHeaders(br, lim.headerBytes, false); err != nil {
		return err
	}
	return m.responseFraming()
}

func (m *message) parseRequestLine(line []byte) error {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return badRequest("malformed request line")
	}
	method := line[:sp1]
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return badRequest("malformed request line")
	}
	target, version := rest[:sp2], rest[sp2+1:]
	if !isToken(method) {
		return badRequest("invalid method")
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return badRequest("invalid request target")
		}
	}
	if !validTarget(target, method) {
		return badRequest("invalid request target")
	}
	switch {
	case bytes.Equal(version, http11):
		m.minor = 1
	case bytes.Equal(version, http10):
		m.minor = 0
	case len(version) == 8 && bytes.HasPrefix(version, httpSlash) && version[5] >= '0' && version[5] <= '9' && version[6] == '.':
		return errVersion
	default:
		return badRequest("malformed HTTP version")
	}
	m.method = m.keep(method)
	m.target = m.keep(target)
	return nil
}

var (
	http11    = []byte("HTTP/1.1")
	http10    = []byte("HTTP/1.0")
	httpSlash = []byte("HTTP/")
)

func (m *message) parseStatusLine(line []byte) error {
	// HTTP/1.x SP 3DIGIT [SP reason]
	if len(line) < 12 || !bytes.HasPrefix(line, httpSlash) || line[8] != ' ' {
		return errors.New("malformed status line")
	}
	switch {
	case bytes.Equal(line[:8], http11):
		m.minor = 1
	case bytes.Equal(line[:8], http10):
		m.minor = 0
	default:
		return errors.New("unsupported HTTP version in status line")
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return errors.New("malformed status code")
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return errors.New("malformed status code")
	}
	m.status = code
	if len(line) > 12 {
		if line[12] != ' ' {
			return errors.New("malformed status line")
		}
		reason := line[13:]
		for _, c := range reason {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return errors.New("control character in reason phrase")
			}
		}
		m.reason = m.keep(reason)
	}
	return nil
}

// readHeaders reads field lines up to the empty line.
func (m *message) readHeaders(br *bufio.Reader, maxBytes int, request bool) error {
	tooLarge := errHeaderTooLarge
	if !request {
		tooLarge = errResponseTooLarge
	}
	for {
		line, n, err := readLine(br, maxBytes)
		m.headBytes += n
		if err == errLineTooLongSentinel || m.headBytes > maxBytes {
			return tooLarge
		}
		if err != nil {
			return err
		}
		if len(line) == 0 {
			return nil
		}
		if len(m.headers) == maxHeaderLines {
			return tooLarge
		}
		if line[0] == ' ' || line[0] == '\t' {
			return badRequest("obsolete line folding") // RFC 9112 §5.2
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return badRequest("malformed header line")
		}
		name := line[:colon]
		if !isToken(name) {
			// Includes whitespace before the colon (RFC 9112 §5.1).
			return badRequest("invalid header name")
		}
		value := trimOWS(line[colon+1:])
		for _, c := range value {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return badRequest("control character in header value")
			}
		}
		m.headers = append(m.headers, header{m.keep(name), m.keep(value)})
	}
}

// requestFraming works out a request's body length and connection handling,
// rejecting every ambiguous combination (RFC 9112 §6).
func (m *message) requestFraming() error {
	var te, cl int
	hosts := 0
	for _, h := range m.headers {
		if bytes.IndexByte(h.name, '_') >= 0 && isFramingAlias(h.name) {
			// Transfer_Encoding and the like: a gateway that maps "_" to
			// "-" (CGI does) would read a different message than weldr.
			return badRequest("underscore in a framing header name")
		}
		switch {
		case equalFold(h.name, "Content-Length"):
			n, ok := parseLength(h.value)
			if !ok {
				return badRequest("invalid Content-Length")
			}
			if cl > 0 && n != m.contentLength {
				return badRequest("conflicting Content-Length")
			}
			cl++
			m.contentLength = n
		case equalFold(h.name, "Transfer-Encoding"):
			te++
			if !equalFold(h.value, "chunked") {
				return badRequest("unsupported Transfer-Encoding")
			}
		case equalFold(h.name, "Host"):
			hosts++
			m.host = h.value
			if len(h.value) > 0 && !validAuthority(h.value) || bytes.IndexByte(h.value, '/') >= 0 || bytes.IndexByte(h.value, '?') >= 0 {
				return badRequest("invalid Host header") // RFC 9112 §3.2: one host[:port]
			}
		case equalFold(h.name, "Connection"):
			m.scanConnection(h.value)
		case equalFold(h.name, "Upgrade"):
			m.upgrade = h.value
		case equalFold(h.name, "Expect"):
			if !equalFold(h.value, "100-continue") {
				return &parseError{http.StatusExpectationFailed, "unsupported expectation"}
			}
			m.expect = true
		case equalFold(h.name, "TE"):
			m.teTrailer = m.teTrailer || hasTokenBytes(h.value, "trailers")
		}
	}
	switch {
	case te > 1:
		return badRequest("repeated Transfer-Encoding")
	case te == 1 && cl > 0:
		return badRequest("both Content-Length and Transfer-Encoding") // RFC 9112 §6.3
	case te == 1 && m.minor == 0:
		return badRequest("Transfer-Encoding in an HTTP/1.0 request")
	case te == 1:
		m.chunked = true
	}
	if m.minor == 1 && hosts != 1 {
		return badRequest("a request needs exactly one Host header") // RFC 9112 §3.2
	}
	if hosts > 1 {
		return badRequest("repeated Host header")
	}
	if m.minor == 0 && !m.keepAlive {
		m.close = true
	}
	if m.expect && m.minor == 0 {
		m.expect = false // RFC 9110 §10.1.1: ignore for HTTP/1.0
	}
	return nil
}

// responseFraming works out a response's body framing. The caller decides
// about bodies that a status or method rules out.
func (m *message) responseFraming() error {
	var te, cl int
	for _, h := range m.headers {
		switch {
		case equalFold(h.name, "Content-Length"):
			n, ok := parseLength(h.value)
			if !ok {
				return errors.New("invalid Content-Length in response")
			}
			if cl > 0 && n != m.contentLength {
				return errors.New("conflicting Content-Length in response")
			}
			cl++
			m.contentLength = n
		case equalFold(h.name, "Transfer-Encoding"):
			te++
			if !lastCodingChunked(h.value) {
				return errors.New("response Transfer-Encoding does not end in chunked")
			}
		case equalFold(h.name, "Connection"):
			m.scanConnection(h.value)
		case equalFold(h.name, "Upgrade"):
			m.upgrade = h.value
		}
	}
	switch {
	case te > 1:
		return errors.New("repeated Transfer-Encoding in response")
	case te == 1 && cl > 0:
		return errors.New("both Content-Length and Transfer-Encoding in response")
	case te == 1:
		m.chunked = true
	}
	if m.minor == 0 && !m.keepAlive {
		m.close = true
	}
	return nil
}

func (m *message) scanConnection(v []byte) {
	forEachToken(v, func(t []byte) {
		switch {
		case equalFold(t, "close"):
			m.close = true
		case equalFold(t, "keep-alive"):
			m.keepAlive = true
		}
	})
}

// keep copies b into the arena and returns the copy.
func (m *message) keep(b []byte) []byte {
	start := len(m.arena)
	if cap(m.arena)-start < len(b) {
		// Grow: earlier slices keep pointing at the old array, which stays
		// alive as long as they do.
		na := make([]byte, start, max(2*cap(m.arena), start+len(b), 1024))
		copy(na, m.arena)
		m.arena = na
	}
	m.arena = append(m.arena, b...)
	return m.arena[start:len(m.arena):len(m.arena)]
}

// get returns the first value of the header named name, or nil.
func (m *message) get(name string) []byte {
	for _, h := range m.headers {
		if equalFold(h.name, name) {
			return h.value
		}
	}
	return nil
}

// connectionNames reports whether the Connection headers of m list name.
func (m *message) connectionNames(name []byte) bool {
	for _, h := range m.headers {
		if equalFold(h.name, "Connection") {
			found := false
			forEachToken(h.value, func(t []byte) {
				if bytes.EqualFold(t, name) {
					found = true
				}
			})
			if found {
				return true
			}
		}
	}
	return false
}

// parseLength parses a Content-Length: digits only, no sign, no list.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func lastCodingChunked(v []byte) bool {
	last := v
	if i := bytes.LastIndexByte(v, ','); i >= 0 {
		last = v[i+1:]
	}
	return equalFold(trimOWS(last), "chunked")
}

// tchar per RFC 9110 §5.6.2.
var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold compares ASCII case-insensitively without allocating.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if x == y {
			continue
		}
		if x|0x20 != y|0x20 || (x|0x20) < 'a' || (x|0x20) > 'z' {
			return false
		}
	}
	return true
}

func forEachToken(v []byte, f func([]byte)) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var t []byte
		if i < 0 {
			t, v = v, nil
		} else {
			t, v = v[:i], v[i+1:]
		}
		if t = trimOWS(t); len(t) > 0 {
			f(t)
		}
	}
}

func hasTokenBytes(v []byte, token string) bool {
	found := false
	forEachToken(v, func(t []byte) {
		if equalFold(t, token) {
			found = true
		}
	})
	return found
}

// validTarget checks a request target (RFC 9112 §3.2): origin-form,
// absolute-form with an http or https authority, or "*" for OPTIONS. weldr
// is no forward proxy, so authority-form (CONNECT) is refused. Fragments and
// broken percent-escapes are refused; other characters real clients send
// unescaped ({, |, ...) pass as they are.
func validTarget(t, method []byte) bool {
	switch {
	case t[0] == '/':
	case len(t) == 1 && t[0] == '*':
		return string(method) == "OPTIONS"
	case len(t) > 7 && equalFold(t[:7], "http://"):
		if !validAuthority(t[7:]) {
			return false
		}
	case len(t) > 8 && equalFold(t[:8], "https://"):
		if !validAuthority(t[8:]) {
			return false
		}
	default:
		return false
	}
	for i := 0; i < len(t); i++ {
		switch t[i] {
		case '#':
			return false
		case '%':
			if i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2]) {
				return false
			}
		}
	}
	return true
}

// validAuthority checks the host[:port] that starts rest, up to the path or
// query: a registered name or IPv4 address, or an IPv6 address in brackets,
// and an optional numeric port. No userinfo.
func validAuthority(rest []byte) bool {
	end := len(rest)
	for i, c := range rest {
		if c == '/' || c == '?' {
			end = i
			break
		}
	}
	a := rest[:end]
	if len(a) == 0 {
		return false
	}
	var port []byte
	if a[0] == '[' {
		i := bytes.IndexByte(a, ']')
		if i < 2 {
			return false
		}
		for _, c := range a[1:i] {
			if !isHex(c) && c != ':' && c != '.' {
				return false
			}
		}
		a = a[i+1:]
		if len(a) > 0 {
			if a[0] != ':' {
				return false
			}
			port = a[1:]
		}
	} else {
		host := a
		if i := bytes.LastIndexByte(a, ':'); i >= 0 {
			host, port = a[:i], a[i+1:]
		}
		if len(host) == 0 {
			return false
		}
		for _, c := range host {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' || c == '~') {
				return false
			}
		}
	}
	for _, c := range port {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(port) <= 5
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// isFramingAlias reports whether name, with "_" read as "-", names a header
// that frames or routes a request.
func isFramingAlias(name []byte) bool {
	var buf [32]byte
	if len(name) > len(buf) {
		return false
	}
	n := buf[:len(name)]
	for i, c := range name {
		if c == '_' {
			c = '-'
		}
		n[i] = c
	}
	return equalFold(n, "Transfer-Encoding") || equalFold(n, "Content-Length") ||
		equalFold(n, "Host") || equalFold(n, "Connection") || equalFold(n, "Upgrade") ||
		equalFold(n, "Expect") || equalFold(n, "TE") || equalFold(n, "Trailer")
}
