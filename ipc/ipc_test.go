package ipc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weldr-proxy/weldr/internal/weldrtest"
)

// socketpair returns both ends of a real unix socketpair, as the manager and
// a worker use.
func socketpair(t testing.TB) (a, b net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "ipc")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

func sampleMessages() []Message {
	return []Message{
		{Kind: Snapshot, Settings: &Settings{
			Balance: "least_conn", ConnectTimeout: time.Second, ResponseHeaderTimeout: 30 * time.Second,
			ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 65536,
			MaxRequestLine: 8192, MaxConnections: 10000, MaxBodyBytes: 1 << 30,
			PreserveHost: true, StatsInterval: time.Second, LogLevel: "debug", LogFormat: "json", AccessLog: true,
		}, Servers: Servers{
			{ID: "127.0.0.1:9001", URL: "http://127.0.0.1:9001", Weight: 1},
			{ID: "[::1]:9002", URL: "https://[::1]:9002", Weight: 5, Down: true},
		}},
		{Kind: Snapshot, Settings: &Settings{}},
		{Kind: AddServer, Version: 8, Servers: Servers{{ID: "10.0.0.5:8080", URL: "http://10.0.0.5:8080", Weight: 3}}},
		{Kind: RemoveServer, ID: "10.0.0.5:8080"},
		{Kind: MarkServerDown, ID: "10.0.0.5:8080"},
		{Kind: MarkServerActive, ID: "10.0.0.5:8080"},
		{Kind: Drain, DrainTimeout: 30 * time.Second},
		{Kind: Drain},
		{Kind: Ready, PID: 4242, Version: 7, Bell: true},
		{Kind: Applied, Version: 1 << 40, At: 1 << 50},
		{Kind: ReportStats, Stats: &Stats{ClientSuccess: 10, ClientFailed: 2,
			Generated: Generated{BadRequest: 1, RequestTimeout: 5, ContentTooLarge: 6, URITooLong: 7, HeaderFieldsTooLarge: 8, BadGateway: 2, ServiceUnavailable: 3, GatewayTimeout: 4},
			Servers: ServerStatsList{
				{ID: "127.0.0.1:9001", Success: 7, Failed: 4, Responses: [5]uint64{1, 5, 0, 1, 1}, ConnectFailed: 1, TimedOut: 1, Broken: 1},
				{ID: "127.0.0.1:9002", Success: 3},
			},
			RoutedBehind: 5}},
		{Kind: ReportStats, Stats: &Stats{}},
	}
}

func TestRoundTripEveryKind(t *testing.T) {
	a, b := socketpair(t)
	tx, rx := NewConn(a), NewConn(b)
	want := sampleMessages()
	seen := map[Kind]bool{}
	go func() {
		for i := range want {
			if err := tx.Send(&want[i]); err != nil {
				t.Errorf("Send(%s) = %v", want[i].Kind, err)
				return
			}
		}
		a.Close()
	}()
	for i := range want {
		var got Message
		if err := rx.Receive(&got); err != nil {
			t.Fatalf("Receive() #%d = %v", i, err)
		}
		if !reflect.DeepEqual(got, want[i]) {
			t.Errorf("Receive() #%d = %+v, want %+v", i, got, want[i])
		}
		seen[got.Kind] = true
	}
	var m Message
	if err := rx.Receive(&m); err != io.EOF {
		t.Errorf("Receive() after close = %v, want io.EOF", err)
	}
	for k := Snapshot; k <= Applied; k++ {
		if !seen[k] {
			t.Errorf("kind %s not covered by the round trip", k)
		}
	}
}

// bigSnapshot is a snapshot of n servers, about 74 bytes each encoded.
func bigSnapshot(n int) Message {
	m := Message{Kind: Snapshot, Settings: &Settings{}}
	for i := 0; i < n; i++ {
		id := net.JoinHostPort("10.0."+itoa(i/250)+"."+itoa(i%250), "8080")
		m.Servers = append(m.Servers, Server{ID: id, URL: "http://" + id, Weight: 1})
	}
	return m
}

