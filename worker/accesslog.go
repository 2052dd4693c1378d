package worker

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// accessLogFlush is how often buffered access log lines are written out.
const accessLogFlush = 200 * time.Millisecond

// logBuffer batches access log lines so that logging costs no system call
// per request: lines are written when 64 KiB have gathered or every
// accessLogFlush, whichever comes first.
type logBuffer struct {
	mu sync.Mutex // guards w
	w  *bufio.Writer
}

func newLogBuffer(out io.Writer) *logBuffer {
	return &logBuffer{w: bufio.NewWriterSize(out, 64<<10)}
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.Write(p)
}

func (b *logBuffer) flush() {
	b.mu.Lock()
	b.w.Flush()
	b.mu.Unlock()
}

// accessLogFlusher flushes the buffer periodically until stop is closed,
// then once more.
func (b *logBuffer) accessLogFlusher(stop <-chan struct{}) {
	t := time.NewTicker(accessLogFlush)
	defer t.Stop()
	for {
		select {
		case <-stop:
			b.flush()
			return
		case <-t.C:
			b.flush()
		}
	}
}
