// Command weldr-test-server is a tiny origin server for trying weldr out:
//
//	GET /       -> "Hello World"
//	GET /large  -> a large text body
//	another method on those -> 405
//	anything else -> 404
//
// Usage: weldr-test-server [port]   (default 12345, on 127.0.0.1)
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// large is the body of /large: numbered lines of text, about 1 MiB.
var large = func() []byte {
	var b strings.Builder
	for i := 0; b.Len() < 1<<20; i++ {
		fmt.Fprintf(&b, "%07d the quick brown fox jumps over the lazy dog\n", i)
	}
	return []byte(b.String())
}()

func main() {
	port := 12345
	if len(os.Args) > 1 {
		p, err := strconv.Atoi(os.Args[1])
		if err != nil || p < 1 || p > 65535 {
			fmt.Fprintf(os.Stderr, "usage: weldr-test-server [port]  (port must be 1-65535)\n")
			os.Exit(2)
		}
		port = p
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	srv := &http.Server{Addr: addr, Handler: handler(), ReadHeaderTimeout: 10 * time.Second}
	log.Printf("weldr-test-server listening on http://%s", addr)
	log.Fatal(srv.ListenAndServe())
}

// handler answers GET (and HEAD) on / and /large; other methods there get
// 405 with an Allow header, other paths 404.
func handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("Hello World"))
	})
	mux.HandleFunc("GET /large", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Content-Length", strconv.Itoa(len(large)))
		w.Write(large)
	})
	return mux
}