func TestLargeSnapshotRoundTrip(t *testing.T) {
	a, b := socketpair(t)
	tx, rx := NewConn(a), NewConn(b)
	want := bigSnapshot(10000)
	go func() {
		if err := tx.Send(&want); err != nil {
			t.Errorf("Send() = %v", err)
		}
	}()
	var got Message
	if err := rx.Receive(&got); err != nil {
		t.Fatalf("Receive() = %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Receive() of a 10,000-server snapshot differs from what was sent")
	}
}

func itoa(i int) string { return string(appendInt(nil, i)) }

func appendInt(b []byte, i int) []byte {
	if i >= 10 {
		b = appendInt(b, i/10)
	}
	return append(b, byte('0'+i%10))
}

func frame(payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
	return append(b, payload...)
}

func TestRejects(t *testing.T) {
	huge := binary.BigEndian.AppendUint32(nil, MaxFrameSize+1)
	tests := []struct {
		name  string
		input []byte
		want  string
	}{
		{"oversized length", huge, "frame too large"},
		{"max uint32 length", []byte{0xff, 0xff, 0xff, 0xff}, "frame too large"},
		{"truncated header", []byte{0, 0}, "unexpected EOF"},
		{"truncated payload", []byte{0, 0, 0, 9, 0x81}, "unexpected EOF"},
		{"not msgpack", frame([]byte{0xc1}), "decoding message"},
		{"not a map", frame([]byte{0x01}), "decoding message"},
		{"unknown kind", frame([]byte{0x81, 0xa1, 'k', 0x63}), "unknown message kind 99"},
		{"zero kind", frame([]byte{0x80}), "unknown message kind 0"},
		{"snapshot without settings", frame([]byte{0x81, 0xa1, 'k', 0x01}), "without settings"},
		{"remove without id", frame([]byte{0x81, 0xa1, 'k', 0x03}), "without a server ID"},
		{"stats without stats", frame([]byte{0x81, 0xa1, 'k', 0x08}), "without stats"},
		{"applied with a negative time", frame([]byte{0x82, 0xa1, 'k', 0x09, 0xa2, 'a', 't', 0xff}), "Applied with a negative time"},
		{"trailing bytes", frame([]byte{0x81, 0xa1, 'k', 0x07, 0x00}), "trailing bytes"},
		// An array header claiming 2^32-1 servers in a 12-byte payload must
		// fail on the missing entries, not allocate them.
		{"lying array length", frame([]byte{0x82, 0xa1, 'k', 0x01, 0xa3, 's', 'r', 'v', 0xdd, 0xff, 0xff, 0xff}), "decoding message"},
		{"array over limit", frame([]byte{0x81, 0xa3, 's', 'r', 'v', 0xdd, 0x7f, 0xff, 0xff, 0xff}), "limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var m Message
			p, err := ReadFrame(bytes.NewReader(tc.input), nil)
			if err == nil {
				err = Decode(p, &m)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ReadFrame+Decode(%x) = %v, want an error containing %q", tc.input, err, tc.want)
			}
			if err := readerConn(bytes.NewReader(tc.input)).Receive(&m); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Receive(%x) = %v, want an error containing %q", tc.input, err, tc.want)
			}
		})
	}
	if _, err := ReadFrame(bytes.NewReader(huge), nil); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("ReadFrame(oversized) = %v, want ErrFrameTooLarge", err)
	}
}

// readerConn is a Conn that receives what r reads.
func readerConn(r io.Reader) *Conn {
	return NewConn(struct {
		io.Reader
		io.Writer
	}{r, io.Discard})
}

// A Receive cut short by its read deadline keeps what it read: the next
// one returns the same frame. Worker pipes are given a passed deadline to
// wake their reader wherever it is.
func TestReceiveGoesOnAfterItsDeadline(t *testing.T) {
	big := bigSnapshot(3000)
	small := Message{Kind: AddServer, Version: 9, Servers: Servers{{ID: "127.0.0.1:9001", URL: "http://127.0.0.1:9001", Weight: 1}}}
	next := Message{Kind: RemoveServer, Version: 10, ID: "127.0.0.1:9001"}
	for _, want := range []Message{small, big} {
		b, err := AppendFrame(nil, &want)
		if err != nil {
			t.Fatal(err)
		}
		if want.Kind == Snapshot && len(b) <= 64<<10 {
			t.Fatalf("the large frame is %d bytes, not larger than Receive's buffer", len(b))
		}
		after, err := AppendFrame(nil, &next)
		if err != nil {
			t.Fatal(err)
		}
		cuts := []int{0, 1, 3, 4, 5, len(b) / 2, len(b) - 1}
		if want.Kind == Snapshot {
			cuts = append(cuts, 64<<10-1, 64<<10, 64<<10+1, 100<<10)
		}
		for _, cut := range cuts {
			t.Run(want.Kind.String()+"/cut at "+itoa(cut), func(t *testing.T) {
				tx, rx := socketpair(t)
				c := NewConn(rx)
				done := make(chan error, 1)
				// The first part, in two pieces, each read by a Receive
				// that is waiting for more when its deadline passes.
				for _, part := range [][]byte{b[:cut/2], b[cut/2 : cut]} {
					rx.SetReadDeadline(time.Time{})
					var m Message
					go func() { done <- c.Receive(&m) }()
					if _, err := tx.Write(part); err != nil {
						t.Fatal(err)
					}
					weldrtest.WaitSocketQueue(t, rx.(syscall.Conn), unix.SIOCINQ)
					rx.SetReadDeadline(time.Unix(1, 0))
					if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
						t.Fatalf("Receive() with %d of %d bytes sent and a passed deadline = %v, want a timeout", cut, len(b), err)
					}
				}
				rx.SetReadDeadline(time.Now().Add(10 * time.Second)) // fail, not hang, on a lost byte
				go func() {
					_, err := tx.Write(append(b[cut:len(b):len(b)], after...))
					done <- err
				}()
				var got Message
				if err := c.Receive(&got); err != nil {
					t.Fatalf("Receive() after the rest was sent = %v", err)
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("Receive() after the rest was sent returned a different %s", got.Kind)
				}
				if err := c.Receive(&got); err != nil || !reflect.DeepEqual(got, next) {
					t.Errorf("the frame after: Receive() = %v, %+v; want %+v", err, got, next)
				}
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

func TestNowIsMonotonic(t *testing.T) {
	a := Now()
	b := Now()
	if a <= 0 || b < a {
		t.Errorf("Now() = %d then %d, want positive and not decreasing", a, b)
	}
}

func TestSendRejectsOversizedMessage(t *testing.T) {
	big := Message{Kind: RemoveServer, ID: strings.Repeat("x", MaxFrameSize)}
	if _, err := AppendFrame(nil, &big); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("AppendFrame(oversized) = %v, want ErrFrameTooLarge", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	for _, m := range sampleMessages() {
		b, err := AppendFrame(nil, &m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add(frame([]byte{0x82, 0xa1, 'k', 0x01, 0xa3, 's', 'r', 'v', 0xdd, 0xff, 0xff, 0xff}))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			p, err := ReadFrame(r, nil)
			if err != nil {
				return
			}
			var m Message
			if Decode(p, &m) != nil {
				continue
			}
			// Whatever decodes must encode and decode to the same message.
			b, err := AppendFrame(nil, &m)
			if err != nil {
				t.Fatalf("AppendFrame(decoded %+v) = %v", m, err)
			}
			var again Message
			p2, err := ReadFrame(bytes.NewReader(b), nil)
			if err != nil {
				t.Fatalf("ReadFrame(re-encoded) = %v", err)
			}
			if err := Decode(p2, &again); err != nil {
				t.Fatalf("Decode(re-encoded %+v) = %v", m, err)
			}
			if !reflect.DeepEqual(normalize(m), normalize(again)) {
				t.Fatalf("re-encoded message = %+v, want %+v", again, m)
			}
		}
	})
}

// Receive, which decodes a frame where it lies in its buffer, agrees with
// ReadFrame and Decode on every input, frame by frame: the same message or
// the same error. Its reader hands over a few bytes at a time and fails
// with a passed deadline now and then, which Receive must shrug off.
func FuzzReceive(f *testing.F) {
	for _, m := range sampleMessages() {
		b, err := AppendFrame(nil, &m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append(b, b...), uint8(3))
	}
	big := bigSnapshot(2000)
	b, err := AppendFrame(nil, &big)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b, uint8(200))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 2, 0x81, 0xa1}, uint8(1))
	f.Add([]byte{0, 0, 0, 9, 0x81}, uint8(2))
	f.Add(frame([]byte{0x81, 0xa1, 'k', 0x07, 0x00}), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		r := bytes.NewReader(data)
		c := readerConn(&stutterReader{data: data, chunk: int(chunk)%64 + 1})
		for i := 0; ; i++ {
			var want, got Message
			p, werr := ReadFrame(r, nil)
			frameErr := werr != nil
			if werr == nil {
				werr = Decode(p, &want)
			}
			gerr := c.Receive(&got)
			for errors.Is(gerr, os.ErrDeadlineExceeded) {
				gerr = c.Receive(&got)
			}
			if fmt.Sprint(gerr) != fmt.Sprint(werr) {
				t.Fatalf("frame %d: Receive() = %v, ReadFrame+Decode = %v", i, gerr, werr)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("frame %d: Receive() = %+v, ReadFrame+Decode = %+v", i, got, want)
			}
			if frameErr {
				return // the stream ended or broke
			}
		}
	})
}

// stutterReader reads data at most chunk bytes at a time, and fails every
// third read with a passed deadline, as a worker's pipe, read without
// waiting, fails when empty.
type stutterReader struct {
	data  []byte
	chunk int
	reads int
}

func (r *stutterReader) Read(p []byte) (int, error) {
	r.reads++
	if r.reads%3 == 0 {
		return 0, os.ErrDeadlineExceeded
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.chunk)], r.data)
	r.data = r.data[n:]
	return n, nil
}

// Buffered says whether a whole frame waits, not just some bytes: a worker
// publishes its pool when it does not.
func TestBufferedMeansAWholeFrame(t *testing.T) {
	m := Message{Kind: RemoveServer, Version: 3, ID: "127.0.0.1:9001"}
	b, err := AppendFrame(nil, &m)
	if err != nil {
		t.Fatal(err)
	}
	big := bigSnapshot(3000)
	bb, err := AppendFrame(nil, &big)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		first []byte // a frame Receive returns first
		rest  []byte
		want  bool
	}{
		{"nothing after", b, nil, false},
		{"part of a header after", b, b[:3], false},
		{"a header after", b, b[:4], false},
		{"most of a frame after", b, b[:len(b)-1], false},
		{"a whole frame after", b, b, true},
		{"an oversized header after", b, []byte{0xff, 0xff, 0xff, 0xff}, true},
		{"most of a large frame after", b, bb[:len(bb)-1], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := readerConn(bytes.NewReader(append(append([]byte(nil), tc.first...), tc.rest...)))
			var got Message
			if err := c.Receive(&got); err != nil {
				t.Fatal(err)
			}
			if c.Buffered() != tc.want {
				t.Errorf("Buffered() = %v, want %v", !tc.want, tc.want)
			}
		})
	}
}

// normalize maps empty lists to nil: omitempty drops them on encode.
func normalize(m Message) Message {
	if len(m.Servers) == 0 {
		m.Servers = nil
	}
	if m.Stats != nil && len(m.Stats.Servers) == 0 {
		s := *m.Stats
		s.Servers = nil
		m.Stats = &s
	}
	return m
}

func BenchmarkSendReceiveAddServer(b *testing.B) {
	a, c := socketpair(b)
	tx, rx := NewConn(a), NewConn(c)
	m := Message{Kind: AddServer, Servers: Servers{{ID: "10.0.0.5:8080", URL: "http://10.0.0.5:8080", Weight: 1}}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var got Message
		for i := 0; i < b.N; i++ {
			if err := rx.Receive(&got); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := tx.Send(&m); err != nil {
			b.Fatal(err)
		}
	}
	<-done
}
